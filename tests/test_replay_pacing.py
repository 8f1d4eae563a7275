"""Pacing a replay at a request rate, replays that continue one another (no End in between),
and the demo's calibration arithmetic; no broker."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from typer.testing import CliRunner

from liverank.cli import demo
from liverank.cli.demo import DemoError, calibration_start, drain_rate, held_load
from liverank.cli.main import app
from liverank.client.monitor import answer_rate
from liverank.core import events as ev
from liverank.core.partitioner import partition_for
from liverank.model.data.synth import generate
from liverank.model.data.timeline import REQUEST, WATERMARK, build_timeline
from liverank.model.data.twitch import write_twitch
from liverank.replay.producer import (
    PRODUCED_MS_HEADER,
    EvenRateSink,
    MemorySink,
    message_rate,
    replay,
)

P = 4
runner = CliRunner()


@pytest.fixture(scope="module")
def tiny():  # type: ignore[no-untyped-def]
    return generate("tiny", seed=0)


class _Clock:
    """A fake monotonic clock (s) and wall clock (ms) that move only when polled."""

    def __init__(self) -> None:
        self.now = 50.0

    def __call__(self) -> float:
        return self.now

    def wall_ms(self) -> int:
        return int(self.now * 1000)


class _TimedSink(MemorySink):
    """A MemorySink whose poll(t) advances the clock by t (as a real poll would wait)."""

    def __init__(self, clock: _Clock) -> None:
        super().__init__()
        self.clock = clock
        self.at: list[float] = []

    def produce(self, *args: Any, **kwargs: Any) -> None:
        self.at.append(self.clock.now)
        super().produce(*args, **kwargs)

    def poll(self, timeout: float = 0) -> int:
        self.clock.now += timeout
        return super().poll(timeout)


def test_even_rate_sink_spaces_messages_and_stamps_the_send_time() -> None:
    clock = _Clock()
    inner = _TimedSink(clock)
    sink = EvenRateSink(inner, per_s=200.0, clock=clock, wall_ms=clock.wall_ms)
    for i in range(50):
        sink.produce("t", b"v%d" % i, None, -1, headers=[(PRODUCED_MS_HEADER, b"0")])
    gaps = np.diff(inner.at)
    assert gaps == pytest.approx(np.full(49, 1 / 200), abs=1e-9)
    for at, msg in zip(inner.at, inner.sent, strict=True):  # stamped when handed over
        assert msg.headers == [(PRODUCED_MS_HEADER, b"%d" % int(at * 1000))]


def test_even_rate_sink_does_not_burst_to_catch_up() -> None:
    clock = _Clock()
    inner = _TimedSink(clock)
    sink = EvenRateSink(inner, per_s=100.0, clock=clock, wall_ms=clock.wall_ms)
    sink.produce("t", b"a")
    clock.now += 5.0  # the caller stalled for 5 s (500 slots)
    for _ in range(3):
        sink.produce("t", b"b")
    assert np.diff(inner.at[1:]) == pytest.approx([0.01, 0.01])


def test_even_rate_sink_in_ticks_hands_each_tick_over_together() -> None:
    clock = _Clock()
    inner = _TimedSink(clock)
    per_s, tick = 1000.0, 0.05
    sink = EvenRateSink(inner, per_s=per_s, clock=clock, wall_ms=clock.wall_ms, tick_s=tick)
    t0 = clock.now
    for i in range(300):
        sink.produce("t", b"v%d" % i)
    at = np.array(inner.at) - t0
    ticks = np.round(at / tick)
    assert at == pytest.approx(ticks * tick, abs=1e-6)  # only at tick ends
    due = np.arange(300) / per_s
    assert np.all(at >= due - 1e-9) and np.all(at < due + tick + 1e-9)  # never early
    assert np.bincount(ticks.astype(int)).max() <= tick * per_s + 1  # the rate holds
    assert len(set(ticks)) == 7  # 300 messages at 1,000/s: due 0-0.299 s, tick ends 0-0.3
    for t, msg in zip(inner.at, inner.sent, strict=True):  # stamped when handed over
        assert msg.headers == [(PRODUCED_MS_HEADER, b"%d" % int(t * 1000))]


class _FlushSink(_TimedSink):
    """Records each flush: (time, messages handed over before it)."""

    def __init__(self, clock: _Clock) -> None:
        super().__init__(clock)
        self.flushes: list[tuple[float, int]] = []

    def flush(self, timeout: float = 0) -> int:
        self.flushes.append((self.clock.now, len(self.sent)))
        return super().flush(timeout)


@pytest.mark.parametrize("tick", [0.05, 0.0])
def test_even_rate_sink_flushes_each_tick_before_waiting_for_the_next(tick: float) -> None:
    """A whole tick goes to the broker at once (librdkafka would send each partition's share
    when its linger ran out, a few ms apart, and a fetch could cut the tick in two); without
    ticks nothing is flushed (the producer's linger batches a steady stream)."""
    clock = _Clock()
    inner = _FlushSink(clock)
    sink = EvenRateSink(inner, per_s=1000.0, clock=clock, wall_ms=clock.wall_ms, tick_s=tick)
    for i in range(300):
        sink.produce("t", b"v%d" % i)
    if not tick:
        assert inner.flushes == []
        return
    at = np.array(inner.at)
    ends = np.unique(at)  # the ticks' hand-over times
    # one flush per tick after the first, right after that tick's last message was handed
    # over and before the next tick's first
    assert [n for _, n in inner.flushes] == [int(np.count_nonzero(at <= e)) for e in ends[:-1]]
    assert [t for t, _ in inner.flushes] == pytest.approx(list(ends[:-1]))


def test_even_rate_sink_can_leave_ticks_to_the_linger(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(EvenRateSink, "flush_ticks", False)
    clock = _Clock()
    inner = _FlushSink(clock)
    sink = EvenRateSink(inner, per_s=1000.0, clock=clock, wall_ms=clock.wall_ms, tick_s=0.05)
    for i in range(300):
        sink.produce("t", b"v%d" % i)
    assert inner.flushes == [] and len(inner.sent) == 300


def _spread_run(n: int = 400, parts: int = 4) -> tuple[_FlushSink, float]:
    """``n`` messages at 1,000/s in 50-ms ticks, every fourth on "s", the rest on "u" spread
    over the tick, on random partitions."""
    clock = _Clock()
    inner = _FlushSink(clock)
    sink = EvenRateSink(inner, per_s=1000.0, clock=clock, wall_ms=clock.wall_ms, tick_s=0.05,
                        spread=("u", parts))
    t0 = clock.now
    partitions = np.random.default_rng(0).integers(parts, size=n).tolist()
    for i, part in enumerate(partitions):
        sink.produce("s" if i % 4 == 0 else "u", b"%d" % i, None, part)
    assert len(sink._held) > 0 and len(sink) >= len(sink._held)  # the last shares: held
    assert sink.flush(1.0) == 0 and len(sink) == 0
    return inner, t0


def test_a_spread_tick_sends_each_partition_its_own_share_of_the_tick_in_order() -> None:
    """Partition p of the spread topic goes p/4 of a tick after the tick's end, one batch per
    partition and tick; the other topic at the tick's end; nothing early, nothing lost or
    reordered within a partition; each stamped when handed over."""
    tick, parts = 0.05, 4
    inner, t0 = _spread_run(parts=parts)
    assert sorted(int(m.value) for m in inner.sent) == list(range(400))
    for m, at in zip(inner.sent, inner.at, strict=True):
        i = int(m.value)
        offset = (at - t0) / tick - (m.partition / parts if m.topic == "u" else 0.0)
        assert offset == pytest.approx(round(offset), abs=1e-6)  # on its grid
        due = i / 1000.0
        assert at - t0 >= due - 1e-9  # never before its slot
        assert m.headers == [(PRODUCED_MS_HEADER, b"%d" % int(at * 1000))]
    for topic in ("s", "u"):
        for part in range(parts):
            mine = [(int(m.value), at) for m, at in zip(inner.sent, inner.at, strict=True)
                    if m.topic == topic and m.partition == part]
            assert [v for v, _ in mine] == sorted(v for v, _ in mine)  # order kept
    # one hand-over time per partition and tick (its grid), and the rate holds
    slots = np.floor((np.array(inner.at) - t0) / tick + 1e-6).astype(int)
    assert np.bincount(slots).max() <= tick * 1000 + 1
    # "u" goes at four different times within a tick, not in one burst
    u_at = {round((at - t0) / tick % 1 * parts) % parts
            for m, at in zip(inner.sent, inner.at, strict=True) if m.topic == "u"}
    assert len(u_at) == parts


def test_a_spread_message_never_goes_before_what_the_other_topic_sent_before_it() -> None:
    """A step's watermark (stream-events, the tick's end) reaches the broker before the
    step's requests (user-events, spread later into the tick)."""
    inner, _ = _spread_run()
    seen_s = -1
    for m in inner.sent:
        i = int(m.value)
        if m.topic == "s":
            seen_s = max(seen_s, i)
        else:  # every "s" message produced before this one was already handed over
            before = [j for j in range(0, i, 4)]
            assert not before or seen_s >= before[-1]


def test_a_spread_tick_is_flushed_share_by_share() -> None:
    inner, _ = _spread_run()
    handed = [n for _, n in inner.flushes]
    assert handed == sorted(handed) and len(set(handed)) == len(handed)
    assert len(inner.flushes) >= 4 * 7  # four shares a tick, 8 ticks


def test_a_keyed_message_is_spread_by_the_partition_its_key_lands_on() -> None:
    """The replay leaves user events to the partitioner (partition -1): the spread places
    them where murmur2 does, so each partition still gets one batch a tick."""
    clock = _Clock()
    inner = _TimedSink(clock)
    sink = EvenRateSink(inner, per_s=1000.0, clock=clock, wall_ms=clock.wall_ms, tick_s=0.05,
                        spread=("u", 8))
    t0 = clock.now
    keys = [b"%d" % u for u in range(200)]
    for k in keys:
        sink.produce("u", b"v", k, -1)
    sink.flush(1.0)
    assert len(inner.sent) == 200
    shares = set()
    for m, at in zip(inner.sent, inner.at, strict=True):
        share = (at - t0) / 0.05 % 1 * 8
        assert share == pytest.approx(round(share), abs=1e-6)  # on a share's time
        assert round(share) % 8 == partition_for(m.key, 8)
        shares.add(round(share) % 8)
    assert shares == set(range(8))


class _RefusingSink(_TimedSink):
    """Refuses its produce calls numbered ``refuse`` up to (not including) ``until`` with
    ``error`` (a full queue by default); ``until`` None: every call from ``refuse`` on."""

    def __init__(self, clock: _Clock, refuse: int, until: int | None = None,
                 error: Exception | None = None) -> None:
        super().__init__(clock)
        self.calls, self.refuse, self.until = 0, refuse, until
        self.error = error or BufferError("Local: Queue full")

    def produce(self, *args: Any, **kwargs: Any) -> None:
        self.calls += 1
        if self.refuse <= self.calls and (self.until is None or self.calls < self.until):
            raise self.error
        super().produce(*args, **kwargs)


def test_a_held_message_the_producer_refuses_is_kept_and_goes_first_on_the_retry() -> None:
    clock = _Clock()
    inner = _RefusingSink(clock, refuse=3, until=4)
    sink = EvenRateSink(inner, per_s=1000.0, clock=clock, wall_ms=clock.wall_ms, tick_s=0.05,
                        spread=("u", 2))
    sink.produce("u", b"0", None, 0)  # handed over at once (partition 0: no offset)
    sink.produce("u", b"1", None, 1)  # held for half a tick
    sink.produce("u", b"2", None, 1)  # held; refused when its time comes
    refused = 0
    for i in range(3, 120):
        while True:
            try:
                sink.produce("u", b"%d" % i, None, i % 2)
                break
            except BufferError:  # what the replay does: poll, then the same message again
                refused += 1
                sink.poll(0.01)
    assert refused == 1
    assert sink.flush(1.0) == 0 and inner.calls == 121  # 120 messages, one of them twice
    values = [int(m.value) for m in inner.sent]
    assert sorted(values) == list(range(120))  # nothing lost, nothing twice
    for part in (0, 1):
        mine = [int(m.value) for m in inner.sent if m.partition == part]
        assert mine == sorted(mine)


@pytest.mark.parametrize("error", [BufferError("Local: Queue full"),
                                   RuntimeError("KafkaError{code=_INVALID_ARG}")])
def test_a_flush_that_cannot_hand_a_held_message_over_counts_it_as_left(error: Exception
                                                                        ) -> None:
    """The replay's drain flushes until nothing is left or reports what is: a held message
    the producer refuses is neither dropped nor counted as sent."""
    clock = _Clock()
    inner = _RefusingSink(clock, refuse=2, error=error)
    sink = EvenRateSink(inner, per_s=1000.0, clock=clock, wall_ms=clock.wall_ms, tick_s=0.05,
                        spread=("u", 2))
    sink.produce("u", b"0", None, 0)  # handed over
    sink.produce("u", b"1", None, 1)  # held half a tick: refused when handed over
    assert sink.flush(1.0) == 1 and len(sink) == 1
    assert [m.value for m in inner.sent] == [b"0"]
    inner.refuse = 10**9  # the producer recovers: the next flush hands it over
    assert sink.flush(1.0) == 0 and [m.value for m in inner.sent] == [b"0", b"1"]


def test_a_replay_through_a_spread_sink_sends_its_end_after_every_user_event(tiny) -> None:  # type: ignore[no-untyped-def]
    tl = build_timeline(tiny, requests_from=300, from_step=280, to_step=320)
    clock = _Clock()
    inner = _TimedSink(clock)
    sink = EvenRateSink(inner, per_s=2000.0, clock=clock, wall_ms=clock.wall_ms, tick_s=0.05,
                        spread=("u", P))
    report = replay(tl, sink, partitions=P, stream_topic="s", user_topic="u")
    assert report.ok and len(sink) == 0
    kinds = [m.topic for m in inner.sent]
    first_end = next(i for i, m in enumerate(inner.sent) if m.value.startswith(b'{"kind":"end"'))
    assert "u" not in kinds[first_end:]
    assert kinds.count("u") == report.topics["u"].acknowledged == report.topics["u"].produced


def test_a_replay_at_a_rate_hands_every_share_over_on_time_while_encoding(  # type: ignore[no-untyped-def]
        monkeypatch) -> None:
    """The replay encodes its timeline block by block between hand-overs: a big block held
    the pacing up (16,384 entries took 8-23 ms) and a partition's share of a tick went late,
    onto the next share (docs/results.md, session 28). With encoding costing 2 us an entry
    on the sink's clock (a busy core: 23 ms / 16,384), every message still goes within 5 ms
    of its slot, its tick's end plus its partition's offset (25 ms apart here)."""
    import liverank.replay.producer as rp

    ds = generate("small", seed=0)
    tl = build_timeline(ds, requests_from=2600, from_step=2550, to_step=4600)
    assert len(tl) > 3 * rp.BLOCK_EVENTS  # several blocks of the --speed max size
    clock = _Clock()
    produced: list[tuple[str, bytes, Any, int]] = []  # encoded order: the replay's order
    real = rp.encode_blocks

    def encode_blocks(*args: Any, **kwargs: Any) -> Any:
        for batch in real(*args, **kwargs):  # the real encoder, timed
            clock.now += 2e-6 * len(batch.value)
            produced.extend(zip(batch.topic, batch.value, batch.key, batch.partition,
                                strict=True))
            yield batch

    monkeypatch.setattr(rp, "encode_blocks", encode_blocks)
    inner = _TimedSink(clock)
    per_s, tick = 1730.0, 0.05  # block ends fall anywhere in a tick
    sink = EvenRateSink(inner, per_s=per_s, clock=clock, wall_ms=clock.wall_ms, tick_s=tick,
                        spread=("u", 2))
    report = replay(tl, sink, partitions=2, stream_topic="s", user_topic="u", end=False)
    assert report.ok and len(produced) == len(inner.sent)
    at = {m.value: t for m, t in zip(inner.sent, inner.at, strict=True)}
    assert len(at) == len(produced)  # every value differs (event ids)
    t0 = at[produced[0][1]]
    late = []
    for i, (topic, value, key, p) in enumerate(produced):
        end = t0 + math.ceil(i / per_s / tick - 1e-9) * tick  # its tick's end
        share = (p if p >= 0 else partition_for(key, 2)) if topic == "u" else 0
        late.append(at[value] - end - tick * share / 2)
    assert min(late) > -1e-6  # never early
    assert max(late) < 0.005, f"a message went {max(late) * 1000:.1f} ms after its slot"


@pytest.mark.parametrize(("rate", "blocks"), [(50.0, "RATE_BLOCK_EVENTS"), (None, "BLOCK_EVENTS")])
def test_replay_to_kafka_encodes_in_small_blocks_only_at_a_rate(  # type: ignore[no-untyped-def]
        tiny, monkeypatch, rate: float | None, blocks: str) -> None:
    """`liverank replay --rate` (and the demo's test window) encodes in the small blocks
    that keep its pacing on time; --speed max keeps the big ones. The encoder starts before
    the broker is asked anything: a broker that is not there stops the replay right after."""
    import liverank.broker.kafka as kf
    import liverank.replay.producer as rp
    from liverank.core.settings import Settings

    sizes: list[int] = []

    def encode_blocks(*args: Any, block_size: int, **kwargs: Any) -> list[Any]:
        sizes.append(block_size)
        return []

    def no_broker(*args: Any, **kwargs: Any) -> dict[str, int]:
        raise kf.KafkaSetupError("no broker in this test")

    monkeypatch.setattr(rp, "encode_blocks", encode_blocks)
    monkeypatch.setattr(kf, "ensure_topics", no_broker)
    tl = build_timeline(tiny, requests_from=300)
    with pytest.raises(kf.KafkaSetupError, match="no broker in this test"):
        rp.replay_to_kafka(tl, Settings(), rate=rate)
    assert sizes == [getattr(rp, blocks)]
    assert rp.RATE_BLOCK_EVENTS < rp.BLOCK_EVENTS


def test_even_rate_sink_refuses_a_negative_tick() -> None:
    with pytest.raises(ValueError, match="tick"):
        EvenRateSink(MemorySink(), per_s=10.0, tick_s=-0.1)


def test_message_rate_counts_watermarks_once_per_partition(tiny) -> None:  # type: ignore[no-untyped-def]
    tl = build_timeline(tiny, requests_from=300)
    requests = int(np.count_nonzero(tl.kind == REQUEST))
    wm = int(np.count_nonzero(tl.kind == WATERMARK))
    assert message_rate(tl, P, 10.0) == pytest.approx(10.0 * (len(tl) + 3 * wm) / requests)
    with pytest.raises(ValueError, match="--rate needs requests"):
        message_rate(build_timeline(tiny, requests="none"), P, 10.0)


def test_a_replay_without_end_continued_by_another_sends_the_log_once(tiny) -> None:  # type: ignore[no-untyped-def]
    whole = build_timeline(tiny, requests_from=300)
    first = build_timeline(tiny, requests_from=300, to_step=299)
    second = build_timeline(tiny, requests_from=300, from_step=300)
    sink = MemorySink()
    r1 = replay(first, sink, partitions=P, stream_topic="s", user_topic="u", end=False)
    assert r1.ok and not any(m.value.startswith(b'{"kind":"end"') for m in sink.sent)
    r2 = replay(second, sink, partitions=P, stream_topic="s", user_topic="u")
    assert r2.ok
    events = [ev.decode(m.value) for m in sink.sent]
    ends = [e for e in events if isinstance(e, ev.End)]
    assert len(ends) == P  # one End per partition, from the second replay only
    # every event of the whole log, once; the continuation re-sends only the starts of
    # streams still live at its first step (taken once by every consumer)
    ids = [e.event_id for e in events if not isinstance(e, ev.End | ev.Watermark)]
    whole_ids = {whole.event(i).event_id for i in range(len(whole))
                 if whole.kind[i] != WATERMARK}
    assert set(ids) == whole_ids
    repeated = {i for i in ids if ids.count(i) > 1}
    assert repeated and all(i.startswith("start:") for i in repeated)
    user = [e for e in events if isinstance(e, ev.Watch | ev.RecRequest)]
    assert [e.seq for e in user] == sorted(e.seq for e in user)


@pytest.mark.parametrize("args, needle", [
    (["--rate", "100", "--speed", "60"], "give one of them"),
    (["--rate", "100", "--requests", "none"], "--rate needs requests"),
    (["--rate", "0"], "--rate must be > 0"),
])
def test_bad_rate_options_are_one_line_errors(tmp_path: Path, tiny, args: list[str],  # type: ignore[no-untyped-def]
                                              needle: str) -> None:
    path = tmp_path / "log.csv"
    write_twitch(tiny, path)
    result = runner.invoke(app, ["replay", str(path), *args, "--no-progress"])
    assert result.exit_code == 2, result.output
    assert needle in result.output and len(result.output.strip().splitlines()) == 1


def test_calibration_takes_the_latest_steps_holding_enough_requests() -> None:
    starts = np.repeat(np.arange(100), 10)  # 10 requests at each of steps 0..99
    assert calibration_start(starts, pivot=100, want=35) == 96  # steps 96..99: 40 requests
    assert calibration_start(starts, pivot=100, want=10_000) == 75  # capped: a quarter
    assert calibration_start(starts, pivot=100, want=10_000, most_steps=200) == 0


def test_drain_rate_is_answers_after_the_first_over_the_span() -> None:
    assert drain_rate([1_000, 1_500, 2_000]) == pytest.approx(2.0)
    with pytest.raises(DemoError, match="too few"):
        drain_rate([1_000])


def test_drain_rate_leaves_out_the_first_tenth_of_the_answers() -> None:
    # ten answers at once (batches prepared while the drain waited), then one every 10 ms
    published = [0] * 10 + list(range(1_000, 1_900, 10))
    assert drain_rate(published) == pytest.approx(100.0)
    assert drain_rate(published, skip=0.0) == pytest.approx(99 / 1.89)


def _paced(rate: float, seconds: float, latency_ms: Callable[[np.ndarray], np.ndarray]
           ) -> tuple[list[int], list[int]]:
    produced = np.arange(0, seconds * 1000, 1000 / rate).astype(np.int64)
    return produced.tolist(), (produced + latency_ms(produced)).astype(np.int64).tolist()


def test_a_paced_window_answered_at_its_rate_within_a_tick_is_held() -> None:
    got = held_load(*_paced(1_000, 3, lambda t: 15 + (t % 50) // 5), 1_000)
    assert got["held"] and got["why"] == ""
    assert got["answered_per_s"] == pytest.approx(1_000, rel=0.02)


def test_the_held_check_and_the_monitors_summary_give_one_rate() -> None:
    """Session 29's WARNING said 4,287/s where the summary said 4,288.6/s for the same
    answers: n - 1 gaps against n answers over the span. One function now."""
    produced, published = _paced(997, 0.2, lambda t: 15 + (t % 50) // 5)
    got = held_load(produced, published, 997)
    assert got["answered_per_s"] == answer_rate(published)
    assert got["answered_per_s"] == pytest.approx((len(published) - 1)
                                                 / ((max(published) - min(published)) / 1000))


@pytest.mark.parametrize(("latency", "why"), [
    # nothing answered for the first second, then that queue drained (session 29's demo
    # answered 5,684/s against 3,021/s offered)
    (lambda t: np.maximum(1_020 - t, 20), "a queue draining"),
    # answered slower than offered: the queue grows through the window
    (lambda t: 20 + t // 2, "a queue growing"),
    # at the offered rate but every request already 2 s behind (a --rate demo that did not
    # wait for the fill)
    (lambda t: 2_000 + 0 * t, "median latency 2000 ms"),
    # the median doubles from the first half to the second
    (lambda t: np.where(t < 1_500, 20, 45), "grew from 20 to 45 ms"),
])
def test_a_paced_window_with_a_queue_is_not_held(latency: Any, why: str) -> None:
    got = held_load(*_paced(1_000, 3, latency), 1_000)
    assert not got["held"]
    assert why in got["why"] and "not only the service's own time" in got["why"]


def test_a_demo_paced_with_rate_still_waits_for_the_calibration_backlog(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """--rate sets the test window's rate, and the demo still waits for every answer of the
    backlog before it, so the window starts on a service that has read the whole fill."""
    waited: list[int] = []

    def answers(settings: Any, n: int, lo: int, hi: int, timeout_s: float) -> list[int]:
        waited.append(n)
        return list(range(0, 2_000, 2))  # 1,000 answers over 2 s

    monkeypatch.setattr(demo, "_calibration_answers", answers)
    got = demo._pacing(None, demo.DemoOptions(rate=250.0), 1_000, 40, 60)  # type: ignore[arg-type]
    assert waited == [1_000]
    assert got["source"] == "--rate" and got["rate"] == 250.0
    assert got["calibration_answers_per_s"] == pytest.approx(500.0, rel=0.01)
    assert got["calibration_steps"] == [40, 59]
    assert "(--rate, 50% of that)" in got["line"]


def test_the_demo_summary_claims_the_services_own_latency_only_when_held() -> None:
    pacing = {"rate": 1_000.0, "source": "calibrated", "rate_share": 0.5,
              "calibration_answers_per_s": 2_000.0, "calibration_requests": 3_000,
              "calibration_steps": [10, 20]}
    report = {"answers_per_s": 1_000.0, "latency_ms": {"p50": 15.0, "p99": 25.0},
              "pacing": {**pacing, "held": {"held": True, "why": ""}}}
    assert "its own latency, not a backlog's" in demo._pacing_text(report)
    report["pacing"]["held"] = {"held": False, "why": "the service did not hold it (x)."}
    text = demo._pacing_text(report)
    assert "its own latency" not in text
    assert "**Not the service's own latency:** the service did not hold it (x)." in text


def test_a_rate_demo_with_no_backlog_before_its_window_paces_without_one(
        monkeypatch: pytest.MonkeyPatch) -> None:
    def answers(*a: Any, **kw: Any) -> list[int]:
        raise AssertionError("nothing to wait for")

    monkeypatch.setattr(demo, "_calibration_answers", answers)
    got = demo._pacing(None, demo.DemoOptions(rate=250.0), 0, 0, 0)  # type: ignore[arg-type]
    assert got["rate"] == 250.0 and got["calibration_requests"] == 0
    report = {"answers_per_s": 250.0, "latency_ms": {"p50": 15.0, "p99": 25.0},
              "pacing": {**got, "held": {"held": True, "why": ""}}}
    assert "(--rate). At that load" in demo._pacing_text(report)
