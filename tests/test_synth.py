"""The synthetic generator: determinism, the Twitch format, the published ratios at `small`
scale, and the signals a recommender should be able to learn."""

from __future__ import annotations

import re
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest

from liverank.model.data.availability import availability, broadcasts
from liverank.model.data.stats import PUBLISHED, file_stats, hour_shares, user_order
from liverank.model.data.synth import SCALES, Truth, generate, generate_with_truth, write
from liverank.model.data.twitch import Interactions, load_interactions


@pytest.fixture(scope="module")
def small() -> tuple[Interactions, Truth]:
    return generate_with_truth("small", seed=0)


@pytest.fixture(scope="module")
def small_stats(small: tuple[Interactions, Truth]) -> dict[str, object]:
    return file_stats(small[0])


def _same(a: Interactions, b: Interactions) -> bool:
    return all(np.array_equal(getattr(a, c), getattr(b, c)) for c in
               ("user", "stream", "streamer", "start", "stop", "user_ids", "streamer_names"))


def test_same_seed_same_log_other_seed_other_log() -> None:
    a, b, c = generate("tiny", 3), generate("tiny", 3), generate("tiny", 4)
    assert _same(a, b)
    assert not np.array_equal(a.streamer_names[a.streamer], c.streamer_names[c.streamer])


def test_unknown_scale_is_refused_with_the_choices() -> None:
    with pytest.raises(ValueError, match="tiny, small, medium, twitch100k"):
        generate("huge")


def test_tiny_is_fast_and_has_enough_live_streamers() -> None:
    t0 = time.perf_counter()
    ds = generate("tiny", 0)
    elapsed = time.perf_counter() - t0
    assert elapsed < 2.0  # well under a second on an idle machine; slack for a shared one
    assert ds.n_users == SCALES["tiny"].users
    assert ds.max_step <= 432 and ds.start.max() < 432
    assert availability(ds, "broadcast").live_counts().mean() >= 10


def test_twitch_format_holds(small: tuple[Interactions, Truth]) -> None:
    ds = small[0]
    names = ds.streamer_names[1:]
    assert all(re.fullmatch(r"[a-z0-9_]{3,30}", str(n)) for n in names)
    assert ds.stream.min() > 2**32  # 64-bit ids, like Twitch's
    assert (ds.stop > ds.start).all() and ds.start.min() >= 0
    assert ds.start.max() <= 6147 and ds.stop.max() <= 6148
    b = broadcasts(ds)
    assert b.multi_streamer == 0  # one streamer per stream id
    # A streamer never has two overlapping broadcasts.
    order = np.lexsort((b.start, b.streamer))
    same = b.streamer[order][1:] == b.streamer[order][:-1]
    assert (b.start[order][1:][same] >= b.stop[order][:-1][same]).all()
    assert availability(ds, "broadcast").overlaps == 0


def test_written_file_loads_back_identically(tmp_path: Path) -> None:
    path = tmp_path / "tiny.csv.gz"
    ds = write("tiny", 1, path)
    back = load_interactions(path)
    assert _same(ds, back)


@pytest.mark.parametrize(
    ("key", "target", "tolerance"),
    [
        ("rows_per_user", 30.5, 0.10 * 30.5),
        ("rows_per_streamer", 18.8, 0.15 * 18.8),
        ("mean_row_steps", 3.14, 0.3),
        ("repeat_share", 0.507, 0.04),
        ("rows_per_stream", PUBLISHED["rows_per_stream"], 0.20 * PUBLISHED["rows_per_stream"]),
    ],
)
def test_small_matches_the_published_ratios(small_stats: dict[str, object], key: str,
                                            target: float, tolerance: float) -> None:
    value = float(small_stats[key])  # type: ignore[arg-type]
    assert abs(value - target) <= tolerance, f"{key}={value}, wanted {target} ± {tolerance}"


def test_small_spans_the_period_with_heavy_tailed_streamers(
        small_stats: dict[str, object]) -> None:
    assert small_stats["users"] == 2_000 and small_stats["steps"] == 6148
    assert float(small_stats["top1pct_streamer_share"]) > 0.3  # type: ignore[arg-type]


def test_daily_cycle_of_activity_and_of_who_is_live(small: tuple[Interactions, Truth]) -> None:
    ds = small[0]
    hours = hour_shares(ds)
    assert hours.max() / hours.min() >= 1.8
    live = availability(ds, "broadcast").live_counts().astype(float)
    by_hour = np.bincount((np.arange(live.size) % 144) // 6, weights=live, minlength=24)
    assert by_hour.max() / by_hour.min() >= 1.8


def test_users_log_in_at_habitual_hours(small: tuple[Interactions, Truth]) -> None:
    ds = small[0]
    angle = 2 * np.pi * (ds.start % 144) / 144
    rng = np.random.default_rng(0)

    def concentration(user: np.ndarray) -> float:
        # Mean resultant length of each user's time-of-day angles, averaged over users.
        n = np.bincount(user)
        c = np.bincount(user, weights=np.cos(angle)) / np.maximum(n, 1)
        s = np.bincount(user, weights=np.sin(angle)) / np.maximum(n, 1)
        return float(np.hypot(c, s)[n >= 10].mean())

    assert concentration(ds.user) > concentration(rng.permutation(ds.user)) + 0.2


def test_repeats_go_to_favourites_with_gaps_from_hours_to_weeks(
        small: tuple[Interactions, Truth], small_stats: dict[str, object]) -> None:
    ds = small[0]
    q10, _, _, _, q90 = small_stats["repeat_gap_quantiles"]  # type: ignore[misc]
    assert q10 < 144 and q90 > 7 * 144
    rng = np.random.default_rng(0)

    def top3_share(streamer: np.ndarray) -> float:
        # Share of a user's rows that go to their three most watched streamers.
        pair = ds.user.astype(np.int64) * (ds.n_streamers + 1) + streamer
        keys, counts = np.unique(pair, return_counts=True)
        users = keys // (ds.n_streamers + 1)
        order = np.lexsort((-counts, users))
        rank = np.arange(order.size) - np.searchsorted(users[order], users[order])
        return float(counts[order][rank < 3].sum() / len(ds))

    assert top3_share(ds.streamer) > top3_share(rng.permutation(ds.streamer)) + 0.2


def test_sessions_move_within_communities(small: tuple[Interactions, Truth]) -> None:
    ds, truth = small
    uo = user_order(ds)
    j = ds.streamer[uo.order]
    same_comm = truth.community[j[1:]] == truth.community[j[:-1]]
    different = j[1:] != j[:-1]
    in_session = uo.same_user & (uo.gap <= 6) & different
    across = uo.same_user & (uo.gap > 144) & different
    assert same_comm[in_session].mean() > same_comm[across].mean() + 0.08


def _hit_rate_at_10(ds: Interactions, pivot: int) -> tuple[float, float]:
    """Rows from ``pivot`` on: is the streamer in the top 10 live streamers by training
    popularity, and by the user's own history (then popularity)?"""
    live = availability(ds, "broadcast")
    pop = np.bincount(ds.streamer[ds.start < pivot], minlength=ds.n_streamers + 1)
    history: dict[int, dict[int, int]] = defaultdict(dict)
    hit_pop, hit_hist = [], []
    for i in user_order(ds).order:
        u, j, t = int(ds.user[i]), int(ds.streamer[i]), int(ds.start[i])
        if t >= pivot and history[u]:
            cand = live.streamers_at(t)
            h = np.array([history[u].get(int(c), 0) for c in cand])
            hit_pop.append(j in cand[np.argsort(-pop[cand], kind="stable")[:10]])
            hit_hist.append(j in cand[np.argsort(-(h * 10**9 + pop[cand]), kind="stable")[:10]])
        history[u][j] = history[u].get(j, 0) + 1
    return float(np.mean(hit_pop)), float(np.mean(hit_hist))


@pytest.mark.parametrize(("scale", "pivot_offset"), [("tiny", 100), ("small", 500)])
def test_the_users_history_beats_popularity_among_live(scale: str, pivot_offset: int) -> None:
    ds = generate(scale, 0)
    pop, hist = _hit_rate_at_10(ds, ds.max_step - pivot_offset)
    assert hist > pop + 0.05, (pop, hist)


@pytest.mark.slow
@pytest.mark.parametrize("scale", ["medium", "twitch100k"])
def test_larger_scales_match_the_published_ratios(scale: str) -> None:
    t0 = time.perf_counter()
    s = file_stats(generate(scale, 0))
    assert time.perf_counter() - t0 < 240  # generation + statistics; twitch100k: < 3 min gen
    bands = {"rows_per_user": (30.5, 3.05), "rows_per_streamer": (18.8, 2.82),
             "mean_row_steps": (3.14, 0.3), "repeat_share": (0.507, 0.04),
             "rows_per_stream": (4.124, 0.825)}
    for key, (target, tol) in bands.items():
        assert abs(float(s[key]) - target) <= tol, (key, s[key])  # type: ignore[arg-type]
    if scale == "twitch100k":
        assert abs(int(s["streamers"]) - 162_625) <= 0.05 * 162_625  # type: ignore[call-overload]
        assert abs(int(s["rows"]) - 3_051_733) <= 0.02 * 3_051_733  # type: ignore[call-overload]
        assert abs(int(s["streams"]) - 739_991) <= 0.10 * 739_991  # type: ignore[call-overload]
