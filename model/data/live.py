"""Availability on event time: the streaming live index that the service and the monitor
share.

`LiveStreams` holds every broadcast's interval ``[start, stop)`` on event time (from
``stream-events``) plus the watermark of every partition. ``candidates(s)`` answers "who
is live at step s" from the intervals, so it does not depend on the order the stream events
and the requests were read in, and it names the same stream per streamer as the batch index
of `liverank.model.data.availability` (latest start first, then the larger stream id):
`tests/test_live_index.py` checks the two against each other on random logs. A consumer
waits (`ready`) until every partition delivered a watermark >= s. Stopped intervals stay
until they are ``stopped_horizon`` steps behind the oldest step still to be asked about
(`prune`), so a request behind the stream feed, behind another partition, or read again
after a rebalance or a restart is still answered exactly.

Plain numpy and the event contract: no pandas, no faust (the serving path imports it).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from liverank.core import events as ev
from liverank.core.timebase import STEPS_PER_DAY

NO_STEP = np.int64(2**62)  # an unknown start (never live) or a stop not seen yet (still live)


@dataclass(frozen=True)
class Candidates:
    """The streamers live at one step and, for each, the stream that answers for it."""

    step: int
    streamers: tuple[str, ...]  # a tuple: scorers cache its candidate set by identity
    streams: dict[str, int]  # streamer name -> stream id (latest started; ties: larger id)

    def __len__(self) -> int:
        return len(self.streamers)


class LiveStreams:
    """Interval index of broadcasts on event time, with per-partition watermarks.

    Intervals live in numpy slot arrays (a free list reuses the slots of pruned ones), so
    ``candidates(s)`` is one vectorised pass; its result is cached per step (least recently
    used out; a worker's partitions can be hundreds of steps apart, each visiting the same
    steps in turn) and the cache entries for steps >= t are dropped when a start or stop at
    step t arrives.
    """

    def __init__(self, partitions: int, stopped_horizon: int = STEPS_PER_DAY,
                 cache_steps: int = 256):
        if partitions < 1:
            raise ValueError(f"partitions must be >= 1, got {partitions}")
        self.partitions = partitions
        self.stopped_horizon = stopped_horizon
        self._cache_steps = cache_steps
        self._wm = np.full(partitions, -1, dtype=np.int64)
        self._slot_of: dict[int, int] = {}
        self._free: list[int] = []
        self._names: list[str] = []
        self._name_id: dict[str, int] = {}
        self._stream = np.zeros(0, dtype=np.int64)  # stream id per slot
        self._streamer = np.zeros(0, dtype=np.int32)  # index into _names
        self._start = np.zeros(0, dtype=np.int64)  # NO_STEP: start not seen
        self._stop = np.zeros(0, dtype=np.int64)  # NO_STEP: still live
        self._start_seq = np.zeros(0, dtype=np.int64)  # seq of the start event (-1: none)
        self._used = np.zeros(0, dtype=np.bool_)
        self._alloc(1024)
        self._cache: dict[int, Candidates] = {}
        self._cache_top = -1  # no cached step is above this (skips most invalidations)
        self._pruned_below = -1  # intervals that stopped before this step may be gone
        self.anomalies = 0  # stops without a start, starts after their stop, ...

    # --- intervals -------------------------------------------------------------------
    def _alloc(self, capacity: int) -> None:
        """Grow the slot arrays to ``capacity``; the new slots go on the free list."""
        old = self._stream.shape[0]
        extra = capacity - old
        self._stream = _grow(self._stream, extra, 0)
        self._streamer = _grow(self._streamer, extra, 0)
        self._start = _grow(self._start, extra, NO_STEP)
        self._stop = _grow(self._stop, extra, NO_STEP)
        self._start_seq = _grow(self._start_seq, extra, -1)
        self._used = _grow(self._used, extra, False)
        self._free.extend(range(capacity - 1, old - 1, -1))

    def _slot(self, stream: int, streamer: str) -> int:
        slot = self._slot_of.get(stream)
        if slot is not None:
            return slot
        if not self._free:
            self._alloc(2 * self._stream.shape[0])
        slot = self._free.pop()
        name_id = self._name_id.get(streamer)
        if name_id is None:
            name_id = self._name_id[streamer] = len(self._names)
            self._names.append(streamer)
        self._slot_of[stream] = slot
        self._stream[slot], self._streamer[slot] = stream, name_id
        self._start[slot], self._stop[slot], self._used[slot] = NO_STEP, NO_STEP, True
        return slot

    def start(self, stream: int, streamer: str, step: int, seq: int = -1) -> None:
        if step < self._pruned_below and stream not in self._slot_of:
            # A start behind the pruning cutoff for a stream not held: a broadcast already
            # pruned (stopped long ago), sent again. Taking it would make it live forever.
            self.anomalies += 1
            return
        slot = self._slot(stream, streamer)
        if self._start[slot] != NO_STEP and self._start[slot] <= step:
            return  # a replayed start: the first one holds
        if self._stop[slot] != NO_STEP:
            self.anomalies += 1  # the stop came first (e.g. read from the middle of the log)
        self._start[slot], self._start_seq[slot] = step, seq
        self._invalidate(step)

    def stop(self, stream: int, streamer: str, step: int) -> None:
        slot = self._slot(stream, streamer)
        if self._stop[slot] != NO_STEP and self._stop[slot] >= step:
            return  # a replayed stop: the last one holds
        if self._start[slot] == NO_STEP:
            self.anomalies += 1
        self._stop[slot] = step
        self._invalidate(step)

    def _invalidate(self, step: int) -> None:
        if self._cache and step <= self._cache_top:
            for s in [s for s in self._cache if s >= step]:
                del self._cache[s]

    # --- watermarks ------------------------------------------------------------------
    def advance(self, partition: int, step: int) -> bool:
        """Record a watermark of ``partition``; True when the global watermark moved."""
        if not 0 <= partition < self.partitions:
            raise ValueError(f"partition {partition} outside 0..{self.partitions - 1}")
        if step <= self._wm[partition]:
            return False
        before = self.watermark
        self._wm[partition] = step
        return self.watermark > before

    @property
    def watermark(self) -> int:
        """Every partition has delivered all stream events up to this step (-1: not yet)."""
        return int(self._wm.min())

    def ready(self, step: int) -> bool:
        return self.watermark >= step

    def apply(self, event: ev.StreamEvent, partition: int) -> bool:
        """Apply one stream event read from ``partition``; True when the watermark moved."""
        if isinstance(event, ev.StreamStart):
            self.start(event.stream, event.streamer, event.step, event.seq)
        elif isinstance(event, ev.StreamStop):
            self.stop(event.stream, event.streamer, event.step)
        elif isinstance(event, ev.Watermark | ev.End):
            return self.advance(partition, event.step)
        return False

    # --- queries ---------------------------------------------------------------------
    def candidates(self, step: int) -> Candidates:
        """Streamers live at ``step``: start <= step < stop, one stream per streamer."""
        hit = self._cache.pop(step, None)
        if hit is not None:
            self._cache[step] = hit  # most recently used: last out
            return hit
        live = np.flatnonzero(self._used & (self._start <= step) & (self._stop > step))
        # Sort by streamer, then latest start first, then larger stream id first: the first
        # slot of each streamer is the stream that answers for it (as in availability.py).
        order = np.lexsort((-self._stream[live], -self._start[live], self._streamer[live]))
        live = live[order]
        names_idx = self._streamer[live]
        first = np.ones(live.shape[0], dtype=bool)
        first[1:] = names_idx[1:] != names_idx[:-1]
        live, names_idx = live[first], names_idx[first]
        names = tuple(map(self._names.__getitem__, names_idx.tolist()))
        result = Candidates(step, names, dict(zip(names, self._stream[live].tolist(),
                                                  strict=True)))
        if len(self._cache) >= self._cache_steps:
            del self._cache[next(iter(self._cache))]
        self._cache[step] = result
        self._cache_top = max(self._cache_top, step)
        return result

    def starts(self, after: int, upto: int) -> list[tuple[int, int, str]]:
        """(step, seq, streamer) of every broadcast held that started in ``(after, upto]``,
        in timeline order: what went live (the pushes' trigger, `liverank.model.pushes`)."""
        hit = np.flatnonzero(self._used & (self._start > after) & (self._start <= upto))
        if not hit.shape[0]:
            return []
        hit = hit[np.lexsort((self._start_seq[hit], self._start[hit]))]
        return [(step, seq, self._names[name]) for step, seq, name in zip(
            self._start[hit].tolist(), self._start_seq[hit].tolist(),
            self._streamer[hit].tolist(), strict=True)]

    def prune(self, floor: int) -> int:
        """Forget intervals that stopped ``stopped_horizon`` steps or more before ``floor``,
        the step every source of requests has reached; returns how many were dropped.

        The floor must not be the newest request's step: partitions of user-events are
        read at different speeds, so one may be hours of event time behind another."""
        cutoff = floor - self.stopped_horizon
        if cutoff <= self._pruned_below:
            return 0
        self._pruned_below = cutoff
        old = np.flatnonzero(self._used & (self._stop <= cutoff))
        if old.shape[0]:
            for stream in self._stream[old].tolist():
                del self._slot_of[stream]
            self._used[old] = False
            self._start[old], self._stop[old] = NO_STEP, NO_STEP
            self._free.extend(old.tolist())
            self._cache.clear()
        return int(old.shape[0])

    def stale(self, step: int) -> bool:
        """True when intervals a request at ``step`` needs may have been pruned."""
        return step < self._pruned_below


    def live_count(self) -> int:
        """Streams live at the watermark (for the metrics)."""
        wm = self.watermark
        return int(np.count_nonzero(self._used & (self._start <= wm) & (self._stop > wm)))

    def __len__(self) -> int:
        """Intervals held (live or kept within the horizon)."""
        return len(self._slot_of)


def _grow(arr: np.ndarray, extra: int, fill: object) -> np.ndarray:
    return np.concatenate([arr, np.full(extra, fill, dtype=arr.dtype)])
