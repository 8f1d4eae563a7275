"""Statistics of a viewing log, next to the published figures of the real data.

Two references: the published counts of the full ``100k_a.csv`` (Rappaz et al.), which a
synthetic file of any scale should match per entity (rows per user, per streamer, per
stream id, repeat share, row length), and the temporal patterns measured on the public
2,000-user real sample (heavy users; with its ``stop = start + 3`` convention; described in
docs/platform-notes.md#the-real-twitch-sample), which give the shape of timing rather than
exact targets.

Definitions (all in 10-minute steps; a user's rows are taken in ``start`` order, file order
breaking ties):

* gap: ``start`` of a user's row minus the ``start`` of that user's previous row;
* repeat: a row whose (user, streamer) pair appeared earlier; repeat gap: ``start`` minus
  the ``start`` of the previous row of the same pair;
* next-row-same-streamer: share of a user's consecutive row pairs with the same streamer;
* hour of day: ``(start mod 144) div 6`` (the dataset's step 0 need not be midnight).

    >>> s = file_stats(load_interactions("out/data/small.csv"))   # doctest: +SKIP
    >>> print(format_table(s))                                     # doctest: +SKIP
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from liverank.core.timebase import STEPS_PER_DAY

from .availability import DEFINITIONS, availability, broadcasts
from .twitch import Interactions

QUANTILES = (10, 25, 50, 75, 90)

# Published statistics of the full 100k_a.csv (docs/platform-notes.md#the-real-twitch-sample).
PUBLISHED: dict[str, float] = {
    "rows": 3_051_733,
    "users": 100_000,
    "streamers": 162_625,
    "streams": 739_991,
    "steps": 6_148,
    "pairs": 1_505_158,
    "rows_per_user": 30.5,
    "rows_per_streamer": 18.8,
    "rows_per_stream": 3_051_733 / 739_991,
    "mean_row_steps": 3.14,
    "repeat_share": 0.507,
}

# Temporal statistics of the real 2,000-user sample, as its published description gives them
# (the sample is described in docs/platform-notes.md#the-real-twitch-sample and docs/data.md).
SAMPLE_PUBLISHED: dict[str, object] = {
    "repeat_share": 0.639,
    "hour_share_min": 0.026,
    "hour_share_max": 0.059,
    "gap_quantiles": [1, 8, 52, 134, 267],
    "repeat_gap_quantiles": [130, 210, 550, 1129, 2020],
    "repeat_within_day": 0.17,
    "next_same_streamer": 0.077,
    "distinct_streamers_per_user_median": 17,
    "live_broadcast_mean": 47,
    "live_rows_mean": 39,
}

# Which entries of the side-by-side table are checked against which reference.
TABLE: tuple[tuple[str, str], ...] = (
    ("rows", "count"), ("users", "count"), ("streamers", "count"), ("streams", "count"),
    ("steps", "count"), ("pairs", "count"), ("rows_per_user", "ratio"),
    ("rows_per_streamer", "ratio"), ("rows_per_stream", "ratio"), ("mean_row_steps", "ratio"),
    ("repeat_share", "ratio"),
)


@dataclass(frozen=True)
class UserOrder:
    """Rows in (user, start, file order) order, with the masks every temporal statistic uses."""

    order: np.ndarray  # row indexes
    same_user: np.ndarray  # (N-1,) consecutive sorted rows belong to one user
    gap: np.ndarray  # (N-1,) start difference of consecutive sorted rows


def user_order(ds: Interactions) -> UserOrder:
    order = np.lexsort((np.arange(len(ds)), ds.start, ds.user))
    user, start = ds.user[order], ds.start[order].astype(np.int64)
    return UserOrder(order, user[1:] == user[:-1], np.diff(start))


def repeat_gaps(ds: Interactions) -> tuple[np.ndarray, np.ndarray]:
    """Per row: is it a repeat (pair seen before, by start), and its repeat gap (-1 if not)."""
    n = len(ds)
    order = np.lexsort((np.arange(n), ds.start, ds.streamer, ds.user))
    u, j = ds.user[order], ds.streamer[order]
    start = ds.start[order].astype(np.int64)
    repeat_sorted = np.zeros(n, dtype=bool)
    gap_sorted = np.full(n, -1, dtype=np.int64)
    if n > 1:
        same = (u[1:] == u[:-1]) & (j[1:] == j[:-1])
        repeat_sorted[1:] = same
        gap_sorted[1:] = np.where(same, start[1:] - start[:-1], -1)
    repeat = np.empty(n, dtype=bool)
    gap = np.empty(n, dtype=np.int64)
    repeat[order], gap[order] = repeat_sorted, gap_sorted
    return repeat, gap


def _quantiles(x: np.ndarray) -> list[float]:
    if x.size == 0:
        return [0.0] * len(QUANTILES)
    return [float(v) for v in np.percentile(x, QUANTILES)]


def _r(x: float, nd: int = 3) -> float:
    return round(float(x), nd)


def hour_shares(ds: Interactions) -> np.ndarray:
    hours = (ds.start.astype(np.int64) % STEPS_PER_DAY) // 6
    counts = np.bincount(hours, minlength=24)[:24].astype(float)
    return counts / max(len(ds), 1)


def file_stats(ds: Interactions) -> dict[str, object]:
    """Every statistic ``liverank data stats`` prints, as a JSON-ready dict."""
    n = len(ds)
    if n == 0:
        raise ValueError(f"{ds.source or 'log'}: no rows, no statistics")
    rows_user = np.bincount(ds.user)[1:]
    rows_streamer = np.bincount(ds.streamer)[1:]
    pairs = int(np.unique(ds.user.astype(np.int64) * (ds.n_streamers + 1) + ds.streamer).size)
    repeat, rgap = repeat_gaps(ds)
    rgap = rgap[repeat]
    uo = user_order(ds)
    gaps = uo.gap[uo.same_user]
    streamer_sorted = ds.streamer[uo.order]
    next_same = (streamer_sorted[1:] == streamer_sorted[:-1])[uo.same_user]
    distinct_per_user = np.bincount(
        np.unique(ds.user.astype(np.int64) * (ds.n_streamers + 1) + ds.streamer)
        // (ds.n_streamers + 1))[1:]
    top = np.sort(rows_streamer)[::-1]
    hours = hour_shares(ds)
    days = np.bincount((ds.start.astype(np.int64) // STEPS_PER_DAY) % 7, minlength=7) / n
    b = broadcasts(ds)
    out: dict[str, object] = {
        "source": ds.source,
        "rows": n,
        "users": ds.n_users,
        "streamers": ds.n_streamers,
        "streams": ds.n_streams,
        "steps": ds.max_step,
        "pairs": pairs,
        "rows_per_user": _r(n / ds.n_users, 2),
        "rows_per_streamer": _r(n / ds.n_streamers, 2),
        "rows_per_stream": _r(n / ds.n_streams, 2),
        "mean_row_steps": _r((ds.stop - ds.start).mean(), 3),
        "repeat_share": _r(repeat.mean()),
        "rows_per_user_quantiles": _quantiles(rows_user),
        "rows_per_streamer_quantiles": _quantiles(rows_streamer),
        "top1pct_streamer_share": _r(top[: max(1, top.size // 100)].sum() / n),
        "distinct_streamers_per_user_median": float(np.median(distinct_per_user)),
        "broadcast_steps_mean": _r((b.stop - b.start).mean(), 2),
        "broadcast_steps_median": float(np.median(b.stop - b.start)),
        "gap_quantiles": _quantiles(gaps),
        "repeat_gap_quantiles": _quantiles(rgap),
        "repeat_within_day": _r((rgap <= STEPS_PER_DAY).mean() if rgap.size else 0.0),
        "next_same_streamer": _r(next_same.mean() if next_same.size else 0.0),
        "hour_shares": [_r(h, 4) for h in hours],
        "hour_share_min": _r(hours.min(), 4),
        "hour_share_max": _r(hours.max(), 4),
        "hour_peak_trough": _r(hours.max() / max(hours.min(), 1e-12), 2),
        "weekday_shares": [_r(d, 4) for d in days],
    }
    for definition in DEFINITIONS:
        counts = availability(ds, definition).live_counts()
        out[f"live_{definition}_mean"] = _r(counts.mean(), 2)
        out[f"live_{definition}_median"] = float(np.median(counts))
        out[f"live_{definition}_share_of_catalogue"] = _r(counts.mean() / ds.n_streamers, 4)
    return out


def _fmt(v: object) -> str:
    if isinstance(v, float):
        return f"{v:,.3f}".rstrip("0").rstrip(".") if abs(v) < 1000 else f"{v:,.0f}"
    if isinstance(v, int):
        return f"{v:,}"
    if isinstance(v, list):
        return "[" + ", ".join(_fmt(x) for x in v) + "]"
    return str(v)


def comparison(stats: dict[str, object]) -> list[tuple[str, str, str, str]]:
    """(statistic, this file, published 100k_a, real sample README) rows for the table."""
    rows: list[tuple[str, str, str, str]] = []
    for key, _kind in TABLE:
        pub = PUBLISHED.get(key, "")
        samp = SAMPLE_PUBLISHED.get(key, "")
        rows.append((key, _fmt(stats[key]), _fmt(pub) if pub != "" else "",
                     _fmt(samp) if samp != "" else ""))
    for key in ("live_broadcast_mean", "live_broadcast_median", "live_rows_mean",
                "live_rows_median", "live_broadcast_share_of_catalogue",
                "broadcast_steps_mean", "broadcast_steps_median", "top1pct_streamer_share",
                "distinct_streamers_per_user_median", "gap_quantiles", "repeat_gap_quantiles",
                "repeat_within_day", "next_same_streamer", "hour_share_min",
                "hour_share_max", "hour_peak_trough", "rows_per_user_quantiles",
                "rows_per_streamer_quantiles", "weekday_shares"):
        samp = SAMPLE_PUBLISHED.get(key, "")
        rows.append((key, _fmt(stats[key]), "", _fmt(samp) if samp != "" else ""))
    return rows


def format_table(stats: dict[str, object]) -> str:
    """A plain-text table: this file, the published 100k_a figures, the real sample's."""
    header = ("statistic", "this file", "100k_a (published)", "real sample (README)")
    rows = [header, *comparison(stats)]
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    lines = [f"source: {stats['source']}"]
    for i, r in enumerate(rows):
        lines.append("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())
        if i == 0:
            lines.append("  ".join("-" * w for w in widths))
    lines.append("hour_shares (hour 0..23): " + _fmt(stats["hour_shares"]))
    return "\n".join(lines)


def sample_like_real(ds: Interactions, users: int = 2_000, min_streamer_rows: float = 100.0,
                     seed: int = 0) -> Interactions:
    """Draw a subset the way the real sample was drawn from 100k_a.csv, so that a
    synthetic file's timing can be compared with it like for like.

    Streamers keep only if they hold at least ``min_streamer_rows`` rows per 100,000 users of
    ``ds`` (100 in the real 100k_a); ``users`` users are drawn without replacement with
    probability proportional to their number of rows, and their rows with the kept streamers
    form the subset (file order kept).
    """
    from .twitch import from_frame

    rng = np.random.default_rng(seed)
    threshold = min_streamer_rows * ds.n_users / 100_000
    kept_streamer = np.bincount(ds.streamer, minlength=ds.n_streamers + 1) >= threshold
    rows_user = np.bincount(ds.user, minlength=ds.n_users + 1)[1:].astype(float)
    n = min(users, ds.n_users)
    # Weighted sampling without replacement: the n largest keys u^(1/w) (Efraimidis-Spirakis).
    keys = rng.random(rows_user.size) ** (1.0 / np.maximum(rows_user, 1e-12))
    chosen = np.zeros(ds.n_users + 1, dtype=bool)
    chosen[1 + np.argsort(-keys)[:n]] = True
    mask = chosen[ds.user] & kept_streamer[ds.streamer]
    frame = ds.to_frame()[mask].reset_index(drop=True)
    return from_frame(frame, source=f"{ds.source} (sampled like the real sample)")
