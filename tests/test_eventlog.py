"""The viewing log rebuilt from events: the same rows as the CSV cut at the same step, and
the same training (no broker here; the broker round trip is in test_history_kafka.py)."""

from __future__ import annotations

import random

import numpy as np
import pandas as pd
import pytest
import torch

from liverank.core import events as ev
from liverank.core.timebase import DEFAULT_EPOCH_MS, STEP_MS
from liverank.model.data.availability import availability
from liverank.model.data.eventlog import as_known_at, log_from_events, step_at
from liverank.model.data.synth import generate
from liverank.model.data.timeline import build_timeline
from liverank.model.data.twitch import Interactions, from_frame, in_event_order
from liverank.model.train import configs, train

OFFSETS = {"val_offset": 120, "test_offset": 60}


@pytest.fixture(scope="module")
def tiny() -> Interactions:
    return generate("tiny", seed=0)


@pytest.fixture(scope="module")
def events(tiny: Interactions) -> list[ev.Event]:
    return list(build_timeline(tiny))


def frames_equal(a: Interactions, b: Interactions) -> None:
    pd.testing.assert_frame_equal(a.to_frame(), b.to_frame())


def test_the_tiny_log_is_not_in_event_order(tiny: Interactions) -> None:
    # Otherwise the tests below could not tell event order from file order.
    assert not (np.diff(tiny.start) >= 0).all()


def test_events_up_to_a_cut_give_the_csv_rows_as_known_then(
        tiny: Interactions, events: list[ev.Event]) -> None:
    for cut in (150, 301, tiny.max_step):
        from_events = log_from_events(events, until_step=cut)
        from_csv = as_known_at(tiny, cut)
        frames_equal(from_events, from_csv)
        assert len(from_csv) == int((tiny.start <= cut).sum())
    # Before the last stop, some broadcasts are still on air: open until the cut.
    cut = 301
    log = log_from_events(events, until_step=cut)
    assert (log.stop == cut + 1).any() and log.max_step == cut + 1


def test_reading_everything_keeps_the_rows_and_their_availability(
        tiny: Interactions, events: list[ev.Event]) -> None:
    log = log_from_events(events)  # no cut: up to the last step of any event
    ordered = in_event_order(tiny)
    want = ordered.to_frame().drop(columns="stop")
    pd.testing.assert_frame_equal(log.to_frame().drop(columns="stop"), want)
    # A watch carries no stop, but the broadcast definition of "live" is rebuilt exactly.
    a, b = availability(log, "broadcast"), availability(ordered, "broadcast")
    assert np.array_equal(a.indptr, b.indptr) and np.array_equal(a.streams, b.streams)
    assert [log.streamer_names[s] for s in a.streamers] == [
        ordered.streamer_names[s] for s in b.streamers]


def test_duplicates_and_shuffled_partitions_change_nothing(
        tiny: Interactions, events: list[ev.Event]) -> None:
    messy = events + events[::7]  # records re-sent after an outage
    random.Random(0).shuffle(messy)  # partitions interleave in any order
    frames_equal(log_from_events(messy, until_step=300), log_from_events(events, until_step=300))


def test_since_drops_earlier_rows_only(tiny: Interactions, events: list[ev.Event]) -> None:
    log = log_from_events(events, until_step=300, since_step=200)
    assert log.start.min() >= 200 and log.start.max() <= 300
    frames_equal(log, as_known_at(tiny, 300, since_step=200))


def test_no_watch_in_range_is_a_clear_error(events: list[ev.Event]) -> None:
    with pytest.raises(ValueError, match="no watch events steps 5..4"):
        log_from_events(events, until_step=4, since_step=5, source="topics")
    starts_only = [e for e in events if not isinstance(e, ev.Watch)]
    with pytest.raises(ValueError, match="no watch events up to step"):
        log_from_events(starts_only)


def test_training_from_events_equals_training_from_the_csv(
        tiny: Interactions, events: list[ev.Event], tmp_path: object) -> None:
    """The same rows, from the CSV (file order) and from the topics' events (event order),
    give bit-identical weights: training takes rows in event order either way."""
    model_cfg, cfg = configs("liverank", "tiny", threads=1, dim=16, epochs=1, **OFFSETS)
    a = train(tiny, f"{tmp_path}/csv", model_cfg, cfg, progress=False)
    b = train(log_from_events(events), f"{tmp_path}/events", model_cfg, cfg, progress=False)
    assert a.best_ndcg10 == b.best_ndcg10
    wa = torch.load(f"{tmp_path}/csv/weights.pt", weights_only=True)
    wb = torch.load(f"{tmp_path}/events/weights.pt", weights_only=True)
    assert wa.keys() == wb.keys()
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_in_event_order_sorts_by_step_keeping_file_order_within_one() -> None:
    rows = [(2, 10, "b", 5, 6), (1, 11, "a", 3, 4), (1, 10, "b", 5, 7), (2, 11, "a", 1, 2)]
    ds = from_frame(pd.DataFrame(rows, columns=["user", "stream", "streamer", "start",
                                                "stop"]))
    ordered = in_event_order(ds)
    assert ordered.start.tolist() == [1, 3, 5, 5]
    assert ordered.to_frame()["user"].tolist() == [2, 1, 2, 1]  # file order within step 5
    assert ordered.user_ids.tolist() == [-1, 2, 1]  # re-indexed by first appearance
    assert in_event_order(ordered) is ordered


@pytest.mark.parametrize("seed", range(3))
def test_in_event_order_equals_reloading_the_sorted_rows(tiny: Interactions, seed: int) -> None:
    # in_event_order re-indexes without going through the raw ids again: the same arrays
    # as loading the rows in event order from scratch.
    rng = np.random.default_rng(seed)
    n = 400
    frame = pd.DataFrame({"user": rng.integers(10**12, 10**12 + 30, n),
                          "stream": rng.integers(1, 60, n), "start": rng.integers(0, 40, n)})
    frame["streamer"] = "s" + (frame["stream"] % 17).astype(str)
    frame["stop"] = frame["start"] + rng.integers(0, 3, n)
    for ds in (from_frame(frame[["user", "stream", "streamer", "start", "stop"]],
                          source="x.csv"), tiny):
        got = in_event_order(ds)
        order = np.argsort(ds.start, kind="stable")
        want = from_frame(ds.to_frame().iloc[order].reset_index(drop=True), source=ds.source)
        for name in ("user", "stream", "streamer", "start", "stop", "user_ids",
                     "streamer_names"):
            g, w = getattr(got, name), getattr(want, name)
            assert g.dtype == w.dtype, name
            np.testing.assert_array_equal(g, w, err_msg=name)
        assert (got.source, got.bad_rows) == (want.source, want.bad_rows)
        assert not np.array_equal(got.user, ds.user)  # re-indexed, not just kept


def test_step_at_reads_event_times() -> None:
    assert step_at("step:42", DEFAULT_EPOCH_MS) == 42
    assert step_at(str(DEFAULT_EPOCH_MS + 3 * STEP_MS + 1), DEFAULT_EPOCH_MS) == 3
    assert step_at("2019-10-01T00:30:00Z", DEFAULT_EPOCH_MS) == 3
    assert step_at("2019-10-01T00:29:59", DEFAULT_EPOCH_MS) == 2  # no offset: UTC
    assert step_at("2019-10-01T02:30+02:00", DEFAULT_EPOCH_MS) == 3
    for bad, reason in (("yesterday", "not an ISO-8601 time"), ("step:x", "integer"),
                        ("2019-09-30T23:50Z", "before step 0")):
        with pytest.raises(ValueError, match=reason):
            step_at(bad, DEFAULT_EPOCH_MS)
