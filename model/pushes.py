"""Pushes on availability change: a streamer a user watched recently goes live while the
user is on the page, and the user gets a refreshed answer (trigger ``live_change``).

The rule (`PushRule`), for the streams that start at step ``t``:

* the user is *on the page*: their last event (a request or a watch) lies within
  ``on_page_steps`` steps before ``t``;
* one of the streamers starting at ``t`` is in the user's input window (their last
  ``window_len`` watches, what the model reads) with a watch at most ``recent_steps``
  before ``t``;
* the user got no push in the last ``min_gap_steps`` steps (the rate limit).

All streams starting at one step make at most one push per user, ranked among every stream
live at ``t`` with the window as it stood before the start (the timeline puts a step's
starts before its user events, so the window holds the user's watches before ``t``).

`PushPlanner` decides them per partition of ``user-events``, in the order the partition's
events are read: before an event at step ``e`` it plans the starts of the steps since the
partition's previous event, up to ``e``. The worker calls it from its batch loop, and
`offline_pushes` walks the same timeline through the same planner, so the two agree list for
list (the starts after a partition's last event are never planned, online or offline).
The planner's state (who is on the page, when they were last pushed) is in memory: after a
restart, pushes for users whose last event came before the resumed position are not sent
until they are active again (docs/reliability.md).

`score_pushes` measures them against what users did next: whether the push holds the user's
next watch (HR@k), next to the answer the user had just before the push.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from liverank.core import events as ev
from liverank.core.partitioner import partition_for
from liverank.core.settings import Settings
from liverank.core.timebase import STEPS_PER_DAY, event_time_ms
from liverank.model.data.live import LiveStreams
from liverank.model.scorer import Ranked, RankRequest, Scorer

Window = list[tuple[str, int]]  # (streamer, step), oldest first
Starts = Callable[[int, int], list[tuple[int, int, str]]]  # (after, upto] -> (step, seq, streamer)


@dataclass(frozen=True)
class PushRule:
    on_page_steps: int = 3  # 30 minutes
    recent_steps: int = 7 * STEPS_PER_DAY
    min_gap_steps: int = 6  # an hour

    @classmethod
    def of(cls, settings: Settings) -> PushRule:
        return cls(settings.push_on_page_steps, settings.push_recent_steps,
                   settings.push_min_gap_steps)

    def __post_init__(self) -> None:
        for name in ("on_page_steps", "recent_steps", "min_gap_steps"):
            if getattr(self, name) < 0:
                raise ValueError(f"push rule {name} must be >= 0, got {getattr(self, name)}")


@dataclass(frozen=True)
class Push:
    """One push to answer: a user, the step its streamers went live, the seq of the first
    of those starts (the push's place on the timeline) and the window it is ranked with."""

    key: bytes
    user: int
    step: int
    seq: int
    window: Window
    streamers: tuple[str, ...]  # the recently watched streamers that went live

    @property
    def request_id(self) -> str:
        return f"live:{self.user}:{self.step}"

    def request(self, epoch_ms: int) -> ev.RecRequest:
        """The push as the request it answers (its answer's ``request_id``/``seq``/``step``)."""
        return ev.RecRequest(event_id=self.request_id, seq=self.seq, step=self.step,
                             event_time_ms=event_time_ms(self.step, epoch_ms), user=self.user)


@dataclass
class _Active:
    user: int
    step: int  # the user's last event
    window: Window


class PushPlanner:
    """Who gets a push, per partition, fed in each partition's read order (see the module)."""

    def __init__(self, rule: PushRule):
        self.rule = rule
        self._planned: dict[int, int] = {}  # partition -> last step whose starts are planned
        # partition -> user key -> activity, in activity order (steps never go back within
        # a partition, so the front holds the first users to leave the page)
        self._active: dict[int, dict[bytes, _Active]] = {}
        self._pushed: dict[int, dict[bytes, int]] = {}  # partition -> key -> last push step

    def plan(self, partition: int, upto: int, starts: Starts) -> list[Push]:
        """The pushes for the starts in (the last planned step, ``upto``] of ``partition``,
        to be answered before the partition's event at ``upto`` is applied."""
        last = self._planned.get(partition)
        if last is None or upto <= last:
            # A partition's first event: nobody there was seen before it, so nobody is on
            # the page of an earlier start.
            self._planned[partition] = upto if last is None else last
            return []
        self._planned[partition] = upto
        active = self._active.get(partition)
        if not active:
            return []
        pushes: list[Push] = []
        by_step: dict[int, list[tuple[int, str]]] = {}
        for step, seq, streamer in starts(last, upto):
            by_step.setdefault(step, []).append((seq, streamer))
        for step, started in by_step.items():
            self._leave_page(active, step - self.rule.on_page_steps)
            pushes.extend(self._plan_step(partition, active, step, started))
        return pushes

    def _leave_page(self, active: dict[bytes, _Active], first_step: int) -> None:
        while active:
            key = next(iter(active))
            if active[key].step >= first_step:
                break
            del active[key]

    def _plan_step(self, partition: int, active: dict[bytes, _Active], step: int,
                   started: list[tuple[int, str]]) -> list[Push]:
        first_seq: dict[str, int] = {}
        for seq, streamer in started:
            first_seq.setdefault(streamer, seq)
        pushed = self._pushed.setdefault(partition, {})
        gap = self.rule.min_gap_steps
        while pushed:  # those pushed longer ago than the rate limit no longer count
            key = next(iter(pushed))
            if pushed[key] > step - gap:
                break
            del pushed[key]
        recent = step - self.rule.recent_steps
        out: list[Push] = []
        for key, a in active.items():
            if key in pushed:
                continue
            hits = {s for s, watched in a.window if watched >= recent and s in first_seq}
            if not hits:
                continue
            names = tuple(sorted(hits))
            out.append(Push(key, a.user, step, min(first_seq[s] for s in names),
                            list(a.window), names))
        for p in out:
            pushed[p.key] = step
        return out

    def seen(self, partition: int, key: bytes, user: int, step: int, window: Window) -> None:
        """Record an applied event of ``user`` (``window``: their input window after it)."""
        active = self._active.setdefault(partition, {})
        active.pop(key, None)
        active[key] = _Active(user, step, window)

    def forget(self, partitions: Iterable[int]) -> None:
        """Partitions taken away (a rebalance): their new owner plans them."""
        for p in partitions:
            self._planned.pop(p, None)
            self._active.pop(p, None)
            self._pushed.pop(p, None)

    @property
    def on_page(self) -> int:
        return sum(len(a) for a in self._active.values())


# --- offline --------------------------------------------------------------------------------
def plan_offline(events: Iterable[ev.Event], partitions: int, window_len: int,
                 rule: PushRule) -> tuple[list[Push], LiveStreams]:
    """Every push a worker plans for ``events`` (a timeline, in seq order): the same planner,
    fed in the order the worker reads each partition (user events keyed by
    `partition_for`)."""
    if partitions < 1:
        raise ValueError(f"partitions must be >= 1, got {partitions}")
    events = list(events)
    live = LiveStreams(partitions=1, stopped_horizon=0)  # the whole log: nothing is pruned
    for e in events:
        if isinstance(e, ev.StreamStart | ev.StreamStop):
            live.apply(e, 0)
    planner = PushPlanner(rule)
    windows: dict[bytes, Window] = {}
    pushes: list[Push] = []
    for e in events:
        if not isinstance(e, ev.Watch | ev.RecRequest):
            continue
        key = ev.user_key(e.user)
        p = partition_for(key, partitions)
        pushes.extend(planner.plan(p, e.step, live.starts))
        window = windows.setdefault(key, [])
        if isinstance(e, ev.Watch):
            window.append((e.streamer, e.step))
            del window[:-window_len]
        planner.seen(p, key, e.user, e.step, list(window))
    pushes.sort(key=lambda p: (p.seq, p.user))
    return pushes, live


def offline_pushes(events: Iterable[ev.Event], scorer: Scorer, k: int, partitions: int,
                   rule: PushRule, epoch_ms: int, batch: int = 256
                   ) -> list[ev.Recommendation]:
    """The answers a worker publishes for its pushes on ``events``, ranked by ``scorer`` as
    the worker ranks them (every stream live at the push's step)."""
    pushes, live = plan_offline(events, partitions, scorer.window_len, rule)
    out: list[ev.Recommendation] = []
    for i in range(0, len(pushes), batch):
        chunk = pushes[i:i + batch]
        cands = [live.candidates(p.step) for p in chunk]
        ranked = scorer.rank([RankRequest(window=p.window, step=p.step,
                                          candidates=c.streamers)
                              for p, c in zip(chunk, cands, strict=True)], k)
        for p, c, r in zip(chunk, cands, ranked, strict=True):
            out.append(_answer(p.request(epoch_ms), "live_change", c.streams, r,
                               scorer.version))
    return out


def offline_report(events: Sequence[ev.Event], scorer: Scorer, k: int, partitions: int,
                   rule: PushRule, epoch_ms: int, horizon: int = STEPS_PER_DAY
                   ) -> tuple[dict[str, Any], list[ev.Recommendation]]:
    """`score_pushes` offline: the pushes of `offline_pushes`, and for each the answer its
    user had before it (their previous push, or their latest request ranked as the worker
    ranks it). Returns the report and the pushes."""
    pushes = offline_pushes(events, scorer, k, partitions, rule, epoch_ms)
    live = LiveStreams(partitions=1, stopped_horizon=0)
    for e in events:
        if isinstance(e, ev.StreamStart | ev.StreamStop):
            live.apply(e, 0)
    # The latest request of each pushed user before each of their pushes, with its window.
    pending = sorted(pushes, key=lambda a: a.seq)
    users = {a.user for a in pushes}
    windows: dict[int, Window] = {}
    last: dict[int, tuple[ev.RecRequest, Window]] = {}
    before: dict[str, tuple[ev.RecRequest, Window]] = {}
    i = 0
    for e in events:
        while i < len(pending) and pending[i].seq < e.seq:
            got = last.get(pending[i].user)
            if got is not None:
                before[got[0].event_id] = got
            i += 1
        if isinstance(e, ev.Watch) and e.user in users:
            w = windows.setdefault(e.user, [])
            w.append((e.streamer, e.step))
            del w[:-scorer.window_len]
        elif isinstance(e, ev.RecRequest) and e.user in users:
            last[e.user] = (e, list(windows.get(e.user, ())))
    answers: dict[str, ev.Recommendation] = {a.request_id: a for a in pushes}
    reqs = list(before.values())
    cands = [live.candidates(r.step) for r, _ in reqs]
    ranked = scorer.rank([RankRequest(window=w, step=r.step, candidates=c.streamers)
                          for (r, w), c in zip(reqs, cands, strict=True)], k) if reqs else []
    for (r, _), c, rk in zip(reqs, cands, ranked, strict=True):
        answers[r.event_id] = _answer(r, "request", c.streams, rk, scorer.version)
    return score_pushes(events, answers, k, horizon), pushes


def _answer(req: ev.RecRequest, trigger: ev.Trigger, streams: Mapping[str, int],
            ranked: Ranked, version: str) -> ev.Recommendation:
    """The worker's answer record for ``req`` (`liverank.services.state`, without times)."""
    items = [ev.RecItem(streams[s], s, float(score), rank) for rank, (s, score)
             in enumerate(zip(ranked.streamers, ranked.scores, strict=True), 1)]
    return ev.Recommendation(
        event_id=f"rec:{req.event_id}", seq=req.seq, step=req.step,
        event_time_ms=req.event_time_ms, user=req.user, request_id=req.event_id,
        trigger=trigger, produced_ms=None, published_ms=0, model_version=version,
        fallback=ranked.fallback, items=items)


# --- measured against what users did next ----------------------------------------------------
def score_pushes(timeline: Sequence[ev.Event], answers: Mapping[str, ev.Recommendation],
                 k: int = 10, horizon: int = STEPS_PER_DAY) -> dict[str, Any]:
    """Pushes among ``answers`` (by request id) against each user's next watch on
    ``timeline`` (within ``horizon`` steps): HR@k / NDCG@k of the push, and of the answer
    the user had just before it (the latest with a lower seq), on the same pushes."""
    pushes = sorted((a for a in answers.values() if a.trigger == "live_change"),
                    key=lambda a: a.seq)
    starts = sum(isinstance(e, ev.StreamStart) for e in timeline)
    report: dict[str, Any] = {"pushes": len(pushes), "stream_starts": starts,
                              "pushes_per_start": len(pushes) / starts if starts else 0.0,
                              "users": len({a.user for a in pushes}), "k": k}
    if not pushes:
        return report
    watches: dict[int, list[ev.Watch]] = {}
    for e in timeline:
        if isinstance(e, ev.Watch):
            watches.setdefault(e.user, []).append(e)
    before: dict[int, list[ev.Recommendation]] = {}
    for a in sorted(answers.values(), key=lambda a: a.seq):
        before.setdefault(a.user, []).append(a)
    scored = with_before = 0
    hit = ndcg = hit_paired = hit_before = ndcg_before = gained = 0.0
    for push in pushes:
        nxt = _next_watch(watches.get(push.user, ()), push.seq, push.step + horizon)
        if nxt is None:
            continue
        scored += 1
        r = _rank_of(push.items, nxt.streamer, k)
        hit += r is not None
        ndcg += 0.0 if r is None else 1 / math.log2(r + 1)
        prev = _latest_before(before.get(push.user, ()), push.seq)
        if prev is not None:
            with_before += 1
            rb = _rank_of(prev.items, nxt.streamer, k)
            hit_paired += r is not None
            hit_before += rb is not None
            ndcg_before += 0.0 if rb is None else 1 / math.log2(rb + 1)
            gained += r is not None and rb is None  # the push found it, the old answer not
    report |= {
        "scored": scored, f"hr@{k}": hit / scored if scored else 0.0,
        f"ndcg@{k}": ndcg / scored if scored else 0.0,
        "with_answer_before": with_before,  # the paired comparison: push vs answer before
        f"hr@{k}_paired": hit_paired / with_before if with_before else 0.0,
        f"hr@{k}_before": hit_before / with_before if with_before else 0.0,
        f"ndcg@{k}_before": ndcg_before / with_before if with_before else 0.0,
        "gained": gained / with_before if with_before else 0.0,
    }
    return report


def _next_watch(watches: Sequence[ev.Watch], seq: int, last_step: int) -> ev.Watch | None:
    i = bisect.bisect_right(watches, seq, key=lambda w: w.seq)  # sorted by seq
    if i == len(watches) or watches[i].step > last_step:
        return None
    return watches[i]


def _latest_before(answers: Sequence[ev.Recommendation], seq: int) -> ev.Recommendation | None:
    i = bisect.bisect_left(answers, seq, key=lambda a: a.seq)  # sorted by seq
    return answers[i - 1] if i else None


def _rank_of(items: Sequence[ev.RecItem], streamer: str, k: int) -> int | None:
    for i, item in enumerate(items[:k], 1):
        if item.streamer == streamer:
            return i
    return None
