"""``liverank simulate --retrain daily``: the daily retrain -> shadow -> promote cycle replayed
offline on a log, day by day, next to a model trained once and the baselines.

The period is the last ``--days`` calendar days of the log (step 0 is midnight; a day is
`STEPS_PER_DAY` steps; the last day may be partial). Before it, the *once* model is
trained from scratch on the log as known at the period's first step (`as_known_at`) and
exported; it is the first live model (``<out>/live``, a symlink, as the service serves it).
Then, for each day d of the period:

1. at the start of d a *candidate* is retrained from the live model's checkpoint (warm start,
   ``--retrain-epochs`` epochs, vocabulary grown by the streamers first seen since) on the log
   as known at the end of day d-1, exported to ONNX;
2. during d every request is ranked by the live model and, in shadow, by the candidate (plus
   the once model, *once_plus* -- the day-1 candidate frozen: the once model's data with
   ``--retrain-epochs`` more epochs, the control that tells more training from new data --
   and POP / REP / REP-count, whose counts are the rows before d); a request is the one the
   replay sends before each watch (``every-watch``), its target the watch that follows it,
   paired as `liverank.client.promote.targets` pairs them;
3. at the end of d the live and candidate answers go through `client.promote`'s `pair`,
   `compare` (paired bootstrap) and `decide` (``--min-requests``, ``--margin``); every
   decision is appended to ``<out>/promotions.jsonl`` with its numbers (`log_decision`); a
   winning candidate is promoted by `promote` (the live symlink flips) and serves from d+1.

The service's answers equal this offline ranking list for list (the worker ranks through the
same `RankRequest` -> `OnnxScorer` path; tests/test_service_kafka.py checks the two agree),
so the figures here are the ones the online loop (shadow worker + ``liverank promote``) would
give on the same replay.

Per day: HR@k / NDCG@k of every arm and the share of requests whose true next watch is a
streamer unknown to (outside the vocabulary of) the live model and the once model. Writes
``simulate.json`` (options, per-day rows, decisions, summary), ``simulate.csv`` (the rows)
and ``simulate.png`` under ``--out``.

    liverank simulate --retrain daily --data out/data/medium.csv --days 7 \\
        --out out/simulate/medium --threads 1
"""

from __future__ import annotations

import csv
import json
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import typer

from liverank.core.timebase import DEFAULT_EPOCH_MS, STEPS_PER_DAY, event_time_ms

logger = logging.getLogger(__name__)

CADENCES = ("daily",)
METRICS = ("ndcg", "hr")
REP_WINDOW = 50  # REP's look-back (liverank's REP); REP-count reads the model's 16
COUNT_WINDOW = 16
BATCH = 256


class SimulationError(ValueError):
    """The simulation cannot run as asked; the message is one line."""


@dataclass(frozen=True)
class SimOptions:
    data: Path
    fmt: str = "twitch"
    out: Path = Path("out/simulate")
    retrain: str = "daily"
    days: int = 7
    once: Path | None = None  # a checkpoint to use as the once model instead of training it
    preset: str = "quick"  # the once model's preset
    epochs: int | None = None  # the once model's epochs (None: the preset's)
    retrain_epochs: int = 2
    val_steps: int = 36  # validation (early stopping) on the last steps known at a cut
    train_days: int = 0  # 0: every row known at the cut; N: only the last N days
    k: int = 10
    metric: str = "ndcg"
    min_requests: int = 1000
    margin: float = 0.0
    confidence: float = 0.95
    resamples: int = 2000
    max_requests: int | None = None  # per day, evenly spaced (all arms on the same ones)
    threads: int = 1
    seed: int = 0
    epoch_ms: int = DEFAULT_EPOCH_MS

    def check(self) -> None:
        if self.retrain not in CADENCES:
            raise SimulationError(f"--retrain {self.retrain!r}: expected one of "
                                  f"{', '.join(CADENCES)}")
        if self.metric not in METRICS:
            raise SimulationError(f"--metric {self.metric!r}: expected ndcg or hr")
        for name, value, low in (("--days", self.days, 1), ("--retrain-epochs",
                                 self.retrain_epochs, 1), ("--val-steps", self.val_steps, 1),
                                 ("--train-days", self.train_days, 0), ("--k", self.k, 1),
                                 ("--min-requests", self.min_requests, 1),
                                 ("--threads", self.threads, 1)):
            if value < low:
                raise SimulationError(f"{name} {value}: must be at least {low}")
        if self.max_requests is not None and self.max_requests < 1:
            raise SimulationError(f"--max-requests {self.max_requests}: must be at least 1")
        if self.once is not None and not (self.once / "checkpoint.json").is_file():
            raise SimulationError(f"--once {self.once}: not a training checkpoint (no "
                                  "checkpoint.json)")


# -- metrics --------------------------------------------------------------------------------


def gains(ranks: Sequence[int | None], k: int) -> tuple[np.ndarray, np.ndarray]:
    """Per request: HR@k (1 when the target is in the top k) and NDCG@k (1/log2(rank+1) when
    it is), the gains `client.promote` computes from an answer's top k."""
    r = np.asarray([math.inf if x is None else float(x) for x in ranks], dtype=np.float64)
    hit = r <= k
    ndcg = np.zeros_like(r)
    ndcg[hit] = 1.0 / np.log2(r[hit] + 1.0)
    return hit.astype(np.float64), ndcg


def unknown_count(truths: Sequence[str], vocabulary: Sequence[str]) -> int:
    """Targets whose streamer is not in the model's vocabulary (its item names): the model
    ranks them through its one out-of-vocabulary embedding."""
    known = set(vocabulary)
    return sum(1 for t in truths if t not in known)


def period_days(max_start: int, days: int) -> tuple[int, int]:
    """First and last calendar day of the period: the last ``days`` days with rows; day 0
    must stay before it (the once model's data)."""
    last = max_start // STEPS_PER_DAY
    first = last - days + 1
    if first < 1:
        raise SimulationError(f"--days {days}: the log's rows start on {last + 1} calendar "
                              f"day(s); at most {last} can be simulated (day 0 stays before "
                              "the period, for the once model)")
    return first, last


# -- the run --------------------------------------------------------------------------------


def simulate(opts: SimOptions, echo: Any = print) -> dict[str, Any]:
    """Run the simulation; write simulate.json / .csv / .png and promotions.jsonl under
    ``opts.out``; return the report (what simulate.json holds)."""
    from liverank.client.promote import (
        compare,
        decide,
        log_decision,
        pair,
        promote,
        targets,
    )
    from liverank.model.baselines import PopScorer, RepCountScorer, RepScorer
    from liverank.model.data.eventlog import as_known_at
    from liverank.model.data.timeline import REQUEST, build_timeline
    from liverank.model.data.twitch import in_event_order, load_interactions
    from liverank.model.evaluate import iter_targets
    from liverank.model.export import export
    from liverank.model.scorer import BaseScorer, OnnxScorer, load_scorer
    from liverank.model.train import configs, retrain, train

    opts.check()
    t_run = time.monotonic()
    ds = in_event_order(load_interactions(opts.data, fmt=opts.fmt))  # type: ignore[arg-type]
    first_day, last_day = period_days(int(ds.start.max()), opts.days)
    p_start, p_end = first_day * STEPS_PER_DAY, int(ds.start.max())
    out = opts.out
    out.mkdir(parents=True, exist_ok=True)
    log_path, live_link = out / "promotions.jsonl", out / "live"
    log_path.unlink(missing_ok=True)  # this run's decisions only

    def since(until: int) -> int | None:
        first = until + 1 - opts.train_days * STEPS_PER_DAY
        return first if opts.train_days and first > 0 else None

    def known_at(until: int) -> Any:
        return as_known_at(ds, until, since(until))

    def period(until: int, day: int | None) -> dict[str, Any]:
        return {"until_step": until, "since_step": since(until), "simulated_day": day}

    # The once model: trained on the log as known when the period starts (or given).
    models = out / "models"
    once_onnx = models / "once" / "onnx"
    if opts.once is None:
        once_ckpt = models / "once" / "ckpt"
        echo(f"training the once model on steps < {p_start} (preset {opts.preset})")
        t0 = time.monotonic()
        model_cfg, cfg = configs("liverank", opts.preset, epochs=opts.epochs,
                                 val_offset=opts.val_steps, test_offset=0,
                                 threads=opts.threads, seed=opts.seed)
        train(known_at(p_start - 1), once_ckpt, model_cfg, cfg, progress=False,
              period=period(p_start - 1, None), epoch_ms=opts.epoch_ms)
        once_wall_s: float | None = time.monotonic() - t0
    else:
        once_ckpt = opts.once
        _check_once(once_ckpt, p_start)
        once_wall_s = None
    once_history = json.loads((once_ckpt / "checkpoint.json").read_text(encoding="utf-8")
                              ).get("history", [])
    export(once_ckpt, once_onnx)
    _point(live_link, once_onnx)
    once = load_scorer(once_onnx, threads=opts.threads)
    assert isinstance(once, OnnxScorer)

    # Every request of the period with its target, in timeline order.
    echo(f"period: days {first_day}..{last_day} (steps {p_start}..{p_end})")
    window_len = max(REP_WINDOW, once.window_len)
    all_targets = list(iter_targets(ds, p_start, p_end, window_len, "broadcast", "all"))
    tl = build_timeline(ds, "every-watch", requests_from=p_start, from_step=p_start,
                        to_step=p_end, epoch_ms=opts.epoch_ms)
    users = np.flatnonzero(tl.kind >= REQUEST)
    target_of = targets(tl.event(int(i)) for i in users)  # type: ignore[misc]
    disagree = sum(1 for t in all_targets if target_of.get(t.event_id) != t.truth)
    if disagree:  # the evaluator and the promotion's pairing must name the same targets
        raise SimulationError(f"{disagree} requests whose target differs between "
                              "evaluate.iter_targets and promote.targets")
    by_day: dict[int, list[Any]] = {}
    for t in all_targets:
        by_day.setdefault(t.request.step // STEPS_PER_DAY, []).append(t)

    rows: list[dict[str, Any]] = []
    decisions: list[dict[str, Any]] = []
    once_plus: Any = None  # the first candidate, frozen: the once data, more epochs
    for day in range(first_day, last_day + 1):
        day_targets = by_day.get(day, [])
        if opts.max_requests is not None and len(day_targets) > opts.max_requests:
            keep = np.linspace(0, len(day_targets) - 1, opts.max_requests).astype(np.int64)
            day_targets = [day_targets[i] for i in keep]
        start = day * STEPS_PER_DAY
        live_dir = live_link.resolve()
        live_ckpt = once_ckpt if live_dir == once_onnx.resolve() else live_dir.parent / "ckpt"
        # 1. the candidate: a warm start from the live model on what is known now.
        cand_dir = models / f"day{day:03d}"
        t0 = time.monotonic()
        res = retrain(known_at(start - 1), cand_dir / "ckpt", live_ckpt, progress=False,
                      period=period(start - 1, day), epoch_ms=opts.epoch_ms,
                      epochs=opts.retrain_epochs, patience=opts.retrain_epochs,
                      val_offset=opts.val_steps, test_offset=0, threads=opts.threads,
                      seed=opts.seed + day, max_minutes=0.0)
        info = export(cand_dir / "ckpt", cand_dir / "onnx")
        retrain_s = time.monotonic() - t0
        # 2. the day's requests, every arm on the same ones.
        live = load_scorer(live_dir, threads=opts.threads)
        cand = load_scorer(cand_dir / "onnx", threads=opts.threads)
        once_plus = cand if once_plus is None else once_plus
        arms: dict[str, BaseScorer] = {
            "once": once, "once_plus": once_plus, "retrained": live,  # type: ignore[dict-item]
            "candidate": cand,  # type: ignore[dict-item]
            "POP": PopScorer(ds, start), "REP": RepScorer(ds, start, REP_WINDOW),
            "REP-count": RepCountScorer(ds, start, COUNT_WINDOW)}
        t0 = time.monotonic()
        ranks, answers = _score(arms, day_targets, opts.k, ds, opts.epoch_ms)
        score_s = time.monotonic() - t0
        truths = [t.truth for t in day_targets]
        row: dict[str, Any] = {
            "day": day - first_day + 1, "calendar_day": day, "date": _date(start, opts.epoch_ms),
            "first_step": start, "last_step": min(start + STEPS_PER_DAY - 1, p_end),
            "requests": len(day_targets)}
        for name, r in ranks.items():
            hr, ndcg = gains(r, opts.k)
            row[f"{name}_hr"] = _mean(hr)
            row[f"{name}_ndcg"] = _mean(ndcg)
        n_live = unknown_count(truths, live.index.names)  # type: ignore[attr-defined]
        n_once = unknown_count(truths, once.index.names)
        n_cand = unknown_count(truths, cand.index.names)  # type: ignore[attr-defined]
        row |= {"unknown_live": n_live, "unknown_live_share": _share(n_live, len(truths)),
                "unknown_once": n_once, "unknown_once_share": _share(n_once, len(truths)),
                "unknown_candidate": n_cand,
                "unknown_candidate_share": _share(n_cand, len(truths)),
                "live_version": live.version, "live_items": live.index.n_items,  # type: ignore[attr-defined]
                "candidate_version": cand.version,
                "candidate_items": cand.index.n_items,  # type: ignore[attr-defined]
                "candidate_items_added": (info.get("lineage") or {}).get(
                    "vocabulary", {}).get("added"),
                "candidate_best_epoch": res.best_epoch,
                "retrain_s": round(retrain_s, 1), "score_s": round(score_s, 1)}
        # 3. the decision on the day's paired evidence.
        pairs = pair(answers["retrained"], answers["candidate"], target_of, opts.k,
                     opts.metric)  # type: ignore[arg-type]
        decision = decide(compare(pairs, opts.metric, opts.k,  # type: ignore[arg-type]
                                  opts.resamples, opts.confidence, seed=opts.seed + day),
                          opts.min_requests, opts.margin)
        before = promote(live_link, cand_dir / "onnx") if decision.promote else None
        record = log_decision(log_path, decision, before)
        decisions.append({"day": row["day"], "calendar_day": day, **record})
        row |= {"promoted": decision.promote, "diff": decision.comparison.diff,
                "ci_low": decision.comparison.ci_low, "ci_high": decision.comparison.ci_high,
                "paired": decision.comparison.n}
        rows.append(row)
        echo(_day_line(row, opts.k) + ("  -> promoted" if decision.promote else "  -> kept"))

    report = {
        "command": "simulate", "data": str(opts.data), "format": opts.fmt,
        "options": {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(opts).items()},
        "period": {"first_day": first_day, "last_day": last_day, "first_step": p_start,
                   "last_step": p_end, "requests": sum(r["requests"] for r in rows)},
        "once": {"version": once.version, "checkpoint": str(once_ckpt),
                 "trained_here": opts.once is None,
                 "wall_s": round(once_wall_s, 1) if once_wall_s is not None else None,
                 "epochs": len(once_history),
                 "epoch_s": [round(h["seconds"], 1) for h in once_history],
                 "val_ndcg10": [round(h["val_ndcg10"], 4) for h in once_history],
                 "items": once.index.n_items},
        "once_plus": {"version": once_plus.version if once_plus is not None else None,
                      "what": f"the day-1 candidate, frozen: the once model's data, "
                              f"{opts.retrain_epochs} more epochs (warm start)"},
        "arms": list(ARMS), "rows": rows, "decisions": decisions,
        "summary": summarise(rows), "wall_s": round(time.monotonic() - t_run, 1)}
    write_report(report, out)
    return report


ARMS = ("once", "once_plus", "retrained", "candidate", "POP", "REP", "REP-count")


def _score(arms: dict[str, Any], day_targets: list[Any], k: int, ds: Any, epoch_ms: int
           ) -> tuple[dict[str, list[int | None]], dict[str, dict[str, Any]]]:
    """Ranks of the targets per arm, and the live and candidate answers (top k) as the worker
    publishes them, for `client.promote.pair`. A model that two arms share (the live one is
    the once model until a promotion) is scored once."""
    from liverank.core import events as ev

    ranks: dict[str, list[int | None]] = {name: [] for name in arms}
    answers: dict[str, dict[str, Any]] = {"retrained": {}, "candidate": {}}
    for lo in range(0, len(day_targets), BATCH):
        chunk = day_targets[lo:lo + BATCH]
        requests = [t.request for t in chunk]
        scored_by: dict[str, list[Any]] = {}
        for name, scorer in arms.items():
            scored = scored_by.get(scorer.version)
            if scored is None:
                scored = scored_by[scorer.version] = scorer.score_all(requests)
            ranks[name].extend(s.rank_of(t.truth) for t, s in zip(chunk, scored, strict=True))
            if name not in answers:
                continue
            for t, s in zip(chunk, scored, strict=True):
                top = s.top(k)
                row = int(t.event_id.split(":", 1)[1])
                at = event_time_ms(t.request.step, epoch_ms)
                answers[name][t.event_id] = ev.Recommendation(
                    event_id=f"rec:{t.event_id}", seq=0, step=t.request.step,
                    event_time_ms=at, user=int(ds.user_ids[ds.user[row]]),
                    request_id=t.event_id, trigger="request", produced_ms=None,
                    published_ms=at, model_version=scorer.version, fallback=top.fallback,
                    items=[ev.RecItem(0, n, float(sc), i) for i, (n, sc) in
                           enumerate(zip(top.streamers, top.scores, strict=True), 1)],
                    shadow=name == "candidate")
    return ranks, answers


def _check_once(ckpt: Path, p_start: int) -> None:
    """A given once model must not know the period (its training rows end before it)."""
    meta = json.loads((ckpt / "checkpoint.json").read_text(encoding="utf-8"))
    data = (meta.get("lineage") or {}).get("data") or {}
    last = data.get("last_step")
    if last is None:
        raise SimulationError(f"--once {ckpt}: its checkpoint.json names no data period "
                              "(lineage.data.last_step); cannot tell it ends before the period")
    if int(last) >= p_start:  # lineage's last_step: the last row start it knew
        raise SimulationError(f"--once {ckpt}: it knows the log up to step {last}, inside the "
                              f"period (from step {p_start}); train it on the log before it")


def _point(link: Path, target: Path) -> None:
    """Make ``link`` a symlink to ``target`` (replacing an old link or nothing)."""
    if link.is_symlink():
        link.unlink()
    elif link.exists():
        raise SimulationError(f"{link}: exists and is not a symlink (the live model link)")
    link.symlink_to(target.resolve(), target_is_directory=True)


def _date(step: int, epoch_ms: int) -> str:
    return datetime.fromtimestamp(event_time_ms(step, epoch_ms) / 1000, UTC).strftime("%Y-%m-%d")


def _mean(x: np.ndarray) -> float:
    return float(x.mean()) if x.size else float("nan")


def _share(n: int, total: int) -> float:
    return n / total if total else float("nan")


def _day_line(row: dict[str, Any], k: int) -> str:
    arms = " ".join(f"{a} {row[f'{a}_hr']:.3f}/{row[f'{a}_ndcg']:.3f}" for a in ARMS)
    return (f"day {row['day']:2d} ({row['date']}, {row['requests']} requests) HR@{k}/NDCG@{k}: "
            f"{arms}; unknown to live {row['unknown_live_share']:.3f}, to once "
            f"{row['unknown_once_share']:.3f}, to the candidate "
            f"{row['unknown_candidate_share']:.3f}")


def summarise(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Request-weighted means per arm, day 1 and the last day, the trend (least-squares
    slope per day) of the model arms, and the gaps: candidate - once per day (what the once
    model loses against a model trained up to the day before; on day 1 only more epochs),
    and, averaged over the days after day 1, retrained - once (what the cycle gets back),
    split into once_plus - once (more epochs on the old data) and retrained - once_plus
    (the new data)."""
    if not rows:
        return {}
    w = np.asarray([r["requests"] for r in rows], dtype=np.float64)
    days = np.asarray([r["day"] for r in rows], dtype=np.float64)
    out: dict[str, Any] = {"promotions": sum(bool(r["promoted"]) for r in rows)}
    for m in ("hr", "ndcg"):
        per: dict[str, Any] = {}
        for arm in ARMS:
            y = np.asarray([r[f"{arm}_{m}"] for r in rows], dtype=np.float64)
            ok = np.isfinite(y) & (w > 0)
            per[arm] = {"mean": float(np.average(y[ok], weights=w[ok])) if ok.any() else None,
                        "day1": float(y[0]), "last_day": float(y[-1])}
            if arm in ("once", "once_plus", "retrained", "candidate") and ok.sum() >= 2:
                per[arm]["slope_per_day"] = float(np.polyfit(days[ok], y[ok], 1)[0])
        later = [r for r in rows[1:] if r["requests"]]
        if later:
            lw = np.asarray([r["requests"] for r in later], dtype=np.float64)
            for a, b in (("retrained", "once"), ("once_plus", "once"),
                         ("retrained", "once_plus")):
                per[f"{a}_minus_{b}_after_day1"] = float(np.average(
                    [r[f"{a}_{m}"] - r[f"{b}_{m}"] for r in later], weights=lw))
        per["candidate_minus_once"] = [r[f"candidate_{m}"] - r[f"once_{m}"] for r in rows]
        out[m] = per
    out["unknown_live_share"] = [r["unknown_live_share"] for r in rows]
    out["unknown_once_share"] = [r["unknown_once_share"] for r in rows]
    out["unknown_candidate_share"] = [r["unknown_candidate_share"] for r in rows]
    return out


# -- the report -----------------------------------------------------------------------------


def write_report(report: dict[str, Any], out: Path) -> list[Path]:
    rows = report["rows"]
    paths = [out / "simulate.json", out / "simulate.csv", out / "simulate.png"]
    paths[0].write_text(json.dumps(report, indent=2, default=_json_default) + "\n",
                        encoding="utf-8")
    with paths[1].open("w", newline="", encoding="utf-8") as f:
        if rows:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    plot(report, paths[2])
    return paths


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    return str(value)


def plot(report: dict[str, Any], path: Path) -> None:
    """HR@k and NDCG@k per day for every arm (promotions marked), the model arms' NDCG@k
    minus the once model's, and the unknown-target share of the live, once and candidate
    models."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = report["rows"]
    k = report["options"]["k"]
    x = [r["day"] for r in rows]
    styles = {"once": ("tab:blue", "-", "o"), "once_plus": ("tab:blue", ":", "."),
              "retrained": ("tab:red", "-", "s"),
              "candidate": ("tab:red", ":", "."), "POP": ("tab:grey", "--", "v"),
              "REP": ("tab:green", "--", "^"), "REP-count": ("tab:olive", "--", "x")}
    labels = {"once": "(a) trained once", "once_plus": "(a) + more epochs, same data",
              "retrained": "(b) retrained, promoted (live)",
              "candidate": "candidate (shadow)", "POP": "POP", "REP": "REP",
              "REP-count": "REP-count"}
    fig, axes = plt.subplots(4, 1, figsize=(9, 13), sharex=True)
    for ax, m, title in ((axes[0], "hr", f"HR@{k}"), (axes[1], "ndcg", f"NDCG@{k}")):
        for arm in ARMS:
            color, ls, marker = styles[arm]
            ax.plot(x, [r[f"{arm}_{m}"] for r in rows], color=color, linestyle=ls,
                    marker=marker, label=labels[arm])
        for r in rows:
            if r["promoted"]:  # the candidate of day d serves from d+1
                ax.axvline(r["day"] + 0.5, color="tab:red", alpha=0.25, linewidth=1)
        ax.set_ylabel(title)
        ax.grid(True, alpha=0.3)
    axes[0].legend(fontsize=8, loc="best")
    for arm in ("once_plus", "retrained", "candidate"):
        color, ls, marker = styles[arm]
        axes[2].plot(x, [r[f"{arm}_ndcg"] - r["once_ndcg"] for r in rows], color=color,
                     linestyle=ls, marker=marker, label=labels[arm])
    axes[2].axhline(0.0, color="tab:blue", linewidth=1)
    axes[2].set_ylabel(f"NDCG@{k} minus (a)'s")
    axes[2].grid(True, alpha=0.3)
    axes[2].legend(fontsize=8, loc="best")
    axes[3].plot(x, [r["unknown_live_share"] for r in rows], color="tab:red", marker="s",
                 label="unknown to the live model")
    axes[3].plot(x, [r["unknown_once_share"] for r in rows], color="tab:blue", marker="o",
                 label="unknown to the once model")
    axes[3].plot(x, [r["unknown_candidate_share"] for r in rows], color="tab:red",
                 linestyle=":", marker=".", label="unknown to the candidate")
    axes[3].set_ylabel("share of requests whose\ntarget is out of vocabulary")
    axes[3].set_xlabel("simulated day (thin red lines: a promotion, serving from the next day)")
    axes[3].grid(True, alpha=0.3)
    axes[3].legend(fontsize=8)
    fig.suptitle(f"simulate --retrain daily: {Path(report['data']).name}, days "
                 f"{report['period']['first_day']}-{report['period']['last_day']}, "
                 f"{report['summary'].get('promotions', 0)} promotion(s)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


# -- the command ----------------------------------------------------------------------------


def simulate_command(
    data: Path = typer.Option(..., help="Viewing log (Twitch format, or the sample with "
                              "--format sample)."),
    fmt: str = typer.Option("twitch", "--format", help="twitch or sample."),
    retrain: str = typer.Option("daily", help="Retrain cadence: daily (a candidate at the "
                                "start of every simulated day)."),
    days: int = typer.Option(7, help="Simulate the last N calendar days of the log."),
    out: Path = typer.Option(Path("out/simulate"), help="Report, figure, models, decision "
                             "log and the live model symlink go here."),
    once: Path | None = typer.Option(None, help="Use this checkpoint as the once model "
                                     "(trained on the log before the period) instead of "
                                     "training it."),
    preset: str = typer.Option("quick", help="The once model's preset."),
    epochs: int | None = typer.Option(None, help="The once model's epochs (default: the "
                                      "preset's)."),
    retrain_epochs: int = typer.Option(2, help="Epochs of each daily warm-started retrain."),
    val_steps: int = typer.Option(36, help="Each training validates (early stopping) on the "
                                  "last N steps known at its cut and trains on the rows "
                                  "before them."),
    train_days: int = typer.Option(0, help="Train each candidate on the last N days known "
                                   "only (0: every row known)."),
    k: int = typer.Option(10, help="Cut-off of HR and NDCG (the service's top-k)."),
    metric: str = typer.Option("ndcg", help="ndcg or hr: what a candidate must win on."),
    min_requests: int = typer.Option(1000, help="Fewest paired requests to promote."),
    margin: float = typer.Option(0.0, help="The paired interval's lower end of candidate - "
                                 "live must be above this."),
    confidence: float = typer.Option(0.95, min=0.5, max=0.999, help="Of the paired "
                                     "bootstrap interval."),
    resamples: int = typer.Option(2000, min=100, help="Bootstrap resamples."),
    max_requests: int | None = typer.Option(None, help="Score at most N requests a day "
                                            "(evenly spaced; every arm the same ones)."),
    threads: int = typer.Option(1, help="torch and onnxruntime threads."),
    seed: int = typer.Option(0, help="Seed of training (day d's retrain uses seed + d)."),
) -> None:
    """Replay a log day by day with a daily retrain -> shadow -> promote cycle.

    Trains a model once on the log before the period; every simulated day retrains a
    candidate from the live model (warm start, data as known then), ranks the day's
    requests with the live model, the candidate (shadow), the once model, the day-1
    candidate frozen (once_plus: more epochs, no new data), POP, REP and REP-count, and
    promotes the candidate at the day's end when it wins on the paired
    evidence (liverank promote's rule). Prints and writes per-day HR@k / NDCG@k and the
    share of targets unknown to the live model (simulate.json, .csv, .png under --out).
    """
    from liverank.client.promote import PromotionError
    from liverank.core.settings import Settings
    from liverank.model.data.twitch import DataError
    from liverank.model.export import ExportError

    opts = SimOptions(data=data, fmt=fmt, out=out, retrain=retrain, days=days, once=once,
                      preset=preset, epochs=epochs, retrain_epochs=retrain_epochs,
                      val_steps=val_steps, train_days=train_days, k=k, metric=metric,
                      min_requests=min_requests, margin=margin, confidence=confidence,
                      resamples=resamples, max_requests=max_requests, threads=threads,
                      seed=seed, epoch_ms=Settings().epoch_ms)
    try:
        report = simulate(opts, echo=typer.echo)
    except (DataError, SimulationError, ExportError, PromotionError, ValueError,
            OSError) as exc:
        lines = str(exc).strip().splitlines()
        typer.echo(f"error: {lines[0] if lines else type(exc).__name__}", err=True)
        raise typer.Exit(2) from exc
    s = report["summary"]
    for m in ("hr", "ndcg"):
        if m in s:
            typer.echo(f"{m.upper()}@{k} mean over days: " + ", ".join(
                f"{a} {s[m][a]['mean']:.4f}" for a in ARMS if s[m][a]["mean"] is not None))
    typer.echo(f"promotions: {s.get('promotions', 0)}; wrote {out / 'simulate.json'}, "
               f"{out / 'simulate.csv'}, {out / 'simulate.png'}, {out / 'promotions.jsonl'}")
