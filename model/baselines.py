"""Baselines that need no training, scored through the same `RankRequest` path as models.

* `PopScorer` (POP): rows per streamer before the evaluated period, ranked among the live.
* `LivePopScorer` (live popularity): viewers so far of the streamer's current stream --
  rows of that stream that started at an earlier step (past events only).
* `RepScorer` (REP, liverank's own): the live streamers of the user's last 50 watches,
  most recently watched first, then the rest by POP; POP alone on an empty window. It is
  *not* LiveRec's repeat baseline: it ranks by recency and looks further back.
* `RepCountScorer` (REP-count, LiveRec's REP): live streamers by how often they occur in
  the input window, as in LiveRec's code (``baselines.py``, class ``REP``, in
  github.com/JRappaz/liverec): ``Counter(inputs[b, :-1])`` over the last ``seq_len = 16``
  inputs -- which leaves out the newest of them (``skip_newest``) -- scored for each live
  streamer; no recency. LiveRec leaves ties (most candidates: count 0) in numpy's argsort
  order; here they fall to the shared tie-break below, i.e. POP.

Each uses the same tie-break as the models: the popularity order (most watched first), then
name. numpy only.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .data.availability import Availability
from .data.twitch import Interactions
from .features import CandidateSet, ItemIndex
from .scorer import BaseScorer, RankRequest, Scored


def popularity_index(ds: Interactions, before_step: int) -> ItemIndex:
    """Streamers with rows starting before ``before_step``, most watched first, then name."""
    mask = ds.start < before_step
    counts = np.bincount(ds.streamer[mask], minlength=ds.n_streamers + 1)[1:]
    idx = np.flatnonzero(counts > 0) + 1
    names = ds.streamer_names[idx].astype(str)
    order = np.lexsort((names, -counts[idx - 1]))
    return ItemIndex(tuple(names[order].tolist()), counts[idx[order] - 1].astype(np.int64))


class PopScorer(BaseScorer):
    """Training popularity among the live candidates; the window is ignored."""

    version = "pop"
    window_len = 0

    def __init__(self, ds: Interactions, before_step: int) -> None:
        super().__init__(popularity_index(ds, before_step))

    def score_all(self, requests: Sequence[RankRequest]) -> list[Scored]:
        out = []
        for req in requests:
            cset = self.candidates(req.candidates)
            out.append(Scored(cset.names, self._prior[cset.items], len(req.window) == 0))
        return out


class LivePopScorer(BaseScorer):
    """Viewers so far of each candidate's live stream at the request's step."""

    version = "live-pop"
    window_len = 0

    def __init__(self, ds: Interactions, live: Availability, before_step: int) -> None:
        super().__init__(popularity_index(ds, before_step))
        self.live = live
        self._dataset_ids = ds.streamer_index()
        self._cell_counts = _viewers_so_far(ds, live)
        self._ds_cache: dict[tuple[str, ...], np.ndarray] = {}

    def _dataset_idx(self, cset: CandidateSet) -> np.ndarray:
        found = self._ds_cache.get(cset.names)
        if found is None:
            found = np.asarray([self._dataset_ids.get(n, -1) for n in cset.names],
                               dtype=np.int64)
            if len(self._ds_cache) > 256:
                self._ds_cache.clear()
            self._ds_cache[cset.names] = found
        return found

    def score_all(self, requests: Sequence[RankRequest]) -> list[Scored]:
        out = []
        for req in requests:
            cset = self.candidates(req.candidates)
            idx = self._dataset_idx(cset)
            live = self.live.streamers_at(int(req.step))
            pos = np.searchsorted(live, idx)
            ok = (pos < live.shape[0]) & (idx >= 0)
            ok[ok] = live[pos[ok]] == idx[ok]
            scores = np.zeros(len(cset.names), dtype=np.float32)
            if 0 <= req.step < self.live.n_steps:
                base = int(self.live.indptr[int(req.step)])
                scores[ok] = self._cell_counts[base + pos[ok]]
            out.append(Scored(cset.names, scores, len(req.window) == 0))
        return out


def _viewers_so_far(ds: Interactions, live: Availability) -> np.ndarray:
    """Per live cell (step s, stream x): rows of stream x that started before step s."""
    streams, inverse = np.unique(ds.stream, return_inverse=True)
    span = np.int64(ds.max_step + 2)
    row_keys = np.sort(inverse.astype(np.int64) * span + ds.start.astype(np.int64))
    cell_steps = np.repeat(np.arange(live.n_steps, dtype=np.int64), live.live_counts())
    cell_stream = np.searchsorted(streams, live.streams).astype(np.int64)
    before = np.searchsorted(row_keys, cell_stream * span + cell_steps, side="left")
    first = np.searchsorted(row_keys, cell_stream * span, side="left")
    return (before - first).astype(np.float32)


class RepScorer(BaseScorer):
    """Most recent live streamer of the last ``window_len`` watches first, then POP (not
    LiveRec's REP: that is `RepCountScorer`)."""

    version = "rep"

    def __init__(self, ds: Interactions, before_step: int, window_len: int = 50) -> None:
        super().__init__(popularity_index(ds, before_step))
        self.window_len = window_len
        top = float(self._prior.max()) if self._prior.size else 0.0
        self._scaled = self._prior / (top + 1.0)  # POP part stays in [0, 1)

    def score_all(self, requests: Sequence[RankRequest]) -> list[Scored]:
        out = []
        for req in requests:
            cset = self.candidates(req.candidates)
            scores = self._scaled[cset.items].copy()
            window = list(req.window[-self.window_len:]) if self.window_len else []
            for pos, (name, _) in enumerate(window):
                col = cset.cols.get(name)
                if col is not None:
                    scores[col] = 1.0 + pos  # later in the window = more recent = higher
            out.append(Scored(cset.names, scores, not window))
        return out


class RepCountScorer(BaseScorer):
    """LiveRec's REP: occurrences of each live streamer in the last ``window_len`` watches
    (without the newest one when ``skip_newest``, as LiveRec's code counts ``inputs[:-1]``),
    ties by POP."""

    version = "rep-count"

    def __init__(self, ds: Interactions, before_step: int, window_len: int = 16,
                 skip_newest: bool = True) -> None:
        super().__init__(popularity_index(ds, before_step))
        self.window_len = window_len
        self.skip_newest = skip_newest
        top = float(self._prior.max()) if self._prior.size else 0.0
        self._scaled = self._prior / (top + 1.0)  # POP part stays in [0, 1): only ties

    def score_all(self, requests: Sequence[RankRequest]) -> list[Scored]:
        out = []
        for req in requests:
            cset = self.candidates(req.candidates)
            scores = self._scaled[cset.items].copy()
            window = list(req.window[-self.window_len:]) if self.window_len else []
            counted = window[:-1] if self.skip_newest else window
            for name, _ in counted:
                col = cset.cols.get(name)
                if col is not None:
                    scores[col] += 1.0
            out.append(Scored(cset.names, scores, not window))
        return out
