"""The case for timing: figures and a short summary that show why a recommender for live
streams must know the time and who is on air.

``liverank data report FILE --out DIR`` writes PNG figures (matplotlib, Agg backend) and
``summary.md``. Every figure is computed from the file alone, with the ``broadcast``
availability (a stream is live from its first start to its last stop in the log):

* ``live_per_step.png``: live streamers per step over the days (daily cycles), both
  availability definitions;
* ``live_share.png``: the live set as a share of the catalogue, by hour of day;
* ``durations.png``: row and broadcast durations;
* ``repeats.png``: time between a user's repeats of a streamer (daily peaks);
* ``next_offair.png``: how often a user's next streamer was off air when the previous row
  started, by the time between the two (why off-air streamers must not be negatives);
* ``live_popularity.png``: the watched streamer in the top k by global popularity vs in the
  top k among the streamers live at that step;
* ``activity_by_hour.png``: rows by hour of day.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from liverank.core.timebase import STEPS_PER_DAY

from .availability import Availability, availability, broadcasts
from .stats import file_stats, hour_shares, repeat_gaps, user_order
from .twitch import Interactions

logger = logging.getLogger(__name__)

GAP_BINS = ((0, 6, "< 1 h"), (6, 36, "1-6 h"), (36, 144, "6-24 h"), (144, 1008, "1-7 days"),
            (1008, 10**9, "> 7 days"))
TOP_K = (1, 2, 5, 10, 20, 50, 100)


@dataclass(frozen=True)
class Timing:
    """The numbers behind the figures."""

    offair_by_gap: list[tuple[str, int, float]]  # (gap bin, pairs, share next streamer off air)
    offair_share: float  # over all consecutive pairs of a user's rows
    hit_global: list[float]  # per TOP_K: watched streamer in global top k
    hit_live: list[float]  # per TOP_K: watched streamer in top k among live at that step


def _live_lookup(live: Availability, n_streamers: int) -> tuple[np.ndarray, np.ndarray]:
    """Sorted (step, streamer) keys of every live cell, and each cell's step."""
    counts = live.live_counts()
    steps = np.repeat(np.arange(counts.size, dtype=np.int64), counts)
    return steps * (n_streamers + 1) + live.streamers.astype(np.int64), steps


def is_live(live: Availability, n_streamers: int, streamer: np.ndarray, step: np.ndarray
            ) -> np.ndarray:
    """Vectorised `Availability.is_live` for arrays of (streamer, step)."""
    keys, _ = _live_lookup(live, n_streamers)
    q = step.astype(np.int64) * (n_streamers + 1) + streamer.astype(np.int64)
    pos = np.minimum(np.searchsorted(keys, q), max(keys.size - 1, 0))
    return (keys.size > 0) & (keys[pos] == q) & (step >= 0) & (step < live.n_steps)


def timing(ds: Interactions, live: Availability) -> Timing:
    uo = user_order(ds)
    o = uo.order
    prev_t = ds.start[o][:-1][uo.same_user]
    next_j = ds.streamer[o][1:][uo.same_user]
    gap = uo.gap[uo.same_user]
    off = ~is_live(live, ds.n_streamers, next_j, prev_t)
    by_gap = []
    for lo, hi, label in GAP_BINS:
        m = (gap >= lo) & (gap < hi)
        by_gap.append((label, int(m.sum()), float(off[m].mean()) if m.any() else 0.0))

    # Rank of the watched streamer by global popularity, overall and among those live.
    pop = np.bincount(ds.streamer, minlength=ds.n_streamers + 1).astype(np.int64)
    order = np.lexsort((np.arange(pop.size), -pop))
    global_rank = np.empty(pop.size, dtype=np.int64)
    global_rank[order] = np.arange(pop.size)  # padding (popularity 0) sorts last
    keys, steps = _live_lookup(live, ds.n_streamers)
    cell_streamer = live.streamers.astype(np.int64)
    o2 = np.lexsort((global_rank[cell_streamer], steps))
    first = np.searchsorted(steps[o2], steps[o2], side="left")
    live_rank = np.empty(keys.size, dtype=np.int64)
    live_rank[o2] = np.arange(keys.size) - first
    q = ds.start.astype(np.int64) * (ds.n_streamers + 1) + ds.streamer
    pos = np.minimum(np.searchsorted(keys, q), max(keys.size - 1, 0))
    found = keys[pos] == q
    row_live_rank = np.where(found, live_rank[pos], np.iinfo(np.int64).max)
    row_global_rank = global_rank[ds.streamer]
    return Timing(
        offair_by_gap=by_gap,
        offair_share=float(off.mean()) if off.size else 0.0,
        hit_global=[float((row_global_rank < k).mean()) for k in TOP_K],
        hit_live=[float((row_live_rank < k).mean()) for k in TOP_K],
    )


def _days(steps: np.ndarray) -> np.ndarray:
    return steps / STEPS_PER_DAY


def write_report(ds: Interactions, out: str | Path, title: str | None = None
                 ) -> dict[str, object]:
    """Write the figures and ``summary.md`` to ``out``; return the numbers shown."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    name = title or ds.source or "log"
    stats = file_stats(ds)
    live_b = availability(ds, "broadcast")
    live_r = availability(ds, "rows")
    t = timing(ds, live_b)
    figures: list[tuple[str, str]] = []

    def save(fig: plt.Figure, file: str, caption: str) -> None:
        fig.tight_layout()
        fig.savefig(out / file, dpi=110)
        plt.close(fig)
        figures.append((file, caption))

    # 1. Live streamers per step over the days.
    fig, ax = plt.subplots(figsize=(11, 4))
    x = _days(np.arange(live_b.n_steps))
    ax.plot(x, live_b.live_counts(), lw=0.7, label="broadcast (first start to last stop)")
    ax.plot(x, live_r.live_counts(), lw=0.7, alpha=0.8, label="rows (a row covers the step)")
    ax.set_xlabel("day (144 ten-minute steps per day)")
    ax.set_ylabel("live streamers")
    ax.set_title("Who is live follows a daily cycle: live streamers per step")
    ax.legend(loc="upper right")
    ax.grid(alpha=0.3)
    save(fig, "live_per_step.png",
         "Live streamers per step over the days, under both availability definitions.")

    # 2. Live set as a share of the catalogue, by hour of day.
    counts = live_b.live_counts().astype(float)
    hour = (np.arange(counts.size) % STEPS_PER_DAY) // 6
    share = np.bincount(hour, weights=counts, minlength=24) / np.maximum(
        np.bincount(hour, minlength=24), 1) / max(ds.n_streamers, 1)
    fig, ax = plt.subplots(figsize=(8, 4))
    ax.bar(np.arange(24), 100 * share, color="tab:blue")
    ax.set_xlabel("hour of day ((step mod 144) div 6)")
    ax.set_ylabel("live streamers, % of all streamers")
    ax.set_title(f"Only a small part of the catalogue is live at once "
                 f"(mean {100 * counts.mean() / max(ds.n_streamers, 1):.2f}%)")
    ax.set_xticks(range(0, 24, 2))
    ax.grid(alpha=0.3, axis="y")
    save(fig, "live_share.png", "Mean live set as a share of the catalogue, by hour of day.")

    # 3. Row and broadcast durations.
    b = broadcasts(ds)
    row_len = (ds.stop - ds.start).astype(float) / 6
    b_len = (b.stop - b.start).astype(float) / 6
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, data, what in ((axes[0], row_len, "Rows (stop - start)"),
                           (axes[1], b_len, "Broadcasts (stream ids, first start to last stop)")):
        hi = max(float(np.percentile(data, 99.5)), 1.0) if data.size else 1.0
        ax.hist(np.minimum(data, hi), bins=np.arange(0, hi + 1 / 6, 1 / 6).tolist(),
                color="tab:green")
        ax.set_yscale("log")
        ax.set_xlabel(f"duration, hours (the longest 0.5% are counted at {hi:.1f} h)")
        ax.set_ylabel("count (log scale)")
        ax.set_title(f"{what}\nmean {data.mean():.2f} h, median {np.median(data):.2f} h")
        ax.grid(alpha=0.3)
    save(fig, "durations.png", "Durations of rows and of broadcasts (log-scale counts).")

    # 4. Time between repeats.
    repeat, rgap = repeat_gaps(ds)
    g = rgap[repeat] / STEPS_PER_DAY
    fig, ax = plt.subplots(figsize=(10, 4))
    ax.hist(g[g < 14], bins=np.arange(0, 14 + 1 / 24, 1 / 24).tolist(), color="tab:purple")
    beyond = float((g >= 14).mean()) if g.size else 0.0
    ax.set_xlabel(f"days since the user last watched the same streamer, in hour bins "
                  f"({100 * beyond:.0f}% of repeats come after 14 days, not shown)")
    ax.set_ylabel("repeat rows")
    within = float(stats["repeat_within_day"])  # type: ignore[arg-type]
    ax.set_title(f"Time between repeats: {100 * repeat.mean():.1f}% of rows re-watch a "
                 f"streamer, {100 * within:.0f}% of repeats within one day")
    ax.grid(alpha=0.3)
    save(fig, "repeats.png", "Time between a user's repeats of a streamer, in days.")

    # 5. Next choice off air at the previous choice.
    fig, ax = plt.subplots(figsize=(8, 4))
    labels = [f"{lab}\n(n={n:,})" for lab, n, _ in t.offair_by_gap]
    ax.bar(labels, [100 * s for _, _, s in t.offair_by_gap], color="tab:red")
    ax.set_xlabel("time between a user's row and their next row")
    ax.set_ylabel("% next streamer off air at the previous row")
    ax.set_ylim(0, 100)
    ax.set_title(f"The next choice was off air at the previous choice in "
                 f"{100 * t.offair_share:.0f}% of cases")
    ax.grid(alpha=0.3, axis="y")
    save(fig, "next_offair.png",
         "How often the next streamer a user watched was off air when the previous row "
         "started: a model that treats off-air streamers as negatives learns to dislike them.")

    # 6. Popularity among live streamers vs global popularity.
    fig, ax = plt.subplots(figsize=(8, 4))
    ax.plot(TOP_K, [100 * h for h in t.hit_live], "o-", label="top k among streamers live now")
    ax.plot(TOP_K, [100 * h for h in t.hit_global], "s--", label="top k of all streamers")
    ax.set_xscale("log")
    ax.set_xticks(TOP_K)
    ax.set_xticklabels([str(k) for k in TOP_K])
    ax.set_xlabel("k (streamers ranked by popularity over the whole log)")
    ax.set_ylabel("% of rows whose streamer is in the top k")
    ax.set_title("Knowing who is live: popularity among live vs global popularity")
    ax.legend()
    ax.grid(alpha=0.3)
    save(fig, "live_popularity.png",
         "Share of rows whose streamer is among the k most popular streamers overall vs among "
         "the k most popular of those live at that step.")

    # 7. Activity by hour.
    hs = hour_shares(ds)
    fig, ax = plt.subplots(figsize=(8, 4))
    ax.bar(np.arange(24), 100 * hs, color="tab:orange")
    ax.set_xlabel("hour of day ((start mod 144) div 6)")
    ax.set_ylabel("% of rows")
    ax.set_title(f"Activity by hour: peak/trough {hs.max() / max(hs.min(), 1e-12):.2f}")
    ax.set_xticks(range(0, 24, 2))
    ax.grid(alpha=0.3, axis="y")
    save(fig, "activity_by_hour.png", "Rows by hour of day.")

    # Repeats within 2 hours of a whole number of days (>= 1): 1/6 if gaps ignored the clock.
    days_gap = rgap[repeat]
    near = (days_gap >= 132) & (np.abs((days_gap + 72) % STEPS_PER_DAY - 72) <= 12)
    numbers: dict[str, object] = {
        "source": name,
        "rows": len(ds),
        "live_broadcast_mean": stats["live_broadcast_mean"],
        "live_rows_mean": stats["live_rows_mean"],
        "live_share_mean": round(float(counts.mean()) / max(ds.n_streamers, 1), 4),
        "repeat_share": stats["repeat_share"],
        "repeat_within_day": stats["repeat_within_day"],
        "repeat_near_whole_days": round(float(near.mean()) if near.size else 0.0, 3),
        "next_offair_share": round(t.offair_share, 3),
        "next_offair_by_gap": [(lab, n, round(s, 3)) for lab, n, s in t.offair_by_gap],
        "hit_at_k_global": dict(zip(TOP_K, [round(h, 3) for h in t.hit_global], strict=True)),
        "hit_at_k_live": dict(zip(TOP_K, [round(h, 3) for h in t.hit_live], strict=True)),
        "hour_peak_trough": stats["hour_peak_trough"],
    }
    (out / "summary.md").write_text(_summary(name, numbers, figures))
    logger.info("report written out=%s figures=%d", out, len(figures))
    return numbers


def _num(n: dict[str, object], key: str) -> float:
    value = n[key]
    assert isinstance(value, int | float)
    return float(value)


def _summary(name: str, n: dict[str, object], figures: list[tuple[str, str]]) -> str:
    hg, hl = n["hit_at_k_global"], n["hit_at_k_live"]
    assert isinstance(hg, dict) and isinstance(hl, dict)
    lines = [
        f"# Why timing matters: {name}",
        "",
        f"- {n['rows']:,} rows. On average {n['live_broadcast_mean']} streamers are live per "
        f"step ({n['live_rows_mean']} when only steps covered by a row count), "
        f"{100 * _num(n, 'live_share_mean'):.2f}% of the catalogue: a recommender must choose "
        "among those, and who they are changes with the time of day (activity peak/trough "
        f"{n['hour_peak_trough']}).",
        f"- {100 * _num(n, 'repeat_share'):.1f}% of rows re-watch a streamer the user "
        f"watched before; {100 * _num(n, 'repeat_within_day'):.0f}% of those repeats come "
        f"within one day, and {100 * _num(n, 'repeat_near_whole_days'):.0f}% come within two "
        "hours of a whole number of days later (17% if the time of day did not matter): "
        "viewers come back on a schedule.",
        f"- A user's next streamer was off air when their previous row started in "
        f"{100 * _num(n, 'next_offair_share'):.0f}% of cases. Treating off-air streamers as "
        "negatives would teach a model that users dislike streamers they simply could not "
        "watch; only live streamers are candidates and negatives.",
        f"- The 10 most popular streamers overall cover {100 * hg[10]:.1f}% of rows; the 10 "
        f"most popular among those live at the step cover {100 * hl[10]:.1f}%.",
        "",
        "Availability: `broadcast` definition (a stream id is live from its first start to its "
        "last stop in the log) unless said otherwise. Popularity counts rows over the whole "
        "log.",
        "",
    ]
    for file, caption in figures:
        lines += [f"![{caption}]({file})", "", caption, ""]
    return "\n".join(lines)
