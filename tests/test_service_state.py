"""Service state without Faust: event clock, windows, micro-batches, the answer path.

The live index they answer from is tested in tests/test_live_index.py."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Sequence

import numpy as np
import pytest
from timelines import expected_live, stream_events, tiny

from liverank.core import events as ev
from liverank.model.data import timeline as tl
from liverank.model.data.live import LiveStreams
from liverank.model.data.twitch import Interactions
from liverank.model.evaluate import iter_requests
from liverank.model.scorer import Ranked, RankRequest
from liverank.services import state as st
from liverank.services.testing import FakeScorer


class CountScorer:
    """A transparent test scorer: score = times the candidate is in the window, + a tiny
    name-based term so no two candidates tie."""

    version = "count-1"

    def rank(self, requests: Sequence[RankRequest], k: int) -> list[Ranked]:
        out = []
        for r in requests:
            seen = [name for name, _ in r.window]
            scored = sorted(((seen.count(c) + (hash(c) % 997) / 1e4, c) for c in r.candidates),
                            reverse=True)[:k]
            out.append(Ranked([c for _, c in scored], [s for s, _ in scored], not r.window))
        return out


# --- UserWindows ---------------------------------------------------------------------------
class CountingStore(dict[bytes, bytes]):
    def __init__(self) -> None:
        super().__init__()
        self.writes = 0

    def __setitem__(self, key: bytes, value: bytes) -> None:
        self.writes += 1
        super().__setitem__(key, value)


def entry(seq: int, name: str = "x") -> st.Entry:
    return st.Entry(name, seq // 10, seq, f"watch:{seq}")


def test_window_is_idempotent_ordered_and_bounded() -> None:
    store = CountingStore()
    w = st.UserWindows(store, length=3, slack=2)
    for seq in (30, 10, 20, 10, 50, 40, 60):  # out of order, one duplicate
        w.add_watch(b"7", entry(seq, f"s{seq}"))
    assert [e.seq for e in w.get(b"7")] == [20, 30, 40, 50, 60]  # capacity 5, oldest dropped
    assert not w.add_watch(b"7", entry(10))  # older than a full window: seen and evicted
    assert not w.add_watch(b"7", entry(40))
    assert w.history(b"7", 55) == [("s30", 3), ("s40", 4), ("s50", 5)]  # last 3 below 55
    assert w.history(b"7", 20) == []
    assert w.history(b"7", 60) == [("s30", 3), ("s40", 4), ("s50", 5)]  # not 60 itself
    assert w.history(b"7", 61) == [("s40", 4), ("s50", 5), ("s60", 6)]  # after them all
    assert w.flush() == 1 and store.writes == 1  # seven changes, one write
    assert st.decode_window(store[b"7"]) == w.get(b"7")
    assert w.flush() == 0


def test_window_round_trips_through_the_store_between_batches() -> None:
    store: dict[bytes, bytes] = {}
    w = st.UserWindows(store, length=2, slack=0)
    w.add_watch(b"1", entry(5, "a"))
    w.flush()
    w2 = st.UserWindows(store, length=2, slack=0)  # e.g. after recovery
    assert w2.get(b"1") == [entry(5, "a")]
    assert not w2.add_watch(b"1", entry(5, "a"))
    assert store[b"1"] == b'[["a",0,5,"watch:5"]]'
    with pytest.raises(ValueError, match="length"):
        st.UserWindows(store, length=0, slack=1)


class ReadCountingStore(CountingStore):
    def __init__(self) -> None:
        super().__init__()
        self.reads = 0

    def get(self, key: bytes, default: bytes | None = None) -> bytes | None:
        self.reads += 1
        return super().get(key, default)


def test_cached_windows_are_what_the_store_holds_without_reading_it() -> None:
    store = ReadCountingStore()
    w = st.UserWindows(store, length=3, slack=0, cache=2)
    for seq in (10, 20):
        w.add_watch(b"1", entry(seq))
        w.flush()
    assert store.reads == 1  # the first batch read the store; the second found the cache
    w.add_watch(b"2", entry(30))
    w.add_watch(b"3", entry(40))
    w.flush()  # three users, a cache of two: user 1 (least recently used) is dropped
    assert [e.seq for e in w.get(b"2")] == [30] and store.reads == 3
    assert [e.seq for e in w.get(b"1")] == [10, 20] and store.reads == 4
    for key in (b"1", b"2", b"3"):
        assert list(w.peek(key)) == st.decode_window(store[key])
    w.flush()


def test_cached_windows_are_out_of_the_collectors_walk() -> None:
    """A full collection walks every tracked container's items; a worker caches ~16k
    windows, so neither the entries nor the cached windows may be tracked (a collection
    took ~30-45 ms with them, about once a second: docs/results.md, session 15)."""
    import gc

    w = st.UserWindows({}, length=3, slack=0, cache=8)
    for user in range(5):
        for seq in (10, 20, 30):
            w.add_watch(b"%d" % user, entry(seq + user))
    w.flush()
    gc.collect()  # the collector untracks a tuple of untracked items when it meets it
    cached = list(w._cache.values())
    assert len(cached) == 5 and all(len(c) == 3 for c in cached)
    assert not any(gc.is_tracked(c) for c in cached)
    assert not any(gc.is_tracked(e) for c in cached for e in c)
    window = w.get(b"1")  # staged again: a list to change, the same entries
    assert [e.seq for e in window] == [11, 21, 31]
    w.add_watch(b"1", entry(41))
    w.flush()
    assert [e.seq for e in w.peek(b"1")] == [21, 31, 41]


def test_forgotten_windows_are_read_again_from_the_store() -> None:
    """After partitions move the store is the truth (another worker wrote, or recovery
    restored it): without `forget` the cache would serve the old window."""
    store = ReadCountingStore()
    w = st.UserWindows(store, length=3, slack=0, cache=8)
    w.add_watch(b"1", entry(10))
    w.flush()
    store[b"1"] = st.encode_window([entry(10), entry(20)])  # written elsewhere meanwhile
    assert [e.seq for e in w.peek(b"1")] == [10]  # stale, until
    w.forget()
    assert [e.seq for e in w.get(b"1")] == [10, 20]


def test_a_cached_empty_window_still_counts_the_user_s_first_watch() -> None:
    w = st.UserWindows({}, length=3, slack=0, cache=8)
    assert w.history(b"5", 100) == []  # a request first: an empty window, cached
    w.flush()
    w.add_watch(b"5", entry(10))
    w.flush()
    w.add_watch(b"5", entry(20))
    assert w.created == 1


# --- micro-batches -------------------------------------------------------------------------
def user_items(t: tl.Timeline) -> list[tuple[bytes, ev.UserEvent, int | None]]:
    return [(ev.user_key(e.user), e, 1000 + e.seq) for e in t
            if isinstance(e, ev.Watch | ev.RecRequest)]


def expected_windows(data: Interactions, length: int) -> dict[str, list[tuple[str, int]]]:
    """Per request id: the user's watches before it on the timeline, straight from the rows."""
    order = np.lexsort((np.arange(len(data)), data.start))
    seen: dict[int, list[tuple[str, int]]] = {}
    out = {}
    for r in order.tolist():
        u = int(data.user[r])
        out[f"req:{r}"] = list(seen.get(u, [])[-length:])
        seen.setdefault(u, []).append((str(data.streamer_names[data.streamer[r]]),
                                       int(data.start[r])))
    return out


@pytest.mark.parametrize("batch", [1, 7, 256])
def test_batched_windows_equal_the_offline_definition(batch: int) -> None:
    data = tiny()
    items = user_items(tl.build_timeline(data))
    store = CountingStore()
    windows = st.UserWindows(store, length=5, slack=3)
    stats = st.BatchStats()
    jobs: list[st.Job] = []
    for i in range(0, len(items), batch):
        jobs += st.plan_batch(items[i:i + batch], windows, stats=stats)
        windows.flush()
    want = expected_windows(data, 5)
    assert len(jobs) == len(data) == stats.requests == stats.watches
    assert {j.event.event_id: j.window for j in jobs} == want
    assert all(j.produced_ms == 1000 + j.event.seq for j in jobs)
    # Each user's window is written at most once per batch.
    per_batch_users = sum(len({k for k, e, _ in items[i:i + batch] if isinstance(e, ev.Watch)})
                          for i in range(0, len(items), batch))
    assert store.writes == per_batch_users
    if batch == 256:
        assert store.writes < stats.watches


def test_replaying_a_batch_again_changes_no_window_and_gives_the_same_jobs() -> None:
    items = user_items(tl.build_timeline(tiny()))[:400]
    # The slack covers how far the windows ran ahead (tiny users have at most 40 watches).
    windows = st.UserWindows({}, length=4, slack=40)
    first = st.plan_batch(items, windows)
    windows.flush()
    stats = st.BatchStats()
    again = st.plan_batch(items, windows, stats=stats)  # at-least-once redelivery
    assert stats.duplicates == stats.watches == 200
    assert [j.window for j in again] == [j.window for j in first]


def tiny_live() -> tuple[Interactions, tl.Timeline, st.LiveStreams]:
    """Tiny data, its timeline and a live index fed with every stream event."""
    data = tiny()
    t = tl.build_timeline(data)
    live = st.LiveStreams(partitions=1, stopped_horizon=10_000)
    for e in stream_events(t):
        live.apply(e, 0)
    return data, t, live


def test_watch_trigger_includes_the_watch_and_excludes_its_streamer() -> None:
    data, t, live = tiny_live()
    windows = st.UserWindows({}, length=5, slack=3)
    jobs = st.plan_batch(user_items(t), windows, recommend_on_watch=True)
    watch_jobs = [j for j in jobs if j.trigger == "watch"]
    assert len(watch_jobs) == len(data)
    recs = asyncio.run(st.answer_batch(watch_jobs, live, CountScorer(), k=10,
                                      now_ms=lambda: 7))
    for job, rec in zip(watch_jobs, recs, strict=True):
        assert job.window[-1] == (job.event.streamer, job.event.step)  # type: ignore[union-attr]
        assert rec.trigger == "watch" and rec.request_id == job.event.event_id
        assert job.event.streamer not in {i.streamer for i in rec.items}  # type: ignore[union-attr]
        n_live = len(expected_live(data, job.event.step))
        assert len(rec.items) == min(10, n_live - 1)


def test_answers_hold_min_k_live_items_sorted_by_score_with_their_streams() -> None:
    data, t, live = tiny_live()
    jobs = st.plan_batch(user_items(t), st.UserWindows({}, length=5, slack=3))
    recs = asyncio.run(st.answer_batch(jobs, live, CountScorer(), k=10, now_ms=lambda: 12345,
                                       late=lambda j: j.event.step == 3))
    small = 0
    for job, rec in zip(jobs, recs, strict=True):
        want = expected_live(data, rec.step)
        assert len(rec.items) == min(10, len(want))
        small += len(want) < 10
        assert [i.rank for i in rec.items] == list(range(1, len(rec.items) + 1))
        scores = [i.score for i in rec.items]
        assert scores == sorted(scores, reverse=True)
        assert all(want[i.streamer] == i.stream for i in rec.items)  # live, right stream
        assert rec.request_id == job.event.event_id and rec.event_id == f"rec:{rec.request_id}"
        assert (rec.user, rec.seq, rec.step) == (job.event.user, job.event.seq, job.event.step)
        assert rec.fallback == (not job.window)
        assert rec.produced_ms == job.produced_ms and rec.published_ms == 12345
        assert rec.model_version == "count-1" and rec.late == (rec.step == 3)
    assert any(r.fallback for r in recs) and not all(r.fallback for r in recs)
    assert small > 0  # some steps have fewer than k live streams


def test_online_requests_and_rankings_equal_the_offline_evaluation_list_for_list() -> None:
    """The service's RankRequests (windows from the Table path, candidates from the live
    index) are the ones `liverank evaluate` builds, so the rankings are equal too."""
    data = tiny()
    t = tl.build_timeline(data)
    live = st.LiveStreams(partitions=2, stopped_horizon=144)
    scorer = FakeScorer(window_len=6)
    windows = st.UserWindows({}, length=scorer.window_len, slack=4)
    items = user_items(t)
    stream = [e for e in t if not isinstance(e, ev.Watch | ev.RecRequest)]
    online: dict[str, tuple[RankRequest, Ranked]] = {}
    s_pos = 0
    for i in range(0, len(items), 64):  # stream events only up to the batch's newest step
        batch = items[i:i + 64]
        newest = max(e.step for _, e, _ in batch)
        while s_pos < len(stream) and stream[s_pos].step <= newest:
            for p in range(2):
                if isinstance(stream[s_pos], ev.Watermark) or stream[s_pos].stream % 2 == p:
                    live.apply(stream[s_pos], p)
            s_pos += 1
        jobs = st.plan_batch(batch, windows)
        windows.flush()
        assert all(live.ready(j.event.step) for j in jobs)
        requests, _ = st.rank_inputs(jobs, live)
        for job, req, ranked in zip(jobs, requests, scorer.rank(requests, 10), strict=True):
            online[job.event.event_id] = (req, ranked)
    offline = list(iter_requests(data, 0, data.max_step, scorer.window_len))
    assert len(offline) == len(online) == len(data)
    off_requests = [r for _, r, _ in offline]
    for (event_id, req, _), ranked in zip(offline, scorer.rank(off_requests, 10), strict=True):
        mine, my_ranked = online[event_id]
        assert list(mine.window) == list(req.window) and mine.step == req.step
        assert sorted(mine.candidates) == sorted(req.candidates)
        assert my_ranked == ranked


async def test_micro_batcher_bounds_size_and_wait() -> None:
    import asyncio
    import time

    b: st.MicroBatcher[int] = st.MicroBatcher(max_size=3, max_wait_s=0.05, max_pending=5)
    for i in range(4):
        b.put(i)
    assert await b.get() == [0, 1, 2]  # full: no wait
    t0 = time.monotonic()
    assert await b.get() == [3]  # the rest after at most max_wait_s
    assert 0.03 < time.monotonic() - t0 < 0.5
    for i in range(5):
        b.put(i)
    assert b.full
    waiter = asyncio.ensure_future(b.room())
    await asyncio.sleep(0.01)
    assert not waiter.done()  # the producer side waits while max_pending are queued
    assert await b.get() == [0, 1, 2]
    await asyncio.wait_for(waiter, 1)
    getter = asyncio.ensure_future(b.get())
    await asyncio.sleep(0.01)
    b.put(9)
    assert await asyncio.wait_for(getter, 1) == [3, 4, 9]
    with pytest.raises(ValueError, match="max_size"):
        st.MicroBatcher(0, 0.1)


async def test_after_a_full_batch_the_wait_counts_from_the_take_not_from_the_oldest_item(
        ) -> None:
    """In a backlog records come in fetch-sized bursts, and items that already waited out
    ``max_wait_s`` while the worker was busy made a small batch of a burst's tail (smaller
    batches, more broker batches: docs/service.md). After a full batch the next one may wait
    ``max_wait_s`` from the take for more; otherwise the oldest item's wait bounds it."""
    import asyncio
    import time

    b: st.MicroBatcher[int] = st.MicroBatcher(max_size=4, max_wait_s=0.1)
    b.put(1)
    await asyncio.sleep(0.15)
    t0 = time.monotonic()
    assert await b.get() == [1]  # no backlog: it waited long enough, out at once
    assert time.monotonic() - t0 < 0.05
    for i in range(6):
        b.put(i)
    assert await b.get() == [0, 1, 2, 3]  # full: a backlog
    assert b.backlog
    await asyncio.sleep(0.15)  # the two left over are older than max_wait_s now
    getter = asyncio.ensure_future(b.get())
    await asyncio.sleep(0.03)
    assert not getter.done()  # waiting for more from the take
    b.put(6)
    b.put(7)
    assert await asyncio.wait_for(getter, 1) == [4, 5, 6, 7]
    b.put(8)
    t0 = time.monotonic()
    assert await b.get() == [8]  # still bounded: max_wait_s after the take
    assert 0.07 < time.monotonic() - t0 < 0.5
    b.put(9)
    await asyncio.sleep(0.15)
    t0 = time.monotonic()
    assert await b.get() == [9]  # a partial batch ended the backlog
    assert not b.backlog
    assert time.monotonic() - t0 < 0.05


async def test_the_wait_after_a_full_batch_is_its_own() -> None:
    """A short wait for a batch that starts from nothing, a longer one after a full batch:
    each bounds its own case."""
    import asyncio
    import time

    b: st.MicroBatcher[int] = st.MicroBatcher(max_size=4, max_wait_s=0.01,
                                              backlog_wait_s=0.3)
    b.put(1)
    t0 = time.monotonic()
    assert await b.get() == [1]  # from nothing: out after max_wait_s
    assert time.monotonic() - t0 < 0.2
    for i in range(5):
        b.put(i)
    assert await b.get() == [0, 1, 2, 3]  # full: a backlog
    asked = time.monotonic()
    getter = asyncio.ensure_future(b.get())
    await asyncio.sleep(0.1)
    assert not getter.done()  # the backlog wait, not max_wait_s
    assert await asyncio.wait_for(getter, 1) == [4]
    assert 0.25 < time.monotonic() - asked < 0.8
    assert st.MicroBatcher(4, 0.02).backlog_wait_s == 0.02  # one wait unless given two


def test_an_answer_behind_the_pruned_horizon_is_marked_stale_not_passed_as_live() -> None:
    live = LiveStreams(partitions=1, stopped_horizon=10)
    live.start(1, "a", 0)
    live.stop(1, "a", 20)
    live.start(2, "b", 50)
    live.advance(0, 500)
    assert live.prune(400) == 1  # "a" stopped at 20 <= 390: forgotten
    key = ev.user_key(7)
    old = ev.RecRequest(event_id="req:old", seq=1, step=10, event_time_ms=0, user=7)
    new = ev.RecRequest(event_id="req:new", seq=2, step=395, event_time_ms=0, user=7)
    jobs = st.plan_batch([(key, old, None), (key, new, None)],
                         st.UserWindows({}, length=5, slack=3))
    recs = asyncio.run(st.answer_batch(jobs, live, CountScorer(), k=10, now_ms=lambda: 0))
    by_id = {r.request_id: r for r in recs}
    assert by_id["req:old"].stale and by_id["req:old"].items == []  # "a" was live: say so
    assert not by_id["req:new"].stale and [i.streamer for i in by_id["req:new"].items] == ["b"]


@pytest.mark.parametrize("seed", range(5))
def test_windows_keep_what_the_committed_floor_may_read_again_so_restarts_are_exact(
        seed: int) -> None:
    """One user's watches and requests; a worker runs ahead of its last commit, crashes,
    and the next one reads again from the committed offset over the changelog the first
    left. With the floor, every request read again gets the history it got the first time,
    and the window stays near ``length`` entries; bounded by a small slack alone, not."""
    rng = random.Random(seed)
    key, length = ev.user_key(1), 3
    events: list[ev.UserEvent] = []
    for seq in range(200):
        if rng.random() < 0.6:
            events.append(ev.Watch(event_id=f"w{seq}", seq=seq, step=seq, event_time_ms=0,
                                   user=1, stream=seq, streamer=f"s{rng.randint(0, 9)}"))
        else:
            events.append(ev.RecRequest(event_id=f"r{seq}", seq=seq, step=seq,
                                        event_time_ms=0, user=1))
    reference = {j.event.event_id: j.window for j in st.plan_batch(
        [(key, e, None) for e in events], st.UserWindows({}, length, slack=10_000))}

    def run(floor: bool, slack: int, committed: int, crash: int) -> tuple[dict, int]:
        store: dict[bytes, bytes] = {}
        at = {"seq": events[committed].seq}
        windows = st.UserWindows(store, length, slack,
                                 floor_of=(lambda k: at["seq"]) if floor else None)
        longest = 0
        for e in events[:crash]:  # the first worker, killed after `crash` events
            st.plan_batch([(key, e, None)], windows)
            windows.flush()
            longest = max(longest, len(st.decode_window(store.get(key, b"[]"))))
        again = {}
        for e in events[committed:]:  # the next one, from the committed offset
            for j in st.plan_batch([(key, e, None)], windows):
                again[j.event.event_id] = j.window
            windows.flush()
        return again, longest

    for committed, crash in ((40, 70), (100, 190), (150, 151)):
        again, longest = run(floor=True, slack=10_000, committed=committed, crash=crash)
        assert again == {k: v for k, v in reference.items() if k in again}
        assert len(again) == sum(isinstance(e, ev.RecRequest) for e in events[committed:])
        assert longest <= length + (crash - committed) + 1
    differs = [run(floor=False, slack=2, committed=40, crash=120)[0]]
    assert any(a != {k: v for k, v in reference.items() if k in a} for a in differs)
