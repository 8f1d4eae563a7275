"""The replay producer: a timeline put on Kafka as a live platform would have emitted it.

* ``stream-events``: starts and stops keyed by `events.stream_key`; after each step's stops
  and starts, that step's `Watermark` on *every* partition (``partition`` set); at the end an
  `End` on every partition whose totals count the messages written to each topic before it.
* ``user-events``: requests and watches keyed by `events.user_key`, so a request and the
  watch after it stay in order on one partition.

Message timestamp = event time; header ``produced_ms`` = wall-clock produce time (for
latency); value = the JSON of `liverank.core.events`. Keys are placed by librdkafka's
``murmur2_random`` partitioner, which agrees with Faust/aiokafka.

Speed: `liverank.replay.encoder` formats the JSON from the timeline's columns (in a forked
child at ``--speed max`` on large files), so this process mostly just calls ``produce``.
Pacing maps step ``s`` to wall time ``t0 + (s - s0) * 600 / speed``; clock and sleep are
injectable for tests.

    >>> report = replay_to_kafka(build_timeline(ds), Settings(), speed=None)  # doctest: +SKIP
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

import msgspec
import numpy as np

from liverank.core import events as ev
from liverank.core.settings import Settings
from liverank.core.timebase import STEP_MS
from liverank.model.data.timeline import Timeline
from liverank.replay.encoder import (
    BLOCK_EVENTS,
    Batch,
    EncodeError,
    Encoder,
    ForkedEncoder,
    encode_blocks,
)

logger = logging.getLogger(__name__)

STEP_SECONDS = STEP_MS / 1000
PRODUCED_MS_HEADER = ev.PRODUCED_MS_HEADER  # the contract's header name
HEADER_EVERY = 64  # messages sharing one produced_ms header


class Sink(Protocol):
    """What the replay needs of a producer (confluent_kafka.Producer has it; tests fake it)."""

    def produce(self, topic: str, value: Any = ..., key: Any = ..., partition: int = ..., *,
                on_delivery: Any = ..., timestamp: int = ..., headers: Any = ...) -> None: ...

    def poll(self, timeout: float = ...) -> int: ...

    def flush(self, timeout: float = ...) -> int: ...

    def __len__(self) -> int: ...


class ForwardingSink:
    """A `Sink` that hands everything to ``producer``; subclasses change `produce` (the
    benchmark's steady pacing, the broker tests' gate)."""

    def __init__(self, producer: Any):
        self.producer = producer

    def produce(self, topic: str, value: Any = None, key: Any = None, partition: int = -1,
                **kwargs: Any) -> None:
        self.producer.produce(topic, value, key, partition, **kwargs)

    def poll(self, timeout: float = 0) -> int:
        return int(self.producer.poll(timeout))

    def flush(self, timeout: float = 60) -> int:
        return int(self.producer.flush(timeout))

    def __len__(self) -> int:
        return len(self.producer)


# --- results --------------------------------------------------------------------------------

@dataclass
class TopicCounts:
    produced: int = 0
    acknowledged: int = 0
    failed: int = 0

    @property
    def unacknowledged(self) -> int:
        return self.produced - self.acknowledged


@dataclass
class ReplayReport:
    topics: dict[str, TopicCounts]
    events: int = 0  # timeline entries replayed (a watermark counts once)
    seconds: float = 0.0
    first_error: str | None = None
    interrupted: bool = False
    bad_rows: int = 0

    @property
    def messages(self) -> int:
        return sum(c.produced for c in self.topics.values())

    @property
    def ok(self) -> bool:
        return (not self.interrupted and self.first_error is None
                and all(c.acknowledged == c.produced for c in self.topics.values()))

    def as_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "events": self.events, "messages": self.messages,
                "seconds": round(self.seconds, 3), "first_error": self.first_error,
                "interrupted": self.interrupted, "bad_rows": self.bad_rows,
                "topics": {t: {"produced": c.produced, "acknowledged": c.acknowledged,
                               "failed": c.failed} for t, c in self.topics.items()}}

    def table(self) -> list[tuple[str, int, int, int]]:
        return [(t, c.produced, c.acknowledged, c.failed) for t, c in self.topics.items()]


def _delivery_callback(counts: TopicCounts, report: ReplayReport) -> Callable[[Any, Any], None]:
    """Delivery callback of one topic: counts acks and failures, keeps the first error.

    A closure, not a class with ``__call__``: it runs once per message, and the closure is
    ~3x cheaper to call.
    """
    def on_delivery(err: Any, msg: Any) -> None:
        if err is None:
            counts.acknowledged += 1
            return
        counts.failed += 1
        if report.first_error is None:
            report.first_error = f"{msg.topic()}: {err}"
            logger.error("delivery failed topic=%s error=%s", msg.topic(), err)

    return on_delivery


# --- pacing ---------------------------------------------------------------------------------

@dataclass
class Pacer:
    """Holds events back until their simulated time: ``speed`` simulated seconds per wall
    second, ``None`` for as fast as possible. Steps before ``start_step`` are due at once.
    """

    speed: float | None
    clock: Callable[[], float] = time.monotonic
    start_step: int | None = None
    _t0: float | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        if self.speed is not None and not self.speed > 0:
            raise ValueError(f"speed must be > 0 or 'max', got {self.speed}")

    def delay(self, step: int) -> float:
        """Seconds to wait before sending the events of ``step`` (0 when due or late)."""
        if self.speed is None:
            return 0.0
        now = self.clock()
        if self._t0 is None:
            self._t0 = now
            if self.start_step is None:
                self.start_step = step
        assert self.start_step is not None
        due = self._t0 + max(step - self.start_step, 0) * STEP_SECONDS / self.speed
        return max(due - now, 0.0)

    def wait(self, step: int, sleep: Callable[[float], object]) -> None:
        while (d := self.delay(step)) > 0:
            sleep(min(d, 0.25))


def parse_speed(text: str) -> float | None:
    """``"max"`` -> None; ``"60"`` -> 60.0 (simulated seconds per wall second)."""
    if text.strip().lower() == "max":
        return None
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"--speed must be a positive number or 'max', got {text!r}") from None
    if not value > 0:
        raise ValueError(f"--speed must be a positive number or 'max', got {text!r}")
    return value


# --- the replay -----------------------------------------------------------------------------

def replay(
    tl: Timeline,
    sink: Sink,
    *,
    partitions: int,
    stream_topic: str,
    user_topic: str,
    speed: float | None = None,
    start_step: int | None = None,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], object] | None = None,
    wall_ms: Callable[[], int] | None = None,
    on_block: Callable[[int, int, ReplayReport], None] | None = None,
    flush_timeout: float = 120.0,
    block_size: int = BLOCK_EVENTS,
    batches: Iterable[Batch] | None = None,
) -> ReplayReport:
    """Send ``tl`` through ``sink``; returns the per-topic counts after a final flush.

    Stops producing at the first failed delivery (the rest could not be trusted: the
    report says which error). ``sleep`` defaults to polling the sink, so delivery callbacks
    run while pacing waits. ``on_block(events_done, step, report)`` drives a progress bar.
    ``batches``: the encoded timeline (`encode_blocks`), by default encoded here in-process.
    """
    report = ReplayReport({stream_topic: TopicCounts(), user_topic: TopicCounts()})
    if batches is None:
        batches = encode_blocks(Encoder(tl, partitions, stream_topic, user_topic),
                                paced=speed is not None, block_size=block_size, parallel=False)
    callbacks = np.array([_delivery_callback(report.topics[stream_topic], report),
                          _delivery_callback(report.topics[user_topic], report)], dtype=object)
    pacer = Pacer(speed, clock, start_step)
    nap = sleep or (lambda s: sink.poll(s))  # noqa: PLW0108 - poll returns a count
    now_ms = wall_ms or (lambda: time.time_ns() // 1_000_000)
    cu, cs = report.topics[user_topic], report.topics[stream_topic]
    t0 = time.perf_counter()
    try:
        for batch in batches:
            pacer.wait(batch.first_step, nap)
            _send(sink, batch, callbacks, now_ms)
            n_user = int(np.count_nonzero(batch.user))
            cu.produced += n_user
            cs.produced += len(batch.value) - n_user
            report.events = batch.hi
            if on_block is not None:
                on_block(batch.hi, batch.last_step, report)
            if report.first_error is not None:
                logger.error("stopping the replay after a failed delivery: %s",
                             report.first_error)
                break
        else:
            _send_end(tl, sink, report, partitions, stream_topic, callbacks[0], now_ms)
    except KeyboardInterrupt:
        report.interrupted = True
        logger.warning("interrupted: flushing what was produced")
    except EncodeError as exc:  # the forked encoder died: keep what was sent, say why
        report.first_error = str(exc)
        logger.error("stopping the replay: %s", exc)
    finally:
        close = getattr(batches, "close", None)
        if close is not None:
            close()
    left = sink.flush(flush_timeout)
    if left:
        logger.error("%d messages still unacknowledged after %.0f s", left, flush_timeout)
    report.seconds = time.perf_counter() - t0
    return report


def _send(sink: Sink, b: Batch, callbacks: np.ndarray, now_ms: Callable[[], int]) -> None:
    produce, poll = sink.produce, sink.poll
    cbs = callbacks[b.user.view(np.uint8)].tolist()
    n = len(b.value)
    for lo in range(0, n, HEADER_EVERY):
        # One produced_ms header per HEADER_EVERY messages (well under a millisecond's worth
        # at full speed), not a clock read per message.
        headers = [(PRODUCED_MS_HEADER, b"%d" % now_ms())]
        hi = min(lo + HEADER_EVERY, n)
        for topic, value, key, part, ts, on_delivery in zip(
                b.topic[lo:hi], b.value[lo:hi], b.key[lo:hi], b.partition[lo:hi],
                b.timestamp[lo:hi], cbs[lo:hi], strict=True):
            try:
                produce(topic, value, key, part, on_delivery=on_delivery, timestamp=ts,
                        headers=headers)
            except BufferError:  # local queue full: serve deliveries until there is room
                headers = _produce_when_room(sink, topic, value, key, part, on_delivery, ts,
                                             headers, now_ms)
            poll(0)


def _produce_when_room(sink: Sink, topic: str, value: bytes, key: bytes | None, part: int,
                       on_delivery: Any, ts: int, headers: Any,
                       now_ms: Callable[[], int] | None = None) -> Any:
    """Poll (serving deliveries) until ``produce`` finds room; returns the headers used,
    restamped after the wait when ``now_ms`` is given (produced_ms must not predate it)."""
    while True:
        sink.poll(0.05)
        if now_ms is not None:
            headers = [(PRODUCED_MS_HEADER, b"%d" % now_ms())]
        try:
            sink.produce(topic, value, key, part, on_delivery=on_delivery, timestamp=ts,
                         headers=headers)
            return headers
        except BufferError:
            continue


def end_records(tl: Timeline, partitions: int, stream_events: int,
                user_events: int) -> list[tuple[int, int, bytes]]:
    """(partition, timestamp, value) of the `End` on every partition; the totals count the
    messages written to each topic before it."""
    end = tl.end_event()
    return [(p, end.event_time_ms, ev.encode(msgspec.structs.replace(
        end, partition=p, stream_events=stream_events, user_events=user_events)))
        for p in range(partitions)]


def _send_end(tl: Timeline, sink: Sink, report: ReplayReport, partitions: int, topic: str,
              on_delivery: Callable[[Any, Any], None], now_ms: Callable[[], int]) -> None:
    user_topic = next(t for t in report.topics if t != topic)
    headers = [(PRODUCED_MS_HEADER, b"%d" % now_ms())]
    for p, ts, value in end_records(tl, partitions, report.topics[topic].produced,
                                    report.topics[user_topic].produced):
        sink.produce(topic, value, None, p, on_delivery=on_delivery, timestamp=ts,
                     headers=headers)
        report.topics[topic].produced += 1
    sink.poll(0)


def is_end(value: bytes) -> bool:
    """True for the replay's `End` record (cheap test for `kafka.read_topic(until=...)`)."""
    return value.startswith(b'{"kind":"end"')


def replay_to_kafka(tl: Timeline, settings: Settings, *, speed: float | None = None,
                    start_step: int | None = None, parallel: bool | None = None,
                    **kwargs: Any) -> ReplayReport:
    """`replay` into the broker of ``settings``: topics ensured first, then an idempotent
    producer. Raises `KafkaSetupError` within ``settings.kafka_timeout_s`` when no broker
    answers, before anything is produced."""
    from confluent_kafka import Producer

    from liverank.broker import kafka as kf

    stream_topic = settings.topic(kf.STREAM_EVENTS)
    user_topic = settings.topic(kf.USER_EVENTS)
    # The encoder (maybe a forked child) starts before any Kafka client thread exists here.
    # ensure_topics refuses topics whose partition count differs from settings.partitions.
    encoder = Encoder(tl, settings.partitions, stream_topic, user_topic)
    batches = encode_blocks(encoder, paced=speed is not None, parallel=parallel,
                            block_size=kwargs.pop("block_size", BLOCK_EVENTS))
    try:
        kf.ensure_topics(settings)
        producer = Producer(kf.producer_config(settings))
        # Connected (and holding its idempotent producer id) before the first record is
        # stamped with produced_ms: otherwise ~0.5 s of connecting counts as service latency.
        producer.list_topics(timeout=settings.kafka_timeout_s)
    except BaseException:
        close = getattr(batches, "close", None)
        if close is not None:
            close()
        raise
    logger.info("replay events=%d bootstrap=%s partitions=%d speed=%s encoder=%s", len(tl),
                settings.kafka_bootstrap, settings.partitions, speed or "max",
                "forked" if isinstance(batches, ForkedEncoder) else "inline")
    return replay(tl, producer, partitions=settings.partitions, stream_topic=stream_topic,
                  user_topic=user_topic, speed=speed, start_step=start_step,
                  flush_timeout=settings.outage_timeout_s, batches=batches, **kwargs)


@dataclass
class Sent:
    topic: str
    key: bytes | None
    value: bytes
    partition: int  # -1: placed by the key (the broker's partitioner)
    timestamp: int
    headers: list[tuple[str, bytes]]


class MemorySink:
    """An in-memory `Sink`: keeps every message in send order and acknowledges it on the next
    ``poll``/``flush``. For tests and for feeding a consumer without a broker."""

    def __init__(self, fail: Callable[[Sent], str | None] | None = None) -> None:
        self.sent: list[Sent] = []
        self._pending: list[tuple[Sent, Any]] = []
        self.fail = fail  # returns an error text to fail that message's delivery

    def produce(self, topic: str, value: bytes | None = None, key: bytes | None = None,
                partition: int = -1, *, on_delivery: Any = None, timestamp: int = 0,
                headers: Any = None) -> None:
        msg = Sent(topic, key, value or b"", partition, timestamp, list(headers or []))
        self.sent.append(msg)
        self._pending.append((msg, on_delivery))

    def poll(self, timeout: float = 0) -> int:
        pending, self._pending = self._pending, []
        for msg, cb in pending:
            if cb is not None:
                err = self.fail(msg) if self.fail else None
                cb(err, _SentView(msg))
        return len(pending)

    def flush(self, timeout: float = 0) -> int:
        self.poll()
        return 0

    def __len__(self) -> int:
        return len(self._pending)


@dataclass
class _SentView:
    """The few `confluent_kafka.Message` accessors the delivery callback uses."""

    msg: Sent

    def topic(self) -> str:
        return self.msg.topic

    def partition(self) -> int:
        return self.msg.partition
