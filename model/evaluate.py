"""The LiveRec protocol: rank the true streamer among all streamers live at the target's step.

Every model -- baselines, checkpoints (torch) and exported directories (onnxruntime) -- is
asked the same question through `RankRequest`, built from the replay timeline exactly as
the streaming service builds it: one event order (step, then ``seq``), windows of the
user's watches that precede the request, candidates = the streamers live at the step.
So `iter_requests` is also the reference the end-to-end check compares service answers to.

Targets: ``all`` (every watch in the period, the service's question) or ``last`` (each
user's last watch in the period, LiveRec's). New/repeat under two definitions, both reported
and labelled:

* ``log`` (keys ``new``/``repeat``): a target is a repeat when the user watched that
  streamer at any earlier step of the log;
* ``window`` (keys ``window_new``/``window_repeat``): a repeat when the streamer is among the
  user's last ``repeat_window`` (16) watches, the model's input window -- LiveRec's
  definition, so these columns compare with the paper's new/rep. (LiveRec's code tests the
  target against ``pos[:-1]``, the inputs after the oldest one; with 16 inputs that is the
  last 15. Here: all 16.)

Baselines: POP, LivePop, REP (liverank's: most recent first, 50-watch look-back) and
REP-count (LiveRec's: count in the input window); see `liverank.model.baselines`.

    liverank evaluate --data out/data/medium.csv --model out/models/liverank-onnx \\
        --targets all --availability broadcast --json out/eval/medium.json
"""

from __future__ import annotations

import json
import logging
import time
from collections import deque
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Literal, NamedTuple

import numpy as np

from liverank.model.data.timeline import REQUEST, WATCH, build_timeline

from .data.availability import Availability, Definition, availability
from .data.split import TimeSplit
from .data.twitch import Interactions
from .metrics import Accumulator
from .scorer import BaseScorer, OnnxScorer, RankRequest, load_scorer

logger = logging.getLogger(__name__)

TargetSet = Literal["all", "last"]
TABLE_COLUMNS = ("HR@1", "HR@5", "HR@10", "NDCG@5", "NDCG@10", "MRR")
REPEAT_WINDOW = 16  # LiveRec's seq_len, liverank's default window_len


class EvalTarget(NamedTuple):
    event_id: str  # the request's event id on the timeline, ``req:<row>``
    request: RankRequest
    truth: str  # the streamer the user watched next
    repeat: bool  # the user watched this streamer before (anywhere in the log)
    in_window: bool = False  # ... among their last ``repeat_window`` watches (LiveRec's)


def repeat_definitions(repeat_window: int) -> dict[str, str]:
    """What ``new``/``repeat`` (log) and ``window_new``/``window_repeat`` mean."""
    return {"log": "repeat = the user watched the streamer at any earlier step of the log",
            "window": f"repeat = the streamer is among the user's last {repeat_window} "
                      "watches (the model's input window; LiveRec's definition)"}


def iter_targets(ds: Interactions, from_step: int, to_step: int, window_len: int,
                 definition: Definition = "broadcast", targets: TargetSet = "all",
                 live: Availability | None = None, repeat_window: int = REPEAT_WINDOW
                 ) -> Iterator[EvalTarget]:
    """Targets with start in ``[from_step, to_step]``, in timeline order (step, then seq).

    Windows hold at most ``window_len`` of the user's preceding watches (all of history
    before the request counts, including watches at the same step earlier in the file);
    ``in_window`` looks at the last ``repeat_window`` of them.
    """
    if targets not in ("all", "last"):
        raise ValueError(f"unknown target set {targets!r}: use 'all' or 'last'")
    if repeat_window < 1:
        raise ValueError(f"repeat_window must be >= 1, got {repeat_window}")
    live = live if live is not None else availability(ds, definition)
    tl = build_timeline(ds, requests="every-watch", requests_from=from_step, to_step=to_step)
    user_events = np.flatnonzero(tl.kind >= REQUEST)
    wanted = _last_rows(ds, from_step, to_step) if targets == "last" else None
    names = ds.streamer_names
    windows: dict[int, deque[tuple[str, int]]] = {}
    seen: dict[int, set[str]] = {}
    cands: dict[int, tuple[str, ...]] = {}
    keep = max(window_len, repeat_window, 1)
    for kind, step, row in zip(tl.kind[user_events].tolist(), tl.step[user_events].tolist(),
                               tl.ref[user_events].tolist(), strict=True):
        user = int(ds.user[row])
        name = str(names[ds.streamer[row]])
        if kind == WATCH:
            windows.setdefault(user, deque(maxlen=keep)).append((name, step))
            seen.setdefault(user, set()).add(name)
            continue
        if wanted is not None and not wanted[row]:
            continue
        at = cands.get(step)
        if at is None:
            at = tuple(names[live.streamers_at(step)].tolist())
            cands[step] = at
        past = tuple(windows.get(user, ()))
        window = past[-window_len:] if window_len > 0 else ()
        recent = any(n == name for n, _ in past[-repeat_window:])
        yield EvalTarget(f"req:{row}", RankRequest(window, step, at), name,
                         name in seen.get(user, ()), recent)


def iter_requests(ds: Interactions, from_step: int, to_step: int, window_len: int,
                  definition: Definition = "broadcast", targets: TargetSet = "all"
                  ) -> Iterator[tuple[str, RankRequest, str]]:
    """(request event id, RankRequest, true streamer) triples in timeline order: what the
    streaming service must answer for each request of the replay in that step range."""
    for t in iter_targets(ds, from_step, to_step, window_len, definition, targets):
        yield t.event_id, t.request, t.truth


def _last_rows(ds: Interactions, from_step: int, to_step: int) -> np.ndarray:
    """Per row: it is its user's last row (step, then file order) in the step range."""
    inside = np.flatnonzero((ds.start >= from_step) & (ds.start <= to_step))
    order = inside[np.lexsort((inside, ds.start[inside], ds.user[inside]))]
    last = np.ones(order.shape[0], dtype=bool)
    last[:-1] = ds.user[order[:-1]] != ds.user[order[1:]]
    out = np.zeros(len(ds), dtype=bool)
    out[order[last]] = True
    return out


def period(split: TimeSplit, part: Literal["validation", "test"]) -> tuple[int, int]:
    if part == "validation":
        return split.pivot_1, split.pivot_2 - 1
    return split.pivot_2, split.max_step


def evaluate_scorers(ds: Interactions, scorers: dict[str, BaseScorer], split: TimeSplit,
                     targets: TargetSet = "all", definition: Definition = "broadcast",
                     part: Literal["validation", "test"] = "test", batch: int = 256,
                     limit: int | None = None, repeat_window: int = REPEAT_WINDOW
                     ) -> dict[str, Any]:
    """Metrics of every scorer on the same targets; ``limit`` keeps an evenly spaced subset.
    Per model: ``all``, ``new``/``repeat`` (log definition), ``window_new``/``window_repeat``
    (window definition) and both repeat ratios."""
    from_step, to_step = period(split, part)
    window_len = max([s.window_len for s in scorers.values()] + [1])
    all_targets = list(iter_targets(ds, from_step, to_step, window_len, definition, targets,
                                    repeat_window=repeat_window))
    if limit is not None and len(all_targets) > limit:
        keep = np.linspace(0, len(all_targets) - 1, limit).astype(np.int64)
        all_targets = [all_targets[i] for i in keep]
    accs = {name: (Accumulator(), Accumulator()) for name in scorers}  # log, window
    seconds = dict.fromkeys(scorers, 0.0)
    for lo in range(0, len(all_targets), batch):
        chunk = all_targets[lo : lo + batch]
        requests = [t.request for t in chunk]
        for name, scorer in scorers.items():
            t0 = time.perf_counter()
            scored = scorer.score_all(requests)
            seconds[name] += time.perf_counter() - t0
            by_log, by_window = accs[name]
            for target, s in zip(chunk, scored, strict=True):
                rank = s.rank_of(target.truth)
                by_log.add(rank, target.repeat)
                by_window.add(rank, target.in_window)
    models = {}
    for name, (by_log, by_window) in accs.items():
        result = by_log.result()
        window = by_window.result()
        result["window_new"] = window["new"]
        result["window_repeat"] = window["repeat"]
        result["window_repeat_ratio"] = window["repeat_ratio"]
        result["version"] = scorers[name].version
        result["seconds"] = round(seconds[name], 3)
        models[name] = result
    return {"data": ds.source, "targets": targets, "availability": definition, "part": part,
            "period": [from_step, to_step], "n_targets": len(all_targets),
            "split": {"pivot_1": split.pivot_1, "pivot_2": split.pivot_2,
                      "max_step": split.max_step},
            "repeat_window": repeat_window,
            "repeat_definitions": repeat_definitions(repeat_window),
            "models": models}


def open_scorer(path: str | Path, threads: int = 1) -> BaseScorer:
    """An exported directory (model.json) -> `load_scorer`, as the service loads it; a
    training checkpoint (checkpoint.json) -> the torch scorer of `liverank.model.checkpoint`
    (torch is imported only then)."""
    path = Path(path)
    if (path / "model.json").exists():
        return load_scorer(path, threads=threads)  # type: ignore[return-value]
    if (path / "checkpoint.json").exists():
        from .checkpoint import TorchScorer

        return TorchScorer.from_checkpoint(path, threads=threads)
    raise FileNotFoundError(f"{path}: neither an exported model (model.json) nor a training "
                            "checkpoint (checkpoint.json)")


def markdown_table(result: dict[str, Any]) -> str:
    """Rows: models; columns: all-target metrics, then HR@1/NDCG@10 on new and repeat
    targets under both definitions (log, then window), and a legend."""
    split_cols = [("new", "new (log)"), ("repeat", "rep (log)"),
                  ("window_new", "new (win)"), ("window_repeat", "rep (win)")]
    head = (["model", *TABLE_COLUMNS]
            + [f"{label} {c}" for _, label in split_cols for c in ("HR@1", "NDCG@10")])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, m in result["models"].items():
        cells = [name] + [f"{m['all'][c]:.4f}" for c in TABLE_COLUMNS]
        cells += [f"{m[key][c]:.4f}" if key in m else "-"
                  for key, _ in split_cols for c in ("HR@1", "NDCG@10")]
        lines.append("| " + " | ".join(cells) + " |")
    first = next(iter(result["models"].values()), None)
    ratio = first["repeat_ratio"] if first else float("nan")
    win_ratio = first.get("window_repeat_ratio", float("nan")) if first else float("nan")
    window = result.get("repeat_window", REPEAT_WINDOW)
    lines.append("")
    lines.append(f"{result['n_targets']} targets ({result['targets']}, {result['part']}, "
                 f"availability={result['availability']}); repeat ratio {ratio:.3f} (log: "
                 f"watched before anywhere in the log), {win_ratio:.3f} (win: among the last "
                 f"{window} watches, LiveRec's definition)")
    return "\n".join(lines)


def write_result(result: dict[str, Any], json_path: Path) -> Path:
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(result, indent=2), encoding="utf-8")
    md = json_path.with_suffix(".md")
    md.write_text(markdown_table(result) + "\n", encoding="utf-8")
    return md


def baseline_scorers(ds: Interactions, split: TimeSplit, definition: Definition,
                     part: Literal["validation", "test"] = "test",
                     rep_window: int = 50, count_window: int = REPEAT_WINDOW
                     ) -> dict[str, BaseScorer]:
    """POP, live popularity, REP (liverank's) and REP-count (LiveRec's), counting only rows
    before the evaluated period."""
    from .baselines import LivePopScorer, PopScorer, RepCountScorer, RepScorer

    before = period(split, part)[0]
    live = availability(ds, definition)
    return {"POP": PopScorer(ds, before), "LivePop": LivePopScorer(ds, live, before),
            "REP": RepScorer(ds, before, rep_window),
            "REP-count": RepCountScorer(ds, before, count_window)}


def run(ds: Interactions, model_paths: Sequence[Path], split: TimeSplit,
        targets: TargetSet, definition: Definition, threads: int = 1,
        baselines: bool = True, limit: int | None = None,
        repeat_window: int = REPEAT_WINDOW) -> dict[str, Any]:
    scorers: dict[str, BaseScorer] = baseline_scorers(ds, split, definition) if baselines else {}
    for path in model_paths:
        scorer = open_scorer(path, threads=threads)
        kind = "onnx" if isinstance(scorer, OnnxScorer) else "torch"
        scorers[f"{Path(path).name} ({kind})"] = scorer
    return evaluate_scorers(ds, scorers, split, targets, definition, limit=limit,
                            repeat_window=repeat_window)
