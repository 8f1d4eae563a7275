"""The Faust recommendation service: live state, user windows, micro-batched scoring, top-k out.

    liverank serve --model out/models/liverank      # see `liverank.services.serve`

Data flow of one worker (docs/service.md has the why):

* `StreamFeed` (a librdkafka consumer thread, ``assign()`` on every partition of
  ``stream-events``, no consumer group) feeds `LiveStreams`, the interval index on event
  time. Every worker holds the whole index; nothing about it is partitioned or rebalanced.
* The ``recommend`` agent reads ``user-events`` (raw bytes, keyed by user) without auto
  acks and hands the events to a `MicroBatcher`; a processing task takes micro-batches
  (bounded size and wait): decode, check, update the ``windows`` Table once per user per
  batch, wait until every stream-events partition has a watermark >= the batch's newest
  request step (bounded), score all requests in one `Scorer.rank` call off the event loop,
  and publish through a librdkafka `KafkaPublisher`. A batch's events are acked when the
  broker acknowledged its answers, while the next batches are already being processed.
* Bad records go to ``dead-letters`` with the reason; the worker keeps going.
* ``/health`` (ready after the live index caught up, the publisher connected and table
  recovery finished, not while rebalancing) and ``/metrics`` (Faust's sensors, without
  their per-message hooks, and `Metrics`, one registry).
* A timer watches the model directory; a new version (directory rename or symlink flip) is
  loaded and hash-checked off the loop and switched in between two batches. Another prunes
  the live index behind the consumer group's committed floor (`committed_floor`).
* Faust workarounds, each measured (docs/service.md): `GapGuard` (records Faust drops),
  `_deliver_without_tasks` (its four tasks per record), `LeanPrometheusMonitor` (its
  per-message sensor hooks), `_set_fetch_wait` (its 1.5 s fetch wait).

This is the only module of the service that imports faust.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time
import weakref
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import faust
from confluent_kafka import Consumer, KafkaException
from confluent_kafka import TopicPartition as KafkaPartition
from faust.sensors.prometheus import FaustMetrics, PrometheusMonitor
from faust.streams import _current_event  # see `_as_current`
from faust.types import TP

from liverank.broker import kafka
from liverank.broker.clients import (
    KafkaPublisher,
    Offsets,
    Outgoing,
    Publisher,
    PublishError,
    StreamFeed,
    committed_floor,
    consume_now,
)
from liverank.core import events as ev
from liverank.core.settings import Settings
from liverank.model.data.live import Candidates, LiveStreams
from liverank.model.scorer import Scorer, load_scorer, model_stamp
from liverank.services.metrics import Metrics, new_registry
from liverank.services.state import (
    BatchStats,
    EventClock,
    Job,
    MicroBatcher,
    UserWindows,
    build_answers,
    dead_letter_kind,
    plan_batch,
    rank_inputs,
    wait_signal,
)

logger = logging.getLogger(__name__)


PRODUCED_MS = "produced_ms"  # header set by the replay: when the record was produced
PRUNE_EVERY_S = 10.0  # how often the live index is pruned behind the committed floor


def now_ms() -> int:
    return time.time_ns() // 1_000_000


# --- the table, seen from each key's own partition ------------------------------------------------
@contextmanager
def _as_current(event: faust.types.EventT) -> Iterator[None]:
    """Make ``event`` Faust's current event. A micro-batch mixes partitions, and Faust picks
    a table key's store partition and changelog partition from the current event: set it to
    the event that owns the key, so every user's window lives in its user's partition."""
    token = _current_event.set(weakref.ref(event))
    try:
        yield
    finally:
        _current_event.reset(token)


SEAL_KEY = b"\x00seal"  # not a user key (those are decimal digits): see `_TableView.seals`


class _TableView:
    """The windows Table as `UserWindows` sees it.

    Reads and writes go to the table's store under the event that owns the key. The
    changelog records are not sent through Faust's producer (one aiokafka send per record,
    the measured ceiling of a Table-per-event app) but returned with the batch's answers and
    published by the librdkafka producer, to the partition of the owning event, as Faust
    would. Recovery reads them back like any changelog.
    """

    def __init__(self, table: Any):
        self.table = table
        self.owner: dict[bytes, faust.types.EventT] = {}
        self.records: list[Outgoing] = []
        self._topic: str | None = None

    @property
    def topic(self) -> str:
        if self._topic is None:
            self._topic = self.table.changelog_topic.get_topic_name()
        return self._topic

    def get(self, key: bytes) -> bytes | None:
        with _as_current(self.owner[key]):
            return self.table.data.get(key)  # type: ignore[no-any-return]

    def __setitem__(self, key: bytes, value: bytes) -> None:
        event = self.owner[key]
        with _as_current(event):
            self.table.data[key] = value
        self.records.append((self.topic, key, value, event.message.partition))

    def seals(self, partitions: Iterable[int]) -> list[Outgoing]:
        """One record per partition, sent after the batch's records were acknowledged.

        Why: a broker may report a high watermark short of the log end (tansu reports the
        base offset of the last batch + 1, see NOTES.md), and Faust's recovery reads only up
        to it. A record produced after the batch's records are acknowledged sits in a later
        batch, so every record of an acked micro-batch lies below any reported watermark
        and recovery is exact on every broker. Recovery stores the seal under `SEAL_KEY`.
        """
        return [(self.topic, SEAL_KEY, b"[]", p) for p in partitions]

    def persisted(self, offsets: Offsets) -> None:
        """Tell the store how far the changelog is written (rocksdb resumes from there)."""
        for (topic, partition), offset in offsets.items():
            if topic == self.topic:
                self.table.data.set_persisted_offset(TP(topic, partition), offset)


def _set_fetch_wait(consumer: Any, wait_ms: float) -> None:
    """Faust 0.15 builds its aiokafka consumer with ``fetch_max_wait_ms=1500`` and no setting
    to change it. A broker that holds a fetch until that wait expires (tansu does, even when
    data arrives) then delays every event by up to 1.5 s once the worker has caught up, so
    set the wait on the aiokafka consumer before it starts."""
    thread = getattr(consumer, "_thread", None)
    create = getattr(thread, "_create_worker_consumer", None)
    if thread is None or create is None:  # another transport: nothing to adjust
        return

    def create_with_wait(transport: Any) -> Any:
        client = create(transport)
        client._fetch_max_wait_ms = int(wait_ms)
        return client

    thread._create_worker_consumer = create_with_wait


# --- Faust's sensors without their per-message cost ---------------------------------------------
class LeanPrometheusMonitor(PrometheusMonitor):
    """Faust's Prometheus sensor (rebalances, commits, sends, assignment, web requests,
    table operations) without its four per-message hooks and the end-offset tracking.

    Why: measured with py-spy on one worker draining a twitch100k slice, those hooks took
    ~15% of the GIL-holding time, more than scoring. The service counts events in by topic
    and kind, answers and latency itself (`liverank.services.metrics`).
    """

    def on_message_in(self, tp: TP, offset: int, message: Any) -> None:
        return None

    def on_stream_event_in(self, tp: TP, offset: int, stream: Any, event: Any) -> None:
        return None

    def on_stream_event_out(self, tp: TP, offset: int, stream: Any, event: Any,
                            state: Any = None) -> None:
        return None

    def on_message_out(self, tp: TP, offset: int, message: Any) -> None:
        return None

    def track_tp_end_offset(self, tp: TP, offset: int) -> None:
        return None


def _deliver_without_tasks(consumer: Any) -> None:
    """Faust's fetch loop hands every record to the streams through
    ``consumer.wait_first(on_message(record), suspend_flow.wait())``: four tasks and an
    ``asyncio.wait`` per record, so that a rebalance can interrupt a delivery blocked on a
    full buffer. Measured with py-spy on one worker draining a twitch100k slice: ~18% of the
    GIL-holding time. Here ``on_message`` never blocks (the streams' queues take records
    without waiting and this app sends nothing through Faust's producer buffer), so while
    the flow is not suspended the record is delivered by awaiting ``on_message`` directly;
    every other ``wait_first`` call (and this one during a rebalance or shutdown) keeps
    Faust's behaviour."""
    from mode.services import WaitResults

    original = consumer.wait_first

    async def wait_first(*coros: Any, timeout: Any = None) -> Any:
        if (len(coros) == 2 and getattr(coros[0], "__name__", "") == "on_message"
                and not consumer.suspend_flow.is_set() and not consumer.should_stop):
            first, flow = coros
            flow.close()  # the suspend_flow.wait() coroutine, never started
            return WaitResults([first], [await first], False)
        return await original(*coros, timeout=timeout)

    consumer.wait_first = wait_first


# --- a Faust workaround: offsets skipped by the fetcher -----------------------------------------
@dataclass
class _Record:
    """A user-events record read back by `GapGuard` (what `Service.handle` reads of one)."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes]]

    @property
    def tp(self) -> TP:
        return TP(self.topic, self.partition)


class _Refetched:
    """An event read back by `GapGuard`; it is acked through `GapGuard.delivered`."""

    def __init__(self, message: _Record, gap: _Gap):
        self.message, self.gap = message, gap


@dataclass
class _Gap:
    tp: TP
    first: int  # first offset to read back (the committed offset: may re-read a few)
    last: int  # last offset skipped
    left: int = 0  # records read back, not yet delivered


class GapGuard:
    """Every user-events record reaches the agent, in offset order, exactly once per
    assignment, whatever Faust's fetcher did.

    Faust (0.15) drops fetched records of a partition it has paused (during recovery after
    a (re)assignment, or while a stream's buffer is full). When it notices (the next record
    of that partition is not the next offset) it marks the skipped offsets as acked
    (``Consumer._add_gap``, meant for compacted topics), so they are committed unprocessed;
    when it does not notice (no record read yet since the assignment, or a commit at offset
    0) they are simply never delivered: requests lost for good (faust-streaming #216, #606;
    both seen here on restarts, the first also during a model swap).

    So the guard checks offsets itself: per partition it expects the committed offset
    first (Faust has sought there before it delivers anything; no commit: the start of the
    partition) and then each next offset. A record past the expected offset reveals a gap:
    the agent reads the missing records back with librdkafka and processes them before it;
    the gap is acked to Faust once their answers are delivered. Faust's own gap acking is
    switched off for user-events, where a gap is never legitimate.
    """

    def __init__(self, consumer: Any, topic: str, settings: Settings):
        self.consumer, self.topic, self.settings = consumer, topic, settings
        self._original = consumer._add_gap
        consumer._add_gap = self._add_gap  # the instance attribute wins over the method
        self.expected: dict[TP, int] = {}  # next offset the agent should get, per partition
        self.refetched = 0

    async def _add_gap(self, tp: TP, offset_from: int, offset_to: int) -> None:
        if tp.topic != self.topic:  # other topics (changelogs): Faust's behaviour
            await self._original(tp, offset_from, offset_to)

    def forget(self, tps: Iterable[TP]) -> None:
        """After a revocation or an assignment Faust starts from the committed offset again."""
        for tp in tps:
            self.expected.pop(tp, None)

    def check(self, event: Any) -> _Gap | None:
        """The records missing before ``event`` (to read back and process first), if any."""
        msg = event.message
        tp, offset = msg.tp, msg.offset
        expected = self.expected.get(tp)
        self.expected[tp] = offset + 1
        if expected is None:
            # Faust keeps the committed offset (next to read) here; None: no commit, or 0.
            expected = self.consumer._committed_offset.get(tp) or 0
        if offset <= expected:  # in order (or a re-delivery after a seek back)
            return None
        logger.warning("fetcher skipped offsets topic=%s partition=%d first=%d last=%d: "
                       "reading them back", tp.topic, tp.partition, expected, offset - 1)
        return _Gap(tp, expected, offset - 1)

    def read_back(self, gap: _Gap) -> list[_Refetched]:
        """Blocking (run it in a thread): the records of ``gap`` from the broker (fewer when
        retention already deleted the first ones)."""
        consumer = Consumer(kafka.consumer_config(self.settings))
        consumer.assign([KafkaPartition(gap.tp.topic, gap.tp.partition, gap.first)])
        out: list[_Refetched] = []
        deadline = time.monotonic() + self.settings.kafka_timeout_s * 3
        try:
            done = False
            while not done:
                if time.monotonic() > deadline:
                    raise KafkaException(f"could not read back {gap}")
                for m in consume_now(consumer, 1000, 0.5):
                    if m.error() is not None:
                        continue
                    if m.offset() > gap.last:
                        done = True
                        break
                    rec = _Record(m.topic(), m.partition(), m.offset(), m.key(), m.value(),
                                  list(m.headers() or []))
                    out.append(_Refetched(rec, gap))
                    done = m.offset() == gap.last
        finally:
            consumer.close()
        gap.left = len(out)
        self.refetched += len(out)
        return out

    async def delivered(self, event: _Refetched) -> None:
        """Ack the gap once every record read back was delivered."""
        gap = event.gap
        gap.left -= 1
        if gap.left == 0:
            await self._original(gap.tp, gap.first, gap.last)

    async def settle_empty(self, gap: _Gap) -> None:
        """A gap with nothing left to read back (deleted by retention): ack it now."""
        await self._original(gap.tp, gap.first, gap.last)


# --- the service ---------------------------------------------------------------------------------
@dataclass
class _Decoded:
    key: bytes
    event: ev.UserEvent
    produced_ms: int | None


class Service:
    """One worker: the Faust app with its topic, table, agent, pages and timers, plus the
    stream feed, the publisher, the live index and the metrics.

    ``publisher``/``live`` can be given (tests); without ``live`` the stream feed starts
    with the app and reads ``stream-events`` from the broker. ``guard_consumer=False`` turns
    off the checks on what Faust's consumer delivers (offset gaps, records of revoked
    partitions), for Faust's test context (it numbers offsets across partitions and assigns
    nothing).
    """

    def __init__(self, settings: Settings, scorer: Scorer, *, model_dir: str | None = None,
                 load: Callable[[str, int], Scorer] = load_scorer,
                 publisher: Publisher | None = None, live: LiveStreams | None = None,
                 web: bool = True, guard_consumer: bool = True):
        self.settings = settings
        self.scorer = scorer
        self.model_dir = model_dir
        self._load = load
        self._model_stamp = model_stamp(model_dir) if model_dir else None
        self.metrics = Metrics(new_registry())
        self.metrics.set_model(scorer.version)
        self.clock = EventClock(settings.future_horizon)
        self.topics = {name: settings.topic(name) for name in kafka.TOPICS}
        self._publisher = publisher
        self.live = live
        self.feed: StreamFeed | None = None
        self.feed_ready = asyncio.Event()
        if live is not None:
            self.feed_ready.set()
        self.publisher_ready = asyncio.Event()  # connected to the broker
        if publisher is not None:
            self.publisher_ready.set()
        self._wm_moved = asyncio.Event()
        self._serving = False
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="liverank-scorer")
        self._in_counters: dict[tuple[str, str], Any] = {}
        self._progress: dict[int, int] = {}  # user-events partition -> newest step seen
        self._in_flight = 0  # batches published, not yet acknowledged by the broker
        self._failed = False  # a publish failed: ack nothing more, the worker is stopping
        self._answered = 0
        self._out: list[Outgoing] | None = None  # what the batch being handled publishes
        self._batcher: MicroBatcher[Any] = MicroBatcher(
            settings.batch_size, settings.batch_wait_ms / 1000, 4 * settings.batch_size)

        self.app = faust.App(f"{settings.topic_prefix}{settings.worker_id}",
                             **kafka.faust_app_options(settings), web_enabled=web,
                             web_port=settings.web_port, autodiscover=False)
        self.user_topic = self.app.topic(self.topics[kafka.USER_EVENTS], key_type=bytes,
                                         value_type=bytes, key_serializer="raw",
                                         value_serializer="raw")
        # One key encoding everywhere: raw `user_key` bytes on the topic and in the table
        # (key_type=bytes makes Faust use "raw" for the changelog; its default is json).
        self.table = self.app.Table("windows", key_type=bytes, value_type=bytes,
                                    partitions=settings.partitions)
        serializer = getattr(self.table, "key_serializer", None)
        if serializer != "raw":
            raise RuntimeError(f"windows table key serializer is {serializer}, not raw")
        self._view = _TableView(self.table)
        self.gaps = GapGuard(self.app.consumer, self.topics[kafka.USER_EVENTS], settings)
        # The partitions assigned here (None: no consumer checks). Events of others, queued
        # before a rebalance, are dropped: their new owner reads them from the committed
        # offset, and processing them here would write windows it owns now.
        self._owned: set[TP] | None = set() if guard_consumer else None
        self.app.on_partitions_revoked.connect(self._on_revoked)
        self.app.on_partitions_assigned.connect(self._on_assigned)
        _set_fetch_wait(self.app.consumer, settings.fetch_wait_ms)
        _deliver_without_tasks(self.app.consumer)
        self.windows = UserWindows(self._view, scorer.window_len, settings.window_slack)
        self.agent = self.app.agent(self.user_topic, name="recommend")(self._recommend)
        self.app.task(self._run_io)
        self.app.timer(1.0, name="liverank-gauges")(self._refresh_gauges)
        self.app.timer(10.0, name="liverank-progress")(self._log_progress)
        self.app.timer(PRUNE_EVERY_S, name="liverank-prune")(self._prune)
        if model_dir and settings.model_poll_s > 0:
            self.app.timer(settings.model_poll_s, name="liverank-model-watch")(
                self.check_model)
        self._install_metrics()
        self._install_health()

    # --- lifecycle -----------------------------------------------------------------------
    @property
    def publisher(self) -> Publisher:
        if self._publisher is None:
            self._publisher = KafkaPublisher(kafka.producer_config(self.settings),
                                             self.metrics.publish_failures.inc)
        return self._publisher

    async def _run_io(self) -> None:
        """Connect the publisher and start the stream feed with the app; close both at
        shutdown."""
        if not self.publisher_ready.is_set():
            # Connected (idempotent producer id included) before the first answer: measured
            # on tansu, the first answers otherwise waited ~0.5-1 s in librdkafka while the
            # in-flight limit held every later batch back.
            await asyncio.get_running_loop().run_in_executor(
                None, self.publisher.connect, self.settings.kafka_timeout_s)
            self.publisher_ready.set()
        if self.live is None:
            topic = self.topics[kafka.STREAM_EVENTS]
            parts = await asyncio.get_running_loop().run_in_executor(
                None, kafka.partition_count, self.settings, topic)
            self.live = LiveStreams(parts, self.settings.stopped_horizon)
            self.feed = StreamFeed(self.settings, topic, parts, self.on_stream_records,
                                   asyncio.get_running_loop())
            self.feed.start()
            await self.feed.caught_up.wait()
            self.feed_ready.set()
        try:
            await asyncio.Event().wait()  # until the app stops and cancels this task
        finally:
            if self.feed is not None:
                self.feed.stop()
            self.publisher.close()
            self._pool.shutdown(wait=False)

    def ready(self) -> tuple[bool, dict[str, Any]]:
        recovery = getattr(self.app.tables, "recovery", None)
        recovered = bool(recovery is not None and recovery.completed.is_set()
                         and not recovery.in_recovery)
        state = {"live_index": self.feed_ready.is_set(), "recovered": recovered,
                 "rebalancing": bool(self.app.rebalancing), "serving": self._serving,
                 "model_version": self.scorer.version,
                 "watermark": self.live.watermark if self.live is not None else -1}
        ok = state["live_index"] and recovered and not state["rebalancing"] and self._serving
        return bool(ok), state

    def _install_metrics(self) -> None:
        """``/metrics``: Faust's sensor (lean, see `LeanPrometheusMonitor`) and the
        service's metrics in one registry (what ``setup_prometheus_sensors`` does, with
        the lean sensor)."""
        from aiohttp.web import Response
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        registry = self.metrics.registry
        self.app.monitor = LeanPrometheusMonitor(metrics=FaustMetrics.create(registry,
                                                                             "faust"))

        async def metrics(view: Any, request: Any) -> Any:
            return Response(body=generate_latest(registry),
                            headers={"Content-Type": CONTENT_TYPE_LATEST})

        self.app.page("/metrics", name="metrics")(metrics)

    def _install_health(self) -> None:
        service = self

        async def health(view: Any, request: Any) -> Any:
            ok, state = service.ready()
            return view.json({"ready": ok, **state}, status=200 if ok else 503)

        self.app.page("/health", name="health")(health)

    async def _on_revoked(self, sender: Any, /, *args: Any, signal: Any, **kw: Any) -> None:
        if self._owned is not None:
            self._owned.difference_update(args[0])
        self._restart_partitions(args[0])

    async def _on_assigned(self, sender: Any, /, *args: Any, signal: Any, **kw: Any) -> None:
        if self._owned is not None:
            self._owned.update(args[0])
        self._restart_partitions(args[0])

    def _restart_partitions(self, tps: Iterable[TP]) -> None:
        """Faust reads revoked-then-assigned partitions again from their committed offsets:
        forget the offsets the guard expects and the steps they had reached (the progress
        log's figures)."""
        tps = list(tps)
        self.gaps.forget(tps)
        topic = self.topics[kafka.USER_EVENTS]
        for tp in tps:
            if tp.topic == topic:
                self._progress.pop(tp.partition, None)

    # --- stream events ---------------------------------------------------------------------
    def on_stream_records(self, records: Iterable[tuple[int, int, bytes]]) -> None:
        """Apply (partition, offset, value) records of stream-events to the live index."""
        live = self.live
        assert live is not None
        topic = self.topics[kafka.STREAM_EVENTS]
        moved = False
        for partition, offset, raw in records:
            try:
                event = ev.decode_stream_event(raw)
            except ev.EventError as exc:
                self._dead(topic, raw, str(exc), partition, offset)
                continue
            reason = self.clock.check(event.step)
            if reason is not None:
                self._dead(topic, raw, reason, partition, offset, event)
                continue
            self._count_in(topic, event)
            moved |= live.apply(event, partition)
        if moved:
            self._wm_moved.set()

    async def _wait_watermark(self, step: int) -> None:
        live = self.live
        assert live is not None
        deadline = time.monotonic() + self.settings.watermark_wait_ms / 1000
        while not live.ready(step):
            left = deadline - time.monotonic()
            if left <= 0:
                return
            if not await wait_signal(self._wm_moved, left):
                return

    # --- user events -----------------------------------------------------------------------
    async def _recommend(self, stream: Any) -> None:
        """The agent: hand events to the micro-batcher; `_process` does the work and acks."""
        manual = stream.noack()  # acked in `_deliver`, once the broker has the answers
        worker = asyncio.ensure_future(self._process(manual))
        batcher = self._batcher
        guard = self.gaps if self._owned is not None else None
        loop = asyncio.get_running_loop()
        try:
            owned = self._owned
            async for event in manual.events():
                if owned is not None and event.message.tp not in owned:
                    continue  # revoked while in flight: its new owner has it
                if guard is not None and (gap := guard.check(event)) is not None:
                    back = await loop.run_in_executor(None, guard.read_back, gap)
                    if not back:
                        await guard.settle_empty(gap)
                    for old in back:
                        batcher.put(old)
                batcher.put(event)
                if batcher.full:
                    await batcher.room()
                if worker.done():
                    worker.result()  # re-raise what stopped the processing
        finally:
            worker.cancel()

    async def _process(self, stream: Any) -> None:
        in_flight = asyncio.Semaphore(8)  # batches whose messages await the broker's ack
        previous: asyncio.Future[None] | None = None  # acks go in batch order
        await self.feed_ready.wait()  # the live index has read stream-events to its end
        await self.publisher_ready.wait()
        _freeze_heap()
        self._serving = True
        logger.info("serving model_version=%s batch_size=%d batch_wait_ms=%s",
                    self.scorer.version, self.settings.batch_size, self.settings.batch_wait_ms)
        while True:
            events = await self._batcher.get()
            out = await self.handle(events)
            await in_flight.acquire()
            self._in_flight += 1
            previous = asyncio.ensure_future(
                self._deliver(stream, events, out, in_flight, previous))

    async def _deliver(self, stream: Any, events: list[Any], out: list[Outgoing],
                       in_flight: asyncio.Semaphore, previous: asyncio.Future[None] | None
                       ) -> None:
        """Publish a batch's answers, dead letters and window records; after the broker
        acknowledged them, seal the changelog partitions written to; then, after the
        previous batch, ack the events, so their offsets may be committed. (Acks in order:
        Faust commits past a single unacked offset at the head of its list.)"""
        try:
            offsets = await self.publisher.publish(out)
            touched = {p for t, _, _, p in out if t == self._view.topic and p is not None}
            if touched:
                offsets.update(await self.publisher.publish(self._view.seals(sorted(touched))))
        except PublishError as exc:  # not acked: redone after the restart (at-least-once)
            logger.error("publish failed, stopping the worker error=%s", exc)
            self._failed = True  # and nothing after it is acked either
            await self.app.crash(exc)
            return
        finally:
            in_flight.release()
            self._in_flight -= 1
        self._view.persisted(offsets)
        if previous is not None:
            await asyncio.shield(previous)
        if self._failed:
            return
        for event in events:
            if isinstance(event, _Refetched):
                await self.gaps.delivered(event)
            else:
                await stream.ack(event)

    async def handle(self, events: Sequence[Any]) -> list[Outgoing]:
        """One micro-batch: decode, update the windows, answer; returns what to publish
        (answers and dead letters), in order."""
        out: list[Outgoing] = []
        self._out = out
        decoded: list[_Decoded] = []
        owner = self._view.owner = {}
        progress = self._progress
        owned = self._owned
        for e in events:
            if owned is not None and e.message.tp not in owned:
                continue  # queued before a rebalance took its partition away
            d = self._decode_user(e)
            if d is not None:
                decoded.append(d)
                owner[d.key] = e  # any event of the user: they all sit in its partition
                p = e.message.partition
                if d.event.step > progress.get(p, -1):
                    progress[p] = d.event.step
        stats = BatchStats()
        jobs = plan_batch([(d.key, d.event, d.produced_ms) for d in decoded], self.windows,
                          self.settings.recommend_on_watch, stats)
        self._view.records = []
        written = self.windows.flush(self._view.__setitem__)
        if jobs:
            await self._answer(jobs, out)
        out.extend(self._view.records)
        self._count_watches_not_live(decoded)
        m = self.metrics
        m.batch_size.observe(len(events))
        m.requests_per_batch.observe(len(jobs))
        m.windows_written.inc(written)
        if stats.duplicates:
            m.duplicates.inc(stats.duplicates)
        self._out = None
        return out

    async def _answer(self, jobs: list[Job], out: list[Outgoing]) -> None:
        live = self.live
        assert live is not None
        t0 = time.perf_counter()
        await self._wait_watermark(max(j.event.step for j in jobs))
        t1 = time.perf_counter()
        watermark = live.watermark
        requests, cands = rank_inputs(jobs, live)
        scorer = self.scorer  # one model version per batch
        ranked = await asyncio.get_running_loop().run_in_executor(
            self._pool, scorer.rank, requests, self.settings.top_k)
        t2 = time.perf_counter()
        recs = build_answers(jobs, ranked, cands, scorer.version, now_ms(),
                             late=lambda j: j.event.step > watermark)
        topic = self.topics[kafka.RECOMMENDATIONS]
        m = self.metrics
        self._answered += len(recs)
        counts = [0, 0, 0, 0, 0]  # request, watch, late, fallback, stale: one inc() each
        encode, user_key, observe = ev.encode, ev.user_key, m.latency.observe
        for rec in recs:
            out.append((topic, user_key(rec.user), encode(rec), None))
            counts[rec.trigger == "watch"] += 1
            if rec.produced_ms is not None:
                observe(max(0, rec.published_ms - rec.produced_ms) / 1000)
            counts[2] += rec.late
            counts[3] += rec.fallback
            counts[4] += live.stale(rec.step)
        for metric, n in zip((m.answers.labels("request"), m.answers.labels("watch"), m.late,
                              m.fallback, m.stale), counts, strict=True):
            if n:
                metric.inc(n)
        m.watermark_wait.observe(t1 - t0)
        m.scoring.observe(t2 - t1)

    async def _prune(self) -> None:
        """Timer: drop stopped intervals behind the group's committed floor (see
        `committed_floor`; not the steps this worker has processed, which a rebalance or a
        restart can send back to the committed offsets)."""
        if self.live is None or not self._serving or self._owned is None:
            return
        topic = self.topics[kafka.USER_EVENTS]
        floor = await asyncio.get_running_loop().run_in_executor(
            None, self._committed_floor, topic)
        if floor is not None:
            dropped = self.live.prune(floor)
            if dropped:
                logger.info("pruned live index floor=%d dropped=%d intervals=%d", floor,
                            dropped, len(self.live))

    def _committed_floor(self, topic: str) -> int | None:
        parts = kafka.partition_count(self.settings, topic)
        return committed_floor(self.settings, topic, self.app.conf.id, parts, _step_of)

    def _count_watches_not_live(self, decoded: list[_Decoded]) -> None:
        live = self.live
        assert live is not None
        cache: dict[int, Candidates] = {}
        watermark = live.watermark  # once per batch (a numpy min)
        not_live = 0
        for d in decoded:
            e = d.event
            if isinstance(e, ev.Watch) and e.step <= watermark:
                c = cache.get(e.step) or cache.setdefault(e.step, live.candidates(e.step))
                not_live += e.streamer not in c.streams
        if not_live:
            self.metrics.watch_not_live.inc(not_live)

    def _decode_user(self, event: Any) -> _Decoded | None:
        msg = event.message
        topic = msg.topic
        raw = msg.value if isinstance(msg.value, bytes) else b""
        try:
            e = ev.decode_user_event(raw)
        except ev.EventError as exc:
            self._dead(topic, raw, str(exc), msg.partition, msg.offset)
            return None
        key = ev.user_key(e.user)
        if msg.key is not None and msg.key != key:
            self._dead(topic, raw, f"message key {msg.key!r} is not the user's key {key!r}",
                       msg.partition, msg.offset, e)
            return None
        reason = self.clock.check(e.step)
        if reason is not None:
            self._dead(topic, raw, reason, msg.partition, msg.offset, e)
            return None
        self._count_in(topic, e)
        return _Decoded(key, e, _produced_ms(msg.headers))

    def _count_in(self, topic: str, e: ev.Event) -> None:
        kind = type(e).__struct_config__.tag
        counter = self._in_counters.get((topic, kind))
        if counter is None:
            counter = self._in_counters[(topic, kind)] = self.metrics.events_in.labels(
                topic, kind)
        counter.inc()

    def _dead(self, topic: str, raw: bytes, reason: str, partition: int | None,
              offset: int | None, event: ev.Event | None = None) -> None:
        """Publish a dead letter (id names where the record was, so a re-read is spotted)."""
        letter = ev.DeadLetter(
            event_id=f"dead:{topic}:{partition}:{offset}",
            seq=event.seq if event is not None else -1,
            step=event.step if event is not None else -1,
            event_time_ms=event.event_time_ms if event is not None else -1,
            original=raw, topic=topic, reason=reason)
        record = (self.topics[kafka.DEAD_LETTERS], None, ev.encode(letter), None)
        if self._out is not None:
            self._out.append(record)  # published and acked with its batch
        else:
            self.publisher.publish([record]).add_done_callback(_log_failure)
        self.metrics.dead_letters.labels(topic, dead_letter_kind(reason)).inc()
        logger.warning("dead letter topic=%s partition=%s offset=%s reason=%r", topic,
                       partition, offset, reason[:200])

    # --- timers ----------------------------------------------------------------------------
    async def _log_progress(self) -> None:
        """One key=value status line every 10 s (what a stuck worker would be stuck on)."""
        if not self._serving:
            return
        logger.info("progress answers=%d queued=%d in_flight=%d watermark=%d "
                    "partition_steps=%s model_version=%s", self._answered, len(self._batcher),
                    self._in_flight, self.live.watermark if self.live else -1,
                    dict(sorted(self._progress.items())), self.scorer.version)

    async def _refresh_gauges(self) -> None:
        m = self.metrics
        if self.live is not None:
            m.live_streams.set(self.live.live_count())
            m.intervals.set(len(self.live))
            m.watermark.set(self.live.watermark)
        m.windows.set(self.windows.created)
        m.ready.set(1 if self.ready()[0] else 0)

    async def check_model(self) -> bool:
        """Switch in a new model version if the model directory changed; True if it did.
        A directory that fails to load (hash mismatch, missing file) is refused and counted;
        the current model keeps serving."""
        assert self.model_dir is not None
        stamp = model_stamp(self.model_dir)
        if stamp is None or stamp == self._model_stamp:
            return False
        loop = asyncio.get_running_loop()
        try:
            new = await loop.run_in_executor(None, self._load, self.model_dir,
                                             self.settings.scorer_threads)
        except (ValueError, OSError, RuntimeError) as exc:
            self.metrics.model_swap_failures.inc()
            logger.error("model swap refused dir=%s error=%s", self.model_dir, exc)
            self._model_stamp = stamp  # do not retry the same broken directory every poll
            return False
        self._model_stamp = stamp
        if new.version == self.scorer.version:
            return False
        old, self.scorer = self.scorer, new  # the next batch is scored by the new version
        _freeze_heap()
        self.windows.length = new.window_len
        self.windows.capacity = max(self.windows.capacity,
                                    new.window_len + self.settings.window_slack)
        self.metrics.model_swaps.inc()
        self.metrics.set_model(new.version)
        logger.info("model swapped old_version=%s new_version=%s dir=%s", old.version,
                    new.version, self.model_dir)
        return True


def _freeze_heap() -> None:
    """Move everything alive now (Faust, the model, the live index) out of the garbage
    collector's reach. Why: a full collection walked all of it, 72-76 ms measured twice in
    one latency run, and every request in flight waited; after the freeze a collection
    only walks what was allocated since."""
    gc.collect()
    gc.freeze()


def _log_failure(fut: asyncio.Future[Offsets]) -> None:
    if fut.exception() is not None:
        logger.error("dead letter not delivered error=%s", fut.exception())


def _step_of(raw: bytes) -> int:
    """The step of a user-events record (`committed_floor`); EventError (a ValueError)
    for a record that is not one."""
    return ev.decode_user_event(raw).step


def _produced_ms(headers: Any) -> int | None:
    if not headers:
        return None
    pairs = headers.items() if isinstance(headers, dict) else headers
    for k, v in pairs:
        if k == PRODUCED_MS:
            try:
                return int(v.decode() if isinstance(v, bytes) else v)
            except (ValueError, AttributeError):
                return None
    return None
