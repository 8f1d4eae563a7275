"""Service state without Faust: user windows, micro-batches, the answer path.

Everything here is plain Python and numpy, so it is unit-tested without a broker and the
Faust agent in `liverank.services.app` stays thin: decode, update, score, send. The live
index it answers from is `liverank.model.data.live.LiveStreams` (shared with the monitor).

* `UserWindows`: per user, the last ``length + slack`` watches as `Entry` rows sorted by
  ``seq``, idempotent by event id, read once and written once per micro-batch.
* `plan_batch` / `answer_batch`: a micro-batch of user events -> window updates and `Job`s
  (one per answer) -> `Recommendation` records, through the same `RankRequest` path as
  ``liverank evaluate``.
"""

from __future__ import annotations

import asyncio
import bisect
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, Protocol, TypeVar

import msgspec

from liverank.core import events as ev
from liverank.model.data.live import Candidates, LiveStreams
from liverank.model.pushes import PushPlanner, Starts
from liverank.model.scorer import Ranked, RankRequest, Scorer

logger = logging.getLogger(__name__)
T = TypeVar("T")

# --- user windows ------------------------------------------------------------------------
class Entry(msgspec.Struct, frozen=True, array_like=True, gc=False):
    """One watch in a user's window (JSON: ``["streamer", step, seq, "event_id"]``).

    Not tracked by the garbage collector (``gc=False``: two strings and two ints hold no
    cycle). Why: the worker keeps ~16k decoded windows (`Settings.window_cache`), hundreds
    of thousands of entries, and every full collection walked them all: 10-12 collections
    of p50 23-34 ms in a 21-s paced latency run (docs/results.md, session 15)."""

    streamer: str
    step: int
    seq: int
    event_id: str


_window_encoder = msgspec.json.Encoder()
_window_decoder = msgspec.json.Decoder(list[Entry])


def encode_window(window: Sequence[Entry]) -> bytes:
    return _window_encoder.encode(window)


def decode_window(data: bytes) -> list[Entry]:
    return _window_decoder.decode(data)


class WindowStore(Protocol):
    """What `UserWindows` needs of its store (a dict, or the Faust Table seen per key)."""

    def get(self, key: bytes, /) -> bytes | None: ...

    def __setitem__(self, key: bytes, value: bytes, /) -> None: ...


class UserWindows:
    """Per-user watch windows over a key -> bytes store (a Faust Table, or a dict in tests).

    Within a micro-batch each touched user's window is read once, changed in memory and
    written back once by `flush`, so a batch costs one changelog record per user. Windows
    are sorted by ``seq``; `history` only uses entries below a request's ``seq``.

    Exact restarts: the changelog runs ahead of the committed input offsets (a batch's
    window records are published before its offsets are committed), so after a crash the
    restored window already holds watches that are then read again. ``floor_of(key)`` is
    the seq of the record at the committed offset of the key's partition: nothing below it
    can be read again. A window keeps every entry from the floor on plus the ``length``
    entries before it, so every request read again sees the history it saw the first time.
    ``capacity`` (``length + slack``) bounds a window when the floor is unknown or stuck
    (a broker outage stops commits); only past it can a restart repeat an answer that
    differs from the first one.
    """

    def __init__(self, store: WindowStore, length: int, slack: int,
                 floor_of: Callable[[bytes], int | None] | None = None, cache: int = 0):
        if length < 1:
            raise ValueError(f"window length must be >= 1, got {length}")
        self.store = store
        self.length = length
        self.capacity = length + slack
        self.floor_of = floor_of
        self._staged: dict[bytes, list[Entry]] = {}
        self._dirty: set[bytes] = set()
        self._absent: set[bytes] = set()  # staged keys the store had no window for
        # The decoded windows of the ``cache`` users seen last, as written (least recently
        # used dropped first). Why: reading a window from the table and decoding it was ~10%
        # of the event loop's time (py-spy, bench slice); a user's next event usually comes
        # a few batches later. Valid while this worker is the only writer of the keys it
        # holds: `forget` when partitions move.
        # Kept as tuples: the collector untracks a tuple of untracked entries (`Entry`),
        # where it walks every item of a list at each full collection (docs/results.md,
        # session 15: 16.5k cached lists of 50 untracked entries, 29-38 ms a collection;
        # as tuples 0.6-1.9 ms).
        self.cache_size = cache
        self._cache: OrderedDict[bytes, tuple[Entry, ...]] = OrderedDict()
        self.created = 0  # windows created since start (first watch of a user)
        self.capped = 0  # windows cut to capacity (the floor did not allow it)

    def get(self, key: bytes) -> list[Entry]:
        window = self._staged.get(key)
        if window is None:
            cached = self._cache.pop(key, None)
            if cached is None:
                raw = self.store.get(key)
                window = [] if raw is None else decode_window(raw)
            else:
                window = list(cached)
            if not window:
                self._absent.add(key)
            self._staged[key] = window
        return window

    def peek(self, key: bytes) -> Sequence[Entry]:
        """The window as it stands, without staging it for a write (an HTTP lookup)."""
        window: Sequence[Entry] | None = self._staged.get(key)
        if window is None:
            window = self._cache.get(key)
        if window is not None:
            return window
        raw = self.store.get(key)
        return [] if raw is None else decode_window(raw)

    def forget(self) -> None:
        """Drop the cached windows (partitions moved: another worker may have written
        them, or the store was restored from the changelog)."""
        self._cache.clear()

    def add_watch(self, key: bytes, entry: Entry) -> bool:
        """Insert ``entry`` in seq order; False for a duplicate or an entry older than a
        window of ``length`` entries holds (seen and evicted: bringing it back could change
        a history)."""
        window = self.get(key)
        if any(e.event_id == entry.event_id for e in window):
            return False
        if len(window) >= self.length and entry.seq < window[0].seq:
            return False
        if key in self._absent:
            self._absent.discard(key)
            self.created += 1
        bisect.insort(window, entry, key=lambda e: e.seq)
        if len(window) > self.length:
            self._evict(key, window)
        self._dirty.add(key)
        return True

    def _evict(self, key: bytes, window: list[Entry]) -> None:
        floor = self.floor_of(key) if self.floor_of is not None else None
        if floor is not None:  # keep the `length` entries below the floor and all above it
            below = bisect.bisect_left(window, floor, key=lambda e: e.seq)
            if below > self.length:
                del window[: below - self.length]
        if len(window) > self.capacity:
            del window[: len(window) - self.capacity]
            self.capped += 1

    def history(self, key: bytes, before_seq: int) -> list[tuple[str, int]]:
        """The last ``length`` watches with seq below ``before_seq``, oldest first."""
        window = self.get(key)
        end = len(window)
        if end and window[-1].seq >= before_seq:  # not after all of them: search
            end = bisect.bisect_left(window, before_seq, key=lambda e: e.seq)
        return [(e.streamer, e.step) for e in window[max(0, end - self.length):end]]

    def flush(self, write: Callable[[bytes, bytes], None] | None = None) -> int:
        """Write every changed window once (``write`` defaults to the store) and forget the
        staged ones (kept in the cache as written); returns how many were written."""
        put = write if write is not None else self.store.__setitem__
        for key in self._dirty:
            put(key, encode_window(self._staged[key]))
        n = len(self._dirty)
        if self.cache_size:
            cache = self._cache
            for key, window in self._staged.items():  # popped by `get`: to the recent end
                cache[key] = tuple(window)
            for _ in range(len(cache) - self.cache_size):
                cache.popitem(last=False)
        self._dirty.clear()
        self._staged.clear()
        self._absent.clear()
        return n

    @property
    def dirty(self) -> set[bytes]:
        return self._dirty


# --- partitions ------------------------------------------------------------------------
class Ownership:
    """The input partitions assigned to this worker, kept from the group's assignment
    signals. Events of a partition taken away (queued before a rebalance) are dropped:
    their new owner reads them again from the committed offset, and processing them here
    would write windows that worker owns now."""

    def __init__(self) -> None:
        self.partitions: set[Any] = set()

    def assigned(self, tps: Iterable[Any]) -> None:
        self.partitions.update(tps)

    def revoked(self, tps: Iterable[Any]) -> None:
        self.partitions.difference_update(tps)

    def __contains__(self, tp: object) -> bool:
        return tp in self.partitions


# --- micro-batches -----------------------------------------------------------------------



@dataclass
class Job:
    """One answer to compute: what the request knew when it arrived."""

    key: bytes
    event: ev.RecRequest | ev.Watch
    trigger: ev.Trigger
    window: list[tuple[str, int]]
    produced_ms: int | None
    exclude: str | None = None  # the streamer being watched (trigger "watch")
    partition: int | None = None  # a push's user-events partition (its user has no event)


@dataclass
class BatchStats:
    watches: int = 0
    requests: int = 0
    duplicates: int = 0  # watches already in the window (redelivery)
    watch_not_live: int = 0  # watches of a stream not live at their step
    late: int = 0
    stale: int = 0
    pushes: int = 0
    kinds: dict[str, int] = field(default_factory=dict)


@dataclass
class Pushing:
    """What `plan_batch` needs to plan pushes (`liverank.model.pushes`): the planner, the
    live index's starts, each item's partition, and the newest step whose starts are all
    known (the watermark: later starts are planned with a later batch)."""

    planner: PushPlanner
    starts: Starts
    partitions: Sequence[int]
    upto: int
    epoch_ms: int


def plan_batch(
    items: Sequence[tuple[bytes, ev.UserEvent, int | None]],
    windows: UserWindows,
    recommend_on_watch: bool = False,
    stats: BatchStats | None = None,
    pushing: Pushing | None = None,
) -> list[Job]:
    """Apply a micro-batch of decoded user events, in order, to the windows; return a `Job`
    per answer, its window taken at the event's place in the timeline.

    ``items`` are (key, event, produced_ms). A request's window is the entries with seq
    below its own; a watch's refreshed answer (``recommend_on_watch``) includes the watch.
    With ``pushing``, the pushes of the streams started since an item's partition's
    previous event come before the item, as `liverank.model.pushes` says.
    """
    stats = stats if stats is not None else BatchStats()
    jobs: list[Job] = []
    for i, (key, event, produced_ms) in enumerate(items):
        if pushing is not None:
            partition = pushing.partitions[i]
            for push in pushing.planner.plan(partition, min(event.step, pushing.upto),
                                             pushing.starts):
                jobs.append(Job(push.key, push.request(pushing.epoch_ms), "live_change",
                                push.window, None, partition=partition))
                stats.pushes += 1
        if isinstance(event, ev.RecRequest):
            stats.requests += 1
            jobs.append(Job(key, event, "request", windows.history(key, event.seq),
                            produced_ms))
        else:
            stats.watches += 1
            entry = Entry(event.streamer, event.step, event.seq, event.event_id)
            if not windows.add_watch(key, entry):
                stats.duplicates += 1
            elif recommend_on_watch:
                jobs.append(Job(key, event, "watch", windows.history(key, event.seq + 1),
                                produced_ms, exclude=event.streamer))
        if pushing is not None:
            pushing.planner.seen(partition, key, event.user, event.step,
                                 windows.history(key, event.seq + 1))
    return jobs


def rank_inputs(jobs: Sequence[Job], live: LiveStreams
                ) -> tuple[list[RankRequest], list[Candidates]]:
    """The `RankRequest` of every job (window, step, live candidates) and the candidates'
    streams, to map the ranked streamers back to the streams that answer for them."""
    requests: list[RankRequest] = []
    cands: list[Candidates] = []
    for job in jobs:
        c = live.candidates(job.event.step)
        names: Sequence[str] = c.streamers
        if job.exclude is not None and job.exclude in c.streams:
            names = tuple(n for n in names if n != job.exclude)
        cands.append(c)
        requests.append(RankRequest(window=job.window, step=job.event.step, candidates=names))
    return requests, cands


@dataclass
class Asked:
    """A batch's jobs with what the live index said when they were asked (`ask`): the rank
    requests, the candidates' streams, and each job's late and stale flags."""

    jobs: Sequence[Job]
    requests: list[RankRequest]
    cands: list[Candidates]
    late: list[bool]
    stale: list[bool]


def ask(jobs: Sequence[Job], live: LiveStreams,
        late: Callable[[Job], bool] = lambda job: False) -> Asked:
    """Read everything a batch's answers need from the live index, on the caller's thread
    (the index changes between awaits: a prune, new stream events)."""
    requests, cands = rank_inputs(jobs, live)
    return Asked(jobs, requests, cands, [late(j) for j in jobs],
                 [live.stale(j.event.step) for j in jobs])


def build_answers(asked: Asked, ranked: Sequence[Ranked], version: str, published_ms: int,
                  shadow: bool = False) -> list[ev.Recommendation]:
    jobs = asked.jobs
    if len(ranked) != len(jobs):
        raise RuntimeError(f"scorer returned {len(ranked)} answers for {len(jobs)} requests")
    return [_recommendation(job, r, c, version, published_ms, late, stale, shadow)
            for job, r, c, late, stale in zip(jobs, ranked, asked.cands, asked.late,
                                               asked.stale, strict=True)]


Rank = Callable[[Scorer, list[RankRequest], int], Awaitable[list[Ranked]]]


async def rank_inline(scorer: Scorer, requests: list[RankRequest], k: int) -> list[Ranked]:
    return scorer.rank(requests, k)


async def answer_asked(asked: Asked, scorer: Scorer, k: int, now_ms: Callable[[], int],
                       rank: Rank = rank_inline, shadow: Scorer | None = None
                       ) -> list[ev.Recommendation]:
    """One `Scorer.rank` call for the batch (``rank`` runs it: inline, or in the worker's
    scoring thread), then the `Recommendation` records. With a ``shadow`` scorer, the same
    requests (same windows, same candidates) are ranked by it too and its answers follow
    the live ones, marked ``shadow``."""
    requests = asked.requests
    ranked = await rank(scorer, requests, k) if requests else []
    published = now_ms()
    recs = build_answers(asked, ranked, scorer.version, published)
    if shadow is not None and requests:
        shadowed = await rank(shadow, requests, k)
        recs += build_answers(asked, shadowed, shadow.version, published, shadow=True)
    return recs


async def answer_batch(
    jobs: Sequence[Job],
    live: LiveStreams,
    scorer: Scorer,
    k: int,
    now_ms: Callable[[], int],
    late: Callable[[Job], bool] = lambda job: False,
    rank: Rank = rank_inline,
    shadow: Scorer | None = None,
) -> list[ev.Recommendation]:
    """The one answer path: every job's live candidates (`ask`), then `answer_asked`. The
    live index is read on the caller's thread only."""
    return await answer_asked(ask(jobs, live, late), scorer, k, now_ms, rank, shadow)


def _recommendation(job: Job, ranked: Ranked, cands: Candidates, version: str,
                    published_ms: int, late: bool, stale: bool,
                    shadow: bool = False) -> ev.Recommendation:
    e = job.event
    names = ranked.streamers  # map() over positional RecItem(stream, streamer, score, rank):
    # the hot path of building answers, about twice as fast as a comprehension
    items = list(map(ev.RecItem, map(cands.streams.__getitem__, names), names,
                     map(float, ranked.scores), range(1, len(names) + 1)))
    return ev.Recommendation(
        event_id=f"rec:{e.event_id}", seq=e.seq, step=e.step, event_time_ms=e.event_time_ms,
        user=e.user, request_id=e.event_id, trigger=job.trigger, produced_ms=job.produced_ms,
        published_ms=published_ms, model_version=version, fallback=ranked.fallback,
        items=items, late=late, stale=stale, shadow=shadow)


async def wait_signal(signal: asyncio.Event, timeout_s: float) -> bool:
    """Wait for the next ``set()`` of ``signal`` (cleared first), at most ``timeout_s``;
    False on timeout. The one "sleep until something changes or the deadline" used by the
    micro-batcher and the watermark wait."""
    signal.clear()
    try:
        await asyncio.wait_for(signal.wait(), timeout_s)
    except TimeoutError:
        return False
    return True


class MicroBatcher(Generic[T]):
    """Collects items (Faust events) for micro-batches: `get` returns up to ``max_size``
    items, waiting at most ``max_wait_s`` after the oldest one arrived (or, for items left
    over from a full batch, after that batch was cut); right after a full batch (a backlog)
    up to ``backlog_wait_s`` (default ``max_wait_s``) after `get` was called instead. `put`
    never blocks, and `room` lets the producer side wait while ``max_pending`` items are
    queued.

    Two waits because they serve two loads: records reach the batcher a fetch response at
    a time, so at a steady load the wait after the first record mostly delays the answers
    (nothing more comes until the next fetch), while in a backlog the wait after a full
    batch lets the next fetch's records make a full batch rather than a burst's tail a
    small one (docs/service.md, Micro-batching)."""

    def __init__(self, max_size: int, max_wait_s: float, max_pending: int | None = None,
                 backlog_wait_s: float | None = None):
        if max_size < 1:
            raise ValueError(f"max_size must be >= 1, got {max_size}")
        self.max_size = max_size
        self.max_wait_s = max_wait_s
        self.backlog_wait_s = max_wait_s if backlog_wait_s is None else backlog_wait_s
        self.max_pending = max_pending if max_pending is not None else 4 * max_size
        self._items: list[T] = []
        self._first_at = 0.0
        self._backlog = False  # the last batch was full
        self._added = asyncio.Event()
        self._taken = asyncio.Event()

    def __len__(self) -> int:
        return len(self._items)

    @property
    def full(self) -> bool:
        return len(self._items) >= self.max_pending

    @property
    def backlog(self) -> bool:
        """The last batch `get` returned was full: records wait for the worker."""
        return self._backlog

    def put(self, item: T) -> None:
        if not self._items:
            self._first_at = time.monotonic()
        self._items.append(item)
        self._added.set()

    async def room(self) -> None:
        while self.full:
            self._taken.clear()
            await self._taken.wait()

    async def get(self) -> list[T]:
        while not self._items:
            self._added.clear()
            await self._added.wait()
        # After a full batch (a backlog) the wait also counts from now: records come in
        # fetch-sized bursts, and a batch cut at the burst's tail is a small one.
        if self._backlog:
            since, wait = time.monotonic(), self.backlog_wait_s  # never before _first_at
        else:
            since, wait = self._first_at, self.max_wait_s
        while len(self._items) < self.max_size:
            left = since + wait - time.monotonic()
            if left <= 0:
                break
            if not await wait_signal(self._added, left):
                break
        batch = self._items[: self.max_size]
        del self._items[: self.max_size]
        self._backlog = len(batch) == self.max_size
        if self._items:
            self._first_at = time.monotonic()  # bound the wait of what is left, too
        self._taken.set()
        return batch
