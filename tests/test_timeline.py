"""Timeline ordering, watermarks, request modes, step ranges and id stability."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from liverank.core import events as ev
from liverank.model.data import timeline as tl
from liverank.model.data.twitch import Interactions, from_frame

ROWS = [
    # user, stream, streamer, start, stop
    (7, 100, "a", 0, 2),
    (8, 200, "b", 1, 3),
    (7, 100, "a", 2, 4),  # same broadcast as row 0: stream 100 lives on [0, 4)
    (9, 300, "c", 2, 2),  # stop == start: one step, [2, 3)
    (8, 100, "a", 3, 4),
    (7, 400, "b", 12, 13),  # a new broadcast of b, after a long gap
]


def data() -> Interactions:
    return from_frame(pd.DataFrame(ROWS, columns=["user", "stream", "streamer", "start",
                                                  "stop"]))


def test_order_within_and_across_steps() -> None:
    events = list(tl.build_timeline(data()))
    assert [e.seq for e in events] == sorted(e.seq for e in events)
    steps = [e.step for e in events]
    assert steps == sorted(steps)
    phase = {"stream_stop": 0, "stream_start": 1, "watermark": 2, "rec_request": 3, "watch": 3}
    for a, b in zip(events, events[1:], strict=False):
        if a.step == b.step:
            assert phase[type(a).__struct_config__.tag] <= phase[type(b).__struct_config__.tag]
    step2 = [(type(e).__name__, e.event_id) for e in events if e.step == 3]
    # stream 200 ([1,3)) and 300 ([2,3)) stop at 3, before the watermark and user events.
    assert step2 == [("StreamStop", "stop:200"), ("StreamStop", "stop:300"),
                     ("Watermark", "wm:3"), ("RecRequest", "req:4"), ("Watch", "watch:4")]


def test_every_watch_preceded_by_its_request_and_file_order_kept() -> None:
    events = [e for e in tl.build_timeline(data()) if isinstance(e, (ev.Watch, ev.RecRequest))]
    assert [e.event_id for e in events] == [
        f"{k}:{r}" for r in range(len(ROWS)) for k in ("req", "watch")]
    for req, watch in zip(events[::2], events[1::2], strict=True):
        assert req.user == watch.user and req.step == watch.step and req.seq < watch.seq


def test_a_watermark_for_every_step_after_that_steps_stream_events() -> None:
    t = tl.build_timeline(data())
    events = list(t)
    marks = [e for e in events if isinstance(e, ev.Watermark)]
    assert [m.step for m in marks] == list(range(t.last_step + 1))
    for m in marks:
        later_stream = [e for e in events if e.seq > m.seq
                        and isinstance(e, (ev.StreamStart, ev.StreamStop))]
        assert all(e.step > m.step for e in later_stream)


def test_stream_events_follow_broadcast_definition() -> None:
    events = list(tl.build_timeline(data()))
    starts = {e.stream: e.step for e in events if isinstance(e, ev.StreamStart)}
    stops = {e.stream: e.step for e in events if isinstance(e, ev.StreamStop)}
    assert starts == {100: 0, 200: 1, 300: 2, 400: 12}
    assert stops == {100: 4, 200: 3, 300: 3, 400: 13}


def test_event_times_and_watch_payload() -> None:
    t = tl.build_timeline(data(), epoch_ms=1_000)
    for e in t:
        assert e.event_time_ms == 1_000 + e.step * 600_000
    watch = next(e for e in t if isinstance(e, ev.Watch))
    assert (watch.user, watch.stream, watch.streamer) == (7, 100, "a")


def test_ids_and_seq_stable_across_modes_and_ranges() -> None:
    full = {e.event_id: e.seq for e in tl.build_timeline(data())}
    for kwargs in ({"requests": "none"}, {"requests": "session-start"},
                   {"from_step": 2, "to_step": 3}, {"requests_from": 3}):
        for e in tl.build_timeline(data(), **kwargs):  # type: ignore[arg-type]
            assert full[e.event_id] == e.seq
    again = [(e.event_id, e.seq) for e in tl.build_timeline(data())]
    assert again == [(e.event_id, e.seq) for e in tl.build_timeline(data())]


def test_request_modes() -> None:
    def requests(**kw: object) -> list[str]:
        return [e.event_id for e in tl.build_timeline(data(), **kw)  # type: ignore[arg-type]
                if isinstance(e, ev.RecRequest)]

    assert requests(requests="none") == []
    # session starts with a gap of 6 steps: user 7 at 0 (first), 2 (no), 12 (gap 10 -> yes)
    assert requests(requests="session-start") == ["req:0", "req:1", "req:3", "req:5"]
    assert requests(requests_from=3) == ["req:4", "req:5"]
    with pytest.raises(ValueError, match="request mode"):
        tl.build_timeline(data(), requests="sometimes")  # type: ignore[arg-type]


def test_step_range_sends_earlier_live_starts_first() -> None:
    events = list(tl.build_timeline(data(), from_step=2, to_step=3))
    starts = [e for e in events if isinstance(e, ev.StreamStart)]
    # 100 ([0,4)) and 200 ([1,3)) began before step 2 and are live at it; 300 starts at 2.
    assert [s.stream for s in starts] == [100, 200, 300]
    assert events[0].stream == 100  # type: ignore[union-attr]
    assert all(e.step in (2, 3) for e in events if not isinstance(e, ev.StreamStart))
    assert not any(isinstance(e, ev.Watch) and e.step > 3 for e in events)


def test_counts_and_end_record() -> None:
    t = tl.build_timeline(data())
    c = t.counts()
    assert c["watch"] == c["rec_request"] == len(ROWS)
    assert c["stream_start"] == c["stream_stop"] == 4
    end = t.end_event()
    assert end.stream_events + end.user_events == len(t)
    assert end.seq > int(np.max(t.seq))
