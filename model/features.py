"""Model inputs from windows and candidates: numpy only, shared by training, evaluation and
the streaming service, so every path turns the same watches into the same numbers.

Vocabulary (`ItemIndex`): the model's streamer index orders the streamers seen in training
by training popularity (most watched first), then name; item 0 is padding and the last id
(``n_items + 1``) is the out-of-vocabulary item, which training uses for rare streamers and
serving for streamers the model never saw. The same index is the tie-break everywhere: equal
scores rank by model index, then by name.

Time (`TimeEncoding`): a step is 10 minutes; hour of day ``(step % 144) // 6``, day of week
``(step // 144) % 7``; gaps are bucketed by fixed step boundaries. Feature values are stored
``+1`` so that 0 always means padding / absent.

Model inputs for a batch of B windows of length L with C candidates (all int64):

* ``items (B, L)``: item ids, left-padded with 0 (the newest watch is last);
* ``watch_time (B, L, 2)``: hour+1, weekday+1 of each watch;
* ``query_time (B, L, 2)``: hour+1, weekday+1 of each position's query step -- the next
  watch's step inside the window, the request's step at the last position (the same rule
  training uses: position t predicts watch t+1 at its step);
* ``gaps (B, L, L)``: bucket+1 of ``query_step[t] - step[j]`` for j <= t, both real, else 0;
* ``cand_items (B, C)``: candidate item ids (0 pads a short candidate list);
* ``cand_repeat (B, C, 2)``: for a candidate the user watched inside the window: bucket+1 of
  the gap since its last watch there, bucket+1 of how often; 0 when not in the window.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from liverank.core.timebase import STEPS_PER_DAY, STEPS_PER_HOUR

PAD = 0
GAP_BOUNDARIES = (1, 2, 3, 6, 12, 24, 48, 96, 144, 288, 576, 1008, 2016, 4032)
COUNT_BOUNDARIES = (2, 3, 4, 6, 10)
INPUT_NAMES = ("items", "watch_time", "query_time", "gaps", "cand_items", "cand_repeat")
OUTPUT_NAME = "scores"


@dataclass(frozen=True)
class TimeEncoding:
    """How steps become time-of-day, weekday and gap buckets (stored in model.json)."""

    steps_per_hour: int = STEPS_PER_HOUR
    steps_per_day: int = STEPS_PER_DAY
    days_per_week: int = 7
    gap_boundaries: tuple[int, ...] = GAP_BOUNDARIES
    count_boundaries: tuple[int, ...] = COUNT_BOUNDARIES

    @property
    def n_hours(self) -> int:
        return self.steps_per_day // self.steps_per_hour

    @property
    def n_gaps(self) -> int:  # bucket values 0..n_gaps-1 (stored +1)
        return len(self.gap_boundaries) + 1

    @property
    def n_counts(self) -> int:
        return len(self.count_boundaries) + 1

    def hour(self, steps: np.ndarray) -> np.ndarray:
        return (steps % self.steps_per_day) // self.steps_per_hour

    def weekday(self, steps: np.ndarray) -> np.ndarray:
        return (steps // self.steps_per_day) % self.days_per_week

    def gap_bucket(self, gaps: np.ndarray) -> np.ndarray:
        """0 for a gap of 0 (or negative), then one bucket per boundary passed."""
        return np.searchsorted(np.asarray(self.gap_boundaries), gaps, side="right")

    def count_bucket(self, counts: np.ndarray) -> np.ndarray:
        return np.searchsorted(np.asarray(self.count_boundaries), counts, side="right")

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> TimeEncoding:
        return cls(
            steps_per_hour=int(raw["steps_per_hour"]),
            steps_per_day=int(raw["steps_per_day"]),
            days_per_week=int(raw["days_per_week"]),
            gap_boundaries=tuple(int(x) for x in raw["gap_boundaries"]),
            count_boundaries=tuple(int(x) for x in raw["count_boundaries"]),
        )


@dataclass(frozen=True)
class ItemIndex:
    """Streamer names <-> model item ids (1..n_items), plus the OOV id and training counts."""

    names: tuple[str, ...]  # names[i - 1] is item i
    counts: np.ndarray = field(repr=False)  # (n_items,) training rows per item
    _ids: dict[str, int] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        ids = {name: i + 1 for i, name in enumerate(self.names)}
        if len(ids) != len(self.names):
            raise ValueError("item index: streamer names are not unique")
        if len(self.counts) != len(self.names):
            raise ValueError(f"item index: {len(self.counts)} counts for {len(self.names)} names")
        object.__setattr__(self, "_ids", ids)

    @property
    def n_items(self) -> int:
        return len(self.names)

    @property
    def oov(self) -> int:
        return len(self.names) + 1

    @property
    def vocab_size(self) -> int:
        return len(self.names) + 2

    def id(self, name: str) -> int:
        return self._ids.get(name, self.oov)

    def ids(self, names: Iterable[str]) -> np.ndarray:
        # map() over the dict's get with a repeated default: the lookups run without a
        # Python frame per name (a generator took ~6% of a serving worker's GIL time).
        return np.fromiter(map(self._ids.get, names, itertools.repeat(self.oov)),
                           dtype=np.int64)

    def prior(self) -> np.ndarray:
        """(vocab,) popularity prior log(1 + training count); 0 for padding and OOV."""
        out = np.zeros(self.vocab_size, dtype=np.float32)
        out[1 : self.n_items + 1] = np.log1p(self.counts.astype(np.float32))
        return out


@dataclass(frozen=True)
class CandidateSet:
    """One request's candidates in tie-break order (model index, then name), deduplicated."""

    names: tuple[str, ...]
    items: np.ndarray  # (C,) int64 model item ids, non-decreasing
    cols: dict[str, int]  # name -> column


def candidate_set(names: Sequence[str], index: ItemIndex) -> CandidateSet:
    """Order by model item id, then name. Known names have distinct ids, so only the
    unknown ones (all the OOV id, the largest) need the name: one numpy sort of the ids and
    a name sort of the OOV tail, where a Python sort keyed by (id, name) cost a serving
    worker's scoring thread a fifth of its GIL time."""
    unique = list(set(names))
    ids = index.ids(unique)
    order = np.argsort(ids, kind="stable")
    ordered = [unique[i] for i in order.tolist()]
    items = ids[order]
    n_oov = int(np.count_nonzero(items == index.oov))
    if n_oov > 1:
        ordered[-n_oov:] = sorted(ordered[-n_oov:])
    return CandidateSet(tuple(ordered), items,
                        dict(zip(ordered, range(len(ordered)), strict=True)))


def window_arrays(windows: Sequence[Sequence[tuple[str, int]]], window_len: int,
                  index: ItemIndex) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Left-padded (B, L) item ids, steps and a real-entry mask from the last L entries.

    One id lookup and one scatter for the whole batch: per window, the lookup and two
    slice assignments cost a serving worker's event loop ~1 ms per batch of 256."""
    b = len(windows)
    items = np.zeros((b, window_len), dtype=np.int64)
    steps = np.zeros((b, window_len), dtype=np.int64)
    if not window_len or not b:
        return items, steps, items != PAD
    tails = [w[-window_len:] for w in windows]
    flat = [entry for tail in tails for entry in tail]
    if flat:
        names, at = zip(*flat, strict=True)  # the two columns, without a frame per entry
        lengths = np.fromiter(map(len, tails), dtype=np.int64, count=b)
        # Row-major order of the filled (right-aligned) cells is the entries' order.
        filled = np.arange(window_len) >= (window_len - lengths)[:, None]
        items[filled] = index.ids(names)
        steps[filled] = np.fromiter(at, dtype=np.int64, count=len(at))
    return items, steps, items != PAD


def query_steps(steps: np.ndarray, request_step: np.ndarray) -> np.ndarray:
    """(B, L) query step per position: the next watch's step, the request's at the end."""
    q = np.empty_like(steps)
    q[:, :-1] = steps[:, 1:]
    q[:, -1] = request_step
    return q


def time_features(steps: np.ndarray, valid: np.ndarray, query: np.ndarray,
                  enc: TimeEncoding) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``watch_time (B,L,2)``, ``query_time (B,L,2)``, ``gaps (B,L,L)`` (see module doc)."""
    v = valid.astype(np.int64)
    watch_time = np.stack([enc.hour(steps) + 1, enc.weekday(steps) + 1], axis=-1) * v[..., None]
    query_time = np.stack([enc.hour(query) + 1, enc.weekday(query) + 1], axis=-1) * v[..., None]
    length = steps.shape[1]
    causal = np.tril(np.ones((length, length), dtype=bool))
    allowed = causal[None] & valid[:, None, :] & valid[:, :, None]  # (B, T, J)
    gaps = (enc.gap_bucket(query[:, :, None] - steps[:, None, :]) + 1) * allowed
    return watch_time.astype(np.int64), query_time.astype(np.int64), gaps.astype(np.int64)


def repeat_buckets(gap: np.ndarray, count: np.ndarray, enc: TimeEncoding) -> np.ndarray:
    """(..., 2) repeat features for entries seen ``count`` >= 1 times, last ``gap`` ago."""
    present = count > 0
    rec = np.where(present, enc.gap_bucket(gap) + 1, 0)
    cnt = np.where(present, enc.count_bucket(count) + 1, 0)
    return np.stack([rec, cnt], axis=-1).astype(np.int64)


def repeat_features_positions(keys: np.ndarray, steps: np.ndarray, valid: np.ndarray,
                              query: np.ndarray, cand_keys: np.ndarray,
                              enc: TimeEncoding) -> np.ndarray:
    """Training form: ``(B, L, K, 2)`` repeat features of K candidates at every position.

    ``keys``/``cand_keys`` identify streamers uniquely (dataset indexes, not model items, so
    two unknown streamers sharing the OOV item are still told apart).

    A candidate at position t matches the entries j <= t (real ones) holding its key; the
    newest of them, j*, answers for all: the matches are exactly the real entries up to j*
    with j*'s key, so the count and the latest step come from a (B, J) table of those
    per-entry running values. Few candidates match anything (live negatives seldom are in
    the window), so after the one (B, T, K, J) comparison only the matches are handled,
    where the direct form reduced over every (position, candidate, entry) -- the training
    batch's hot spot (tests/test_model_features.py holds the two equal).
    """
    b, length = keys.shape
    if cand_keys.size == 0 or length == 0:
        return np.zeros(cand_keys.shape + (2,), dtype=np.int64)
    causal = np.tril(np.ones((length, length), dtype=bool))  # [t, j]: j <= t
    # Per entry j: the real entries j' <= j with its key (count, latest step).
    same = (keys[:, :, None] == keys[:, None, :]) & valid[:, None, :] & causal[None]
    count_upto = same.sum(-1)  # (B, J)
    last_upto = np.where(same, steps[:, None, :], np.iinfo(np.int64).min).max(-1)
    # Per position t: the keys of the entries it may match, newest first; the others hold a
    # key below every candidate's.
    never = min(int(cand_keys.min()), int(keys.min())) - 1
    newest_first = np.where(causal[None] & valid[:, None, :], keys[:, None, :],
                            never)[:, :, ::-1].copy()  # (B, T, J), j reversed
    match = cand_keys[..., None] == newest_first[:, :, None, :]  # (B, T, K, J)
    # The matches in C order: by (position, candidate) cell, then newest entry first.
    cell, rev = np.divmod(np.flatnonzero(match), length)
    first = np.ones(cell.shape[0], dtype=bool)
    first[1:] = cell[1:] != cell[:-1]
    cell, newest = cell[first], (length - 1) - rev[first]  # j* of each matched cell
    positions, k = match.shape[1], match.shape[2]
    row, t = cell // (positions * k), (cell // k) % positions
    out = np.zeros(match.shape[:3] + (2,), dtype=np.int64)
    out.reshape(-1, 2)[cell] = repeat_buckets(query[row, t] - last_upto[row, newest],
                                              count_upto[row, newest], enc)
    return out


def repeat_features_last(windows: Sequence[Sequence[tuple[str, int]]], window_len: int,
                         request_steps: Sequence[int] | np.ndarray, cands: Sequence[CandidateSet],
                         width: int, enc: TimeEncoding) -> np.ndarray:
    """Serving form: ``(B, width, 2)`` repeat features of each request's candidates, from the
    names in the last ``window_len`` entries (the same quantity as the training form at the
    last position).

    One column lookup per window entry (a `map` over its candidate set's ``cols``, per
    distinct set) and whole-batch numpy for the counts and latest steps, where a Python
    pass per request and entry took 194 us for 21 requests x 1,310 streams, now 163
    (`docs/measure/features_ab.py`; docs/results.md, session 17)."""
    b = len(windows)
    out = np.zeros((b, width, 2), dtype=np.int64)
    tails = [w[-window_len:] for w in windows] if window_len else []
    flat = [entry for tail in tails for entry in tail]
    if not flat:
        return out
    names, at = zip(*flat, strict=True)
    rows = np.repeat(np.arange(b), np.fromiter(map(len, tails), dtype=np.int64, count=b))
    cols = _entry_columns(names, rows, cands)
    hit = np.flatnonzero(cols >= 0)
    if not hit.size:
        return out
    # One cell per (request, candidate): its entries' count and newest step.
    cell = rows[hit] * width + cols[hit]
    steps = np.fromiter(at, dtype=np.int64, count=len(at))[hit]
    order = np.argsort(cell, kind="stable")
    cell, steps = cell[order], steps[order]
    first = np.flatnonzero(np.concatenate(([True], cell[1:] != cell[:-1])))
    counts = np.diff(np.append(first, cell.size))
    last = np.maximum.reduceat(steps, first)
    row, col = np.divmod(cell[first], width)
    gaps = np.asarray(request_steps, dtype=np.int64)[row] - last
    out[row, col] = repeat_buckets(gaps, counts, enc)
    return out


def _entry_columns(names: Sequence[str], rows: np.ndarray,
                   cands: Sequence[CandidateSet]) -> np.ndarray:
    """Each window entry's column in its request's candidate set, -1 where not a candidate."""
    groups: dict[int, tuple[CandidateSet, list[int]]] = {}
    for r, cset in enumerate(cands):
        groups.setdefault(id(cset), (cset, []))[1].append(r)
    if len(groups) == 1:  # the usual batch: the requests of a step share their live set
        (cset, _), = groups.values()
        return np.fromiter(map(cset.cols.get, names, itertools.repeat(-1)), dtype=np.int64,
                           count=len(names))
    cols = np.full(len(names), -1, dtype=np.int64)
    for cset, members in groups.values():
        idx = np.flatnonzero(np.isin(rows, members))
        cols[idx] = np.fromiter(map(cset.cols.get, [names[i] for i in idx.tolist()],
                                    itertools.repeat(-1)), dtype=np.int64, count=idx.size)
    return cols


def top_k(scores: np.ndarray, k: int) -> np.ndarray:
    """Columns of the k best scores, best first; ties keep column order (the tie-break).

    Exact with ties at the cut: everything scoring at least the k-th value is sorted stably.
    """
    c = scores.shape[0]
    k = min(k, c)
    if k <= 0:
        return np.zeros(0, dtype=np.int64)
    neg = -scores
    if k < c:
        kth = np.partition(neg, k - 1)[k - 1]
        keep = np.flatnonzero(neg <= kth)
    else:
        keep = np.arange(c)
    order = keep[np.argsort(neg[keep], kind="stable")]
    return order[:k]


# `top_k_rows` bounds each row's k-th best score from below by the k-th best of the maxima of
# ROW_BLOCKS strided blocks (block j: columns j, j + n, j + 2n, ...): each block's maximum is
# a different entry, so the k best maxima are k scores at or above the bound, and only the
# few scores that reach it are sorted.
ROW_BLOCKS = 8


def top_k_rows(scores: np.ndarray, k: int) -> np.ndarray:
    """`top_k` of every row of a (B, C) matrix of finite scores at once: (B, min(k, C))
    columns, best first, ties in column order (the serving hot path).

    Every score at or above a floor no higher than the row's k-th best is taken (a few more
    than k) and those are sorted stably, which keeps column order among ties. The floor is
    the k-th best of ROW_BLOCKS-strided block maxima when a row has enough blocks (a
    partition of C / 8 values; a partition of the whole 256 x 1,310 matrix took 1.9 ms of
    the event loop a batch, docs/results.md, session 25), else the exact k-th best."""
    b, c = scores.shape
    k = min(k, c)
    if k <= 0 or b == 0:
        return np.zeros((b, max(k, 0)), dtype=np.int64)
    n = c // ROW_BLOCKS
    if n >= k:
        maxima = scores[:, : n * ROW_BLOCKS].reshape(b, ROW_BLOCKS, n).max(axis=1)
        if c > n * ROW_BLOCKS:  # the last few columns, each a block of its own
            maxima = np.concatenate([maxima, scores[:, n * ROW_BLOCKS :]], axis=1)
    else:
        maxima = scores
    m = maxima.shape[1]
    floor = np.partition(maxima, m - k, axis=1)[:, m - k : m - k + 1]
    picked = np.flatnonzero(scores >= floor)  # row-major: column order within a row
    rows = picked // c
    counts = np.bincount(rows, minlength=b)
    if counts.min() < k:  # only a NaN fails every comparison
        raise ValueError("top_k_rows needs finite scores")
    starts = np.zeros(b, dtype=np.int64)
    np.cumsum(counts[:-1], out=starts[1:])
    at = np.arange(picked.size) - starts[rows]
    width = int(counts.max())
    values = np.full((b, width), -np.inf, dtype=scores.dtype)  # padding after the picks
    cols = np.zeros((b, width), dtype=np.int64)
    values[rows, at] = scores.reshape(-1)[picked]
    cols[rows, at] = picked - rows * c
    order = np.argsort(-values, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(cols, order, axis=1)


def rank_of(scores: np.ndarray, col: int) -> int:
    """1-based position of column ``col`` in the full tie-broken order."""
    s = scores[col]
    return int(np.count_nonzero(scores > s) + np.count_nonzero(scores[:col] == s) + 1)
