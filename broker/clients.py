"""The worker's librdkafka clients: the answer publisher, the stream-events feed and the
user-events reader.

All plain confluent-kafka, no faust import. The publisher is served on the asyncio loop
(its delivery reports polled there); the feed and the reader have a thread each
(librdkafka releases the GIL while it waits) handing records to the loop. Tests hand the
worker an in-memory `Publisher` instead (from `liverank.services.testing`).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import queue
import threading
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any, Protocol, TypeVar

from confluent_kafka import (
    OFFSET_BEGINNING,
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    Producer,
)
from confluent_kafka import TopicPartition as KafkaPartition

from liverank.broker import kafka
from liverank.broker.kafka import BrokerUnreachableError, RateLimitedLog
from liverank.core.settings import Settings

logger = logging.getLogger(__name__)
T = TypeVar("T")


# --- publishing ----------------------------------------------------------------------------------
# (topic, key, value, partition); partition None: placed by the key (murmur2, as Faust)
Outgoing = tuple[str, bytes | None, bytes | None, int | None]  # value None: a tombstone
Offsets = dict[tuple[str, int], int]  # (topic, partition) -> highest offset acknowledged


class Publisher(Protocol):
    def publish(self, messages: Sequence[Outgoing]) -> asyncio.Future[Offsets]:
        """Send ``messages``; the future is done when the broker acknowledged all of them
        (or fails with `PublishError`)."""
        ...

    def connect(self, timeout_s: float) -> None:
        """Blocking: reach the broker before the first `publish`."""
        ...

    def close(self) -> None: ...


class PublishError(RuntimeError):
    """The broker did not acknowledge a message: the batch is not acked, so it is redone."""


class PublisherUnreachableError(PublishError, BrokerUnreachableError):
    """The publisher could not reach the broker at all (a transient condition)."""


class _Pending:
    """Delivery bookkeeping of one `publish` call (its delivery reports count down)."""

    __slots__ = ("error", "fut", "left", "offsets")

    def __init__(self, fut: asyncio.Future[Offsets], left: int):
        self.fut, self.left = fut, left
        self.error: KafkaError | None = None
        self.offsets: Offsets = {}


class KafkaPublisher:
    """A librdkafka producer (idempotent, murmur2 keys, small linger) whose delivery reports
    are served on the event loop that publishes: while a `publish` awaits its
    acknowledgements the loop polls the producer every `POLL_S` (``poll(0)``: never
    blocks), otherwise every `IDLE_POLL_S` (librdkafka's error and log events). Each
    `publish` gets a future for its own messages.

    Why no poll thread (it had one until session 18): its delivery callbacks, a Python call
    per message (~3 messages an answer), took the GIL from a busy event loop thousands of
    times a second, and each hand-over waits behind the loop's switch interval; polled on
    the loop they cost a few microseconds a batch and no hand-over (docs/results.md,
    session 18). A report is read at most `POLL_S` after librdkafka has it: it settles
    acks and commits, not answers (an answer's latency ends when it is published)."""

    POLL_S = 0.002
    IDLE_POLL_S = 0.1

    def __init__(self, config: dict[str, Any], on_failure: Callable[[], None] | None = None):
        # Answers are latency-bound: send within a millisecond rather than the 5 ms default.
        self._producer = Producer({**config, "linger.ms": 1})
        self._on_failure = on_failure  # called (on the loop) per message not delivered
        self._unsettled = 0  # publish calls whose future is not done
        self._loop: asyncio.AbstractEventLoop | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._timer_fast = False
        self._closed = False

    def _delivered(self, pending: _Pending, err: KafkaError | None, msg: Message) -> None:
        """librdkafka's delivery report of one message; runs inside ``poll``/``flush``,
        always on the publishing loop's thread."""
        if err is not None:
            pending.error = err
            if self._on_failure is not None:
                self._on_failure()
        else:  # a delivered message always has its topic, partition and offset
            tp = (str(msg.topic()), int(msg.partition() or 0))
            offset = int(msg.offset() or 0)
            if offset > pending.offsets.get(tp, -1):
                pending.offsets[tp] = offset
        pending.left -= 1
        if pending.left == 0:
            self._settle(pending)

    def _settle(self, pending: _Pending) -> None:
        """Every message of ``pending`` reported: its future gets the offsets, or fails
        naming the first error (unless its awaiter gave up on it)."""
        self._unsettled -= 1
        fut = pending.fut
        if fut.done():
            return
        if pending.error is not None:
            fut.set_exception(PublishError(
                f"the broker did not acknowledge a message: {pending.error}"))
        else:
            fut.set_result(pending.offsets)

    def _poll(self) -> None:
        self._timer = None
        if self._closed:
            return
        self._producer.poll(0)  # delivery reports now waiting: `_delivered` for each
        self._schedule()

    def _schedule(self) -> None:
        """The next poll: soon while a publish awaits reports, rarely otherwise."""
        fast = self._unsettled > 0
        if self._timer is not None:
            if self._timer_fast or not fast:
                return
            self._timer.cancel()  # an idle poll far off: a publish now waits on reports
        assert self._loop is not None
        self._timer = self._loop.call_later(self.POLL_S if fast else self.IDLE_POLL_S,
                                            self._poll)
        self._timer_fast = fast

    def connect(self, timeout_s: float) -> None:
        """Blocking: a metadata request opens the connection, and librdkafka gets its
        idempotent producer id right after, before the first answer is waiting for it."""
        try:
            self._producer.list_topics(timeout=timeout_s)
        except KafkaException as exc:
            raise PublisherUnreachableError(f"publisher cannot reach the broker: {exc}") from exc

    def publish(self, messages: Sequence[Outgoing]) -> asyncio.Future[Offsets]:
        loop = asyncio.get_running_loop()
        if self._loop is None:
            self._loop = loop
        elif loop is not self._loop:
            raise RuntimeError("KafkaPublisher.publish called from a second event loop: its "
                               "delivery reports are served on the first one only")
        if self._closed:
            raise PublishError("the publisher is closed")
        fut: asyncio.Future[Offsets] = loop.create_future()
        if not messages:
            fut.set_result({})
            return fut
        pending = _Pending(fut, len(messages))
        self._unsettled += 1
        on_delivery = functools.partial(self._delivered, pending)
        produce = self._producer.produce
        sent = 0
        try:
            for topic, key, value, partition in messages:
                while True:
                    try:
                        if partition is None:
                            produce(topic, value, key, on_delivery=on_delivery)
                        else:
                            produce(topic, value, key, partition, on_delivery=on_delivery)
                        break
                    except BufferError:  # local queue full: serve reports until there is room
                        self._producer.poll(0.005)
                sent += 1
        except KafkaException as exc:  # refused before sending (too large, unknown topic)
            self._refused(pending, exc, len(messages) - sent)
        if not fut.done():
            self._schedule()
        return fut

    def _refused(self, pending: _Pending, exc: KafkaException, unsent: int) -> None:
        """Messages librdkafka refused outright count as failed deliveries: the batch's
        future fails (once the ones already sent are settled) and nothing is acked."""
        logger.error("publish refused by the client messages=%d error=%s", unsent, exc)
        pending.error = exc.args[0]
        pending.left -= unsent
        if self._on_failure is not None:
            for _ in range(unsent):
                self._on_failure()
        if pending.left == 0:
            self._settle(pending)

    def close(self) -> None:
        """Deliver what is queued (up to 10 s; reports settle their futures here), then
        stop polling. Called on the publishing loop's thread."""
        self._producer.flush(10)
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


# --- the stream feed -----------------------------------------------------------------------------
class StreamFeed:
    """Reads every partition of ``stream-events`` from the beginning, in a thread, without a
    consumer group, and hands batches to the event loop (at most a few queued: backpressure).

    ``caught_up`` is set once every partition reported end-of-partition from a fetch (the
    signal that is right on tansu, whose high watermarks are not)."""

    def __init__(self, settings: Settings, topic: str, partitions: int,
                 deliver: Callable[[list[tuple[int, int, bytes]]], None],
                 loop: asyncio.AbstractEventLoop, batch: int = 5000,
                 on_failure: Callable[[BaseException], None] | None = None):
        self.topic, self.partitions = topic, partitions
        self._on_failure = on_failure  # ``deliver`` raised: the records were not applied
        # No group: assign() only. A short fetch wait: tansu holds every fetch that long.
        self._config = {**kafka.consumer_config(settings),
                        "fetch.wait.max.ms": int(settings.fetch_wait_ms)}
        self._deliver = deliver
        self._loop = loop
        self._batch = batch
        self._slots = threading.Semaphore(4)
        self._stop = threading.Event()
        self.caught_up = asyncio.Event()
        self._thread = threading.Thread(target=self._run, name="liverank-stream-feed",
                                        daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        consumer = Consumer(self._config)
        consumer.assign([KafkaPartition(self.topic, p, 0) for p in range(self.partitions)])
        eof: set[int] = set()
        errors = RateLimitedLog(logger, 10.0)
        logger.info("stream feed started topic=%s partitions=%d", self.topic, self.partitions)
        try:
            while not self._stop.is_set():
                try:
                    msgs = consume_now(consumer, self._batch, 0.1)
                except KafkaException as exc:  # the broker is away: wait, keep the position
                    errors.warning("stream feed error topic=%s error=%s", self.topic, exc)
                    self._stop.wait(1.0)
                    continue
                good: list[tuple[int, int, bytes]] = []
                for m in msgs:
                    err = m.error()
                    if err is None:
                        good.append((int(m.partition() or 0), int(m.offset() or 0),
                                     m.value() or b""))
                    elif err.code() == KafkaError._PARTITION_EOF:
                        eof.add(int(m.partition() or 0))
                    else:  # librdkafka retries by itself; say so once in a while
                        errors.warning("stream feed error topic=%s error=%s", self.topic, err)
                caught = len(eof) == self.partitions and not self.caught_up.is_set()
                if good or caught:
                    while not self._slots.acquire(timeout=0.5):
                        if self._stop.is_set():
                            return
                    self._loop.call_soon_threadsafe(self._hand_over, good, caught)
        finally:
            consumer.close()

    def _hand_over(self, records: list[tuple[int, int, bytes]], caught: bool) -> None:
        try:  # on the event loop
            self._deliver(records)
            if caught and not self.caught_up.is_set():
                logger.info("stream feed caught up topic=%s", self.topic)
                self.caught_up.set()
        except Exception as exc:  # records not applied: the live index cannot go on
            logger.error("stream feed could not apply records topic=%s error=%s",
                         self.topic, exc)
            self._stop.set()
            if self._on_failure is None:
                raise
            self._on_failure(exc)
        finally:
            self._slots.release()


# --- the input partitions a worker owns -----------------------------------------------------------
# (partition, offset, key, value, headers, timestamp ms) of one record read
Read = tuple[int, int, bytes | None, bytes | None, list[tuple[str, bytes]], int | None]


class PartitionReader:
    """Reads the partitions of ``topic`` it is told to, with librdkafka in a thread, from the
    consumer group's committed offsets, and hands them to the event loop in batches, at most
    a few queued (backpressure: ``deliver`` may wait). It never joins the group (the Faust
    worker's consumer owns membership, assignment and commits) and never commits.

    Why not Faust's fetcher: records crossed aiokafka's thread in Python, and the worker's
    per-answer cost and latency tail were mostly that path (docs/service.md, "Reading
    user-events"). librdkafka fetches and parses in C without the GIL.

    `assign` and `revoke` are called on the loop and carried out in the reader's thread
    between two fetches (all librdkafka calls stay in one thread). Each call gives the
    partitions a new epoch; a record is delivered only if its partition's epoch is still
    the one it was read under, so nothing read before a revocation (or before a partition
    was taken away and given back) reaches ``deliver`` afterwards: the next owner, or this
    worker again, reads it from the committed offset. ``started(partition, offset)`` is
    called on the loop with the offset a partition's reading starts at (-1: the group had
    committed nothing, it starts at the partition's beginning)."""

    def __init__(self, settings: Settings, topic: str, group: str,
                 deliver: Callable[[list[Read]], Awaitable[None]],
                 started: Callable[[int, int], None],
                 on_failure: Callable[[BaseException], None], batch: int = 1000):
        self.topic, self.group = topic, group
        # assign() only, never subscribe(): the group id is for reading its committed offsets.
        self._config = {**kafka.consumer_config(settings, group), "enable.auto.commit": False,
                        "enable.partition.eof": False,
                        "fetch.wait.max.ms": int(settings.fetch_wait_ms)}
        self._timeout_s = settings.kafka_timeout_s
        self._deliver, self._started = deliver, started
        self._loop: asyncio.AbstractEventLoop | None = None
        self._on_failure, self._batch = on_failure, batch
        self._epochs: dict[int, int] = {}  # the loop's: partition -> epoch of its last call
        self._reading: dict[int, int] = {}  # the thread's: partition -> epoch it reads under
        self._commands: queue.SimpleQueue[tuple[str, dict[int, int]]] = queue.SimpleQueue()
        self._slots = threading.Semaphore(4)
        self._handed: asyncio.Queue[tuple[list[Read], list[int]]] = asyncio.Queue()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="liverank-user-reader",
                                        daemon=True)
        self._pump: asyncio.Future[None] | None = None

    # --- on the event loop ---
    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._pump = asyncio.ensure_future(self._hand_on(), loop=loop)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        if self._pump is not None:
            self._pump.cancel()

    def assign(self, partitions: Iterable[int]) -> None:
        """Read ``partitions`` from the group's committed offsets; one read already and not
        revoked since goes on where it is (nothing moved it)."""
        self._command("assign", [p for p in partitions if self._epochs.get(p, 0) <= 0])

    def revoke(self, partitions: Iterable[int]) -> None:
        """Stop reading ``partitions``; nothing read of them so far is delivered."""
        self._command("revoke", partitions)

    @property
    def partitions(self) -> set[int]:
        """The partitions being read (or about to be), as the loop last said."""
        return {p for p, e in self._epochs.items() if e > 0}

    def _command(self, what: str, partitions: Iterable[int]) -> None:
        epochs = {}
        for p in partitions:
            epoch = abs(self._epochs.get(p, 0)) + 1
            self._epochs[p] = epoch if what == "assign" else -epoch  # < 0: not read
            epochs[p] = epoch
        if epochs:
            self._commands.put((what, epochs))

    async def _hand_on(self) -> None:
        try:
            while True:
                records, epochs = await self._handed.get()
                try:
                    current = self._epochs
                    fresh = [r for r, e in zip(records, epochs, strict=True)
                             if current.get(r[0]) == e]
                    if fresh:
                        await self._deliver(fresh)
                finally:
                    self._slots.release()
        except Exception as exc:  # records not delivered: the worker cannot go on
            logger.error("user reader could not deliver records topic=%s error=%s",
                         self.topic, exc)
            self._stop.set()
            self._on_failure(exc)

    def _hand_over(self, records: list[Read], epochs: list[int]) -> None:
        self._handed.put_nowait((records, epochs))

    def _started_at(self, partition: int, epoch: int, offset: int) -> None:
        if self._epochs.get(partition) == epoch:  # not revoked again meanwhile
            self._started(partition, offset)

    # --- in the reader's thread ---
    def _run(self) -> None:
        loop = self._loop
        assert loop is not None
        try:
            self._read(loop)
        except Exception as exc:  # a reader that stopped must not look like an idle one
            logger.error("user reader stopped topic=%s error=%r", self.topic, exc)
            with contextlib.suppress(RuntimeError):  # a closed loop: the worker is gone
                loop.call_soon_threadsafe(self._on_failure, exc)

    def _read(self, loop: asyncio.AbstractEventLoop) -> None:
        errors = RateLimitedLog(logger, 10.0)
        consumer = Consumer(self._config)
        logger.info("user reader started topic=%s group=%s", self.topic, self.group)
        pending: list[tuple[str, dict[int, int]]] = []
        try:
            while not self._stop.is_set():
                while True:
                    try:
                        pending.append(self._commands.get_nowait())
                    except queue.Empty:
                        break
                try:
                    while pending:
                        self._carry_out(consumer, *pending[0])
                        pending.pop(0)
                except (KafkaException, TimeoutError) as exc:  # the broker is away: retry
                    errors.warning("user reader cannot (re)assign topic=%s error=%s",
                                   self.topic, exc)
                    self._stop.wait(0.5)
                    continue
                if not self._reading:
                    self._stop.wait(0.02)
                    continue
                try:
                    msgs = consume_now(consumer, self._batch, 0.1)
                except KafkaException as exc:
                    errors.warning("user reader error topic=%s error=%s", self.topic, exc)
                    self._stop.wait(1.0)
                    continue
                records: list[Read] = []
                epochs: list[int] = []
                reading = self._reading
                for m in msgs:
                    err = m.error()
                    if err is not None:  # librdkafka retries by itself; say so once in a while
                        if err.code() != KafkaError._PARTITION_EOF:
                            errors.warning("user reader error topic=%s error=%s",
                                           self.topic, err)
                        continue
                    p = int(m.partition() or 0)
                    epoch = reading.get(p)
                    if epoch is None:
                        continue  # revoked since it was fetched
                    kind, ts = m.timestamp()
                    records.append((p, int(m.offset() or 0), m.key(), m.value(),
                                    list(m.headers() or []),  # type: ignore[arg-type]
                                    ts if kind else None))
                    epochs.append(epoch)
                if records:
                    while not self._slots.acquire(timeout=0.5):
                        if self._stop.is_set():
                            return
                    loop.call_soon_threadsafe(self._hand_over, records, epochs)
        finally:
            consumer.close()

    def _carry_out(self, consumer: Consumer, what: str, epochs: dict[int, int]) -> None:
        if what == "revoke":
            gone = [p for p in epochs if p in self._reading]
            if gone:
                consumer.incremental_unassign([KafkaPartition(self.topic, p) for p in gone])
            for p in gone:
                del self._reading[p]
            return
        # Assigned again without a revoke in between (`assign` skips partitions being read,
        # so only if commands were lost): librdkafka refuses to assign a partition twice.
        again = [p for p in epochs if p in self._reading]
        if again:
            consumer.incremental_unassign([KafkaPartition(self.topic, p) for p in again])
            for p in again:
                del self._reading[p]
        done = consumer.committed([KafkaPartition(self.topic, p) for p in epochs],
                                  self._timeout_s)
        starts = {tp.partition: tp.offset for tp in done}
        for tp in done:
            if tp.error is not None:
                raise KafkaException(tp.error)
        consumer.incremental_assign([
            KafkaPartition(self.topic, p, o if o >= 0 else OFFSET_BEGINNING)
            for p, o in starts.items()])
        loop = self._loop
        assert loop is not None
        for p, epoch in epochs.items():
            self._reading[p] = epoch
            loop.call_soon_threadsafe(self._started_at, p, epoch, max(starts[p], -1))


# --- how far the consumer group may still read back -----------------------------------------------
class GroupReader:
    """What a worker reads about its consumer group every few seconds, through one
    librdkafka consumer kept for the purpose (creating two per round cost measurable
    throughput): the records at the committed offsets and the lag. It never subscribes
    (no group join) and never commits. Blocking: call it from a thread, one call at a time.
    Raises `KafkaException` or `TimeoutError` when the broker does not answer."""

    def __init__(self, settings: Settings, group: str):
        self.settings = settings
        self._conf = {**kafka.consumer_config(settings, group), "enable.auto.commit": False}
        self._consumer: Consumer | None = None
        self._lock = threading.Lock()

    def _get(self) -> Consumer:
        if self._consumer is None:
            self._consumer = Consumer(self._conf)
        return self._consumer

    def committed(self, topic: str, partitions: Iterable[int]) -> dict[int, int]:
        """The group's committed offset per partition (-1: nothing committed)."""
        tps = [KafkaPartition(topic, p) for p in partitions]
        with self._lock:
            done = self._get().committed(tps, self.settings.kafka_timeout_s)
        return {tp.partition: tp.offset for tp in done}

    def records_at(self, topic: str, committed: dict[int, int],
                   decode: Callable[[bytes], T]) -> dict[int, T]:
        """Per partition, ``decode(value)`` of the record at the committed offset: the first
        record when nothing is committed, the last one when everything is; an empty
        partition is absent. An undecodable record (``decode`` raises ValueError) is
        skipped: the partition's next record stands for it. After a restart or a rebalance
        every worker resumes from these offsets, so nothing before them can be read again.
        Reads records, never watermarks (tansu's are wrong, see `liverank.broker.tansu`)."""
        at = {p: o if o >= 0 else OFFSET_BEGINNING for p, o in committed.items()}
        timeout = self.settings.kafka_timeout_s
        with self._lock:
            consumer = self._get()
            found, ended = _first_records(consumer, topic, at, decode, timeout)
            # All of a partition committed: its last record bounds what can still come.
            back = {p: at[p] - 1 for p in ended if at[p] > 0}
            if back:
                more, _ = _first_records(consumer, topic, back, decode, timeout)
                found.update(more)
        return found

    def watermarks(self, topic: str, partitions: Iterable[int]) -> dict[int, tuple[int, int]]:
        """(low, high) watermark per partition. On tansu the high watermark can read low
        (docs/platform-notes.md): a progress signal, never used for correctness."""
        out = {}
        with self._lock:
            consumer = self._get()
            for p in partitions:
                out[p] = consumer.get_watermark_offsets(
                    KafkaPartition(topic, p), self.settings.kafka_timeout_s, cached=False)
        return out

    def lag(self, topic: str, committed: dict[int, int]) -> dict[int, int]:
        """Records of each partition the group has not committed yet (high watermark minus
        committed offset; see `watermarks`)."""
        marks = self.watermarks(topic, committed)
        return {p: lag_of(committed[p], *marks[p]) for p in committed}

    def close(self) -> None:
        with self._lock:
            if self._consumer is not None:
                self._consumer.close()
                self._consumer = None


def lag_of(committed: int, low: int, high: int) -> int:
    """Records after the committed offset (-1: nothing committed, so from ``low``)."""
    return max(0, high - (committed if committed >= 0 else low))


def committed_floor(settings: Settings, topic: str, group: str, partitions: int,
                    step_of: Callable[[bytes], int]) -> int | None:
    """Blocking: the smallest step a consumer of ``group`` may still read on ``topic``
    (`GroupReader.records_at`; steps only grow along a partition), so what the live index
    holds for earlier steps can go. None when it cannot tell (broker unreachable): prune
    nothing. One-off; a worker keeps its `GroupReader`.
    """
    reader = GroupReader(settings, group)
    try:
        steps = reader.records_at(topic, reader.committed(topic, range(partitions)), step_of)
    except (KafkaException, TimeoutError) as exc:
        logger.warning("cannot tell the committed floor topic=%s error=%s", topic, exc)
        return None
    finally:
        reader.close()
    return min(steps.values()) if steps else None


def _first_records(consumer: Consumer, topic: str, at: dict[int, int],
                   decode: Callable[[bytes], T], timeout_s: float
                   ) -> tuple[dict[int, T], set[int]]:
    """The first decodable record at or after each partition's offset ``at[p]``, and the
    partitions that have none (end of partition)."""
    consumer.assign([KafkaPartition(topic, p, o) for p, o in at.items()])
    steps: dict[int, T] = {}
    ended: set[int] = set()
    deadline = time.monotonic() + timeout_s
    while len(steps) + len(ended) < len(at):
        if time.monotonic() > deadline:
            raise TimeoutError(f"no record or end of partition from {topic} in {timeout_s} s")
        for m in consume_now(consumer, 100, 0.5):
            p = int(m.partition() or 0)
            if p in steps or p in ended:
                continue
            err = m.error()
            if err is None:
                try:
                    steps[p] = decode(m.value() or b"")
                except ValueError:  # an undecodable record (dead-lettered, never answered):
                    continue  # the partition's next record bounds what can come again
            elif err.code() == KafkaError._PARTITION_EOF:
                ended.add(p)
    consumer.unassign()
    return steps, ended


def consume_now(consumer: Consumer, most: int, wait_s: float) -> list[Message]:
    """What is there (up to ``most``), else the first message within ``wait_s`` and what
    came with it. (``consume(n, t)`` itself waits the whole ``t`` unless n messages arrive:
    measured 1 s for one message with t=1.)"""
    msgs = consumer.consume(num_messages=most, timeout=0)
    if not msgs:
        msgs = consumer.consume(num_messages=1, timeout=wait_s)
        if msgs:
            msgs += consumer.consume(num_messages=most - 1, timeout=0)
    return msgs
