"""Online evaluation: score the service's answers against what users watched next.

``liverank monitor`` reads ``recommendations``, ``user-events`` and ``stream-events`` and asks
the offline ``--targets all`` question online: an answer to a request is scored against the
watch that follows the request at the same step (the user's next event on the timeline);
an answer triggered by a watch, against the user's next *different* stream within a horizon.

It reports HR@k / NDCG@k / MRR (all, new, repeat targets) overall and per simulated day,
the share of recommended streams that were live at the request's step, catalogue coverage,
produce-to-publish latency percentiles and histogram, throughput, late answers, requests left
unanswered and duplicates. For reference it ranks the same targets with POP (watches seen so
far, ranked among the streamers live at the step) and REP (the user's most recently watched
live streamer first, of their last `REP_WINDOW` watches, then POP), overall and per day:
the model should beat both.

``from_step``: requests before it are not scored and their answers are left out of every
figure (the demo's calibration load: a backlog drained to measure the service's capacity).

Completeness comes from the replay's ``End`` records and counts, never from broker
watermarks (tansu reports wrong high watermarks; see docs/operations.md).
"""

from __future__ import annotations

import json
import logging
import time
from collections import defaultdict
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from liverank.core import events as ev
from liverank.core.settings import Settings
from liverank.core.timebase import STEP_MS, STEPS_PER_DAY
from liverank.model.data.live import Candidates, LiveStreams
from liverank.model.metrics import Accumulator
from liverank.model.pushes import score_pushes

logger = logging.getLogger(__name__)

REP_WINDOW = 50  # REP looks at the user's last 50 watches, as `RepScorer` (model.baselines)
# Upper edges (ms) of the latency histogram's bins; the last bin is open-ended.
LATENCY_EDGES_MS = (5, 10, 20, 50, 100, 200, 500, 1_000, 2_000, 5_000, 10_000)


def _target_rank(items: list[ev.RecItem], streamer: str) -> int | None:
    for item in items:
        if item.streamer == streamer:
            return item.rank
    return None


def _pop_rank(counts: dict[str, int], live: Iterable[str], target: str) -> int | None:
    """Rank of ``target`` among ``live`` by watches so far (ties: name), 1-based."""
    if target not in live:  # a set or a dict keys view: O(1)
        return None
    mine = counts.get(target, 0)
    better = sum(1 for s in live
                 if counts.get(s, 0) > mine or (counts.get(s, 0) == mine and s < target))
    return better + 1


def _rep_rank(recent: list[str], counts: dict[str, int], live: Iterable[str],
              target: str) -> int | None:
    """Rank of ``target`` by REP: the streamers of ``recent`` (the user's last watches,
    oldest first) that are ``live``, most recent first, then the other live streamers by
    POP (`_pop_rank`'s order). None when ``target`` is not live."""
    if target not in live:
        return None
    mine: list[str] = []  # live streamers of the window, most recent first, once each
    for s in reversed(recent):
        if s in live and s not in mine:
            mine.append(s)
    if target in mine:
        return mine.index(target) + 1
    held = set(mine)
    rest = {s for s in live if s not in held}
    return len(mine) + (_pop_rank(counts, rest, target) or 0)


def latency_histogram(values: np.ndarray) -> list[tuple[str, int]]:
    """(bin label, count) over `LATENCY_EDGES_MS`: "<5 ms", "5-10 ms", ..., ">=10000 ms"."""
    edges = np.asarray(LATENCY_EDGES_MS, dtype=np.float64)
    counts = np.bincount(np.searchsorted(edges, values, side="right"),
                         minlength=len(edges) + 1)
    labels = [f"<{LATENCY_EDGES_MS[0]} ms"]
    labels += [f"{a}-{b} ms" for a, b in zip(LATENCY_EDGES_MS, LATENCY_EDGES_MS[1:],
                                              strict=False)]
    labels.append(f">={LATENCY_EDGES_MS[-1]} ms")
    return [(lab, int(c)) for lab, c in zip(labels, counts.tolist(), strict=True)]


def answer_rate(published_ms: Iterable[float], min_span_ms: float = 0.0) -> float:
    """Answers/s over the span of their publish times: n answers span n - 1 gaps, so the
    rate is (n - 1) / span (n / span overstates a short window: 2 answers 1 ms apart are not
    2,000/s). The span is at least ``min_span_ms``; NaN with fewer than two answers or no
    span. The demo's calibration and held-load check use it too: its figures agree."""
    times = np.fromiter(published_ms, dtype=np.float64)
    if times.size < 2:
        return float("nan")
    span_s = max(float(times.max() - times.min()), min_span_ms) / 1000
    return (times.size - 1) / span_s if span_s > 0 else float("nan")


class OnlineEvaluator:
    """Feed it every record (any order); `report` replays them in timeline order."""

    def __init__(self, k: int = 10, watch_horizon: int = STEPS_PER_DAY,
                 from_step: int | None = None) -> None:
        self.k = k
        self.watch_horizon = watch_horizon
        self.from_step = from_step
        self.stream_events: list[ev.StreamEvent] = []
        self.user_events: list[ev.UserEvent] = []
        self.answers: dict[str, ev.Recommendation] = {}
        self.duplicates = 0
        self.duplicates_differing = 0
        self.ends: list[ev.End] = []

    def add(self, record: ev.Event) -> None:
        if isinstance(record, ev.Recommendation):
            old = self.answers.get(record.request_id)
            if old is not None:
                # At-least-once delivery: a repeated answer is identified by request_id.
                self.duplicates += 1
                if [i.streamer for i in old.items] != [i.streamer for i in record.items]:
                    self.duplicates_differing += 1
                return
            self.answers[record.request_id] = record
        elif isinstance(record, ev.End):
            self.ends.append(record)
        elif isinstance(record, ev.StreamStart | ev.StreamStop | ev.Watermark):
            self.stream_events.append(record)
        elif isinstance(record, ev.Watch | ev.RecRequest):
            self.user_events.append(record)

    def report(self) -> dict[str, Any]:
        timeline: list[ev.Event] = sorted(
            [*(e for e in self.stream_events if not isinstance(e, ev.Watermark)),
             *self.user_events], key=lambda e: (e.step, e.seq))
        live = LiveStreams(partitions=1, stopped_horizon=0)  # walked in step order
        day = -1
        seen: dict[int, set[str]] = defaultdict(set)  # user -> streamers watched so far
        recent: dict[int, list[str]] = defaultdict(list)  # user -> last REP_WINDOW watches
        counts: dict[str, int] = defaultdict(int)
        pending: dict[int, ev.RecRequest] = {}  # user -> request waiting for its watch
        acc = _Accumulators()
        live_items = total_items = 0
        recommended: set[str] = set()
        live_catalogue: set[str] = set()
        requests = answered = skipped = 0
        day_start: dict[int, int] = {}  # day -> event time (ms) of its step 0
        for e in timeline:
            if e.step // STEPS_PER_DAY != day:  # intervals that stopped before now: gone
                day = e.step // STEPS_PER_DAY
                live.prune(e.step)
                day_start[day] = e.event_time_ms - (e.step % STEPS_PER_DAY) * STEP_MS
            if isinstance(e, ev.StreamStart | ev.StreamStop):
                live.apply(e, 0)
                continue
            if isinstance(e, ev.RecRequest):
                if self.from_step is not None and e.step < self.from_step:
                    skipped += 1  # not scored: a calibration load
                    continue
                requests += 1
                pending[e.user] = e
                ans = self.answers.get(e.event_id)
                if ans is not None:
                    answered += 1
                    on_air = live.candidates(e.step).streams  # streamer -> answering stream
                    for item in ans.items:
                        total_items += 1
                        live_items += on_air.get(item.streamer) == item.stream
                        recommended.add(item.streamer)
                    live_catalogue.update(on_air)
                continue
            if not isinstance(e, ev.Watch):
                continue  # the end records
            req = pending.pop(e.user, None)
            if req is not None and req.step == e.step:
                self._score(req, e, seen, recent[e.user], counts, live.candidates(e.step),
                            acc)
            seen[e.user].add(e.streamer)
            window = recent[e.user]
            window.append(e.streamer)
            del window[:-REP_WINDOW]
            counts[e.streamer] += 1
        summary = self._summary(acc, requests, answered, live_items, total_items, recommended,
                                live_catalogue)
        summary["requests_not_scored"] = skipped
        summary["from_step"] = self.from_step
        summary["day_start_ms"] = {str(d): t for d, t in sorted(day_start.items())
                                   if str(d) in summary["by_day"]}
        summary["watch_triggered"] = self._score_watch_answers(timeline)
        summary["pushes"] = score_pushes(timeline, self.answers, self.k, self.watch_horizon)
        return summary

    def _score_watch_answers(self, timeline: list[ev.Event]) -> dict[str, Any]:
        """Answers published after a watch, against the user's next different stream
        within ``watch_horizon`` steps (no such stream: not scored)."""
        watches: dict[int, list[ev.Watch]] = defaultdict(list)
        for e in timeline:
            if isinstance(e, ev.Watch):
                watches[e.user].append(e)
        acc = Accumulator()
        for user_watches in watches.values():
            seen: set[str] = set()
            for i, w in enumerate(user_watches):
                seen.add(w.streamer)
                ans = self.answers.get(w.event_id)
                if ans is None or ans.trigger != "watch":
                    continue
                nxt = next((n for n in user_watches[i + 1:] if n.stream != w.stream), None)
                if nxt is None or nxt.step - w.step > self.watch_horizon:
                    continue
                acc.add(_target_rank(ans.items, nxt.streamer), nxt.streamer in seen)
        return acc.result()

    def _score(self, req: ev.RecRequest, watch: ev.Watch, seen: dict[int, set[str]],
               recent: list[str], counts: dict[str, int], live: Candidates,
               acc: _Accumulators) -> None:
        ans = self.answers.get(req.event_id)
        if ans is None:
            return  # counted as unanswered
        repeat = watch.streamer in seen[watch.user]
        day = req.step // STEPS_PER_DAY
        on_air = live.streams.keys()
        for name, rank in (("model", _target_rank(ans.items, watch.streamer)),
                           ("pop", _pop_rank(counts, on_air, watch.streamer)),
                           ("rep", _rep_rank(recent, counts, on_air, watch.streamer))):
            acc.total[name].add(rank, repeat)
            acc.by_day[name][day].add(rank, repeat)

    def _summary(self, acc: _Accumulators, requests: int, answered: int, live_items: int,
                 total_items: int, recommended: set[str], live_catalogue: set[str]
                 ) -> dict[str, Any]:
        answers = [a for a in self.answers.values()
                   if self.from_step is None or a.step >= self.from_step]
        latency = np.array([a.published_ms - a.produced_ms for a in answers
                            if a.produced_ms is not None], dtype=np.float64)
        expected_user_events = max((e.user_events for e in self.ends), default=None)
        return {
            "k": self.k,
            "requests": requests,
            "answers": len(answers),
            "answered_requests": answered,
            "unanswered_requests": requests - answered,
            "duplicates": self.duplicates,
            "duplicates_differing": self.duplicates_differing,
            "late_answers": sum(1 for a in answers if a.late),
            "fallback_answers": sum(1 for a in answers if a.fallback),
            "user_events_read": len(self.user_events),
            "user_events_expected": expected_user_events,
            "model": acc.total["model"].result(),
            "pop": acc.total["pop"].result(),
            "rep": acc.total["rep"].result(),
            "live_share": live_items / total_items if total_items else float("nan"),
            "coverage": len(recommended) / len(live_catalogue) if live_catalogue else 0.0,
            "latency_ms": _percentiles(latency),
            "latency_histogram": latency_histogram(latency),
            "answers_per_s": answer_rate(a.published_ms for a in answers),
            "by_day": acc.days("model"),
            "by_day_pop": acc.days("pop"),
            "by_day_rep": acc.days("rep"),
        }


class _Accumulators:
    """Ranks of the model and of the two references (POP, REP), overall and per day."""

    NAMES = ("model", "pop", "rep")

    def __init__(self) -> None:
        self.total = {n: Accumulator() for n in self.NAMES}
        self.by_day: dict[str, dict[int, Accumulator]] = {n: defaultdict(Accumulator)
                                                           for n in self.NAMES}

    def days(self, name: str) -> dict[str, Any]:
        return {str(d): a.result()["all"] for d, a in sorted(self.by_day[name].items())}


def _percentiles(values: np.ndarray) -> dict[str, float]:
    if values.size == 0:
        return {}
    p = np.percentile(values, [50, 90, 99])
    return {"p50": float(p[0]), "p90": float(p[1]), "p99": float(p[2]),
            "max": float(values.max()), "mean": float(values.mean())}


def decode_all(values: Iterable[bytes | None]) -> tuple[list[ev.Event], int]:
    """Decode records, counting (and skipping) the ones that do not decode."""
    out: list[ev.Event] = []
    bad = 0
    for v in values:
        try:
            out.append(ev.decode(v or b""))
        except ev.EventError:
            bad += 1
    return out, bad


def format_summary(report: dict[str, Any]) -> str:
    """A human-readable table of the headline figures."""
    m = report["model"]["all"]
    p = report["pop"]["all"]
    lines = [
        f"{'':14s} {'HR@1':>7s} {'HR@5':>7s} {'HR@10':>7s} {'NDCG@10':>8s} {'MRR':>7s}  targets",
    ]
    rows = [("model", m), ("POP", p)]
    if "rep" in report:
        rows.append(("REP", report["rep"]["all"]))
    for name, r in rows:
        lines.append(f"{name:14s} {r['HR@1']:7.4f} {r['HR@5']:7.4f} {r['HR@10']:7.4f} "
                     f"{r['NDCG@10']:8.4f} {r['MRR']:7.4f}  {int(r['n'])}")
    lat = report["latency_ms"]
    lines += [
        f"requests {report['requests']}, answered {report['answered_requests']}, "
        f"unanswered {report['unanswered_requests']}, duplicates {report['duplicates']}, "
        f"late {report['late_answers']}",
        f"live share {report['live_share']:.4f}, coverage {report['coverage']:.3f}, "
        f"answers/s {report['answers_per_s']:.0f}",
        "latency ms " + (", ".join(f"{k} {v:.1f}" for k, v in lat.items()) if lat else "n/a"),
        *format_histogram(report.get("latency_histogram") or []),
    ]
    push = report.get("pushes") or {}
    if push.get("pushes"):
        k = push["k"]
        lines.append(
            f"pushes {push['pushes']} ({push['pushes_per_start']:.3f} per stream start, "
            f"{push['users']} users): next watch in the push (HR@{k}) "
            f"{push[f'hr@{k}_paired']:.4f} vs in the answer before it "
            f"{push[f'hr@{k}_before']:.4f} ({push['with_answer_before']} pushes)")
    return "\n".join(lines)


def format_histogram(bins: list[tuple[str, int]] | list[list[Any]], width: int = 40
                     ) -> list[str]:
    """Text bars of a `latency_histogram`, from the first to the last non-empty bin."""
    filled = [i for i, (_, n) in enumerate(bins) if n]
    if not filled:
        return []
    top = max(int(n) for _, n in bins)
    total = sum(int(n) for _, n in bins)
    lines = ["latency histogram (produce to publish):"]
    for label, n in bins[filled[0]:filled[-1] + 1]:
        bar = "#" * max(round(width * int(n) / top), 1 if n else 0)
        lines.append(f"  {label:>14s} {int(n):8d} {100 * int(n) / total:5.1f}% {bar}")
    return lines


def write_report(report: dict[str, Any], out_dir: Path) -> list[Path]:
    """JSON, a figure of HR@10/NDCG@10 per simulated day for the model, POP and REP, and one
    of the latency histogram (figures when matplotlib is there)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / "online.json"]
    paths[0].write_text(json.dumps(report, indent=2, default=float))
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        logger.warning("matplotlib missing: no figures")
        return paths
    if report["by_day"]:
        paths.append(_plot_by_day(plt, report, out_dir / "online_by_day.png"))
    if any(n for _, n in report.get("latency_histogram") or []):
        paths.append(_plot_latency(plt, report, out_dir / "latency.png"))
    return paths


def day_labels(days: list[int], day_start_ms: dict[str, int],
               targets: dict[str, Any] | None = None) -> list[str]:
    """Tick labels of simulated days: "day 41", the date under it when its start time is
    known ("Wed 07-17"), and the day's scored requests when ``targets`` (a ``by_day``) has
    them ("n=812"; the first and last day of a window are partial)."""
    out = []
    for d in days:
        lines = [f"day {d}"]
        t = day_start_ms.get(str(d))
        if t is not None:
            lines.append(f"{datetime.fromtimestamp(t / 1000, tz=UTC):%a %m-%d}")
        if targets and str(d) in targets:
            lines.append(f"n={int(targets[str(d)]['n'])}")
        out.append("\n".join(lines))
    return out


def _plot_by_day(plt: Any, report: dict[str, Any], path: Path) -> Path:
    """Two panels (HR@10, NDCG@10) with a line each for the model, POP and REP; one tick per
    simulated day, labelled with its date."""
    xs = sorted(int(d) for d in report["by_day"])
    series = [("model", report["by_day"], "tab:blue", "o"),
              ("POP", report.get("by_day_pop") or {}, "tab:grey", "s"),
              ("REP", report.get("by_day_rep") or {}, "tab:orange", "^")]
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8), sharex=True)
    for ax, metric in zip(axes, ("HR@10", "NDCG@10"), strict=True):
        for name, days, color, marker in series:
            pts = [(x, days[str(x)][metric]) for x in xs if str(x) in days]
            if pts:
                ax.plot([x for x, _ in pts], [y for _, y in pts], marker=marker, color=color,
                        label=name)
        ax.set_title(metric)
        ax.set_ylim(0, 1)
        ax.grid(True, alpha=0.3)
        step = max(1, -(-len(xs) // 12))  # at most ~12 labelled ticks
        ax.set_xticks(xs[::step])
        ax.set_xticklabels(day_labels(xs[::step], report.get("day_start_ms") or {},
                                      report["by_day"]), fontsize=8)
        ax.set_xlabel(f"simulated day ({STEPS_PER_DAY} steps of 10 min)")
    axes[0].set_ylabel("over that day's requests")
    axes[0].legend(loc="lower left", fontsize=8)
    fig.suptitle("Online accuracy of the live recommendations, model vs POP and REP")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _plot_latency(plt: Any, report: dict[str, Any], path: Path) -> Path:
    bins = report["latency_histogram"]
    fig, ax = plt.subplots(figsize=(7, 3.2))
    ax.bar(range(len(bins)), [n for _, n in bins], color="tab:blue")
    ax.set_xticks(range(len(bins)))
    ax.set_xticklabels([label.replace(" ms", "") for label, _ in bins], rotation=45,
                       fontsize=8)
    ax.set_xlabel("produce-to-publish latency (ms)")
    ax.set_ylabel("answers")
    lat = report.get("latency_ms") or {}
    if lat:
        ax.set_title(f"p50 {lat['p50']:.0f} ms, p99 {lat['p99']:.0f} ms over "
                     f"{sum(n for _, n in bins)} answers")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def collect(settings: Settings, timeout_s: float = 120.0, k: int = 10,
            from_step: int | None = None) -> OnlineEvaluator:
    """Read the three topics until the replay's ``End`` records say everything was sent and
    every request has an answer (or ``timeout_s`` passes), and feed an evaluator (which
    scores requests from ``from_step`` on)."""
    from liverank.broker.kafka import read_topic

    s = settings
    deadline = time.monotonic() + timeout_s
    evaluator = OnlineEvaluator(k=k, from_step=from_step)
    stream_msgs = read_topic(s, s.topic("stream-events"), timeout_s=timeout_s,
                             until=lambda m: b'"kind":"end"' in (m.value() or b""))
    for e in decode_all(m.value() for m in stream_msgs)[0]:
        evaluator.add(e)
    expected = max((e.user_events for e in evaluator.ends), default=0)
    user_msgs = read_topic(s, s.topic("user-events"),
                           timeout_s=max(deadline - time.monotonic(), 1.0))
    for e in decode_all(m.value() for m in user_msgs)[0]:
        evaluator.add(e)
    if len(evaluator.user_events) < expected:
        logger.warning("user-events: read %d of %d", len(evaluator.user_events), expected)
    requests = sum(1 for e in evaluator.user_events if isinstance(e, ev.RecRequest))
    while True:
        recs = read_topic(s, s.topic("recommendations"),
                          timeout_s=max(deadline - time.monotonic(), 1.0))
        answers = decode_all(m.value() for m in recs)[0]
        answered = {a.request_id for a in answers
                    if isinstance(a, ev.Recommendation) and a.trigger == "request"}
        if len(answered) >= requests or time.monotonic() >= deadline:
            break
        time.sleep(0.5)
    if len(answered) < requests:
        logger.warning("recommendations: %d of %d requests answered at timeout",
                       len(answered), requests)
    for e in answers:
        evaluator.add(e)
    return evaluator
