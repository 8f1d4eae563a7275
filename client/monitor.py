"""Online evaluation: score the service's answers against what users watched next.

``liverank monitor`` reads ``recommendations``, ``user-events`` and ``stream-events`` and asks
the offline ``--targets all`` question online: an answer to a request is scored against the
watch that follows the request at the same step (the user's next event on the timeline);
an answer triggered by a watch, against the user's next *different* stream within a horizon.

It reports HR@k / NDCG@k / MRR (all, new, repeat targets) overall and per simulated day,
the share of recommended streams that were live at the request's step, catalogue coverage,
produce-to-publish latency percentiles, throughput, late answers, requests left unanswered
and duplicates. For reference it ranks the same targets with POP (watches seen so far,
ranked among the streamers live at the step): the model should beat it.

Completeness comes from the replay's ``End`` records and counts, never from broker
watermarks (tansu reports wrong high watermarks; see docs/operations.md).
"""

from __future__ import annotations

import json
import logging
import time
from collections import defaultdict
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from liverank.core import events as ev
from liverank.core.settings import Settings
from liverank.core.timebase import STEPS_PER_DAY
from liverank.model.data.live import Candidates, LiveStreams
from liverank.model.metrics import Accumulator
from liverank.model.pushes import score_pushes

logger = logging.getLogger(__name__)



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


class OnlineEvaluator:
    """Feed it every record (any order); `report` replays them in timeline order."""

    def __init__(self, k: int = 10, watch_horizon: int = STEPS_PER_DAY) -> None:
        self.k = k
        self.watch_horizon = watch_horizon
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
        counts: dict[str, int] = defaultdict(int)
        pending: dict[int, ev.RecRequest] = {}  # user -> request waiting for its watch
        model, pop = Accumulator(), Accumulator()
        by_day: dict[int, Accumulator] = defaultdict(Accumulator)
        live_items = total_items = 0
        recommended: set[str] = set()
        live_catalogue: set[str] = set()
        requests = answered = 0
        for e in timeline:
            if e.step // STEPS_PER_DAY != day:  # intervals that stopped before now: gone
                day = e.step // STEPS_PER_DAY
                live.prune(e.step)
            if isinstance(e, ev.StreamStart | ev.StreamStop):
                live.apply(e, 0)
                continue
            if isinstance(e, ev.RecRequest):
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
                self._score(req, e, seen, counts, live.candidates(e.step), model, pop,
                            by_day)
            seen[e.user].add(e.streamer)
            counts[e.streamer] += 1
        summary = self._summary(model, pop, by_day, requests, answered, live_items,
                                total_items, recommended, live_catalogue)
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
               counts: dict[str, int], live: Candidates, model: Accumulator, pop: Accumulator,
               by_day: dict[int, Accumulator]) -> None:
        ans = self.answers.get(req.event_id)
        if ans is None:
            return  # counted as unanswered
        repeat = watch.streamer in seen[watch.user]
        rank = _target_rank(ans.items, watch.streamer)
        model.add(rank, repeat)
        by_day[req.step // STEPS_PER_DAY].add(rank, repeat)
        pop.add(_pop_rank(counts, live.streams.keys(), watch.streamer), repeat)

    def _summary(self, model: Accumulator, pop: Accumulator, by_day: dict[int, Accumulator],
                 requests: int, answered: int, live_items: int, total_items: int,
                 recommended: set[str], live_catalogue: set[str]) -> dict[str, Any]:
        answers = list(self.answers.values())
        latency = np.array([a.published_ms - a.produced_ms for a in answers
                            if a.produced_ms is not None], dtype=np.float64)
        published = np.array([a.published_ms for a in answers], dtype=np.float64)
        span_s = (published.max() - published.min()) / 1000 if published.size > 1 else 0.0
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
            "model": model.result(),
            "pop": pop.result(),
            "live_share": live_items / total_items if total_items else float("nan"),
            "coverage": len(recommended) / len(live_catalogue) if live_catalogue else 0.0,
            "latency_ms": _percentiles(latency),
            "answers_per_s": len(answers) / span_s if span_s > 0 else float("nan"),
            "by_day": {str(d): acc.result()["all"] for d, acc in sorted(by_day.items())},
        }


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
    for name, r in (("model", m), ("POP", p)):
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


def write_report(report: dict[str, Any], out_dir: Path) -> list[Path]:
    """JSON + a figure of HR@10/NDCG@10 per simulated day (when matplotlib is there)."""
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
    days = report["by_day"]
    if days:
        xs = [int(d) for d in days]
        fig, ax = plt.subplots(figsize=(7, 3.5))
        for metric in ("HR@10", "NDCG@10"):
            ax.plot(xs, [days[str(d)][metric] for d in xs], marker="o", label=metric)
        ax.set_xlabel(f"simulated day ({STEPS_PER_DAY} steps)")
        ax.set_ylabel("metric over that day's requests")
        ax.set_title("Online accuracy of the live recommendations over simulated time")
        ax.legend()
        fig.tight_layout()
        fig.savefig(out_dir / "online_by_day.png", dpi=110)
        plt.close(fig)
        paths.append(out_dir / "online_by_day.png")
    return paths


def collect(settings: Settings, timeout_s: float = 120.0, k: int = 10) -> OnlineEvaluator:
    """Read the three topics until the replay's ``End`` records say everything was sent and
    every request has an answer (or ``timeout_s`` passes), and feed an evaluator."""
    from liverank.broker.kafka import read_topic

    s = settings
    deadline = time.monotonic() + timeout_s
    evaluator = OnlineEvaluator(k=k)
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
