"""The replay producer without a broker: encoding, order, pacing, failures, the CLI's checks."""

from __future__ import annotations

import itertools
import time
from pathlib import Path

import msgspec
import numpy as np
import pytest
from typer.testing import CliRunner

from liverank.broker.embedded import free_port
from liverank.cli.main import app
from liverank.core import events as ev
from liverank.core.timebase import event_time_ms
from liverank.model.data.synth import generate
from liverank.model.data.timeline import WATERMARK, build_timeline
from liverank.model.data.twitch import from_frame, write_twitch
from liverank.replay.encoder import EncodeError, Encoder, blocks, encode_blocks
from liverank.replay.producer import (
    PRODUCED_MS_HEADER,
    MemorySink,
    Pacer,
    parse_speed,
    replay,
)

P = 4  # partitions of stream-events in these tests
runner = CliRunner()


@pytest.fixture(scope="module")
def tiny():  # type: ignore[no-untyped-def]
    return generate("tiny", seed=0)


def _odd_log():  # type: ignore[no-untyped-def]
    """Hand-made: a stream id seen with two streamers, a name needing JSON escapes."""
    import pandas as pd

    return from_frame(pd.DataFrame({
        "user": [7, 8, 7, 9], "stream": [100, 100, 200, 300],
        "streamer": ['a"b\\c', "other", "é", "z"], "start": [0, 1, 1, 3],
        "stop": [2, 3, 1, 5]}))


def _run(tl, **kw):  # type: ignore[no-untyped-def]
    sink = MemorySink()
    report = replay(tl, sink, partitions=P, stream_topic="s", user_topic="u", **kw)
    return sink, report


def test_encoder_matches_the_contract_byte_for_byte(tiny) -> None:  # type: ignore[no-untyped-def]
    for ds in (tiny, _odd_log()):
        tl = build_timeline(ds)
        batch = Encoder(tl, P, "s", "u").encode(0, len(tl))
        want = []
        for i in range(len(tl)):
            e = tl.event(i)
            if tl.kind[i] == WATERMARK:
                want += [ev.encode(msgspec.structs.replace(e, partition=p)) for p in range(P)]
            else:
                want.append(ev.encode(e))
        assert batch.value == want


def test_replay_sends_every_event_keyed_and_stamped(tiny) -> None:  # type: ignore[no-untyped-def]
    tl = build_timeline(tiny)
    sink, report = _run(tl, wall_ms=lambda: 1234)
    assert report.ok and report.events == len(tl)
    counts = tl.counts()
    n_wm = counts["watermark"]
    assert report.topics["s"].produced == report.topics["s"].acknowledged == (
        counts["stream_start"] + counts["stream_stop"] + (n_wm + 1) * P)
    assert report.topics["u"].produced == counts["rec_request"] + counts["watch"]
    decoded = [(m, ev.decode(m.value)) for m in sink.sent]
    # Timeline order kept (End last), timestamps are event times, header is the wall clock.
    body = [(m, e) for m, e in decoded if not isinstance(e, ev.End)]
    assert [e.seq for m, e in body if not isinstance(e, ev.Watermark)] == [
        s for s, k in zip(tl.seq.tolist(), tl.kind.tolist(), strict=True) if k != WATERMARK]
    for m, e in decoded:
        assert m.timestamp == e.event_time_ms == event_time_ms(e.step)
        assert m.headers == [(PRODUCED_MS_HEADER, b"1234")]
        if isinstance(e, ev.Watch | ev.RecRequest):
            assert (m.topic, m.key, m.partition) == ("u", ev.user_key(e.user), -1)
        elif isinstance(e, ev.StreamStart | ev.StreamStop):
            assert (m.topic, m.key, m.partition) == ("s", ev.stream_key(e.stream), -1)
        else:
            assert (m.topic, m.key, m.partition) == ("s", None, e.partition)
    # One watermark per step on every partition, in partition order, right after the step's
    # stream events.
    wms = [(e.step, e.partition) for _, e in decoded if isinstance(e, ev.Watermark)]
    assert wms == [(s, p) for s in range(tl.last_step + 1) for p in range(P)]
    ends = [e for _, e in decoded[-P:]]
    assert [e.partition for e in ends] == list(range(P))
    assert all(isinstance(e, ev.End) for e in ends)
    assert ends[0].stream_events == report.topics["s"].produced - P
    assert ends[0].user_events == report.topics["u"].produced
    # Each request directly precedes its watch on the user's key.
    users = [e for _, e in decoded if isinstance(e, ev.Watch | ev.RecRequest)]
    for req, watch in zip(users[::2], users[1::2], strict=True):
        assert isinstance(req, ev.RecRequest) and isinstance(watch, ev.Watch)
        assert req.event_id.split(":")[1] == watch.event_id.split(":")[1]
        assert req.seq + 1 == watch.seq and req.user == watch.user


def test_from_step_sends_running_streams_first(tiny) -> None:  # type: ignore[no-untyped-def]
    tl = build_timeline(tiny, from_step=200, to_step=260, requests="session-start",
                        requests_from=230)
    sink, report = _run(tl)
    assert report.ok
    events = [ev.decode(m.value) for m in sink.sent]
    early = [e for e in events if e.step < 200]
    assert early and all(isinstance(e, ev.StreamStart) for e in early)
    assert events[:len(early)] == early  # carried starts come first
    assert all(e.step <= 260 for e in events)
    assert not any(isinstance(e, ev.RecRequest) and e.step < 230 for e in events)
    assert any(isinstance(e, ev.Watch) and e.step < 230 for e in events)


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0
        self.slept = 0.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        assert seconds > 0
        self.now += seconds
        self.slept += seconds


@pytest.mark.parametrize("speed", [600.0, 6000.0])
def test_pacing_follows_speed(tiny, speed: float) -> None:  # type: ignore[no-untyped-def]
    tl = build_timeline(tiny, from_step=100, to_step=140)
    clock = FakeClock()
    sink = MemorySink()
    sent_at: list[float] = []
    produce = sink.produce

    def stamped(*a, **k):  # type: ignore[no-untyped-def]
        sent_at.append(clock.now)
        produce(*a, **k)

    sink.produce = stamped  # type: ignore[method-assign]
    report = replay(tl, sink, partitions=P, stream_topic="s", user_topic="u", speed=speed,
                    start_step=100, clock=clock, sleep=clock.sleep)
    assert report.ok
    step_s = 600 / speed  # wall seconds per step
    t0 = 1000.0
    for m, at in zip(sink.sent, sent_at, strict=True):
        s = max(ev.decode(m.value).step, 100)  # carried starts are due at once
        assert t0 + (s - 100) * step_s - 1e-9 <= at < t0 + (s - 100 + 1) * step_s
    assert clock.slept == pytest.approx((140 - 100) * step_s)


def test_max_speed_never_sleeps(tiny) -> None:  # type: ignore[no-untyped-def]
    clock = FakeClock()
    _, report = _run(build_timeline(tiny), clock=clock, sleep=clock.sleep)
    assert report.ok and clock.slept == 0


def test_pacer_does_not_catch_up_by_sleeping_when_late() -> None:
    clock = FakeClock()
    pacer = Pacer(60.0, clock, start_step=0)  # a step every 10 s
    assert pacer.delay(0) == 0
    assert pacer.delay(3) == pytest.approx(30)
    clock.now += 100  # fell behind
    assert pacer.delay(5) == 0


@pytest.mark.parametrize("text, value", [("max", None), ("MAX", None), ("3600", 3600.0),
                                         ("0.5", 0.5)])
def test_parse_speed(text: str, value: float | None) -> None:
    assert parse_speed(text) == value


@pytest.mark.parametrize("text", ["0", "-3", "fast", ""])
def test_parse_speed_refuses(text: str) -> None:
    with pytest.raises(ValueError, match="--speed"):
        parse_speed(text)


def test_failed_delivery_stops_and_is_reported(tiny) -> None:  # type: ignore[no-untyped-def]
    tl = build_timeline(tiny)
    sink = MemorySink(fail=lambda m: "broker said no" if m.topic == "u" and
                      b'"seq":500,' in m.value else None)
    report = replay(tl, sink, partitions=P, stream_topic="s", user_topic="u", block_size=500)
    assert not report.ok
    assert report.topics["u"].failed == 1
    assert report.first_error == "u: broker said no"
    assert report.events < len(tl)  # stopped early, and no End was sent
    assert not any(m.value.startswith(b'{"kind":"end"') for m in sink.sent)


def test_buffer_full_is_waited_out(tiny) -> None:  # type: ignore[no-untyped-def]
    """BufferError from produce: the replay polls (delivering) and retries the same message."""
    tl = build_timeline(tiny, to_step=50)
    sink = MemorySink()
    produce, polls, attempts, retried = sink.produce, [], [0], []

    def full_every_100(*a, **k):  # type: ignore[no-untyped-def]
        attempts[0] += 1
        if attempts[0] % 100 == 0:
            retried.append(len(sink.sent))  # where the retried message will land
            raise BufferError("Local: Queue full")
        produce(*a, **k)

    poll = sink.poll
    sink.produce = full_every_100  # type: ignore[method-assign]
    sink.poll = lambda t=0: polls.append(t) or poll(t)  # type: ignore[method-assign]
    clock = itertools.count()
    report = replay(tl, sink, partitions=P, stream_topic="s", user_topic="u",
                    wall_ms=lambda: next(clock))
    assert report.ok and polls.count(0.05) == attempts[0] // 100
    assert attempts[0] == len(sink.sent) + attempts[0] // 100
    # The message sent after a wait carries a produced_ms taken after the wait.
    stamps = [int(m.headers[0][1]) for m in sink.sent]
    assert retried and all(stamps[i] > stamps[i - 1] for i in retried)
    seqs = [ev.decode(m.value).seq for m in sink.sent if m.partition <= 0]
    assert seqs == sorted(seqs)  # nothing lost or reordered by the retries


# --- the command line: checks before anything is produced -------------------------------------

def _bad_file(tmp_path: Path, tiny) -> Path:  # type: ignore[no-untyped-def]
    path = tmp_path / "log.csv"
    write_twitch(tiny, path)
    lines = path.read_text().splitlines()
    lines.insert(10, "5,6,x,9,oops")
    path.write_text("\n".join(lines) + "\n")
    return path


def test_bad_row_stops_before_any_broker_contact(tmp_path: Path, tiny) -> None:  # type: ignore[no-untyped-def]
    path = _bad_file(tmp_path, tiny)
    t0 = time.monotonic()
    # The broker address is closed: a clear data error must come first, and fast.
    result = runner.invoke(app, ["replay", str(path), "--bootstrap",
                                 f"127.0.0.1:{free_port()}", "--no-progress"])
    assert result.exit_code == 2
    assert "line 11" in result.output and "'stop'" in result.output
    assert "--skip-bad-rows" in result.output or "not an integer" in result.output
    assert time.monotonic() - t0 < 5


def test_unreachable_broker_fails_within_bounded_time(tmp_path: Path, tiny,  # type: ignore[no-untyped-def]
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "log.csv"
    write_twitch(tiny, path)
    monkeypatch.setenv("LIVERANK_KAFKA_TIMEOUT_S", "2")
    port = free_port()
    t0 = time.monotonic()
    result = runner.invoke(app, ["replay", str(path), "--bootstrap", f"127.0.0.1:{port}",
                                 "--no-progress"])
    elapsed = time.monotonic() - t0
    assert result.exit_code == 2, result.output
    assert f"no Kafka broker answered at 127.0.0.1:{port}" in result.output
    assert "liverank broker" in result.output
    assert elapsed < 8


@pytest.mark.parametrize("args, needle", [
    (["--speed", "fast"], "--speed"),
    (["--requests", "sometimes"], "--requests"),
])
def test_bad_options_are_named(tmp_path: Path, tiny, args: list[str], needle: str) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "log.csv"
    write_twitch(tiny, path)
    result = runner.invoke(app, ["replay", str(path), *args, "--no-progress"])
    assert result.exit_code == 2 and needle in result.output


def test_blocks_split_on_steps_when_paced(tiny) -> None:  # type: ignore[no-untyped-def]
    tl = build_timeline(tiny)
    paced = list(blocks(tl, paced=True))
    assert paced[0][0] == 0 and paced[-1][1] == len(tl)
    assert all(a[1] == b[0] for a, b in zip(paced, paced[1:], strict=False))
    assert all(np.unique(tl.step[lo:hi]).size == 1 for lo, hi in paced)
    fast = list(blocks(tl, paced=False, size=1000))
    assert [hi - lo for lo, hi in fast[:-1]] == [1000] * (len(fast) - 1)


def test_forked_encoder_sends_the_same_messages(tiny) -> None:  # type: ignore[no-untyped-def]
    tl = build_timeline(tiny)
    inline, r1 = _run(tl, wall_ms=lambda: 7, block_size=700)
    enc = Encoder(tl, P, "s", "u")
    forked, r2 = _run(tl, wall_ms=lambda: 7,
                      batches=encode_blocks(enc, paced=False, block_size=700, parallel=True))
    assert r1.ok and r2.ok and r2.events == len(tl)
    assert forked.sent == inline.sent


def test_forked_encoder_failure_is_raised(tiny) -> None:  # type: ignore[no-untyped-def]
    tl = build_timeline(tiny)
    enc = Encoder(tl, P, "s", "u")
    enc.step_piece = enc.step_piece[:10]  # the child will index past it
    with pytest.raises(EncodeError, match="encoder process failed: IndexError"):
        list(encode_blocks(enc, paced=False, block_size=700, parallel=True))
    # Inside a replay: what was sent is flushed and counted, the report says why it stopped.
    sink, report = _run(tl, batches=encode_blocks(enc, paced=False, block_size=700,
                                                  parallel=True))
    assert not report.ok and "IndexError" in (report.first_error or "")
    assert report.topics["s"].produced + report.topics["u"].produced == len(sink.sent)
