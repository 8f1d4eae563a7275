"""Pushes on availability change (`liverank.model.pushes`): the rule on hand-made timelines,
the offline answers, the scores against the next watch, and the worker's batch planning
(`plan_batch` with a planner) equal to the offline walk whatever the batch cut.

The worker on a broker, pushing what the offline computation pushes, is in
tests/test_service_kafka.py."""

from __future__ import annotations

import itertools
import random

import pytest

from liverank.core import events as ev
from liverank.core.partitioner import partition_for
from liverank.model.data.live import LiveStreams
from liverank.model.data.synth import write as write_synth
from liverank.model.data.timeline import build_timeline
from liverank.model.data.twitch import load_interactions
from liverank.model.pushes import (
    PushPlanner,
    PushRule,
    offline_pushes,
    plan_offline,
    score_pushes,
)
from liverank.services.state import Pushing, UserWindows, plan_batch
from liverank.services.testing import FakeScorer

EPOCH = 0


class Log:
    """A hand-made timeline: events get increasing seqs in the order they are added."""

    def __init__(self) -> None:
        self.events: list[ev.Event] = []
        self._seq = itertools.count()
        self._stream = itertools.count(100)
        self._live: dict[str, int] = {}

    def _base(self, step: int, eid: str) -> dict[str, object]:
        return {"event_id": eid, "seq": next(self._seq), "step": step,
                "event_time_ms": EPOCH + step * 600_000}

    def start(self, streamer: str, step: int) -> None:
        stream = self._live[streamer] = next(self._stream)
        self.events.append(ev.StreamStart(**self._base(step, f"start:{stream}"),  # type: ignore[arg-type]
                                          stream=stream, streamer=streamer))

    def stop(self, streamer: str, step: int) -> None:
        stream = self._live.pop(streamer)
        self.events.append(ev.StreamStop(**self._base(step, f"stop:{stream}"),  # type: ignore[arg-type]
                                         stream=stream, streamer=streamer))

    def watch(self, user: int, streamer: str, step: int) -> None:
        base = self._base(step, f"watch:{len(self.events)}")
        self.events.append(ev.Watch(**base, user=user,  # type: ignore[arg-type]
                                    stream=self._live[streamer], streamer=streamer))

    def request(self, user: int, step: int) -> None:
        self.events.append(ev.RecRequest(**self._base(step, f"req:{len(self.events)}"),  # type: ignore[arg-type]
                                         user=user))


def pushed(log: Log, rule: PushRule = PushRule(), window_len: int = 50,
           partitions: int = 1) -> list[tuple[int, int, tuple[str, ...]]]:
    pushes, _ = plan_offline(log.events, partitions, window_len, rule)
    return [(p.user, p.step, p.streamers) for p in pushes]


def watched_then_away(log: Log) -> None:
    """User 1 watches A at step 1; A goes off air at step 2."""
    log.start("A", 0)
    log.start("B", 0)
    log.watch(1, "A", 1)
    log.stop("A", 2)


def test_a_user_on_the_page_is_pushed_when_a_streamer_they_watched_goes_live() -> None:
    log = Log()
    watched_then_away(log)
    log.request(1, 4)  # on the page at step 4
    log.start("A", 5)
    log.request(2, 6)  # the partition's next event: the start at 5 is planned before it
    pushes, live = plan_offline(log.events, 1, 50, PushRule(on_page_steps=3))
    assert [(p.user, p.step, p.streamers, p.window) for p in pushes] == [
        (1, 5, ("A",), [("A", 1)])]
    start = next(e for e in log.events if isinstance(e, ev.StreamStart) and e.step == 5)
    assert pushes[0].seq == start.seq  # the push sits at the start on the timeline
    assert pushes[0].request_id == "live:1:5"
    assert live.starts(4, 5) == [(5, start.seq, "A")]


def test_no_push_off_the_page_outside_the_window_or_for_an_old_watch() -> None:
    log = Log()
    watched_then_away(log)
    log.request(1, 1)  # last seen at step 1
    log.start("A", 5)  # 4 steps later: off the page with on_page_steps=3
    log.request(2, 6)
    assert pushed(log, PushRule(on_page_steps=3)) == []
    assert pushed(log, PushRule(on_page_steps=4)) == [(1, 5, ("A",))]

    log = Log()
    watched_then_away(log)
    log.watch(1, "B", 3)  # A has left a window of one watch
    log.start("A", 5)
    log.request(2, 6)
    assert pushed(log, window_len=1) == []
    assert pushed(log, window_len=2) == [(1, 5, ("A",))]
    assert pushed(log, PushRule(recent_steps=3), window_len=2) == []  # A watched 4 steps ago


def test_pushes_are_rate_limited_per_user_and_coalesced_per_step() -> None:
    log = Log()
    log.start("A", 0)
    log.start("B", 0)
    log.watch(1, "A", 1)
    log.watch(1, "B", 1)
    log.stop("A", 2)
    log.stop("B", 2)
    log.request(1, 3)
    log.start("A", 4)
    log.start("B", 4)  # same step: one push naming both
    log.request(1, 5)
    log.stop("A", 6)
    log.start("A", 7)  # 3 steps after the last push: held back by a gap of 6
    log.request(1, 8)
    log.stop("A", 9)
    log.request(1, 10)
    log.start("A", 11)  # 7 steps after the last push
    log.request(1, 12)
    rule = PushRule(on_page_steps=3, min_gap_steps=6)
    assert pushed(log, rule) == [(1, 4, ("A", "B")), (1, 11, ("A",))]
    assert pushed(log, PushRule(on_page_steps=3, min_gap_steps=0)) == [
        (1, 4, ("A", "B")), (1, 7, ("A",)), (1, 11, ("A",))]


def test_a_start_is_planned_only_once_the_users_partition_reads_past_it() -> None:
    users = {partition_for(ev.user_key(u), 2): u for u in range(1, 20)}
    mine, other = users[0], users[1]
    log = Log()
    watched_then_away_user(log, mine)
    log.request(mine, 4)
    log.start("A", 5)
    log.request(other, 6)  # another partition's event plans nothing for `mine`
    assert pushed(log, partitions=2) == []
    log.request(mine, 6)
    assert pushed(log, partitions=2) == [(mine, 5, ("A",))]


def watched_then_away_user(log: Log, user: int) -> None:
    log.start("A", 0)
    log.watch(user, "A", 1)
    log.stop("A", 2)


def test_offline_answers_rank_every_stream_live_at_the_push() -> None:
    log = Log()
    watched_then_away(log)
    log.start("C", 3)
    log.request(1, 4)
    log.start("A", 5)
    log.request(2, 6)
    scorer = FakeScorer(window_len=8)
    [rec] = offline_pushes(log.events, scorer, k=10, partitions=1, rule=PushRule(),
                           epoch_ms=EPOCH)
    assert rec.trigger == "live_change" and rec.request_id == "live:1:5"
    assert rec.event_id == "rec:live:1:5" and rec.step == 5 and rec.user == 1
    assert sorted(i.streamer for i in rec.items) == ["A", "B", "C"]  # live at step 5
    assert [i.rank for i in rec.items] == [1, 2, 3]


def rec(user: int, seq: int, step: int, streamers: list[str], trigger: ev.Trigger,
        rid: str) -> ev.Recommendation:
    items = [ev.RecItem(i, s, 1.0 / (i + 1), i + 1) for i, s in enumerate(streamers)]
    return ev.Recommendation(event_id=f"rec:{rid}", seq=seq, step=step, event_time_ms=0,
                             user=user, request_id=rid, trigger=trigger, produced_ms=None,
                             published_ms=0, model_version="t", fallback=False, items=items)


def test_score_pushes_against_the_next_watch_and_the_answer_before() -> None:
    log = Log()
    watched_then_away(log)
    log.request(1, 4)
    log.start("A", 5)
    log.watch(1, "A", 6)
    req = log.events[4]
    start = log.events[5]
    answers = {a.request_id: a for a in (
        rec(1, req.seq, 4, ["B"], "request", req.event_id),
        rec(1, start.seq, 5, ["A", "B"], "live_change", "live:1:5"))}
    report = score_pushes(log.events, answers, k=1)
    assert report["pushes"] == 1 and report["stream_starts"] == 3
    assert report["scored"] == 1 and report["hr@1"] == 1.0 and report["hr@1_before"] == 0.0
    assert report["hr@1_paired"] == 1.0 and report["with_answer_before"] == 1
    assert report["gained"] == 1.0
    assert score_pushes(log.events, answers, k=1, horizon=0)["scored"] == 0  # watch too late


def test_rule_rejects_negative_settings() -> None:
    with pytest.raises(ValueError, match="on_page_steps"):
        PushRule(on_page_steps=-1)


@pytest.mark.parametrize("seed", [0, 1])
def test_batch_planning_equals_the_offline_walk_whatever_the_batches(tmp_path, seed) -> None:  # type: ignore[no-untyped-def]
    """The worker's path (`plan_batch` over micro-batches of events interleaved across
    partitions, windows in a `UserWindows`) pushes what `plan_offline` pushes."""
    csv = tmp_path / "tiny.csv"
    write_synth("tiny", seed, csv)
    timeline = build_timeline(load_interactions(csv))
    events = [timeline.event(i) for i in range(len(timeline))]
    partitions, window_len = 4, 8
    rule = PushRule()
    want, _ = plan_offline(events, partitions, window_len, rule)
    assert len(want) > 10  # the rule does fire on this log

    live = LiveStreams(partitions=1, stopped_horizon=0)
    for e in events:
        if isinstance(e, ev.StreamStart | ev.StreamStop):
            live.apply(e, 0)
    by_partition: dict[int, list[ev.UserEvent]] = {}
    for e in events:
        if isinstance(e, ev.Watch | ev.RecRequest):
            by_partition.setdefault(partition_for(ev.user_key(e.user), partitions),
                                    []).append(e)
    # Interleave the partitions as a consumer might (each in order), cut into batches.
    rng = random.Random(seed)
    pos = dict.fromkeys(by_partition, 0)
    order: list[tuple[int, ev.UserEvent]] = []
    while left := [p for p in sorted(pos) if pos[p] < len(by_partition[p])]:
        p = rng.choice(left)
        taken = by_partition[p][pos[p]:pos[p] + rng.randint(1, 40)]
        pos[p] += len(taken)
        order.extend((p, e) for e in taken)
    assert len(order) == sum(len(v) for v in by_partition.values())
    windows = UserWindows({}, window_len, 0)
    planner = PushPlanner(rule)
    got = []
    i = 0
    while i < len(order):
        chunk = order[i:i + rng.randint(1, 64)]
        i += len(chunk)
        pushing = Pushing(planner, live.starts, [p for p, _ in chunk], 2**40, EPOCH)
        jobs = plan_batch([(ev.user_key(e.user), e, None) for _, e in chunk], windows,
                          pushing=pushing)
        windows.flush()
        got += [(j.event.user, j.event.step, j.event.seq, j.window) for j in jobs
                if j.trigger == "live_change"]
    assert sorted(got) == sorted((p.user, p.step, p.seq, p.window) for p in want)


def test_the_monitor_reports_pushes_next_to_the_answer_before_them() -> None:
    from liverank.client.monitor import OnlineEvaluator, format_summary

    log = Log()
    watched_then_away(log)
    log.request(1, 4)
    log.watch(1, "B", 4)
    log.start("A", 5)
    log.watch(1, "A", 6)
    req = next(e for e in log.events if isinstance(e, ev.RecRequest))
    start = next(e for e in log.events if isinstance(e, ev.StreamStart) and e.step == 5)
    monitor = OnlineEvaluator(k=1)
    for e in log.events:
        monitor.add(e)
    monitor.add(rec(1, req.seq, 4, ["B"], "request", req.event_id))
    monitor.add(rec(1, start.seq, 5, ["A", "B"], "live_change", "live:1:5"))
    report = monitor.report()
    assert report["pushes"]["pushes"] == 1 and report["pushes"]["hr@1_paired"] == 1.0
    assert report["answered_requests"] == 1 and report["unanswered_requests"] == 0
    assert "pushes 1 (" in format_summary(report)
