"""Which streamers are live at step s, under two definitions, as CSR indexes.

* ``broadcast`` (liverank's default everywhere): a stream id is live on
  ``[first start, last end)`` of its rows. This is what a platform knows from start/stop
  events, so offline training and evaluation, the replay and the streaming service agree.
  Gaps inside a broadcast where nobody in the log watched still count as live.
* ``rows`` (LiveRec's definition, for comparison with the paper): a streamer is live at s if
  one of its rows has ``start <= s < end``. It only knows a stream was on air when somebody
  in the log watched it, so it sees fewer live streamers per step.

Models rank streamers; an answer names the streamer's live stream. When a streamer has two
overlapping live streams at a step (possible in a real file), the latest started wins
(by the stream's first start in the log, under both definitions; ties: the larger id);
``overlaps`` counts how often that happened.

``streamers_at(s)`` costs O(live at s): the (step, streamer) pairs are stored sorted by
step, then streamer index, with ``indptr[s]:indptr[s+1]`` delimiting step s.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from .twitch import Interactions

Definition = Literal["broadcast", "rows"]
DEFINITIONS: tuple[Definition, ...] = ("broadcast", "rows")


@dataclass(frozen=True)
class Broadcasts:
    """One entry per stream id: its streamer and the interval it is on air."""

    stream: np.ndarray  # (S,) int64, sorted
    streamer: np.ndarray  # (S,) int32
    start: np.ndarray  # (S,) int32 first start
    stop: np.ndarray  # (S,) int32 exclusive: last end
    multi_streamer: int  # stream ids seen with more than one streamer (kept: first seen)

    def __len__(self) -> int:
        return int(self.stream.shape[0])


def broadcasts(ds: Interactions) -> Broadcasts:
    if len(ds) == 0:
        e = np.zeros(0, dtype=np.int64)
        return Broadcasts(e, e.astype(np.int32), e.astype(np.int32), e.astype(np.int32), 0)
    # One stable sort by stream id, then per-group reductions (much cheaper than ufunc.at).
    order = np.argsort(ds.stream, kind="stable")
    sorted_stream = ds.stream[order]
    first = np.flatnonzero(np.r_[True, sorted_stream[1:] != sorted_stream[:-1]])
    start = np.minimum.reduceat(ds.start[order], first)
    stop = np.maximum.reduceat(ds.end[order], first)
    # The streamer of a stream id is the one on its first row in file order (the sort is
    # stable, so each group's first entry is its earliest row).
    streamer = ds.streamer[order[first]]
    sizes = np.diff(np.r_[first, len(order)])
    other = ds.streamer[order] != np.repeat(streamer, sizes)
    multi = int(np.count_nonzero(np.logical_or.reduceat(other, first)))
    return Broadcasts(sorted_stream[first], streamer.astype(np.int32), start.astype(np.int32),
                      stop.astype(np.int32), multi)


@dataclass(frozen=True)
class Availability:
    """Live streamers per step: ``streamers[indptr[s]:indptr[s+1]]`` sorted ascending, and
    ``streams`` the stream id that answers for each of them."""

    definition: Definition
    indptr: np.ndarray  # (n_steps + 1,) int64
    streamers: np.ndarray  # (nnz,) int32
    streams: np.ndarray  # (nnz,) int64
    overlaps: int  # (step, streamer) cells where more than one stream was live

    @property
    def n_steps(self) -> int:
        return int(self.indptr.shape[0] - 1)

    def _span(self, step: int) -> slice:
        if step < 0 or step >= self.n_steps:
            return slice(0, 0)
        return slice(int(self.indptr[step]), int(self.indptr[step + 1]))

    def streamers_at(self, step: int) -> np.ndarray:
        return self.streamers[self._span(step)]

    def streams_at(self, step: int) -> np.ndarray:
        return self.streams[self._span(step)]

    def is_live(self, streamer: int, step: int) -> bool:
        live = self.streamers_at(step)
        i = int(np.searchsorted(live, streamer))
        return i < live.shape[0] and int(live[i]) == streamer

    def stream_of(self, streamer: int, step: int) -> int | None:
        live = self.streamers_at(step)
        i = int(np.searchsorted(live, streamer))
        if i < live.shape[0] and int(live[i]) == streamer:
            return int(self.streams_at(step)[i])
        return None

    def live_counts(self) -> np.ndarray:
        return np.diff(self.indptr)


def availability(ds: Interactions, definition: Definition = "broadcast") -> Availability:
    """Build the live index of ``ds`` under ``definition`` over steps ``0..max_step``."""
    if definition == "broadcast":
        b = broadcasts(ds)
        return _index(b.streamer, b.stream, b.start, b.stop, ds.max_step + 1, definition)
    if definition == "rows":
        # Rows rank overlapping streams by their broadcast start too, so both definitions
        # name the same stream whenever both see it live.
        b = broadcasts(ds)
        first = b.start[np.searchsorted(b.stream, ds.stream)]
        return _index(ds.streamer, ds.stream, ds.start, ds.end, ds.max_step + 1, definition,
                      rank_start=first)
    raise ValueError(f"unknown availability definition {definition!r}: use broadcast or rows")


def _index(streamer: np.ndarray, stream: np.ndarray, start: np.ndarray, stop: np.ndarray,
           n_steps: int, definition: Definition,
           rank_start: np.ndarray | None = None) -> Availability:
    rank = (start if rank_start is None else rank_start).astype(np.int64)
    # Order the intervals by streamer, then latest start first (then larger stream id first),
    # and expand them into their (step, streamer, stream) cells in that order: one stable
    # sort of the cells by step alone then leaves each step's cells by streamer in that
    # order, so the first cell of each (step, streamer) group is the stream that answers for
    # it. Steps fit 16 bits on any real log (65,536 steps of 10 minutes are 455 days), and
    # numpy's stable sort of 16-bit keys is a radix sort: linear, where the (step, streamer)
    # key took a comparison sort of all the cells.
    pre = np.lexsort((-stream.astype(np.int64), -rank, streamer))
    streamer, stream = streamer[pre].astype(np.int32), stream[pre].astype(np.int64)
    start, stop = start[pre].astype(np.int64), np.minimum(stop[pre].astype(np.int64), n_steps)
    length = np.maximum(stop - start, 0)
    total = int(length.sum())
    # Ten million cells and more on a large log: 32-bit where the values fit (steps are
    # int32 in `Interactions`; fresh memory is much of the cost).
    small = np.int32 if max(total, length.shape[0]) < 2**31 else np.int64
    interval = np.repeat(np.arange(length.shape[0], dtype=small), length)  # of each cell
    first_cell = (np.cumsum(length) - length).astype(small)
    steps = start.astype(small)[interval] + (np.arange(total, dtype=small)
                                             - first_cell[interval])
    key = steps.astype(np.uint16) if n_steps <= 1 << 16 else steps
    interval = interval[np.argsort(key, kind="stable")]
    counts = np.bincount(steps, minlength=n_steps)[:n_steps]
    del steps, key
    steps = np.repeat(np.arange(n_steps, dtype=small), counts)  # sorted
    cell_streamer, cell_stream = streamer[interval], stream[interval]
    first = np.ones(total, dtype=bool)
    distinct = np.ones(total, dtype=bool)  # first cell of each (step, streamer, stream)
    if total > 1:
        first[1:] = (steps[1:] != steps[:-1]) | (cell_streamer[1:] != cell_streamer[:-1])
        distinct[1:] = first[1:] | (cell_stream[1:] != cell_stream[:-1])
    # Overlaps: extra distinct streams live for one streamer at one step.
    overlaps = int(np.count_nonzero(distinct) - np.count_nonzero(first))
    steps, cell_streamer, cell_stream = steps[first], cell_streamer[first], cell_stream[first]
    counts = np.bincount(steps, minlength=n_steps)[:n_steps]
    indptr = np.zeros(n_steps + 1, dtype=np.int64)
    np.cumsum(counts, out=indptr[1:])
    return Availability(definition, indptr, cell_streamer.astype(np.int32), cell_stream,
                        overlaps)
