"""What the worker accepts: decoding, validation, rejection kinds, dead letters, headers."""

from __future__ import annotations

import pytest

from liverank.core import events as ev
from liverank.services.records import (
    REJECTION_KINDS,
    Decoded,
    EventClock,
    Rejection,
    dead_letter,
    decode_stream,
    decode_user,
    produced_ms,
)


def request(step: int, user: int = 7) -> bytes:
    return ev.encode(ev.RecRequest(event_id=f"req:{step}", seq=step, step=step,
                                   event_time_ms=0, user=user))


def test_event_clock_refuses_negative_and_far_future_steps() -> None:
    clock = EventClock(future_horizon=10)
    assert clock.check(100) is None and clock.newest == 100
    assert clock.check(110) is None
    assert clock.check(-1) == Rejection("negative_step", "negative step -1")
    refused = clock.check(121)
    assert refused is not None and refused.kind == "beyond_horizon"
    assert "beyond the newest" in refused.reason
    assert clock.newest == 110  # a refused step is not recorded
    assert clock.check(5) is None and clock.newest == 110


def test_dead_letter_kinds_are_a_small_set() -> None:
    samples = {
        b"\xff": "undecodable",
        b'{"kind":"nope","event_id":"x","seq":1,"step":1,"event_time_ms":1}': "unknown_kind",
        b'{"kind":"watch","event_id":"x","seq":1,"step":"a","event_time_ms":1}': "wrong_type",
        b'{"kind":"rec_request","event_id":"x","seq":1,"step":1,"event_time_ms":1}':
            "missing_field",
        b"[1]": "wrong_type",
    }
    for raw, kind in samples.items():
        with pytest.raises(ev.EventError) as err:
            ev.decode_user_event(raw)
        assert err.value.kind == kind, raw
        got = decode_user(raw, None, None, EventClock(5))
        assert isinstance(got, Rejection) and got.kind == kind and got.reason == str(err.value)
        assert kind in REJECTION_KINDS
    clock = EventClock(5)
    refused = decode_user(request(step=-3), None, None, clock)
    assert isinstance(refused, Rejection) and refused.kind == "negative_step"
    assert isinstance(decode_user(request(step=0), None, None, clock), Decoded)
    refused = decode_user(request(step=99), None, None, clock)
    assert isinstance(refused, Rejection) and refused.kind == "beyond_horizon"
    assert refused.event is not None and refused.event.step == 99
    refused = decode_user(request(step=1), b"other", None, clock)
    assert isinstance(refused, Rejection) and refused.kind == "wrong_key"


def test_a_stream_event_beyond_the_future_horizon_is_refused_with_its_event() -> None:
    clock = EventClock(future_horizon=10)
    start = ev.StreamStart(event_id="start:1", seq=0, step=5, event_time_ms=0, stream=1,
                           streamer="a")
    assert decode_stream(ev.encode(start), clock) == start
    far = ev.Watermark(event_id="wm:500", seq=1, step=500, event_time_ms=0)
    refused = decode_stream(ev.encode(far), clock)
    assert isinstance(refused, Rejection) and refused.kind == "beyond_horizon"
    letter = dead_letter("stream-events", 3, 42, ev.encode(far), refused)
    assert letter.event_id == "dead:stream-events:3:42" and letter.step == 500
    assert ev.decode(ev.encode(letter), ev.DeadLetter) == letter
    garbage = decode_stream(b"\x00\x01", clock)
    assert isinstance(garbage, Rejection) and garbage.kind == "undecodable"
    assert dead_letter("s", None, None, b"\x00", garbage).seq == -1


def test_produced_ms_header_is_read_from_pairs_or_a_dict_and_never_fails() -> None:
    assert produced_ms([(ev.PRODUCED_MS_HEADER, b"1234")]) == 1234
    assert produced_ms({ev.PRODUCED_MS_HEADER: "99"}) == 99
    assert produced_ms([(ev.PRODUCED_MS_HEADER, b"soon")]) is None
    assert produced_ms(None) is None and produced_ms([("other", b"1")]) is None
