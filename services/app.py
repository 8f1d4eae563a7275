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
* ``/health`` (ready after the live index caught up and table recovery finished, not while
  rebalancing) and ``/metrics`` (Faust's sensors and `Metrics`, one registry).
* A timer watches the model directory; a new version (directory rename or symlink flip) is
  loaded and hash-checked off the loop and switched in between two batches.

This is the only module of the service that imports faust.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import os
import threading
import time
import weakref
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import faust
from confluent_kafka import Consumer, KafkaError, KafkaException, Message, Producer
from confluent_kafka import TopicPartition as KafkaPartition
from faust.sensors.prometheus import setup_prometheus_sensors
from faust.streams import _current_event  # see `_as_current`
from faust.types import TP

from liverank.model.scorer import FakeScorer, OnnxScorer, Scorer
from liverank.services import events as ev
from liverank.services import kafka
from liverank.services.metrics import Metrics, new_registry
from liverank.services.settings import Settings
from liverank.services.state import (
    BatchStats,
    Candidates,
    EventClock,
    Job,
    LiveStreams,
    MicroBatcher,
    UserWindows,
    build_answers,
    dead_letter_kind,
    plan_batch,
    rank_inputs,
)

logger = logging.getLogger(__name__)

FAKE_MODEL_FORMAT = "liverank-fake/1"  # test-only model directory: `FakeScorer`, no files
PRODUCED_MS = "produced_ms"  # header set by the replay: when the record was produced


def now_ms() -> int:
    return time.time_ns() // 1_000_000


# --- the model ---------------------------------------------------------------------------------
def load_scorer(model_dir: str | Path, threads: int = 1) -> Scorer:
    """`OnnxScorer` for an exported model (hash-checked); `FakeScorer` for a test directory
    whose model.json has ``"format": "liverank-fake/1"`` (see `write_fake_model`)."""
    path = Path(model_dir) / "model.json"
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        meta = None  # OnnxScorer names the problem
    if isinstance(meta, dict) and meta.get("format") == FAKE_MODEL_FORMAT:
        logger.warning("serving the FAKE scorer dir=%s version=%s (test model)", model_dir,
                       meta.get("version"))
        return FakeScorer(window_len=int(meta.get("window_len", 16)),
                          version=str(meta.get("version", "fake-1")))
    return OnnxScorer(model_dir, threads=threads)


def write_fake_model(model_dir: str | Path, version: str, window_len: int = 16) -> Path:
    """A model directory that `load_scorer` serves with `FakeScorer` (tests, benchmarks)."""
    path = Path(model_dir)
    path.mkdir(parents=True, exist_ok=True)
    (path / "model.json").write_text(json.dumps(
        {"format": FAKE_MODEL_FORMAT, "version": version, "window_len": window_len}))
    return path


def model_stamp(model_dir: str | Path) -> tuple[str, int, int, int] | None:
    """What changes when a model directory is replaced: its real path and inode, and
    model.json's mtime and size. None while the path does not exist (mid-rename)."""
    try:
        real = os.path.realpath(model_dir)
        meta = os.stat(os.path.join(real, "model.json"))
        return real, os.stat(real).st_ino, meta.st_mtime_ns, meta.st_size
    except OSError:
        return None


# --- publishing ----------------------------------------------------------------------------------
# (topic, key, value, partition); partition None: placed by the key (murmur2, as Faust)
Outgoing = tuple[str, bytes | None, bytes, int | None]
Offsets = dict[tuple[str, int], int]  # (topic, partition) -> highest offset acknowledged


class Publisher(Protocol):
    def publish(self, messages: Sequence[Outgoing]) -> asyncio.Future[Offsets]:
        """Send ``messages``; the future is done when the broker acknowledged all of them
        (or fails with `PublishError`)."""
        ...

    def close(self) -> None: ...


class PublishError(RuntimeError):
    """The broker did not acknowledge a message: the batch is not acked, so it is redone."""


class _Pending:
    """Delivery bookkeeping of one `publish` call (the poll thread counts down)."""

    __slots__ = ("error", "fut", "left", "loop", "offsets")

    def __init__(self, loop: asyncio.AbstractEventLoop, fut: asyncio.Future[Offsets],
                 left: int):
        self.loop, self.fut, self.left = loop, fut, left
        self.error: KafkaError | None = None
        self.offsets: Offsets = {}


class KafkaPublisher:
    """A librdkafka producer (idempotent, murmur2 keys, small linger) with a poll thread that
    runs the delivery callbacks; each `publish` gets a future for its own messages."""

    def __init__(self, config: dict[str, Any], metrics: Metrics | None = None):
        # Answers are latency-bound: send within a millisecond rather than the 5 ms default.
        self._producer = Producer({**config, "linger.ms": 1})
        self._metrics = metrics
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, name="liverank-publisher",
                                        daemon=True)
        self._thread.start()

    def _poll(self) -> None:
        while not self._stop.is_set():
            self._producer.poll(0.05)

    def _delivered(self, pending: _Pending, err: KafkaError | None, msg: Message) -> None:
        with self._lock:  # poll thread
            if err is not None:
                pending.error = err
                if self._metrics is not None:
                    self._metrics.publish_failures.inc()
            else:
                tp = (msg.topic(), msg.partition())
                if msg.offset() > pending.offsets.get(tp, -1):
                    pending.offsets[tp] = msg.offset()
            pending.left -= 1
            done = pending.left == 0
        if done:
            pending.loop.call_soon_threadsafe(_settle, pending)

    def publish(self, messages: Sequence[Outgoing]) -> asyncio.Future[Offsets]:
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[Offsets] = loop.create_future()
        if not messages:
            fut.set_result({})
            return fut
        pending = _Pending(loop, fut, len(messages))
        on_delivery = functools.partial(self._delivered, pending)
        produce = self._producer.produce
        for topic, key, value, partition in messages:
            while True:
                try:
                    if partition is None:
                        produce(topic, value, key, on_delivery=on_delivery)
                    else:
                        produce(topic, value, key, partition, on_delivery=on_delivery)
                    break
                except BufferError:  # local queue full: let the poll thread deliver some
                    time.sleep(0.005)
        return fut

    def close(self) -> None:
        self._producer.flush(10)
        self._stop.set()
        self._thread.join(timeout=2)


def _settle(pending: _Pending) -> None:
    if pending.fut.done():
        return
    if pending.error is not None:
        pending.fut.set_exception(PublishError(
            f"the broker did not acknowledge a message: {pending.error}"))
    else:
        pending.fut.set_result(pending.offsets)


class MemoryPublisher:
    """Keeps what would be published, per topic (tests, the Faust test context)."""

    def __init__(self) -> None:
        self.sent: dict[str, list[tuple[bytes | None, bytes]]] = {}
        self.partitions: dict[str, list[int | None]] = {}

    def publish(self, messages: Sequence[Outgoing]) -> asyncio.Future[Offsets]:
        for topic, key, value, partition in messages:
            self.sent.setdefault(topic, []).append((key, value))
            self.partitions.setdefault(topic, []).append(partition)
        fut: asyncio.Future[Offsets] = asyncio.get_running_loop().create_future()
        fut.set_result({})
        return fut

    def close(self) -> None:
        return None


# --- the stream feed -----------------------------------------------------------------------------
class StreamFeed:
    """Reads every partition of ``stream-events`` from the beginning, in a thread, without a
    consumer group, and hands batches to the event loop (at most a few queued: backpressure).

    ``caught_up`` is set once every partition reported end-of-partition from a fetch (the
    signal that is right on tansu, whose high watermarks are not)."""

    def __init__(self, settings: Settings, topic: str, partitions: int,
                 deliver: Any, loop: asyncio.AbstractEventLoop, batch: int = 5000):
        self.topic, self.partitions = topic, partitions
        self._config = kafka.consumer_config(settings)  # no group: assign() only
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
        logger.info("stream feed started topic=%s partitions=%d", self.topic, self.partitions)
        try:
            while not self._stop.is_set():
                msgs = consumer.consume(num_messages=self._batch, timeout=0.1)
                good = []
                for m in msgs:
                    err = m.error()
                    if err is None:
                        good.append((m.partition(), m.offset(), m.value() or b""))
                    elif err.code() == KafkaError._PARTITION_EOF:
                        eof.add(m.partition())
                    else:
                        logger.error("stream feed error topic=%s error=%s", self.topic, err)
                caught = len(eof) == self.partitions and not self.caught_up.is_set()
                if good or caught:
                    while not self._slots.acquire(timeout=0.5):
                        if self._stop.is_set():
                            return
                    self._loop.call_soon_threadsafe(self._hand_over, good, caught)
        except KafkaException as exc:
            logger.error("stream feed stopped topic=%s error=%s", self.topic, exc)
        finally:
            consumer.close()

    def _hand_over(self, records: list[tuple[int, int, bytes]], caught: bool) -> None:
        try:  # on the event loop
            self._deliver(records)
            if caught and not self.caught_up.is_set():
                logger.info("stream feed caught up topic=%s", self.topic)
                self.caught_up.set()
        finally:
            self._slots.release()


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
    with the app and reads ``stream-events`` from the broker.
    """

    def __init__(self, settings: Settings, scorer: Scorer, *, model_dir: str | None = None,
                 publisher: Publisher | None = None, live: LiveStreams | None = None,
                 web: bool = True):
        self.settings = settings
        self.scorer = scorer
        self.model_dir = model_dir
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
        self._wm_moved = asyncio.Event()
        self._serving = False
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="liverank-scorer")
        self._in_counters: dict[tuple[str, str], Any] = {}
        self._progress: dict[int, int] = {}  # user-events partition -> newest step seen
        self._in_flight = 0  # batches published, not yet acknowledged by the broker
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
        if self.table.key_serializer != "raw":
            raise RuntimeError(f"windows table key serializer is {self.table.key_serializer}")
        self._view = _TableView(self.table)
        self.windows = UserWindows(self._view, scorer.window_len, settings.window_slack)
        self.agent = self.app.agent(self.user_topic, name="recommend")(self._recommend)
        self.app.task(self._run_io)
        self.app.timer(1.0, name="liverank-gauges")(self._refresh_gauges)
        self.app.timer(10.0, name="liverank-progress")(self._log_progress)
        if model_dir and settings.model_poll_s > 0:
            self.app.timer(settings.model_poll_s, name="liverank-model-watch")(
                self.check_model)
        setup_prometheus_sensors(self.app, registry=self.metrics.registry, name_prefix="faust")
        self._install_health()

    # --- lifecycle -----------------------------------------------------------------------
    @property
    def publisher(self) -> Publisher:
        if self._publisher is None:
            self._publisher = KafkaPublisher(kafka.producer_config(self.settings),
                                             self.metrics)
        return self._publisher

    async def _run_io(self) -> None:
        """Start the stream feed with the app; close the feed and the producer at shutdown."""
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

    def _install_health(self) -> None:
        service = self

        async def health(view: Any, request: Any) -> Any:
            ok, state = service.ready()
            return view.json({"ready": ok, **state}, status=200 if ok else 503)

        self.app.page("/health", name="health")(health)

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
            self._wm_moved.clear()
            try:
                await asyncio.wait_for(self._wm_moved.wait(), left)
            except TimeoutError:
                return

    # --- user events -----------------------------------------------------------------------
    async def _recommend(self, stream: Any) -> None:
        """The agent: hand events to the micro-batcher; `_process` does the work and acks."""
        await self.feed_ready.wait()  # the live index has read stream-events to its end
        self._serving = True
        logger.info("serving model_version=%s batch_size=%d batch_wait_ms=%s",
                    self.scorer.version, self.settings.batch_size, self.settings.batch_wait_ms)
        manual = stream.noack()  # acked in `_deliver`, once the broker has the answers
        worker = asyncio.ensure_future(self._process(manual))
        batcher = self._batcher
        try:
            async for event in manual.events():
                batcher.put(event)
                if batcher.full:
                    await batcher.room()
                if worker.done():
                    worker.result()  # re-raise what stopped the processing
        finally:
            worker.cancel()

    async def _process(self, stream: Any) -> None:
        in_flight = asyncio.Semaphore(8)  # batches whose messages await the broker's ack
        while True:
            events = await self._batcher.get()
            out = await self.handle(events)
            await in_flight.acquire()
            self._in_flight += 1
            asyncio.ensure_future(self._deliver(stream, events, out, in_flight))

    async def _deliver(self, stream: Any, events: list[Any], out: list[Outgoing],
                       in_flight: asyncio.Semaphore) -> None:
        """Publish a batch's answers, dead letters and window records; after the broker
        acknowledged them, seal the changelog partitions written to; then ack the events,
        so their offsets may be committed."""
        try:
            offsets = await self.publisher.publish(out)
            touched = {p for t, _, _, p in out if t == self._view.topic and p is not None}
            if touched:
                offsets.update(await self.publisher.publish(self._view.seals(sorted(touched))))
        except PublishError as exc:  # not acked: redone after the restart (at-least-once)
            logger.error("publish failed, stopping the worker error=%s", exc)
            await self.app.crash(exc)
            return
        finally:
            in_flight.release()
            self._in_flight -= 1
        self._view.persisted(offsets)
        for event in events:
            await stream.ack(event)

    async def handle(self, events: Sequence[Any]) -> list[Outgoing]:
        """One micro-batch: decode, update the windows, answer; returns what to publish
        (answers and dead letters), in order."""
        self._out = out = []
        decoded: list[_Decoded] = []
        owner = self._view.owner = {}
        progress = self._progress
        for e in events:
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
        self._prune()
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
        answers = m.answers.labels("request"), m.answers.labels("watch")
        for rec in recs:
            out.append((topic, ev.user_key(rec.user), ev.encode(rec), None))
            answers[rec.trigger == "watch"].inc()
            if rec.produced_ms is not None:
                m.latency.observe(max(0, rec.published_ms - rec.produced_ms) / 1000)
            if rec.late:
                m.late.inc()
            if rec.fallback:
                m.fallback.inc()
            if live.stale(rec.step):
                m.stale.inc()
        m.watermark_wait.observe(t1 - t0)
        m.scoring.observe(t2 - t1)

    def _prune(self) -> None:
        """Drop stopped intervals behind the step every assigned user-events partition has
        reached (a partition not seen yet holds pruning back)."""
        topic = self.topics[kafka.USER_EVENTS]
        parts = {tp.partition for tp in self.app.assignor.assigned_actives()
                 if tp.topic == topic} or set(self._progress)
        if parts and parts <= self._progress.keys() and self.live is not None:
            self.live.prune(min(self._progress[p] for p in parts))

    def _count_watches_not_live(self, decoded: list[_Decoded]) -> None:
        live = self.live
        assert live is not None
        cache: dict[int, Candidates] = {}
        for d in decoded:
            e = d.event
            if isinstance(e, ev.Watch) and live.ready(e.step):
                c = cache.get(e.step) or cache.setdefault(e.step, live.candidates(e.step))
                if e.streamer not in c.streams:
                    self.metrics.watch_not_live.inc()

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
        m = self.metrics
        answers = sum(m.answers.labels(t)._value.get() for t in ("request", "watch"))
        logger.info("progress answers=%d queued=%d in_flight=%d watermark=%d "
                    "partition_steps=%s model_version=%s", answers, len(self._batcher),
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
            new = await loop.run_in_executor(None, load_scorer, self.model_dir,
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
        self.windows.length = new.window_len
        self.windows.capacity = max(self.windows.capacity,
                                    new.window_len + self.settings.window_slack)
        self.metrics.model_swaps.inc()
        self.metrics.set_model(new.version)
        logger.info("model swapped old_version=%s new_version=%s dir=%s", old.version,
                    new.version, self.model_dir)
        return True


def _log_failure(fut: asyncio.Future[Offsets]) -> None:
    if fut.exception() is not None:
        logger.error("dead letter not delivered error=%s", fut.exception())


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
