"""Synthetic Twitch viewing logs with the shape and the signals of ``100k_a.csv``.

The real files cannot be downloaded here, so this generator stands in for them. It is a
small agent simulation, vectorised over users, that writes the Twitch format
(``user,stream,streamer,start,stop``; usernames as streamer names, 64-bit stream ids):

* **Streamers** have a heavy-tailed popularity, a community, and a regular schedule: a
  preferred start time of day, a typical duration and a fixed set of weekdays, with a little
  jitter and the odd missed day. A streamer never has two overlapping broadcasts.
* **Users** log in at habitual hours (one or two per user; for most, the hours their main
  favourite is on air) on random days of their active window; a session is a short run of
  rows. At each row the user picks among the streamers live at that step: a favourite
  (weighted by affinity, by recency over days, against one seen in the last hours, and,
  within a session, towards the previous streamer's community), or, exploring, a live
  streamer from the previous streamer's community (within a session), the user's home
  community or the whole catalogue, by popularity (sometimes evenly: the long tail).
  Explored streamers may become favourites, regular ones likelier, so favourites drift over
  time. A row ends when the user leaves or the broadcast ends.

Calibration: the per-entity ratios of ``100k_a.csv`` at every scale but tiny (see
`SCALES`), and the timing of the shared real sample (hour-of-day cycle, gaps between rows,
repeat gaps with daily peaks); ``liverank data stats`` prints both side by side.

So who is live depends on the time of day, repeats concentrate on a few favourites with
gaps from hours to weeks, and in-session transitions follow communities: a model that
knows the user's history, the time and the live set has something to learn that
popularity does not.

    >>> ds = generate("tiny", seed=0)     # in memory, ~3.5k rows, well under a second
    >>> write("small", 0, "out/data/small.csv")   # doctest: +SKIP
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, replace
from pathlib import Path
from statistics import NormalDist

import numpy as np
import pandas as pd

from liverank.core.timebase import SESSION_GAP, STEPS_PER_DAY

from .twitch import Interactions, from_frame, write_twitch

logger = logging.getLogger(__name__)

# Users' busiest time of day: hour 21 of the dataset's own clock, as in the real sample.
PEAK_STEP = 21 * 6


@dataclass(frozen=True)
class Behaviour:
    """How streamers broadcast and users choose (defaults; a scale may change a few)."""

    popularity_sigma: float = 3.4  # lognormal: the top 1% of streamers hold about half the rows
    broadcast_median_steps: float = 24.0  # 4 hours
    broadcast_sigma: float = 0.5
    start_jitter_steps: float = 8.0
    schedule_amplitude: float = 0.6  # daily cycle of broadcast start times
    miss_day: float = 0.1  # chance a streamer skips one of its weekdays
    activity_amplitude: float = 0.45  # daily cycle of login times (peak/trough ~2.6 before noise)
    habit_sd_steps: float = 10.0  # sessions start within a couple of hours of a habitual time
    off_habit: float = 0.15  # share of sessions at a random time of day
    second_habit: float = 0.3  # share of users with a second habitual time
    rows_per_session: float = 1.35
    row_steps: float = 3.35  # planned mean; broadcast ends cut rows to a mean of about 3.1
    hop: float = 0.1  # next row of a session starts while the previous one runs
    stay: float = 0.03  # in-session: come back to the same broadcast
    loyalty_mean: float = 0.47  # chance to pick a live favourite when one is live
    loyalty_concentration: float = 4.0
    adopt: float = 0.3  # chance an explored streamer becomes a favourite
    favourites: int = 16  # slots per user; a full list drops the least recently watched
    initial_favourites: float = 5.0  # mean, Poisson + 1: favourites from before the log starts
    recency_boost: float = 2.0
    recency_steps: float = 3 * STEPS_PER_DAY
    satiation_steps: float = 48.0
    session_affinity: float = 4.0  # in-session weight bonus of related favourites
    follow_community: float = 0.8  # in-session exploration stays in the previous community
    home_community: float = 0.8  # otherwise: the user's home community, else the catalogue
    browse: float = 0.2  # exploration that ignores popularity (the long tail)
    day_base: float = 0.05  # weekdays a streamer broadcasts: base + slope * popularity pct
    day_slope: float = 0.9
    day_power: float = 8.0
    anchored: float = 0.6  # users whose habitual time follows a favourite's schedule
    tries: int = 15  # tries to find a live streamer in a community, then anywhere


BEHAVIOUR = Behaviour()


@dataclass(frozen=True)
class Scale:
    """Size of one synthetic dataset; behaviour parameters live in `Behaviour`."""

    name: str
    users: int
    steps: int  # rows start in [0, steps - 1]; stops are <= steps
    streamers: int  # catalogue size; fewer appear in the log (some are never watched)
    communities: int
    rows_per_user: float  # mean
    max_rows_per_user: int
    window_share: float = 0.8  # share of users active over the whole period (others: a part)
    behaviour: Behaviour = BEHAVIOUR


# Catalogue sizes are calibrated so that the streamers that appear match the published
# 18.8 rows per streamer of 100k_a.csv (162,625 streamers for 100,000 users).
SCALES: dict[str, Scale] = {
    # tiny: three days of heavy users for unit tests; more streamers on air every day, so
    # that a few hundred of them keep >= 10 live per step on average, with a deep nightly
    # trough (some steps have fewer than 10).
    "tiny": Scale("tiny", users=300, steps=432, streamers=200, communities=8,
                  rows_per_user=12.0, max_rows_per_user=40, window_share=1.0,
                  behaviour=replace(BEHAVIOUR, day_base=0.45, day_slope=0.5, day_power=1.0,
                                    popularity_sigma=2.0, broadcast_median_steps=36.0,
                                    loyalty_mean=0.85, anchored=0.9,
                                    schedule_amplitude=1.0)),
    "small": Scale("small", users=2_000, steps=6_148, streamers=6_000, communities=60,
                   rows_per_user=30.5, max_rows_per_user=600),
    # A larger world spreads exploration over more streamers, so fewer rows repeat by
    # chance; a little more loyalty keeps the published repeat share at every scale.
    "medium": Scale("medium", users=20_000, steps=6_148, streamers=60_000, communities=500,
                    rows_per_user=30.5, max_rows_per_user=600,
                    behaviour=replace(BEHAVIOUR, loyalty_mean=0.52)),
    "twitch100k": Scale("twitch100k", users=100_000, steps=6_148, streamers=318_000,
                        communities=2_500, rows_per_user=30.5, max_rows_per_user=600,
                        behaviour=replace(BEHAVIOUR, loyalty_mean=0.55)),
}


@dataclass
class _Catalogue:
    """Streamers and their broadcasts, one slot per (streamer, scheduled day).

    To find a live streamer fast, the sampler keeps one entry per (hour of day, streamer)
    for the hours a streamer is usually on air, sorted by (hour, community): sampling inside
    that group and checking the real broadcast accepts most draws at once.
    """

    popularity: np.ndarray  # (J,) float64
    community: np.ndarray  # (J,) int32
    n_comm: int
    bstart: np.ndarray  # (J * D,) int32, -1 = no broadcast
    bstop: np.ndarray  # (J * D,) int32 exclusive
    days: int  # slots per streamer: day -1 (broadcasts running when the log starts) onwards
    group_start: np.ndarray  # (24 * n_comm + 1,) first entry of each (hour, community)
    ent_streamer: np.ndarray  # (E,)
    ent_cum: np.ndarray  # (2, E) cumulative weights: popularity, uniform
    p_day: np.ndarray  # (J,) share of weekdays the streamer broadcasts
    start_tod: np.ndarray  # (J,) usual start, step of day
    duration: np.ndarray  # (J,) usual length in steps

    def live(self, j: np.ndarray, t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """For streamers ``j`` at steps ``t`` (same shape): live?, and the broadcast slot."""
        d = t // STEPS_PER_DAY
        live = np.zeros(j.shape, dtype=bool)
        slot = np.full(j.shape, -1, dtype=np.int64)
        # A broadcast scheduled on day d may start a little before it or run past midnight.
        for off in (-1, 0, 1):
            dd = d + off
            ok = (dd >= -1) & (dd < self.days - 1) & (j >= 0)
            idx = np.where(ok, j.astype(np.int64) * self.days + dd + 1, 0)
            s = self.bstart[idx]
            hit = ok & (s >= 0) & (s <= t) & (t < self.bstop[idx])
            slot = np.where(hit & ~live, idx, slot)
            live |= hit
        return live, slot

    def sample(self, community: np.ndarray, t: np.ndarray, uniform: np.ndarray,
               rng: np.random.Generator) -> np.ndarray:
        """One streamer per entry, usually on air at the hour of ``t``, inside ``community``
        (-1: any), by popularity or (``uniform``) evenly."""
        hour = (t % STEPS_PER_DAY) // 6
        whole = community < 0
        c = np.where(whole, 0, community)
        first = self.group_start[hour * self.n_comm]  # the hour's entries
        last = self.group_start[(hour + 1) * self.n_comm]
        lo = np.where(whole, first, self.group_start[hour * self.n_comm + c])
        hi = np.where(whole, last, self.group_start[hour * self.n_comm + c + 1])
        # A community with nobody usually on air at that hour: anyone at that hour.
        empty = hi <= lo
        lo, hi = np.where(empty, first, lo), np.where(empty, last, hi)
        empty = hi <= lo
        lo, hi = np.where(empty, 0, lo), np.where(empty, self.ent_streamer.shape[0], hi)
        out = np.empty(t.shape[0], dtype=np.int64)
        for w in (0, 1):
            m = uniform == bool(w)
            if not m.any():
                continue
            cum = self.ent_cum[w]
            base = np.where(lo[m] > 0, cum[np.maximum(lo[m] - 1, 0)], 0.0)
            x = base + rng.random(int(m.sum())) * (cum[hi[m] - 1] - base)
            pos = np.clip(np.searchsorted(cum, x, side="right"), lo[m], hi[m] - 1)
            out[m] = self.ent_streamer[pos]
        return out


def _normal_quantile(p: np.ndarray) -> np.ndarray:
    """Inverse of the standard normal CDF (no scipy here)."""
    inv = np.vectorize(NormalDist().inv_cdf, otypes=[np.float64])
    return inv(p)


def _daily_density(peak: int, amplitude: float) -> np.ndarray:
    s = np.arange(STEPS_PER_DAY)
    p = 1.0 + amplitude * np.cos(2 * np.pi * (s - peak) / STEPS_PER_DAY)
    return p / p.sum()


def _catalogue(scale: Scale, b: Behaviour, rng: np.random.Generator) -> _Catalogue:
    n = scale.streamers
    # Lognormal popularity by stratified quantiles, the extreme 0.01% cut to a plateau: every
    # scale then holds the same distribution per percentile (a plain sample's maximum would
    # grow with the catalogue and the top 1% would hold more rows at larger scales).
    pct = (rng.permutation(n) + rng.random(n)) / n  # popularity percentile
    z = _normal_quantile(np.clip(pct, 1e-4, 1 - 1e-4))
    pop = np.exp(b.popularity_sigma * z)
    # Community sizes are uneven too; every community holds at least one streamer.
    n_comm = min(scale.communities, n)
    weights = rng.lognormal(0.0, 0.8, n_comm)
    community = np.concatenate([np.arange(n_comm),
                                rng.choice(n_comm, n - n_comm, p=weights / weights.sum())])
    community = rng.permutation(community).astype(np.int32)

    # Schedules: streamers go live a few hours before the viewers' peak, popular ones stream
    # on more weekdays and for longer.
    start_tod = rng.choice(STEPS_PER_DAY, n,
                           p=_daily_density(PEAK_STEP - 30, b.schedule_amplitude))
    duration = rng.lognormal(np.log(b.broadcast_median_steps) + 0.3 * (pct - 0.5),
                             b.broadcast_sigma, n)
    duration = np.clip(duration, 6, 96)
    p_day = np.clip(b.day_base + b.day_slope * pct**b.day_power + rng.normal(0, 0.1, n),
                    0.04, 0.95)
    weekdays = rng.random((n, 7)) < p_day[:, None]
    weekdays[np.arange(n), rng.integers(0, 7, n)] = True  # at least one day a week

    days = -(-scale.steps // STEPS_PER_DAY) + 2
    day = np.arange(days) - 1  # from the day before the log: some broadcasts are already on
    on = weekdays[:, day % 7] & (rng.random((n, days)) >= b.miss_day)
    jitter = np.clip(rng.normal(0, b.start_jitter_steps, (n, days)), -12, 12)
    start = (day[None, :] * STEPS_PER_DAY + start_tod[:, None] + jitter).astype(np.int64)
    length = np.maximum(np.rint(duration[:, None] * rng.lognormal(0, 0.2, (n, days))), 2)
    stop = start + length.astype(np.int64)
    # Never two overlapping broadcasts: cut a broadcast before the next one starts.
    stop[:, :-1] = np.minimum(stop[:, :-1], start[:, 1:] - 1)
    stop = np.minimum(stop, scale.steps)
    start = np.maximum(start, 0)
    on &= (start < scale.steps) & (stop > start)
    bstart = np.where(on, start, -1).astype(np.int32).ravel()
    bstop = np.where(on, stop, -1).astype(np.int32).ravel()

    # Sampler entries: the hours of day each streamer is usually on air.
    first = (start_tod - 6) // 6
    n_hours = np.minimum((duration * 1.2 + 12).astype(np.int64) // 6 + 1, 24)
    ent = np.repeat(np.arange(n), n_hours)
    hour = (np.repeat(first, n_hours) + np.arange(ent.size)
            - np.repeat(np.cumsum(n_hours) - n_hours, n_hours)) % 24
    key = hour * n_comm + community[ent]
    order = np.lexsort((ent, key))
    key, ent = key[order], ent[order]
    group_start = np.searchsorted(key, np.arange(24 * n_comm + 1))
    cum = np.stack([np.cumsum(pop[ent]), np.cumsum(np.ones(ent.size))])
    return _Catalogue(pop, community, n_comm, bstart, bstop, days, group_start, ent, cum, p_day,
                      start_tod, duration)


@dataclass
class _Plan:
    """Row times planned before choices: users in descending activity, rows user-major."""

    n_rows: np.ndarray  # (U,) rows per user, descending
    offset: np.ndarray  # (U,) first row of each user
    start: np.ndarray  # (R,) int64
    length: np.ndarray  # (R,) planned length in steps
    new_session: np.ndarray  # (R,) bool
    habit: np.ndarray  # (U,) main habitual step of day
    window: np.ndarray  # (U, 2) first and last active day


def _rows_per_user(scale: Scale, rng: np.random.Generator) -> np.ndarray:
    # Lognormal with a floor of 2 rows, rescaled to the target mean after the cap.
    raw = rng.lognormal(0.0, 1.0, scale.users)
    n = 2 + raw * (scale.rows_per_user - 2) / raw.mean()
    for _ in range(5):
        n = np.minimum(n, scale.max_rows_per_user)
        n = n * scale.rows_per_user / n.mean()
    return np.clip(np.rint(n), 2, scale.max_rows_per_user).astype(np.int64)


def _away_from(tod: np.ndarray, density: np.ndarray, rng: np.random.Generator
               ) -> np.ndarray:
    """A time of day from ``density`` at least 4 hours from ``tod`` (a few redraws)."""
    out = rng.choice(STEPS_PER_DAY, tod.size, p=density).astype(np.float64)
    for _ in range(4):
        d = np.abs((out - tod + STEPS_PER_DAY / 2) % STEPS_PER_DAY - STEPS_PER_DAY / 2)
        close = d < 24
        if not close.any():
            break
        out[close] = rng.choice(STEPS_PER_DAY, int(close.sum()), p=density)
    return out


def _rank_within(group: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Random rank of each entry among the entries of its group (0, 1, ...)."""
    order = np.lexsort((rng.random(group.size), group))
    g = group[order]
    first = np.searchsorted(g, g, side="left")
    rank = np.empty(group.size, dtype=np.int64)
    rank[order] = np.arange(group.size) - first
    return rank


def _anchors(cat: _Catalogue, n_users: int, b: Behaviour, rng: np.random.Generator
             ) -> tuple[np.ndarray, np.ndarray]:
    """Each user's home community and anchor: a regular streamer of that community whose
    broadcasts the user's habitual login time follows (-1 for users without one)."""
    comm_weight = np.bincount(cat.community, weights=cat.popularity, minlength=cat.n_comm)
    home = rng.choice(cat.n_comm, n_users, p=comm_weight / comm_weight.sum())
    density = _daily_density(PEAK_STEP, b.activity_amplitude)
    anchor = np.full(n_users, -1, dtype=np.int64)
    todo = np.nonzero(rng.random(n_users) < b.anchored)[0]
    for _ in range(8):  # prefer streamers that are on most days
        if todo.size == 0:
            break
        t = rng.choice(STEPS_PER_DAY, todo.size, p=density)
        cand = cat.sample(home[todo], t, np.zeros(todo.size, dtype=bool), rng)
        ok = rng.random(todo.size) < cat.p_day[cand]
        anchor[todo[ok]] = cand[ok]
        todo = todo[~ok]
    return home, anchor


def _session_times(scale: Scale, b: Behaviour, su: np.ndarray, window: np.ndarray,
                   habit: np.ndarray, habit2: np.ndarray, rng: np.random.Generator
                   ) -> np.ndarray:
    """Start step of each session (``su``: its user; users contiguous), in time order per
    user: a random day of the user's window, at a habitual time of day."""
    n_sess = su.shape[0]
    days = max(-(-scale.steps // STEPS_PER_DAY), 1)
    span = window[:, 1] - window[:, 0] + 1
    density = _daily_density(PEAK_STEP, b.activity_amplitude)
    day = window[su, 0] + np.floor(rng.random(n_sess) * span[su]).astype(np.int64)
    main = rng.random(n_sess) < 0.7
    tod = np.where(main, habit[su], habit2[su]).astype(np.float64)
    # Several sessions on one day: the first at a habitual time, the next at the other habit
    # (if any), the rest spread over the day (two sessions an hour apart would be one).
    rank = _rank_within(su.astype(np.int64) * (days + 2) + day, rng)
    other = np.where(main, habit2[su], habit[su])
    spread = _away_from(tod, density, rng)
    later = np.where((rank == 1) & (other != tod), other, spread)
    tod = np.where(rank > 0, later, tod) + rng.normal(0, b.habit_sd_steps, n_sess)
    tod = np.where(rng.random(n_sess) < b.off_habit,
                   rng.choice(STEPS_PER_DAY, n_sess, p=density), tod)
    sess_t = day * STEPS_PER_DAY + np.rint(tod).astype(np.int64)
    # The last day is cut short: a session planned past the end moves back by whole days.
    over = np.maximum(sess_t - (scale.steps - 1), 0)
    sess_t = np.maximum(sess_t - STEPS_PER_DAY * (-(-over // STEPS_PER_DAY)), 0)
    # Sessions of one user in time order (users are contiguous, so a lexsort keeps them so).
    return sess_t[np.lexsort((sess_t, su))]


def _plan(scale: Scale, b: Behaviour, anchor: np.ndarray, cat: _Catalogue,
          rng: np.random.Generator) -> _Plan:
    n_rows = -np.sort(-_rows_per_user(scale, rng))
    users = scale.users
    total = int(n_rows.sum())
    offset = np.concatenate([[0], np.cumsum(n_rows)[:-1]])
    user = np.repeat(np.arange(users), n_rows)
    k = np.arange(total) - offset[user]

    days = max(-(-scale.steps // STEPS_PER_DAY), 1)
    full = rng.random(users) < scale.window_share
    span = np.where(full, days, np.maximum(np.rint(days * rng.uniform(0.2, 1.0, users)), 1))
    first = np.where(full, 0, rng.integers(0, days, users) % np.maximum(days - span + 1, 1))
    window = np.stack([first, first + span - 1], axis=1).astype(np.int64)

    density = _daily_density(PEAK_STEP, b.activity_amplitude)
    habit = rng.choice(STEPS_PER_DAY, users, p=density)
    a = np.maximum(anchor, 0)
    into = np.floor(rng.random(users) * 0.6 * cat.duration[a]).astype(np.int64)
    habit = np.where(anchor >= 0, (cat.start_tod[a] + into) % STEPS_PER_DAY, habit)
    habit2 = np.where(rng.random(users) < b.second_habit,
                      rng.choice(STEPS_PER_DAY, users, p=density), habit)

    new_session = (k == 0) | (rng.random(total) < 1.0 / b.rows_per_session)
    sess_row = np.nonzero(new_session)[0]
    sess_t = _session_times(scale, b, user[sess_row], window, habit, habit2, rng)

    length = rng.geometric(1.0 / b.row_steps, total)
    gap = rng.geometric(0.5, total) - 1
    inc = length + gap
    hop = rng.random(total) < b.hop
    inc = np.where(hop, np.floor(rng.random(total) * length).astype(np.int64), inc)
    # Offset inside the session: cumulative increments since the session's first row.
    sess_id = np.cumsum(new_session) - 1
    csum = np.cumsum(inc) - inc
    within = csum - csum[sess_row][sess_id]
    planned = sess_t[sess_id] + within
    # A user's rows never go back in time: a running maximum per user (users are offset by
    # more than any step, so one global running maximum does it).
    big = 4 * (scale.steps + 1000) + 10 * total
    shift = user.astype(np.int64) * big
    start = np.maximum.accumulate(planned + shift) - shift
    start = np.maximum(start, 0)
    return _Plan(n_rows, offset, start, length, new_session, habit, window)


@dataclass(frozen=True)
class Truth:
    """What the generator knows and the log does not, on the log's own indexes."""

    community: np.ndarray  # (n_streamers + 1,) community of each streamer index (0: -1)
    popularity: np.ndarray  # (n_streamers + 1,) popularity weight
    home: np.ndarray  # (n_users + 1,) each user's home community
    habit: np.ndarray  # (n_users + 1,) each user's main habitual step of day
    choice: np.ndarray  # (N,) per row: 0 back to the same broadcast, 1 favourite, 2 explore


def generate(scale: str = "tiny", seed: int = 0, behaviour: Behaviour | None = None
             ) -> Interactions:
    """Generate a synthetic log in memory, deterministic per ``(scale, seed)``.

    ``behaviour`` replaces the scale's own parameters (for experiments and tests)."""
    return generate_with_truth(scale, seed, behaviour)[0]


def generate_with_truth(scale: str = "tiny", seed: int = 0,
                        behaviour: Behaviour | None = None) -> tuple[Interactions, Truth]:
    """`generate`, plus the hidden structure (communities, habits, why each row was
    chosen) for tests and analyses."""
    if scale not in SCALES:
        raise ValueError(f"unknown scale {scale!r}: choose one of {', '.join(SCALES)}")
    t0 = time.perf_counter()
    sc = SCALES[scale]
    behaviour = behaviour or sc.behaviour
    rng = np.random.default_rng([seed, 0x5EED])
    cat = _catalogue(sc, behaviour, rng)
    home, anchor = _anchors(cat, sc.users, behaviour, rng)
    plan = _plan(sc, behaviour, anchor, cat, rng)
    streamer, stop, kind = _simulate(sc, behaviour, cat, plan, home, anchor, rng)
    frame = _frame(cat, plan, streamer, stop, kind, np.random.default_rng([seed, 0x1D5]))
    hidden = frame[["_j", "_u", "_kind"]]
    ds = from_frame(frame.drop(columns=["_j", "_u", "_kind"]),
                    source=f"synthetic:{scale}:seed={seed}")
    cat_of = np.concatenate([[-1], pd.unique(hidden["_j"].to_numpy())])
    user_of = np.concatenate([[-1], pd.unique(hidden["_u"].to_numpy())])
    truth = Truth(
        community=np.where(cat_of >= 0, cat.community[np.maximum(cat_of, 0)], -1),
        popularity=np.where(cat_of >= 0, cat.popularity[np.maximum(cat_of, 0)], 0.0),
        home=np.where(user_of >= 0, home[np.maximum(user_of, 0)], -1),
        habit=np.where(user_of >= 0, plan.habit[np.maximum(user_of, 0)], -1),
        choice=hidden["_kind"].to_numpy(np.int8),
    )
    logger.info("generated scale=%s seed=%d rows=%d users=%d streamers=%d streams=%d "
                "seconds=%.2f", scale, seed, len(ds), ds.n_users, ds.n_streamers,
                ds.n_streams, time.perf_counter() - t0)
    return ds, truth


def write(scale: str, seed: int, path: str | Path) -> Interactions:
    """Generate and write in the Twitch format (no header; ``.gz`` compresses)."""
    ds = generate(scale, seed)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_twitch(ds, path)
    return ds


class _Users:
    """Per-user state of the simulation: the previous row and the favourite slots."""

    def __init__(self, n: int, slots: int, community: np.ndarray) -> None:
        self.prev = np.full(n, -1, dtype=np.int64)
        self.prev_t = np.full(n, -(10**9), dtype=np.int64)
        self.prev_stop = np.full(n, -(10**9), dtype=np.int64)
        self.recent = np.full((n, 4), -1, dtype=np.int64)  # last streamers, newest first
        self.prev_slot = np.full(n, -1, dtype=np.int64)
        self.session_start = np.zeros(n, dtype=np.int64)
        self.home = community
        self.fav = np.full((n, slots), -1, dtype=np.int64)
        self.aff = np.zeros((n, slots))
        self.last = np.full((n, slots), -(10**9), dtype=np.int64)

    def adopt(self, u: np.ndarray, j: np.ndarray, t: np.ndarray, rng: np.random.Generator,
              recent: bool = True) -> None:
        """Make ``j`` a favourite of ``u``: into an empty slot, else the least recent one."""
        if u.size == 0:
            return
        already = (self.fav[u] == j[:, None]).any(axis=1)
        u, j, t = u[~already], j[~already], t[~already]
        score = np.where(self.fav[u] < 0, -(10**12), self.last[u])
        slot = np.argmin(score, axis=1)
        self.fav[u, slot] = j
        self.aff[u, slot] = rng.gamma(0.8, 1.0, u.shape[0]) + 0.05
        self.last[u, slot] = t if recent else -(10**9)


def _explore(cat: _Catalogue, community: np.ndarray, t: np.ndarray, avoid: np.ndarray,
             browse: float, tries: int, rng: np.random.Generator) -> np.ndarray:
    """A live streamer not in its row of ``avoid`` per entry, by popularity (or evenly, with
    chance ``browse``), in ``community`` if one is found quickly, else anywhere; -1 where
    nothing live was found."""
    out = np.full(t.shape, -1, dtype=np.int64)
    todo = np.arange(t.shape[0])
    uniform = np.asarray(rng.random(t.shape[0]) < browse)
    for attempt in range(4 * tries):
        if todo.size == 0:
            break
        comm = community[todo] if attempt < tries else np.full(todo.size, -1)
        cand = cat.sample(comm, t[todo], uniform[todo], rng)
        live, _ = cat.live(cand, t[todo])
        live &= ~(cand[:, None] == avoid[todo]).any(axis=1)
        out[todo[live]] = cand[live]
        todo = todo[~live]
    return out


def _pick_favourite(b: Behaviour, cat: _Catalogue, st: _Users, u: np.ndarray, t: np.ndarray,
                    in_session: np.ndarray, loyalty: np.ndarray, choice: np.ndarray,
                    rng: np.random.Generator) -> np.ndarray:
    """Fill ``choice`` (where still -1) with a live favourite, with chance ``loyalty``;
    return where it did."""
    fav = st.fav[u]  # (n, slots)
    fav_live = cat.live(fav.ravel(), np.repeat(t, fav.shape[1]))[0].reshape(fav.shape)
    # Recency: a favourite watched in the last days is likelier, but one watched in the
    # last hours much less so (satiation: the same broadcast, seen already).
    since = (t[:, None] - st.last[u]).astype(np.float64)
    w = st.aff[u] * fav_live * (1 + b.recency_boost * np.exp(-since / b.recency_steps)) * (
        1 - np.exp(-since / b.satiation_steps))
    # Within a session, favourites related to the previous streamer come first, and those
    # already watched in it are left behind.
    prev_comm = cat.community[np.maximum(st.prev[u], 0)]
    related = cat.community[np.maximum(fav, 0)] == prev_comm[:, None]
    w *= 1 + b.session_affinity * (related & in_session[:, None])
    st.session_start[u] = np.where(in_session, st.session_start[u], t)
    w *= ~(in_session[:, None] & (st.last[u] >= st.session_start[u][:, None]))
    cw = np.cumsum(w, axis=1)
    pick: np.ndarray = (choice < 0) & (cw[:, -1] > 0) & (rng.random(u.size) < loyalty[u])
    idx = np.nonzero(pick)[0]
    x = rng.random(idx.size) * cw[idx, -1]
    f = np.minimum((cw[idx] < x[:, None]).sum(axis=1), fav.shape[1] - 1)
    choice[idx] = fav[idx, f]
    return pick


def _pick_explored(b: Behaviour, cat: _Catalogue, st: _Users, u: np.ndarray, t: np.ndarray,
                   in_session: np.ndarray, choice: np.ndarray, rng: np.random.Generator
                   ) -> None:
    """Fill ``choice`` (where still -1) by exploring: the previous streamer's community
    within a session, else the home community or anywhere; some finds become favourites."""
    idx = np.nonzero(choice < 0)[0]
    if idx.size == 0:
        return
    ui = u[idx]
    comm = np.where(rng.random(idx.size) < b.home_community, st.home[ui], -1)
    follow = in_session[idx] & (rng.random(idx.size) < b.follow_community)
    comm = np.where(follow, cat.community[np.maximum(st.prev[ui], 0)], comm)
    avoid = np.where(in_session[idx, None], st.recent[ui], -1)
    found = _explore(cat, comm, t[idx], avoid, b.browse, b.tries, rng)
    choice[idx] = found
    known = (st.fav[ui] == found[:, None]).any(axis=1)
    # Viewers follow streamers they can count on: adoption grows with regularity.
    regular = cat.p_day[np.maximum(found, 0)]
    take = (found >= 0) & ~known & (rng.random(idx.size) < b.adopt * 2 * regular)
    st.adopt(ui[take], found[take], t[idx][take], rng)


def _simulate(sc: Scale, b: Behaviour, cat: _Catalogue, plan: _Plan, home: np.ndarray,
              anchor: np.ndarray,
              rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    n_users = plan.n_rows.shape[0]
    st = _Users(n_users, b.favourites, home)
    loyalty = np.asarray(rng.beta(b.loyalty_mean * b.loyalty_concentration,
                                  (1 - b.loyalty_mean) * b.loyalty_concentration, n_users))
    _warm_up(sc, b, cat, plan, st, anchor, rng)

    total = plan.start.shape[0]
    counts = np.zeros(4, dtype=np.int64)  # stay, favourite, explore, nothing live
    streamer = np.full(total, -1, dtype=np.int64)
    stop = np.zeros(total, dtype=np.int64)
    kind = np.full(total, -1, dtype=np.int8)  # 0 stay, 1 favourite, 2 explore (diagnostics)
    for k in range(int(plan.n_rows.max())):
        u = np.arange(int(np.count_nonzero(plan.n_rows > k)))  # users sorted by activity
        row = plan.offset[u] + k
        t = plan.start[row]
        ok = t < sc.steps
        u, row, t = u[ok], row[ok], t[ok]
        if u.size == 0:
            continue
        # A planned new session that starts right after the previous row is not a new one.
        in_session = (~plan.new_session[row] | (t - st.prev_t[u] <= SESSION_GAP)) & (
            st.prev[u] >= 0)
        choice = np.full(u.size, -1, dtype=np.int64)
        slot = np.full(u.size, -1, dtype=np.int64)

        # Come back to the broadcast of the previous row, if it is still on.
        prev_live, prev_slot = cat.live(st.prev[u], t)
        stay = in_session & prev_live & (t > st.prev_stop[u]) & (rng.random(u.size) < b.stay)
        choice[stay], slot[stay] = st.prev[u][stay], prev_slot[stay]

        # A live favourite, or else a live streamer found by exploring.
        pick_fav = ~stay & _pick_favourite(b, cat, st, u, t, in_session, loyalty, choice, rng)
        _pick_explored(b, cat, st, u, t, in_session, choice, rng)

        good = choice >= 0
        counts += [stay.sum(), pick_fav.sum(), (~stay & ~pick_fav & good).sum(), (~good).sum()]
        u, row, t, choice, slot = u[good], row[good], t[good], choice[good], slot[good]
        need = slot < 0
        if need.any():
            _, s2 = cat.live(choice[need], t[need])
            slot[need] = s2
        streamer[row] = choice
        kind[row] = np.where(stay, 0, np.where(pick_fav, 1, 2))[good]
        stop[row] = np.minimum(t + plan.length[row], cat.bstop[slot])
        # Remember the watch: recency of favourites, and the previous row.
        hit = st.fav[u] == choice[:, None]
        st.last[u] = np.where(hit, t[:, None], st.last[u])
        st.prev[u], st.prev_slot[u], st.prev_t[u] = choice, slot, t
        st.prev_stop[u] = stop[row]
        st.recent[u] = np.column_stack([choice, st.recent[u][:, :-1]])
    logger.debug("choices stay=%d favourite=%d explore=%d nothing_live=%d", *counts)
    return streamer, stop, kind


def _warm_up(sc: Scale, b: Behaviour, cat: _Catalogue, plan: _Plan, st: _Users,
             anchor: np.ndarray,
             rng: np.random.Generator) -> None:
    """Favourites from before the log: streamers live at the user's habitual time."""
    n_users = plan.n_rows.shape[0]
    has = np.nonzero(anchor >= 0)[0]
    st.adopt(has, anchor[has], np.zeros(has.size, dtype=np.int64), rng, recent=False)
    st.aff[has, 0] += 1.0  # the anchor is the first slot filled, and a strong favourite
    count = 1 + rng.poisson(b.initial_favourites - 1, n_users)
    user = np.repeat(np.arange(n_users), count)
    day = plan.window[user, 0] + rng.integers(0, 7, user.size)
    day = np.minimum(day, max(sc.steps // STEPS_PER_DAY - 1, 0))
    t = day * STEPS_PER_DAY + plan.habit[user] + np.rint(
        rng.normal(0, b.habit_sd_steps, user.size)).astype(np.int64)
    t = np.clip(t, 0, sc.steps - 1)
    comm = np.where(rng.random(user.size) < 0.7, st.home[user], -1)
    found = _explore(cat, comm, t, np.full((t.size, 1), -1), 0.0, b.tries, rng)
    ok = found >= 0
    # One adoption per user per pass keeps slot assignment conflict-free.
    user, found, t = user[ok], found[ok], t[ok]
    order = np.argsort(user, kind="stable")
    user, found, t = user[order], found[order], t[order]
    rank = np.arange(user.size) - np.searchsorted(user, user)
    for r in range(int(rank.max()) + 1 if rank.size else 0):
        m = rank == r
        st.adopt(user[m], found[m], t[m], rng, recent=False)


def _names(n: int, rng: np.random.Generator) -> np.ndarray:
    """Unique Twitch-like usernames (lowercase letters, digits, underscores)."""
    syll = np.array(["ka", "zu", "mi", "tho", "rain", "xo", "lu", "na", "gar", "dex", "fa",
                     "ker", "vi", "sa", "mon", "ty", "ler", "shroud", "ni", "ko", "ba", "ron",
                     "el", "ga", "me", "pro", "qu", "il", "ze", "ro", "sy", "ph", "tv", "jo",
                     "wy", "din", "ax", "ed", "ri", "cat", "dog", "fox", "owl", "max", "lol"])
    parts = syll[rng.integers(0, syll.size, (n, 4))]
    k = rng.integers(2, 5, n)
    suffix = rng.integers(0, 100, n)
    style = rng.random(n)
    out = []
    seen: set[str] = set()
    for i in range(n):
        base = "".join(parts[i, : k[i]])
        if style[i] < 0.25:
            base = f"{base}{suffix[i]}"
        elif style[i] < 0.35:
            base = f"{base}_tv"
        name = base
        extra = 1
        while name in seen:
            name = f"{base}{extra}"
            extra += 1
        seen.add(name)
        out.append(name)
    return np.array(out, dtype=object)


def _frame(cat: _Catalogue, plan: _Plan, streamer: np.ndarray, stop: np.ndarray,
           kind: np.ndarray, rng: np.random.Generator) -> pd.DataFrame:
    """The Twitch columns, plus hidden ``_j``/``_u``/``_kind`` (catalogue streamer, internal
    user, choice kind) that `generate_with_truth` maps onto the log's indexes."""
    keep = streamer >= 0
    n_users = plan.n_rows.shape[0]
    user = np.repeat(np.arange(n_users), plan.n_rows)[keep]
    start = plan.start[keep]
    j = streamer[keep]
    stop = stop[keep]
    slot = cat.live(j, start)[1]
    # Stream ids: increasing with the broadcast's start time, like Twitch's.
    used, inverse = np.unique(slot, return_inverse=True)
    order = np.argsort(cat.bstart[used], kind="stable")
    ids = np.empty(used.size, dtype=np.int64)
    ids[order] = 33_800_000_000 + np.cumsum(rng.integers(16, 900, used.size))
    # User ids 1..N in a random order; the file is sorted by user, then start.
    user_id = rng.permutation(n_users).astype(np.int64) + 1
    names = _names(cat.popularity.shape[0], rng)
    frame = pd.DataFrame({"user": user_id[user], "stream": ids[inverse],
                          "streamer": names[j], "start": start, "stop": stop,
                          "_j": j, "_u": user, "_kind": kind[keep]})
    frame = frame.sort_values(["user", "start"], kind="stable").reset_index(drop=True)
    return frame
