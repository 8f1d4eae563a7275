"""Promotion on online evidence: the live model against the shadow candidate, on the same
requests, and the swap when the candidate wins.

The worker with ``LIVERANK_SHADOW_MODEL_DIR`` ranks every request with both models (same
window, same live candidates) and publishes the candidate's answers to
``recommendations-shadow`` only. Here each request that the user followed with a watch at
the same step (the target ``liverank monitor`` scores) gives a pair: the target's rank in
the live answer and in the candidate's. `compare` reports HR@k and NDCG@k of both and a
paired bootstrap confidence interval of the difference; `decide` promotes when there are
at least ``min_requests`` pairs and the interval's lower end is above ``margin``;
`promote` switches the model through the existing swap: the live model directory is a
symlink that the worker watches (``LIVERANK_MODEL_POLL_S``), flipped atomically to the
candidate. Every decision is appended to a JSON-lines log with its numbers.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from liverank.broker import kafka
from liverank.core import events as ev
from liverank.core.settings import Settings

Metric = Literal["ndcg", "hr"]


class PromotionError(RuntimeError):
    """The model directories cannot be swapped as asked (the message says why)."""


def targets(user_events: Iterable[ev.UserEvent]) -> dict[str, str]:
    """request_id -> the streamer its user watched next at the same step (the monitor's
    target); requests not followed by such a watch have none."""
    out: dict[str, str] = {}
    pending: dict[int, ev.RecRequest] = {}
    for e in sorted(user_events, key=lambda e: e.seq):
        if isinstance(e, ev.RecRequest):
            pending[e.user] = e
            continue
        req = pending.pop(e.user, None)
        if req is not None and req.step == e.step:
            out[req.event_id] = e.streamer
    return out


def _gain(items: list[ev.RecItem], target: str, k: int, metric: Metric) -> float:
    for i, item in enumerate(items[:k], 1):
        if item.streamer == target:
            return 1.0 if metric == "hr" else 1 / math.log2(i + 1)
    return 0.0


@dataclass(frozen=True)
class Pairs:
    """Per request with a target and both answers: the live and the candidate's gains."""

    live: np.ndarray
    candidate: np.ndarray
    live_version: str
    candidate_version: str


def pair(live: Mapping[str, ev.Recommendation], shadow: Mapping[str, ev.Recommendation],
         target_of: Mapping[str, str], k: int, metric: Metric) -> Pairs:
    rids = sorted(set(live) & set(shadow) & set(target_of))
    versions = {shadow[r].model_version for r in rids}
    if len(versions) > 1:  # a candidate swapped mid-way: compare one candidate at a time
        newest = max(rids, key=lambda r: shadow[r].published_ms)
        keep = shadow[newest].model_version
        rids = [r for r in rids if shadow[r].model_version == keep]
    a = np.array([_gain(live[r].items, target_of[r], k, metric) for r in rids])
    b = np.array([_gain(shadow[r].items, target_of[r], k, metric) for r in rids])
    return Pairs(a, b, live[rids[0]].model_version if rids else "",
                 shadow[rids[0]].model_version if rids else "")


@dataclass(frozen=True)
class Comparison:
    metric: str
    k: int
    n: int
    live: float
    candidate: float
    diff: float
    ci_low: float
    ci_high: float
    confidence: float
    live_version: str
    candidate_version: str


def compare(pairs: Pairs, metric: Metric, k: int, resamples: int = 2000,
            confidence: float = 0.95, seed: int = 0) -> Comparison:
    """Means of both and a paired bootstrap interval of candidate - live (the requests are
    resampled together, so what both models find hard cancels out)."""
    n = len(pairs.live)
    if n == 0:
        nan = float("nan")
        return Comparison(metric, k, 0, nan, nan, nan, nan, nan, confidence,
                          pairs.live_version, pairs.candidate_version)
    d = pairs.candidate - pairs.live
    rng = np.random.default_rng(seed)
    means = np.empty(resamples)
    for i in range(0, resamples, 200):  # bounded memory: 200 resamples at a time
        m = min(200, resamples - i)
        means[i:i + m] = d[rng.integers(0, n, size=(m, n))].mean(axis=1)
    tail = (1 - confidence) / 2
    lo, hi = np.quantile(means, [tail, 1 - tail])
    return Comparison(metric, k, n, float(pairs.live.mean()), float(pairs.candidate.mean()),
                      float(d.mean()), float(lo), float(hi), confidence, pairs.live_version,
                      pairs.candidate_version)


@dataclass(frozen=True)
class Decision:
    promote: bool
    reason: str
    comparison: Comparison
    margin: float
    min_requests: int


def decide(c: Comparison, min_requests: int, margin: float) -> Decision:
    if c.n < min_requests:
        return Decision(False, f"{c.n} paired requests, fewer than {min_requests}", c,
                        margin, min_requests)
    if c.ci_low > margin:
        return Decision(True, f"the candidate wins: {c.metric}@{c.k} {c.candidate:.4f} vs "
                        f"{c.live:.4f}, difference {c.diff:+.4f} with "
                        f"{c.confidence:.0%} interval [{c.ci_low:+.4f}, {c.ci_high:+.4f}] "
                        f"above the margin {margin:+.4f}", c, margin, min_requests)
    return Decision(False, f"no clear win: {c.metric}@{c.k} difference {c.diff:+.4f}, "
                    f"{c.confidence:.0%} interval [{c.ci_low:+.4f}, {c.ci_high:+.4f}] not "
                    f"above the margin {margin:+.4f}", c, margin, min_requests)


def promote(live_link: Path, candidate: Path) -> Path:
    """Point the live model symlink at ``candidate`` atomically (a new link renamed over the
    old one); returns the directory it pointed at before. The workers watching the link
    load the candidate at their next poll."""
    if not live_link.is_symlink():
        raise PromotionError(f"{live_link} is not a symlink: promotion flips the live model "
                             "link (serve a symlink, e.g. out/model -> versions/v1)")
    target = candidate.resolve()
    if not (target / "model.json").is_file():
        raise PromotionError(f"{candidate} holds no model.json: not an exported model")
    before = live_link.resolve()
    tmp = live_link.with_name(f".{live_link.name}.promote-{os.getpid()}")
    tmp.unlink(missing_ok=True)
    tmp.symlink_to(target, target_is_directory=True)
    os.replace(tmp, live_link)
    return before


def log_decision(path: Path, decision: Decision, promoted_from: Path | None) -> dict[str, object]:
    """Append one JSON line: when, the decision and every number it rests on."""
    record = {"time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
              "promote": decision.promote, "reason": decision.reason,
              "margin": decision.margin, "min_requests": decision.min_requests,
              **asdict(decision.comparison),
              "previous_dir": str(promoted_from) if promoted_from else None}
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as f:
        f.write(json.dumps(record) + "\n")
    return record


@dataclass
class Evidence:
    live: dict[str, ev.Recommendation]
    shadow: dict[str, ev.Recommendation]
    targets: dict[str, str]


def read_evidence(settings: Settings, timeout_s: float = 30.0) -> Evidence:
    """Everything on ``recommendations``, ``recommendations-shadow`` and ``user-events``
    (request answers only; records that do not decode are skipped)."""
    def answers(topic: str) -> dict[str, ev.Recommendation]:
        out: dict[str, ev.Recommendation] = {}
        for m in kafka.read_topic(settings, settings.topic(topic), timeout_s=timeout_s):
            try:
                rec = ev.decode(m.value() or b"", ev.Recommendation)
            except ev.EventError:
                continue
            if isinstance(rec, ev.Recommendation) and rec.trigger == "request":
                out.setdefault(rec.request_id, rec)
        return out

    users: list[ev.UserEvent] = []
    for m in kafka.read_topic(settings, settings.topic(kafka.USER_EVENTS),
                              timeout_s=timeout_s):
        try:
            e = ev.decode(m.value() or b"", ev.UserEvent)
        except ev.EventError:
            continue
        users.append(e)  # type: ignore[arg-type]
    return Evidence(answers(kafka.RECOMMENDATIONS), answers(kafka.RECOMMENDATIONS_SHADOW),
                    targets(users))
