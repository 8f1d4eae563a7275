"""The Faust recommendation service: live state, user windows, micro-batched scoring, top-k out.

    liverank serve --model out/models/liverank      # see `liverank.services.serve`

Data flow of one worker (docs/service.md has the why):

* `StreamFeed` (a librdkafka consumer thread, ``assign()`` on every partition of
  ``stream-events``, no consumer group) feeds `LiveStreams`, the interval index on event
  time. Every worker holds the whole index; nothing about it is partitioned or rebalanced.
* The ``recommend`` agent reads ``user-events`` (raw bytes, keyed by user) without auto
  acks and hands the events to a `MicroBatcher`; a processing task takes micro-batches
  (bounded size and wait) in two stages. `Service.prepare`: decode and check (`records`),
  update the ``windows`` Table once per user per batch, wait until every stream-events
  partition has a watermark >= the batch's newest request step (bounded), read the live
  candidates and queue the scoring (`state.answer_asked`) in the scoring thread.
  `Service.finish`, in batch order: the scores, the answers, and publishing through a
  librdkafka `KafkaPublisher`. Batch N+1 is prepared while batch N is scored. `OrderedAcks` acks a
  batch's events when the broker acknowledged its output, in batch order, while the next
  batches are already being processed; after a failed delivery it acks nothing more and
  the worker crashes (at-least-once: the unacked records are read again).
* Bad records go to ``dead-letters`` with the reason; the worker keeps going.
* ``/health`` (ready after the live index caught up, the publisher connected and table
  recovery finished, not while rebalancing) and ``/metrics`` (Faust's sensors, without
  their per-message hooks, and `Metrics`, one registry).
* A timer watches the model directory; a new version (directory rename or symlink flip) is
  loaded (by the ``load`` function handed in, `load_scorer` by default) off the loop and
  switched in between two batches. Another prunes the live index behind the consumer
  group's committed floor (`committed_floor`).

Faust's internals are touched only in `liverank.services.faustcompat` (version-checked);
`GapGuard` (`liverank.services.gaps`) is the one workaround with logic of its own.
"""

from __future__ import annotations

import asyncio
import functools
import gc
import logging
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import faust
from confluent_kafka import KafkaException
from faust.sensors.prometheus import FaustMetrics
from faust.types import TP

from liverank.broker import kafka
from liverank.broker.clients import (
    GroupReader,
    KafkaPublisher,
    Offsets,
    Outgoing,
    PartitionReader,
    Publisher,
    Read,
    StreamFeed,
    lag_of,
)
from liverank.broker.kafka import KafkaSetupError
from liverank.core import events as ev
from liverank.core.settings import Settings
from liverank.core.timebase import event_time_ms
from liverank.model.data.live import Candidates, LiveStreams
from liverank.model.pushes import PushPlanner, PushRule
from liverank.model.scorer import (
    BaseScorer,
    Ranked,
    RankRequest,
    Scorer,
    load_scorer,
    model_stamp,
)
from liverank.services import faustcompat
from liverank.services.acks import OrderedAcks
from liverank.services.faustcompat import LeanPrometheusMonitor
from liverank.services.gaps import GapGuard, Refetched
from liverank.services.health import BrokerWatch, Health
from liverank.services.metrics import Metrics, new_registry
from liverank.services.records import (
    Decoded,
    EventClock,
    Rejection,
    dead_letter,
    decode_stream,
    decode_user,
)
from liverank.services.state import (
    Asked,
    BatchStats,
    Job,
    MicroBatcher,
    Ownership,
    Pushing,
    UserWindows,
    answer_asked,
    answer_batch,
    ask,
    plan_batch,
    wait_signal,
)

logger = logging.getLogger(__name__)

BROKER_EVERY_S = 10.0  # lag and committed floor read (and the live index pruned) this often
STALL_DIVISOR = 6  # a partition's tail is read back after progress_timeout_s / 6 idle
IN_FLIGHT_BATCHES = 8  # batches whose output awaits the broker's acknowledgement
PREPARED_AHEAD = 2  # batches prepared (windows written, scoring queued) ahead of finishing
# RocksDB options of the tables' local stores (Faust's public table ``options``). Faust's
# defaults give every partition's database a 2 GiB block cache and 3 x 64 MiB write
# buffers; with 8 partitions and two tables that allows gigabytes, and the soak saw the
# worker's RSS grow with the store (`liverank bench soak`, docs/reliability.md). These bound
# it to ~100 MiB per database at most.
ROCKSDB_OPTIONS = {"write_buffer_size": 8 << 20, "max_write_buffer_number": 2,
                   "target_file_size_base": 16 << 20, "block_cache_size": 32 << 20,
                   "block_cache_compressed_size": 8 << 20}


def stall_idle_s(settings: Settings) -> float:
    """How long a partition with records beyond what was delivered stays idle before its
    tail is read back (`GapGuard.stalled`)."""
    return settings.progress_timeout_s / STALL_DIVISOR


def stalled_tail_within_s(settings: Settings) -> float:
    """At most how long after its last delivery a partition Faust stopped delivering has
    its tail read back (`stall_idle_s`, seen by the broker timer every `BROKER_EVERY_S`)."""
    return stall_idle_s(settings) + BROKER_EVERY_S


def now_ms() -> int:
    return time.time_ns() // 1_000_000


@dataclass
class Prepared:
    """A batch after its first stage (`Service.prepare`): its events (acked once its output
    is delivered), what it publishes so far (dead letters), its window records, which event
    owns each key, and its answers being ranked (None: no job)."""

    events: Sequence[Any]
    out: list[Outgoing]
    windows: list[Outgoing]
    owner: dict[bytes, Any]
    jobs: int
    answering: asyncio.Task[list[ev.Recommendation]] | None


@dataclass
class Batch:
    """What handling a micro-batch produced: everything to publish, in order (answers, dead
    letters, window records), and the answers among it, counted once delivered."""

    out: list[Outgoing]
    answers: list[ev.Recommendation]


# --- the table, seen from each key's own partition ------------------------------------------------
SEAL_KEY = b"\x00seal"  # not a user key (those are decimal digits): see `_TableView.seals`


class _TableView:
    """A Table as the service writes it (`UserWindows` for ``windows``; the answers for
    ``latest``).

    Reads and writes go to the table's store under the event that owns the key. The
    changelog records are not sent through Faust's producer (one aiokafka send per record,
    the measured ceiling of a Table-per-event app) but returned with the batch's answers and
    published by the librdkafka producer, to the partition of the owning event, as Faust
    would. Recovery reads them back like any changelog. A key no event of the batch owns
    (an HTTP lookup) is read from every partition's store.
    """

    def __init__(self, table: Any, seal_value: bytes | None = b"[]"):
        self.table = table
        self.seal_value = seal_value  # None: a tombstone (compacted away)
        self.owner: dict[bytes, faust.types.EventT] = {}
        self.records: list[Outgoing] = []
        self._topic: str | None = None

    @property
    def topic(self) -> str:
        if self._topic is None:
            self._topic = self.table.changelog_topic.get_topic_name()
        return self._topic

    def get(self, key: bytes) -> bytes | None:
        event = self.owner.get(key)
        if event is None:
            return self.table.data.get(key)  # type: ignore[no-any-return]
        with faustcompat.as_current(event):
            return self.table.data.get(key)  # type: ignore[no-any-return]

    def __setitem__(self, key: bytes, value: bytes) -> None:
        event = self.owner[key]
        with faustcompat.as_current(event):
            self.table.data[key] = value
        self.records.append((self.topic, key, value, event.message.partition))

    def put_all(self, pairs: Iterable[tuple[bytes, bytes]]) -> None:
        """``self[key] = value`` for each pair, written to the store in one go per partition
        (`faustcompat.put_many`); the changelog records in the pairs' order."""
        owner, topic = self.owner, self.topic
        items = [(owner[key], key, value) for key, value in pairs]
        faustcompat.put_many(self.table, items)
        self.records.extend((topic, key, value, event.message.partition)
                            for event, key, value in items)

    def seals(self, partitions: Iterable[int]) -> list[Outgoing]:
        """One record per partition, sent after the batch's records were acknowledged.

        Why: a broker may report a high watermark short of the log end (tansu reports the
        base offset of the last batch + 1; docs/platform-notes.md), and Faust's recovery
        reads only up to it. A record produced after the batch's records are acknowledged
        sits in a later batch, so every record of an acked micro-batch lies below any
        reported watermark and recovery is exact on every broker. Recovery stores the seal
        under `SEAL_KEY`.
        """
        return [(self.topic, SEAL_KEY, self.seal_value, p) for p in partitions]

    def persisted(self, offsets: Offsets) -> None:
        """Tell the store how far the changelog is written (rocksdb resumes from there)."""
        for (topic, partition), offset in offsets.items():
            if topic == self.topic:
                self.table.data.set_persisted_offset(TP(topic, partition), offset)


# --- the Faust app and what it declares ---------------------------------------------------
@dataclass(frozen=True)
class DeclaredApp:
    """The Faust app with the topic and the tables it declares: what the service's Kafka
    topics are named and configured by. Built without a scorer, a publisher or a broker, so
    the deploy-time topic generator (``deploy/topics.py``) reads the names off the app the
    service runs, not off a copy."""

    app: faust.App
    user_topic: Any
    windows: Any  # per-user windows, changelog ``<app id>-windows-changelog``
    latest: Any  # every user's latest answer, changelog ``recommendations-latest``


def declare_app(settings: Settings, web: bool = True) -> DeclaredApp:
    app = faust.App(f"{settings.topic_prefix}{settings.worker_id}",
                    **faustcompat.faust_app_options(settings), web_enabled=web,
                    web_port=settings.web_port, autodiscover=False)
    user_topic = app.topic(settings.topic(kafka.USER_EVENTS), key_type=bytes, value_type=bytes,
                           key_serializer="raw", value_serializer="raw")
    # One key encoding everywhere: raw `user_key` bytes on the topic and in the table
    # (key_type=bytes makes Faust use "raw" for the changelog; its default is json).
    windows = app.Table("windows", key_type=bytes, value_type=bytes,
                        partitions=settings.partitions, options=dict(ROCKSDB_OPTIONS))
    serializer = getattr(windows, "key_serializer", None)
    if serializer != "raw":
        raise RuntimeError(f"windows table key serializer is {serializer}, not raw")
    # The latest answer of every user, in a table whose changelog is the compacted
    # recommendations-latest topic: writing the table publishes the topic, and the
    # lookup endpoint reads it (routed to the worker that owns the user's partition).
    latest_topic = app.topic(
        settings.topic(kafka.RECOMMENDATIONS_LATEST), key_type=bytes, value_type=bytes,
        key_serializer="raw", value_serializer="raw", partitions=settings.partitions,
        compacting=True, deleting=False)
    latest = app.Table("latest", key_type=bytes, value_type=bytes,
                       partitions=settings.partitions, changelog_topic=latest_topic,
                       options=dict(ROCKSDB_OPTIONS))
    return DeclaredApp(app, user_topic, windows, latest)


# --- the service ---------------------------------------------------------------------------------
class Service:
    """One worker: the Faust app with its topic, table, agent, pages and timers, plus the
    stream feed, the publisher, the live index and the metrics.

    ``publisher``/``live`` can be given (tests); without ``live`` the stream feed starts
    with the app and reads ``stream-events`` from the broker. ``load`` reads a model
    directory at a swap (tests hand in the fake's). ``guard_consumer=False`` turns off the
    checks on what Faust's consumer delivers (offset gaps, records of revoked partitions),
    for Faust's test context (it numbers offsets across partitions and assigns nothing).
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
        # A candidate model ranking the same requests, published to recommendations-shadow
        # only (`liverank promote` compares the two and promotes through the model swap).
        self.shadow: Scorer | None = None
        self._shadow_stamp: tuple[Any, ...] | None = None
        if settings.shadow_model_dir:
            self._shadow_stamp = model_stamp(settings.shadow_model_dir)
            self.shadow = load(settings.shadow_model_dir, settings.scorer_threads)
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
        self._acks: OrderedAcks[Offsets] = OrderedAcks(IN_FLIGHT_BATCHES, self._stop_worker)
        self.broker = BrokerWatch(settings.outage_timeout_s)
        self.health = Health(settings.progress_timeout_s)
        self._processing: asyncio.Future[None] | None = None  # the agent's processing task
        self._answered = 0  # delivered
        self._out: list[Outgoing] | None = None  # what the batch being handled publishes
        self._batcher: MicroBatcher[Any] = MicroBatcher(
            settings.batch_size, settings.batch_wait_ms / 1000, 4 * settings.batch_size,
            backlog_wait_s=settings.backlog_wait_ms / 1000)

        declared = declare_app(settings, web=web)
        self.app, self.user_topic = declared.app, declared.user_topic
        self.table, self.latest = declared.windows, declared.latest
        self._view = _TableView(self.table)
        self._latest = _TableView(self.latest, seal_value=None)
        consumer = self.app.consumer
        faustcompat.check_gap_guard(consumer)
        self.gaps = GapGuard(consumer, self.topics[kafka.USER_EVENTS], settings,
                             self.app.conf.id)
        # The partitions assigned here (None: no consumer checks, Faust's test context).
        self._owned: Ownership | None = Ownership() if guard_consumer else None
        self.app.on_partitions_revoked.connect(self._on_revoked)
        self.app.on_partitions_assigned.connect(self._on_assigned)
        faustcompat.set_fetch_wait(consumer, settings.fetch_wait_ms)
        faustcompat.deliver_without_tasks(consumer)
        user_events = self.topics[kafka.USER_EVENTS]
        # user-events read by Faust's fetcher (the default; always in Faust's test context,
        # where no consumer runs), or by the worker's own librdkafka reader
        # (``user_reader="librdkafka"``, docs/service.md, Reading user-events).
        self.reader: PartitionReader | None = None
        if guard_consumer and settings.user_reader == "librdkafka":
            faustcompat.fetch_elsewhere(consumer, user_events)
            faustcompat.follow_pauses(consumer, user_events, self._pause_reading,
                                      self._resume_reading)
            self.reader = PartitionReader(settings, user_events, self.app.conf.id,
                                          self._deliver_read, self._reading_from,
                                          self._feed_failed)
            self._make_event = faustcompat.event_maker(self.app)
            self._user_tps = _Partitions(user_events)
        faustcompat.deliver_directly(self.app, user_events,
                                     None if self.reader is not None else self._deliver)
        faustcompat.recovered(self.app)  # fails now, not at the first /health, if missing
        faustcompat.heal_local_state(self.app)  # a store its changelog contradicts: wiped
        self._floor_seq: dict[int, int] = {}  # user-events partition -> committed seq
        self._group_reader: GroupReader | None = None  # made in the broker timer's thread
        self._partitions = 0
        self.windows = UserWindows(self._view, self._window_len(), settings.window_slack,
                                   floor_of=self._floor_of, cache=settings.window_cache)
        # Pushes when a streamer a user on the page watched goes live (off by default).
        self.pushes = PushPlanner(PushRule.of(settings)) if settings.push_on_live else None
        self.agent = self.app.agent(self.user_topic, name="recommend")(self._recommend)
        self.app.task(self._run_io)
        self.app.timer(1.0, name="liverank-gauges")(self._refresh_gauges)
        self.app.timer(10.0, name="liverank-progress")(self._log_progress)
        self.app.timer(BROKER_EVERY_S, name="liverank-broker")(self._check_broker)
        if model_dir and settings.model_poll_s > 0:
            self.app.timer(settings.model_poll_s, name="liverank-model-watch")(
                self.check_model)
        if settings.shadow_model_dir and settings.model_poll_s > 0:
            self.app.timer(settings.model_poll_s, name="liverank-shadow-watch")(
                self.check_shadow)
        self._install_metrics()
        self._install_health()
        self._install_lookup()

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
        loop = asyncio.get_running_loop()
        settings = self.settings
        if self.reader is not None:
            self.reader.start(loop)
        if not self.publisher_ready.is_set():
            # Connected (idempotent producer id included) before the first answer: measured
            # on tansu, the first answers otherwise waited ~0.5-1 s in librdkafka while the
            # in-flight limit held every later batch back. A broker still away is waited out.
            await loop.run_in_executor(None, kafka.wait_out, settings, functools.partial(
                self.publisher.connect, settings.kafka_timeout_s), "connecting the publisher")
            self.publisher_ready.set()
        if self.live is None:
            topic = self.topics[kafka.STREAM_EVENTS]
            parts = await loop.run_in_executor(None, kafka.wait_out, settings, functools.partial(
                kafka.partition_count, settings, topic), "reading stream-events metadata")
            self.live = LiveStreams(parts, self.settings.stopped_horizon)
            self.feed = StreamFeed(self.settings, topic, parts, self.on_stream_records,
                                   asyncio.get_running_loop(), on_failure=self._feed_failed)
            self.feed.start()
            await self.feed.caught_up.wait()
            self.feed_ready.set()
        try:
            await asyncio.Event().wait()  # until the app stops and cancels this task
        finally:
            if self.reader is not None:
                self.reader.stop()
            if self.feed is not None:
                self.feed.stop()
            if self._group_reader is not None:
                self._group_reader.close()
            self.publisher.close()
            self._pool.shutdown(wait=False)

    async def _stop_worker(self, exc: BaseException) -> None:
        """Something that must not be skipped failed (a delivery, applying stream records,
        a broker outage past its limit): nothing more is acked (`OrderedAcks`), the worker
        crashes and its unacked records are processed again after the restart."""
        logger.error("stopping the worker error=%s", exc)
        await self.app.crash(exc)

    def _feed_failed(self, exc: BaseException) -> None:
        asyncio.ensure_future(self._stop_worker(exc))

    def ready(self) -> tuple[bool, dict[str, Any]]:
        """Readiness (``/readyz``, ``/health``): see `liverank.services.health`."""
        ok, state = self.health.readiness(
            live_index=self.feed_ready.is_set(), recovered=faustcompat.recovered(self.app),
            rebalancing=bool(self.app.rebalancing), serving=self._serving,
            broker=self.broker)
        state |= {"model_version": self.scorer.version,
                  "watermark": self.live.watermark if self.live is not None else -1}
        return ok, state

    def alive(self) -> tuple[bool, dict[str, Any]]:
        """Liveness (``/livez``): false only when the worker is wedged."""
        task = self._processing
        return self.health.liveness(
            processing_alive=task is None or not task.done(), queued=len(self._batcher),
            in_flight=self._acks.in_flight)

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
        """``/readyz`` (and ``/health``, its older name) and ``/livez``: 200 or 503 with the
        state as JSON."""
        service = self

        async def ready(view: Any, request: Any) -> Any:
            ok, state = service.ready()
            return view.json({"ready": ok, **state}, status=200 if ok else 503)

        async def live(view: Any, request: Any) -> Any:
            ok, state = service.alive()
            return view.json({"live": ok, **state}, status=200 if ok else 503)

        self.app.page("/readyz", name="readyz")(ready)
        self.app.page("/health", name="health")(ready)
        self.app.page("/livez", name="livez")(live)

    def _install_lookup(self) -> None:
        """``GET /users/{user}/recommendations``: the user's latest answer, served by the
        worker that owns the user's partition (Faust's table routing forwards the request
        there). 404 for a user without one, 503 while tables recover or partitions move.
        ``?now=1`` ranks the streams live at the newest watermark for the user's current
        window instead, without publishing it (trigger ``lookup``)."""
        service = self

        async def lookup(view: Any, request: Any, user: str) -> Any:
            if not faustcompat.recovered(service.app) or service.app.rebalancing:
                return view.json({"error": "recovering"}, status=503)
            if not user.isdigit():
                return view.json({"error": f"not a user id: {user!r}"}, status=404)
            key = user.encode()
            if request.query.get("now") in ("1", "true"):
                rec = await service.answer_now(int(user))
                body = None if rec is None else ev.encode(rec)
            else:
                body = service._latest.get(key)
            if body is None:
                return view.json({"error": f"no recommendations for user {user}"},
                                 status=404)
            return view.bytes(body, content_type="application/json")

        routed = self.app.table_route(table=self.latest, match_info="user")(lookup)
        self.app.page("/users/{user}/recommendations", name="lookup")(routed)

    async def answer_now(self, user: int) -> ev.Recommendation | None:
        """The answer ``user`` would get at the newest watermark, from the current window;
        None for a user without a window (nothing watched yet) or before the live index."""
        live = self.live
        key = ev.user_key(user)
        window = self.windows.peek(key)
        if live is None or live.watermark < 0 or not window:
            return None
        step = live.watermark
        asked = ev.RecRequest(event_id=f"lookup:{user}:{step}", seq=2**62, step=step,
                              event_time_ms=event_time_ms(step, self.settings.epoch_ms),
                              user=user)
        history = [(e.streamer, e.step) for e in window[-self.windows.length:]]
        job = Job(key, asked, "lookup", history, None)
        recs = await answer_batch([job], live, self.scorer, self.settings.top_k, now_ms,
                                  rank=self._rank)
        return recs[0]

    async def _on_revoked(self, sender: Any, /, *args: Any, signal: Any, **kw: Any) -> None:
        if self._owned is not None:
            self._owned.revoked(args[0])
        if self.reader is not None:  # Faust pauses them too (`_pause_reading`): either stops
            topic = self.topics[kafka.USER_EVENTS]
            self.reader.revoke(tp.partition for tp in args[0] if tp.topic == topic)
        self._restart_partitions(args[0])

    async def _on_assigned(self, sender: Any, /, *args: Any, signal: Any, **kw: Any) -> None:
        if self._owned is not None:
            self._owned.assigned(args[0])
        self._restart_partitions(args[0])

    def _restart_partitions(self, tps: Iterable[TP]) -> None:
        """Faust reads revoked-then-assigned partitions again from their committed offsets:
        forget the offsets the guard expects and the steps they had reached (the progress
        log's figures)."""
        tps = list(tps)
        self.gaps.forget(tps)
        self.windows.forget()  # another worker may write them now, or recovery restores them
        topic = self.topics[kafka.USER_EVENTS]
        for tp in tps:
            if tp.topic == topic:
                self._progress.pop(tp.partition, None)
        if self.pushes is not None:
            self.pushes.forget(tp.partition for tp in tps if tp.topic == topic)

    # --- the worker's own reader of user-events ----------------------------------------------
    def _pause_reading(self, partitions: set[int]) -> None:
        """Faust paused input partitions (a rebalance begins): nothing more of them."""
        assert self.reader is not None
        self.reader.revoke(partitions)

    def _resume_reading(self, partitions: set[int]) -> None:
        """Faust resumed input partitions: they are assigned and their tables recovered
        (Faust resumes them only then), so read them from the group's committed offsets.
        Owned from now on: the assignment signal (`_on_assigned`) comes earlier, this makes
        sure no record read is taken for one of a partition taken away."""
        assert self.reader is not None
        if self._owned is not None:
            self._owned.assigned(self._user_tps[p] for p in partitions)
        self.reader.assign(partitions)

    def _reading_from(self, partition: int, offset: int) -> None:
        """The reader starts ``partition`` at ``offset`` (-1: nothing committed, from the
        partition's start): the first record the guard expects."""
        self.gaps.starts_at(self._user_tps[partition], offset if offset >= 0 else None)

    async def _deliver_read(self, records: list[Read]) -> None:
        """Records of the reader: as Faust events, each to `_enqueue` (in offset order per
        partition, as Faust's fetcher delivered them)."""
        make, tps, enqueue = self._make_event, self._user_tps, self._enqueue
        for partition, offset, key, value, headers, timestamp_ms in records:
            await enqueue(make(tps[partition], offset, key, value, headers, timestamp_ms))

    # --- stream events ---------------------------------------------------------------------
    def on_stream_records(self, records: Iterable[tuple[int, int, bytes]]) -> None:
        """Apply (partition, offset, value) records of stream-events to the live index."""
        live = self.live
        assert live is not None
        topic = self.topics[kafka.STREAM_EVENTS]
        moved = False
        for partition, offset, raw in records:
            event = decode_stream(raw, self.clock)
            if isinstance(event, Rejection):
                self._dead(topic, raw, event, partition, offset)
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
        """The agent: starts `_process`. Records reach `_deliver` straight from Faust's
        consumer (`faustcompat.deliver_directly`), or with ``user_reader="librdkafka"``
        `_enqueue` from the worker's own reader (`_deliver_read`); the agent's own stream
        carries only what Faust's test context puts on it."""
        manual = stream.noack()  # acked once the broker has the answers (`OrderedAcks`)
        worker = self._processing = asyncio.ensure_future(self._process())
        try:
            async for event in manual.events():
                await self._deliver(event)
                if worker.done():
                    worker.result()  # re-raise what stopped the processing
        finally:
            worker.cancel()

    async def _deliver(self, event: Any) -> None:
        """One user-events record: dropped if its partition was taken away, preceded by
        the records of a gap in its partition's offsets (`GapGuard`), then queued for a
        micro-batch; waits while the batcher is full (the consumer's fetch loop waits)."""
        owned = self._owned
        if owned is not None and event.message.tp not in owned:
            return  # revoked while in flight: its new owner has it
        await self._enqueue(event)

    async def _enqueue(self, event: Any) -> None:
        batcher = self._batcher
        if self._owned is not None and (gap := self.gaps.check(event)) is not None:
            back = await asyncio.get_running_loop().run_in_executor(
                None, self.gaps.read_back, gap)
            if not back:
                await self.gaps.settle_empty(gap)
            for old in back:
                batcher.put(old)
        batcher.put(event)
        if batcher.full:
            await batcher.room()

    async def _process(self) -> None:
        """Two stages, so the scoring thread and the event loop work at the same time: this
        loop prepares batch N+1 (decode, windows, live candidates; its scoring queued in the
        scoring thread) while `_finish_loop` waits for batch N's scores, builds its answers
        and hands it to `OrderedAcks`. Batches are finished and published in the order they
        were prepared, so window changelog records and answers keep their order."""
        await self.feed_ready.wait()  # the live index has read stream-events to its end
        await self.publisher_ready.wait()
        _freeze_heap()
        self._serving = True
        logger.info("serving model_version=%s batch_size=%d batch_wait_ms=%s",
                    self.scorer.version, self.settings.batch_size, self.settings.batch_wait_ms)
        prepared: asyncio.Queue[Prepared] = asyncio.Queue(PREPARED_AHEAD)
        finisher = asyncio.ensure_future(self._finish_loop(prepared))
        finisher.add_done_callback(self._finisher_done)
        collector = LoadCollector(self.settings.gc_backlog_threshold)
        try:
            while True:
                events = await self._batcher.get()
                self.health.taken()
                if collector.follow(self._batcher.backlog):
                    self.metrics.backlog_batches.inc()
                await prepared.put(await self.prepare(events))
                if finisher.done():
                    finisher.result()  # re-raise what stopped the finishing stage
        finally:
            collector.follow(False)
            finisher.cancel()

    async def _finish_loop(self, prepared: asyncio.Queue[Prepared]) -> None:
        while True:
            job = await prepared.get()
            batch = await self.finish(job)
            await self._acks.submit(functools.partial(self._publish, batch),
                                    functools.partial(self._ack_delivered, job.events))

    def _finisher_done(self, task: asyncio.Future[None]) -> None:
        """The finishing stage ended by itself (a scorer error, say) while the preparing
        stage may wait for input: stop the worker loudly rather than hang."""
        if not task.cancelled() and task.exception() is not None:
            asyncio.ensure_future(self._stop_worker(task.exception()))  # type: ignore[arg-type]

    async def _publish(self, batch: Batch) -> Offsets:
        """Publish a batch's answers, dead letters and window records; after the broker
        acknowledged them, seal the changelog partitions written to (see `seals`). Answers
        are counted only once delivered."""
        out = batch.out
        offsets = await self.publisher.publish(out)
        seals = [seal for view in (self._view, self._latest) for seal in view.seals(
            sorted({p for t, _, _, p in out if t == view.topic and p is not None}))]
        if seals:
            offsets.update(await self.publisher.publish(seals))
        self._view.persisted(offsets)
        self._latest.persisted(offsets)
        self._answered += len(batch.answers)
        self.metrics.count_answers(batch.answers)
        return offsets

    async def _ack_delivered(self, events: Sequence[Any], _: Offsets) -> None:
        await self._ack(events)

    async def _ack(self, events: Sequence[Any]) -> None:
        """Ack a delivered batch's events, so their offsets may be committed."""
        for event in events:
            if isinstance(event, Refetched):
                await self.gaps.delivered(event)
            else:
                event.ack()  # Faust's stream ack without its sensor calls
        self.health.progressed()

    async def handle(self, events: Sequence[Any]) -> Batch:
        """One micro-batch: decode, update the windows, answer; returns what to publish
        (answers, dead letters and window records), in order. (`prepare` then `finish`.)"""
        return await self.finish(await self.prepare(events))

    async def prepare(self, events: Sequence[Any]) -> Prepared:
        """The first stage of a batch, on the event loop: decode, update and write the
        windows, wait for the watermark, read every request's live candidates, and queue
        the batch's scoring in the scoring thread (a task `finish` awaits)."""
        out: list[Outgoing] = []
        self._out = out
        decoded: list[Decoded] = []
        partitions: list[int] = []
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
                partitions.append(p)
                if d.event.step > progress.get(p, -1):
                    progress[p] = d.event.step
        stats = BatchStats()
        pushing = await self._pushing(decoded, partitions)
        jobs = plan_batch([(d.key, d.event, d.produced_ms) for d in decoded], self.windows,
                          self.settings.recommend_on_watch, stats, pushing)
        if stats.pushes:  # a pushed user's answer is written under an event of its partition
            of_partition = {e.message.partition: e for e in events}
            for job in jobs:
                if job.partition is not None:
                    owner.setdefault(job.key, of_partition[job.partition])
        pairs: list[tuple[bytes, bytes]] = []
        written = self.windows.flush(lambda key, value: pairs.append((key, value)))
        self._view.records = []
        self._view.put_all(pairs)
        windows = self._view.records
        answering = await self._start_answers(jobs) if jobs else None
        self._count_watches_not_live(decoded)
        m = self.metrics
        m.batch_size.observe(len(events))
        m.requests_per_batch.observe(len(jobs))
        m.windows_written.inc(written)
        if stats.duplicates:
            m.duplicates.inc(stats.duplicates)
        self._out = None
        return Prepared(events, out, windows, owner, len(jobs), answering)

    async def finish(self, prepared: Prepared) -> Batch:
        """The second stage: the batch's scores, its answers and latest-answer records after
        its window records; returns what to publish, in order."""
        out = prepared.out
        answers: list[ev.Recommendation] = []
        latest: list[Outgoing] = []
        if prepared.answering is not None:
            answers = await prepared.answering
            if len(answers) > prepared.jobs:  # a shadow model's answers follow the live ones
                answers, shadowed = answers[:prepared.jobs], answers[prepared.jobs:]
                topic = self.topics[kafka.RECOMMENDATIONS_SHADOW]
                out.extend((topic, ev.user_key(r.user), ev.encode(r), None) for r in shadowed)
                self.metrics.shadow_answers.inc(len(shadowed))
            latest = self._answers_out(answers, out, prepared.owner)
        out.extend(prepared.windows)
        out.extend(latest)
        return Batch(out, answers)
    async def _pushing(self, decoded: list[Decoded], partitions: list[int]) -> Pushing | None:
        """The push planner's view of a batch: the starts are read once every stream-events
        partition has passed the batch's newest step (bounded by the watermark wait; starts
        beyond the watermark are planned with a later batch)."""
        if self.pushes is None or not decoded:
            return None
        live = self.live
        assert live is not None
        await self._wait_watermark(max(d.event.step for d in decoded))
        return Pushing(self.pushes, live.starts, partitions, live.watermark,
                       self.settings.epoch_ms)

    async def _start_answers(self, jobs: list[Job]) -> asyncio.Task[list[ev.Recommendation]]:
        """Wait until the live index has passed the batch's newest step (bounded), take
        every job's candidates now, and start ranking them (scoring thread) in a task."""
        live = self.live
        assert live is not None
        t0 = time.perf_counter()
        await self._wait_watermark(max(j.event.step for j in jobs))
        self.metrics.watermark_wait.observe(time.perf_counter() - t0)
        watermark = live.watermark
        asked = ask(jobs, live, late=lambda j: j.event.step > watermark)
        return asyncio.ensure_future(self._answer(asked))

    async def _answer(self, asked: Asked) -> list[ev.Recommendation]:
        t0 = time.perf_counter()
        recs = await answer_asked(asked, self.scorer, self.settings.top_k, now_ms,
                                  rank=self._rank, shadow=self.shadow)
        self.metrics.scoring.observe(time.perf_counter() - t0)
        return recs

    def _answers_out(self, recs: list[ev.Recommendation], out: list[Outgoing],
                     owner: dict[bytes, Any]) -> list[Outgoing]:
        """Append the answers to ``out``; return their latest-answer table records."""
        topic = self.topics[kafka.RECOMMENDATIONS]
        encode, user_key = ev.encode, ev.user_key
        latest: dict[bytes, bytes] = {}
        for rec in recs:
            key, value = user_key(rec.user), encode(rec)
            out.append((topic, key, value, None))
            latest[key] = value  # one latest-answer write per user and batch
        view = self._latest
        view.owner, view.records = owner, []
        view.put_all(latest.items())
        return view.records

    async def _rank(self, scorer: Scorer, requests: list[RankRequest], k: int
                    ) -> list[Ranked]:
        """The Python around the model's run (inputs, checks, top k) on the event loop: in
        the thread it waited for the GIL behind the loop each time onnxruntime gave it back
        (`liverank.model.scorer.Scoring`). The run itself goes to the worker's one scoring
        thread when input is waiting, so the loop prepares the next batch meanwhile (a
        backlog); with nothing waiting it runs on the loop (onnxruntime lets go of the GIL
        either way): the thread's two hand-overs of the GIL, behind a busy loop, cost more
        than the run (session 10, at half capacity: a batch's run p50 5.5 ms on the loop,
        11-14 ms through the thread; session 29, the two policies alternating every 2 s in
        one worker at 3,200/s: always in the thread, the loop's CPU an answer 0.81x and p99
        1.16x, docs/results.md). A scorer without steps ranks in the thread."""
        loop = asyncio.get_running_loop()
        if not isinstance(scorer, BaseScorer):
            return await loop.run_in_executor(self._pool, scorer.rank, requests, k)
        job = scorer.scoring(requests, k)
        if len(self._batcher):
            self.metrics.model_runs.labels("thread").inc()
            await loop.run_in_executor(self._pool, job.forward)
        else:
            self.metrics.model_runs.labels("loop").inc()
            job.forward()
        return job.ranked()

    async def _check_broker(self) -> None:
        """Timer: read the group's lag and committed floor (one broker round, off the loop),
        prune the live index behind the floor, and keep the outage bookkeeping: a broker
        away is waited out until ``outage_timeout_s``, then the worker stops, saying why."""
        if self._owned is None:
            return  # Faust's test context: no broker
        loop = asyncio.get_running_loop()
        try:
            committed, marks, records = await loop.run_in_executor(None, self._read_group)
        except (KafkaSetupError, KafkaException, TimeoutError) as exc:
            self.metrics.broker_up.set(0)
            if self.broker.failed(exc):
                await self._stop_worker(RuntimeError(self.broker.give_up_message()))
            return
        self.broker.ok()
        self.metrics.broker_up.set(1)
        lag = {p: lag_of(committed[p], *marks[p]) for p in marks}
        self.health.lag = lag
        for partition, n in lag.items():
            self.metrics.lag.labels(str(partition)).set(n)
        await self._read_stalled_tails(committed, marks)
        self._floor_seq = {p: seq for p, (_, seq) in records.items()}
        floor = min((step for step, _ in records.values()), default=None)
        if floor is not None and self.live is not None and self._serving:
            dropped = self.live.prune(floor)
            if dropped:
                logger.info("pruned live index floor=%d dropped=%d intervals=%d", floor,
                            dropped, len(self.live))

    def _read_group(self) -> tuple[dict[int, int], dict[int, tuple[int, int]],
                                   dict[int, tuple[int, int]]]:
        """Blocking: the group's committed offsets, the watermarks of the partitions owned
        here, and (step, seq) of the record at each partition's committed offset
        (`GroupReader.records_at`): nothing before it can be read again, whatever a
        rebalance or a restart does. The smallest step is the floor the live index is
        pruned behind; the seq, how far user windows may forget."""
        topic = self.topics[kafka.USER_EVENTS]
        if self._group_reader is None:
            self._group_reader = GroupReader(self.settings, self.app.conf.id)
            self._partitions = kafka.partition_count(self.settings, topic)
        reader = self._group_reader
        owned = {tp.partition for tp in (self._owned.partitions if self._owned else ())
                 if tp.topic == topic}
        committed = reader.committed(topic, range(self._partitions))
        marks = reader.watermarks(topic, sorted(owned))
        return committed, marks, reader.records_at(topic, committed, _position)

    async def _read_stalled_tails(self, committed: dict[int, int],
                                  marks: dict[int, tuple[int, int]]) -> None:
        """A partition with records beyond what was delivered, while the worker is idle:
        read the tail back and process it (`GapGuard.stalled`)."""
        if len(self._batcher) or self._acks.in_flight or not self._serving:
            return  # busy: Faust may simply not have reached that partition yet
        if self.app.rebalancing or not faustcompat.recovered(self.app):
            return  # the windows are not restored yet: nothing may be processed
        topic = self.topics[kafka.USER_EVENTS]
        loop = asyncio.get_running_loop()
        for p, (_, high) in sorted(marks.items()):
            gap = self.gaps.stalled(TP(topic, p), committed.get(p, -1), high,
                                    stall_idle_s(self.settings))
            if gap is None:
                continue
            back = await loop.run_in_executor(None, self.gaps.read_back, gap)
            self.gaps.took(back)
            if not back:
                await self.gaps.settle_empty(gap)
            for old in back:
                self._batcher.put(old)

    def _floor_of(self, key: bytes) -> int | None:
        """The committed seq of the partition that holds ``key`` (see `UserWindows`)."""
        event = self._view.owner.get(key)
        return None if event is None else self._floor_seq.get(event.message.partition)

    def _count_watches_not_live(self, decoded: list[Decoded]) -> None:
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

    def _decode_user(self, event: Any) -> Decoded | None:
        msg = event.message
        raw = msg.value if isinstance(msg.value, bytes) else b""
        got = decode_user(raw, msg.key, msg.headers, self.clock)
        if isinstance(got, Rejection):
            self._dead(msg.topic, raw, got, msg.partition, msg.offset)
            return None
        self._count_in(msg.topic, got.event)
        return got

    def _count_in(self, topic: str, e: ev.Event) -> None:
        kind = str(type(e).__struct_config__.tag)
        counter = self._in_counters.get((topic, kind))
        if counter is None:
            counter = self._in_counters[(topic, kind)] = self.metrics.events_in.labels(
                topic, kind)
        counter.inc()

    def _dead(self, topic: str, raw: bytes, rejection: Rejection, partition: int | None,
              offset: int | None) -> None:
        """Publish a dead letter: with the batch being handled (published and acked with
        it), or on its own for a stream event (the stream feed has no acks)."""
        letter = dead_letter(topic, partition, offset, raw, rejection)
        record = (self.topics[kafka.DEAD_LETTERS], None, ev.encode(letter), None)
        if self._out is not None:
            self._out.append(record)  # published and acked with its batch
        else:  # a stream event: no acks to hold back, so a lost dead letter stops the worker
            self.publisher.publish([record]).add_done_callback(self._letter_sent)
        self.metrics.dead_letters.labels(topic, rejection.kind).inc()
        logger.warning("dead letter topic=%s partition=%s offset=%s reason=%r", topic,
                       partition, offset, rejection.reason[:200])

    def _letter_sent(self, fut: asyncio.Future[Offsets]) -> None:
        exc = fut.exception()
        if exc is not None:
            asyncio.ensure_future(self._stop_worker(exc))

    # --- timers ----------------------------------------------------------------------------
    async def _log_progress(self) -> None:
        """One key=value status line every 10 s (what a stuck worker would be stuck on)."""
        if not self._serving:
            return
        logger.info("progress answers=%d queued=%d in_flight=%d watermark=%d "
                    "partition_steps=%s model_version=%s", self._answered, len(self._batcher),
                    self._acks.in_flight, self.live.watermark if self.live else -1,
                    dict(sorted(self._progress.items())), self.scorer.version)

    async def _refresh_gauges(self) -> None:
        m = self.metrics
        if self.live is not None:
            m.live_streams.set(self.live.live_count())
            m.intervals.set(len(self.live))
            m.watermark.set(self.live.watermark)
        m.windows.set(self.windows.created)
        if self.pushes is not None:
            m.users_on_page.set(self.pushes.on_page)
        m.ready.set(1 if self.ready()[0] else 0)
        m.live.set(1 if self.alive()[0] else 0)
        m.since_progress.set(self.health.since_progress())

    async def check_model(self) -> bool:
        """Switch in a new model version if the model directory changed; True if it did.
        A directory that fails to load (hash mismatch, missing file) is refused and counted;
        the current model keeps serving."""
        assert self.model_dir is not None
        got = await self._reload(self.model_dir, self._model_stamp, self.scorer)
        if got is None:
            return False
        self._model_stamp, new = got
        if new is None:
            return False
        old, self.scorer = self.scorer, new  # the next batch is scored by the new version
        self._windows_for_models()
        self.metrics.model_swaps.inc()
        self.metrics.set_model(new.version)
        logger.info("model swapped old_version=%s new_version=%s dir=%s", old.version,
                    new.version, self.model_dir)
        return True

    async def check_shadow(self) -> bool:
        """Switch in a new candidate if the shadow model directory changed (as
        `check_model`); True if it did."""
        got = await self._reload(self.settings.shadow_model_dir, self._shadow_stamp,
                                 self.shadow)
        if got is None:
            return False
        self._shadow_stamp, new = got
        if new is None:
            return False
        old, self.shadow = self.shadow, new
        self._windows_for_models()
        logger.info("shadow model swapped old_version=%s new_version=%s dir=%s",
                    old.version if old else None, new.version,
                    self.settings.shadow_model_dir)
        return True

    async def _reload(self, model_dir: str, stamp_before: tuple[Any, ...] | None,
                      current: Scorer | None
                      ) -> tuple[tuple[Any, ...], Scorer | None] | None:
        """None when ``model_dir`` is unchanged; else its new stamp and the scorer loaded
        from it (None: refused and counted, or the same version as ``current``)."""
        stamp = model_stamp(model_dir)
        if stamp is None or stamp == stamp_before:
            return None
        loop = asyncio.get_running_loop()
        try:
            new = await loop.run_in_executor(None, self._load, model_dir,
                                             self.settings.scorer_threads)
        except (ValueError, OSError, RuntimeError) as exc:
            self.metrics.model_swap_failures.inc()
            logger.error("model swap refused dir=%s error=%s", model_dir, exc)
            return stamp, None  # do not retry the same broken directory every poll
        if current is not None and new.version == current.version:
            return stamp, None
        _freeze_heap()
        return stamp, new

    def _window_len(self) -> int:
        """Windows hold what the longest-reading model needs (each reads its own last
        ``window_len`` entries)."""
        return max(self.scorer.window_len,
                   self.shadow.window_len if self.shadow is not None else 0)

    def _windows_for_models(self) -> None:
        self.windows.length = self._window_len()
        self.windows.capacity = max(self.windows.capacity,
                                    self.windows.length + self.settings.window_slack)


class _Partitions(dict[int, TP]):
    """partition -> the topic's `TP`, made once (a topic may have more partitions than
    `Settings.partitions` says: it is only what topics are created with)."""

    def __init__(self, topic: str):
        super().__init__()
        self.topic = topic

    def __missing__(self, partition: int) -> TP:
        tp = self[partition] = TP(self.topic, partition)
        return tp


class LoadCollector:
    """Python's young-generation threshold by load: ``backlog_threshold`` while the worker
    is behind, the interpreter's own (700) otherwise.

    Why: in a drain the worker holds tens of thousands of fetched records, each young
    collection walks the ones that arrived since the last, and every tenth promotes them to
    be walked again by the older generations: collections took ~9% of the event loop's
    time (docs/results.md, session 25). A higher threshold collects those generations far
    less often, but each collection is longer (2-3 ms young, ~15 ms middle at 7,000), which
    cost the tail at a steady load (p99 31, 35 -> 40, 52 ms at 2,800/s). So only while the
    worker is behind for a while: ``streak`` full micro-batches in a row turn it on (a paced
    tick's burst fills one now and then), a partial batch (caught up) turns it off. 0 leaves
    the threshold alone."""

    def __init__(self, backlog_threshold: int, streak: int = 4) -> None:
        self.backlog_threshold = backlog_threshold
        self.streak = streak
        self.steady = gc.get_threshold()
        self.full = 0  # full batches in a row
        self.backlog = False

    def follow(self, full: bool) -> bool:
        """The batch just taken was ``full`` (or not); returns whether the backlog
        threshold is in effect for it."""
        self.full = self.full + 1 if full else 0
        backlog = bool(self.backlog_threshold) and self.full >= self.streak
        if backlog != self.backlog:
            self.backlog = backlog
            young = self.backlog_threshold if backlog else self.steady[0]
            gc.set_threshold(young, *self.steady[1:])
        return backlog


def _freeze_heap() -> None:
    """Move everything alive now (Faust, the model, the live index) out of the garbage
    collector's reach. Why: a full collection walked all of it, 72-76 ms measured twice in
    one latency run, and every request in flight waited; after the freeze a collection
    only walks what was allocated since."""
    gc.collect()
    gc.freeze()




def _position(raw: bytes) -> tuple[int, int]:
    """(step, seq) of a user-events record (`GroupReader.records_at`); EventError (a ValueError)
    for a record that is not one."""
    e = ev.decode_user_event(raw)
    return e.step, e.seq
