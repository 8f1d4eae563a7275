"""The event-time live index (`LiveStreams`, used by the service and the monitor) against
the data layer's batch availability (`availability`, used by training and evaluation):
the same live streamers and the same answering stream at every step, in any arrival order.
"""

from __future__ import annotations

import random

import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as hs
from timelines import expected_live, partitioned, stream_events, tiny

from liverank.core import events as ev
from liverank.model.data import timeline as tl
from liverank.model.data.availability import availability
from liverank.model.data.live import LiveStreams
from liverank.model.data.twitch import from_frame


def test_candidates_equal_broadcast_availability_at_every_step() -> None:
    data = tiny()
    av = availability(data, "broadcast")
    live = LiveStreams(partitions=1, stopped_horizon=10_000)
    checked = 0
    for e in stream_events(tl.build_timeline(data, requests="none")):
        live.apply(e, 0)
        if isinstance(e, ev.Watermark) and e.step < av.n_steps:
            c = live.candidates(e.step)
            want = {str(data.streamer_names[s]): int(m) for s, m in
                    zip(av.streamers_at(e.step), av.streams_at(e.step), strict=True)}
            assert c.streams == want, e.step
            assert sorted(c.streamers) == sorted(want)
            checked += len(want)
    assert checked > 1000  # the tiny data has live streams at most steps


def test_overlapping_streams_of_one_streamer_answer_with_the_latest_started() -> None:
    rows = [(1, 10, "a", 0, 9), (2, 11, "a", 3, 5), (3, 12, "a", 3, 6), (4, 20, "b", 2, 4)]
    data = from_frame(pd.DataFrame(rows, columns=["user", "stream", "streamer", "start",
                                                  "stop"]))
    live = LiveStreams(partitions=1)
    for e in stream_events(tl.build_timeline(data, requests="none")):
        live.apply(e, 0)
    for step in range(10):
        assert live.candidates(step).streams == expected_live(data, step), step
    assert live.candidates(3).streams == {"a": 12, "b": 20}  # start 3 ties: larger id


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_any_interleaving_of_partitions_gives_the_same_answers_once_ready(seed: int) -> None:
    data = tiny()
    parts = partitioned(stream_events(tl.build_timeline(data, requests="none")), 4)
    live = LiveStreams(partitions=4, stopped_horizon=10_000)
    rng = random.Random(seed)
    pos = [0] * 4
    answered = 0
    while any(p < len(q) for p, q in zip(pos, parts, strict=True)):
        i = rng.choice([i for i in range(4) if pos[i] < len(parts[i])])
        for _ in range(rng.randint(1, 30)):  # a burst from one partition
            if pos[i] < len(parts[i]):
                live.apply(parts[i][pos[i]], i)
                pos[i] += 1
        # Ask about a random step up to the watermark: the answer must be final.
        if live.watermark >= 0:
            s = rng.randint(max(0, live.watermark - 5), live.watermark)
            assert live.ready(s)
            assert live.candidates(s).streams == expected_live(data, s), s
            answered += 1
    assert answered > 50


def test_watermark_is_the_minimum_over_partitions() -> None:
    live = LiveStreams(partitions=3)
    assert live.watermark == -1 and not live.ready(0)
    assert not live.advance(0, 5)  # others still at -1
    assert not live.advance(1, 7)
    assert live.advance(2, 6)
    assert live.watermark == 5 and live.ready(5) and not live.ready(6)
    assert not live.advance(2, 3)  # a watermark never goes back
    assert live.watermark == 5
    assert live.apply(ev.End(event_id="end", seq=9, step=9, event_time_ms=0), 0)
    assert live.watermark == 6
    with pytest.raises(ValueError, match="partition 3"):
        live.advance(3, 1)


def test_an_early_answer_is_recomputed_when_a_start_for_its_step_arrives() -> None:
    live = LiveStreams(partitions=1)
    live.start(1, "a", 0)
    assert live.candidates(4).streamers == ("a",)  # asked before the watermark (late answer)
    live.start(2, "b", 4)
    live.stop(1, "a", 4)
    assert live.candidates(4).streams == {"b": 2}
    assert live.candidates(3).streams == {"a": 1}


def test_replayed_stream_events_change_nothing() -> None:
    live = LiveStreams(partitions=1)
    for _ in range(2):
        live.start(1, "a", 2)
        live.stop(1, "a", 5)
    live.start(1, "a", 3)  # a later duplicate start does not move the first one
    assert [live.candidates(s).streamers for s in range(1, 7)] == [
        (), ("a",), ("a",), ("a",), (), ()]
    assert len(live) == 1 and live.anomalies == 0


def test_stopped_intervals_are_kept_for_the_horizon_behind_the_pruning_floor() -> None:
    live = LiveStreams(partitions=1, stopped_horizon=10)
    for i in range(3000):  # more than the initial capacity: the arrays grow
        live.start(i, f"s{i}", i)
        live.stop(i, f"s{i}", i + 2)
    live.advance(0, 3000)
    assert live.candidates(2000).streams == {"s1999": 1999, "s2000": 2000}
    assert len(live) == 3000  # nothing is pruned by asking, however far ahead
    assert live.candidates(500).streams == {"s499": 499, "s500": 500}
    assert live.prune(2000) == 1989  # stop <= 1990 are gone; 1990..2999 stopped later
    assert len(live) == 3000 - 1989 and live.prune(1995) == 0
    assert live.candidates(1991).streams == {"s1990": 1990, "s1991": 1991}  # within horizon
    assert not live.stale(1990) and live.stale(1989)
    assert live.candidates(500).streams == {}  # cache dropped: pruned intervals are gone
    live.start(5000, "s1", 2500)  # a freed slot is reused; its name is still known
    assert live.candidates(2600).streams == {"s1": 5000, "s2599": 2599, "s2600": 2600}


# Random logs: few streamers and streams, so overlapping streams of one streamer, shared
# start steps and zero-length rows all occur.
_rows = hs.lists(hs.tuples(hs.integers(1, 5), hs.integers(1, 12), hs.sampled_from("abcd"),
                           hs.integers(0, 40), hs.integers(0, 6)), min_size=1, max_size=40)


@settings(max_examples=150, deadline=None)
@given(_rows, hs.integers(1, 4), hs.randoms(use_true_random=False))
def test_live_index_equals_batch_availability_on_random_logs(
        rows: list[tuple[int, int, str, int, int]], parts: int, rnd: random.Random) -> None:
    frame = pd.DataFrame([(u, s, n, a, a + d) for u, s, n, a, d in rows],
                         columns=["user", "stream", "streamer", "start", "stop"])
    data = from_frame(frame)
    av = availability(data, "broadcast")
    queues = partitioned(stream_events(tl.build_timeline(data, requests="none")), parts)
    live = LiveStreams(partitions=parts, stopped_horizon=10_000)
    while any(queues):
        i = rnd.choice([i for i, q in enumerate(queues) if q])
        live.apply(queues[i].pop(0), i)
    for step in range(av.n_steps):
        want = {str(data.streamer_names[s]): int(m)
                for s, m in zip(av.streamers_at(step), av.streams_at(step), strict=True)}
        assert live.candidates(step).streams == want, step


@settings(max_examples=100, deadline=None)
@given(_rows, hs.randoms(use_true_random=False), hs.integers(1, 4))
def test_cached_candidates_follow_every_start_and_stop_as_they_arrive(
        rows: list[tuple[int, int, str, int, int]], rnd: random.Random, cache: int) -> None:
    """Questions between stream events, so that cached steps meet later starts and stops
    (a tiny cache evicts too): every answer equals a fresh index's over the same events."""
    frame = pd.DataFrame([(u, s, n, a, a + d) for u, s, n, a, d in rows],
                         columns=["user", "stream", "streamer", "start", "stop"])
    events = stream_events(tl.build_timeline(from_frame(frame), requests="none"))
    rnd.shuffle(events)  # out of order, as partitions deliver them
    live = LiveStreams(partitions=1, stopped_horizon=10_000, cache_steps=cache)
    for n, event in enumerate(events, 1):
        live.apply(event, 0)
        for step in (rnd.randint(0, 50), rnd.randint(0, 50)):
            fresh = LiveStreams(partitions=1, stopped_horizon=10_000)
            for e in events[:n]:
                fresh.apply(e, 0)
            assert live.candidates(step) == fresh.candidates(step), (n, step)


def test_the_candidates_cache_drops_the_least_recently_used_step() -> None:
    live = LiveStreams(partitions=1, cache_steps=3)
    live.start(1, "a", 0)
    first = live.candidates(1)
    live.candidates(2)
    live.candidates(3)
    assert live.candidates(1) is first  # a hit, now the most recently used
    live.candidates(4)  # evicts step 2, not step 1
    assert live.candidates(1) is first
    live.start(2, "b", 10)  # beyond every cached step: nothing to drop
    assert live.candidates(1) is first
    live.stop(1, "a", 1)  # at step 1: drops 1 and later
    assert live.candidates(1).streamers == ()


def test_a_start_sent_again_for_a_pruned_broadcast_does_not_bring_it_back() -> None:
    live = LiveStreams(partitions=1, stopped_horizon=10)
    live.start(1, "a", 0)
    live.stop(1, "a", 5)
    live.start(2, "b", 100)
    assert live.prune(200) == 1  # "a" is gone
    live.start(1, "a", 0)  # re-sent (a hostile or replayed record)
    assert live.candidates(300).streams == {"b": 2}
    assert live.anomalies == 1
    live.start(3, "c", 195)  # a new broadcast at the horizon's edge is taken
    assert live.candidates(300).streams == {"b": 2, "c": 3}
