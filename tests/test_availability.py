"""Both availability indexes against a brute-force definition, on random logs."""

from __future__ import annotations

import numpy as np
import pandas as pd
from hypothesis import given, settings
from hypothesis import strategies as st

from liverank.model.data.availability import availability, broadcasts
from liverank.model.data.twitch import Interactions, from_frame

rows = st.lists(
    st.tuples(
        st.integers(1, 5),  # user
        st.integers(0, 7),  # stream id (each belongs to the streamer it is first seen with)
        st.integers(0, 40),  # start
        st.integers(0, 6),  # length (0 = stop == start)
    ),
    min_size=1,
    max_size=40,
)


def make(raw: list[tuple[int, int, int, int]]) -> Interactions:
    owner = {}
    recs = []
    for user, stream, start, length in raw:
        owner.setdefault(stream, stream % 3)
        recs.append((user, 1000 + stream, f"s{owner[stream]}", start, start + length))
    return from_frame(pd.DataFrame(recs, columns=["user", "stream", "streamer", "start", "stop"]))


def brute_broadcast(ds: Interactions, step: int) -> dict[int, int]:
    """streamer -> answering stream, by definition."""
    first: dict[int, int] = {}
    last: dict[int, int] = {}
    who: dict[int, int] = {}
    for i in range(len(ds)):
        s = int(ds.stream[i])
        first[s] = min(first.get(s, 10**9), int(ds.start[i]))
        last[s] = max(last.get(s, -1), int(ds.end[i]))
        who.setdefault(s, int(ds.streamer[i]))
    return pick({s: (first[s], who[s]) for s in first if first[s] <= step < last[s]})


def brute_rows(ds: Interactions, step: int) -> dict[int, int]:
    first: dict[int, int] = {}
    for i in range(len(ds)):
        s = int(ds.stream[i])
        first[s] = min(first.get(s, 10**9), int(ds.start[i]))
    live: dict[int, tuple[int, int]] = {}
    for i in range(len(ds)):
        if ds.start[i] <= step < ds.end[i]:
            s = int(ds.stream[i])
            live[s] = (first[s], int(ds.streamer[i]))
    return pick(live)


def pick(live: dict[int, tuple[int, int]]) -> dict[int, int]:
    best: dict[int, tuple[int, int]] = {}
    for stream, (start, streamer) in live.items():
        key = (start, stream)  # latest started wins, then the larger stream id
        if streamer not in best or key > best[streamer]:
            best[streamer] = key
    return {streamer: key[1] for streamer, key in best.items()}


@settings(max_examples=150, deadline=None)
@given(rows)
def test_broadcast_index_matches_definition(raw: list[tuple[int, int, int, int]]) -> None:
    ds = make(raw)
    live = availability(ds, "broadcast")
    assert live.n_steps == ds.max_step + 1
    for step in range(-1, ds.max_step + 3):
        expected = brute_broadcast(ds, step) if 0 <= step <= ds.max_step else {}
        got = dict(zip(live.streamers_at(step).tolist(), live.streams_at(step).tolist(),
                       strict=True))
        assert got == expected, step
        assert np.all(np.diff(live.streamers_at(step)) > 0)
        for streamer in range(1, ds.n_streamers + 1):
            assert live.is_live(streamer, step) == (streamer in expected)
            assert live.stream_of(streamer, step) == expected.get(streamer)


@settings(max_examples=150, deadline=None)
@given(rows)
def test_rows_index_matches_definition(raw: list[tuple[int, int, int, int]]) -> None:
    ds = make(raw)
    live = availability(ds, "rows")
    for step in range(ds.max_step + 1):
        got = dict(zip(live.streamers_at(step).tolist(), live.streams_at(step).tolist(),
                       strict=True))
        assert got == brute_rows(ds, step), step
    # rows availability is never larger than broadcast availability
    b = availability(ds, "broadcast")
    assert np.all(live.live_counts() <= b.live_counts())


def test_overlapping_streams_of_one_streamer_are_counted() -> None:
    ds = from_frame(pd.DataFrame(
        [(1, 10, "a", 0, 5), (2, 11, "a", 3, 8), (3, 12, "b", 0, 2)],
        columns=["user", "stream", "streamer", "start", "stop"]))
    live = availability(ds)
    assert live.stream_of(1, 2) == 10
    assert live.stream_of(1, 4) == 11  # overlap: the latest started wins
    assert live.overlaps == 2  # steps 3 and 4
    b = broadcasts(ds)
    assert b.stream.tolist() == [10, 11, 12] and b.stop.tolist() == [5, 8, 2]


def test_unknown_definition() -> None:
    ds = make([(1, 1, 1, 1)])
    try:
        availability(ds, "sometimes")  # type: ignore[arg-type]
    except ValueError as exc:
        assert "sometimes" in str(exc)
    else:
        raise AssertionError("expected ValueError")


@settings(max_examples=40, deadline=None)
@given(rows)
def test_steps_beyond_16_bits_index_alike(raw: list[tuple[int, int, int, int]]) -> None:
    # The cells are sorted by step with 16-bit keys when the steps fit; a log beyond
    # 65,536 steps takes the 64-bit sort and must give the same index, shifted.
    shift = 70_000
    ds = make(raw)
    late = make([(user, stream, start + shift, length) for user, stream, start, length in raw])
    for definition in ("broadcast", "rows"):
        near, far = availability(ds, definition), availability(late, definition)
        assert far.n_steps == near.n_steps + shift
        assert far.overlaps == near.overlaps
        assert not far.live_counts()[:shift].any()
        np.testing.assert_array_equal(far.indptr[shift:], near.indptr)
        np.testing.assert_array_equal(far.streamers, near.streamers)
        np.testing.assert_array_equal(far.streams, near.streams)
