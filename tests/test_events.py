"""The JSON event contract: round trips, and errors that name the field."""

from __future__ import annotations

import msgspec
import pytest

from liverank.core import events as ev
from liverank.core.timebase import DEFAULT_EPOCH_MS, event_time_ms

SAMPLES: list[ev.Event] = [
    ev.StreamStart(event_id="start:5", seq=0, step=3, event_time_ms=event_time_ms(3),
                   stream=5, streamer="alptv"),
    ev.StreamStop(event_id="stop:5", seq=9, step=7, event_time_ms=event_time_ms(7),
                  stream=5, streamer="alptv"),
    ev.Watermark(event_id="wm:3", seq=1, step=3, event_time_ms=event_time_ms(3), partition=2),
    ev.End(event_id="end", seq=10, step=7, event_time_ms=1, stream_events=4, user_events=6),
    ev.Watch(event_id="watch:0", seq=3, step=3, event_time_ms=2, user=42, stream=5,
             streamer="alptv"),
    ev.RecRequest(event_id="req:0", seq=2, step=3, event_time_ms=2, user=42),
    ev.Recommendation(event_id="rec:req:0", seq=2, step=3, event_time_ms=2, user=42,
                      request_id="req:0", trigger="request", produced_ms=5, published_ms=7,
                      model_version="abc", fallback=False,
                      items=[ev.RecItem(stream=5, streamer="alptv", score=1.5, rank=1)]),
    ev.DeadLetter(event_id="dl:1", seq=-1, step=-1, event_time_ms=0, original=b"\xff{",
                  topic="user-events", reason="not JSON"),
]


@pytest.mark.parametrize("event", SAMPLES, ids=lambda e: type(e).__name__)
def test_round_trip(event: ev.Event) -> None:
    data = ev.encode(event)
    assert ev.decode(data) == event
    assert msgspec.json.decode(data)["kind"] == type(event).__struct_config__.tag


def test_event_time() -> None:
    assert event_time_ms(0) == DEFAULT_EPOCH_MS
    assert event_time_ms(2, epoch_ms=1000) == 1000 + 2 * 600_000


def test_watch_carries_no_stop() -> None:
    assert "stop" not in ev.Watch.__struct_fields__


@pytest.mark.parametrize(
    ("data", "needle"),
    [
        (b'{"kind":"watch","event_id":"w","seq":1,"step":"3","event_time_ms":1,"user":1,'
         b'"stream":1,"streamer":"a"}', "$.step"),
        (b'{"kind":"watch","event_id":"w","seq":1,"step":3,"event_time_ms":1,"stream":1,'
         b'"streamer":"a"}', "user"),
        (b'{"kind":"teleport","event_id":"w","seq":1,"step":3,"event_time_ms":1}', "teleport"),
        (b'\xff\xfe not json', "not a JSON record"),
    ],
)
def test_decode_errors_name_the_field(data: bytes, needle: str) -> None:
    with pytest.raises(ev.EventError) as info:
        ev.decode(data)
    assert needle in str(info.value)


def test_narrowed_decoders_refuse_other_topics_records() -> None:
    watch = ev.encode(SAMPLES[4])
    assert isinstance(ev.decode_user_event(watch), ev.Watch)
    with pytest.raises(ev.EventError):
        ev.decode_stream_event(watch)


def test_keys_and_schemas() -> None:
    assert ev.user_key(42) == b"42" and ev.stream_key(7) == b"7"
    schemas = ev.json_schemas()
    assert set(schemas) == {"stream-events", "user-events", "recommendations",
                            "recommendations-latest", "recommendations-shadow",
                            "dead-letters"}
