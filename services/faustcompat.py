"""Faust at arm's length: the one module that touches Faust's and mode's internals.

liverank is written for faust-streaming 0.15 and mode-streaming 0.7 (pinned to those minor
versions in pyproject.toml). Importing this module checks the installed versions, and every
workaround checks, when it is installed, that the attributes it patches or reads exist:
a Faust release that renames one stops the worker at start-up with a `FaustCompatError`
naming the attribute and the workaround, instead of silently doing nothing. Each workaround
carries its measured reason; the evidence is in docs/service.md ("Faust workarounds").
tests/test_faustcompat.py runs every one against real Faust objects.

It also builds the Faust app's options from `Settings` (`faust_app_options`), so the rest
of the service uses Faust's public API only (``faust.App``, agents, tables, timers, pages).
"""

from __future__ import annotations

import gc
import logging
import shutil
import ssl
import weakref
from collections.abc import Awaitable, Callable, Iterable, Iterator
from contextlib import contextmanager
from importlib.metadata import version
from typing import Any

import faust
import faust.streams
import mode.services
from faust.sensors.prometheus import PrometheusMonitor
from faust.stores import memory as memory_store
from faust.stores import rocksdb as rocksdb_store
from faust.types import TP

from liverank.broker import kafka, tansu
from liverank.core.settings import Settings

SUPPORTED = {"faust-streaming": "0.15", "mode-streaming": "0.7"}  # minor versions
logger = logging.getLogger(__name__)


class FaustCompatError(RuntimeError):
    """The installed Faust (or mode) is not the one liverank's workarounds were written for."""


def check_versions(installed: Callable[[str], str] = version) -> None:
    """Refuse a Faust or mode minor version other than `SUPPORTED`."""
    for dist, minor in SUPPORTED.items():
        found = installed(dist)
        if found != minor and not found.startswith(minor + "."):
            raise FaustCompatError(
                f"{dist} {found} is installed; liverank's Faust workarounds are written for "
                f"{minor}.x (install liverank's pinned dependencies: pip install -e '.[serve]')")


def require(obj: Any, name: str, workaround: str) -> Any:
    """``getattr(obj, name)``, or a `FaustCompatError` naming what is missing and why."""
    if not hasattr(obj, name):
        raise FaustCompatError(
            f"faust-streaming {version('faust-streaming')}: {type(obj).__name__} has no "
            f"attribute {name!r}, which liverank's workaround {workaround!r} needs "
            "(see docs/service.md, Faust workarounds)")
    return getattr(obj, name)


check_versions()
_CURRENT_EVENT = require(faust.streams, "_current_event", "as_current")
_WAIT_RESULTS = require(mode.services, "WaitResults", "deliver_without_tasks")


# --- the current event: which partition a table key lives in -------------------------------
@contextmanager
def as_current(event: faust.types.EventT) -> Iterator[None]:
    """Make ``event`` Faust's current event. Why: a micro-batch mixes partitions, and Faust
    picks a table key's store and changelog partition from the current event; set it to the
    event that owns the key, so every user's window lives in its user's partition."""
    token = _CURRENT_EVENT.set(weakref.ref(event))
    try:
        yield
    finally:
        _CURRENT_EVENT.reset(token)


def put_many(table: Any, items: list[tuple[faust.types.EventT, bytes, bytes]]) -> None:
    """Write ``(owning event, key, value)`` triples into ``table``'s local store, each key in
    its owning event's partition, as ``table.data[key] = value`` under `as_current` does.
    Why: a micro-batch writes a window and a latest answer per user; one RocksDB ``put``
    per key (with the current-event switch around it) was ~9% of a worker's GIL time in a
    twitch100k run. RocksDB: one write batch per partition, as Faust's own changelog
    recovery writes (`Store.apply_changelog_batch`). Other stores: key by key."""
    store = require(table, "data", "put_many")
    if isinstance(store, rocksdb_store.Store):
        db_for = require(store, "_db_for_partition", "put_many")
        key_index = require(store, "_key_index", "put_many")
        encode_key = require(store, "_encode_key", "put_many")
        encode_value = require(store, "_encode_value", "put_many")
        if require(store, "use_rocksdict", "put_many"):
            batch_of: Callable[[], Any] = lambda: rocksdb_store.rocksdict.WriteBatch(  # noqa: E731
                raw_mode=True)
        else:  # python-rocksdb
            batch_of = rocksdb_store.rocksdb.WriteBatch
        batches: dict[int, Any] = {}
        for event, key, value in items:
            partition = event.message.partition
            batch = batches.get(partition)
            if batch is None:
                batch = batches[partition] = batch_of()
            raw = encode_key(key)
            batch.put(raw, encode_value(value))
            key_index[raw] = partition
        for partition, batch in batches.items():
            db_for(partition).write(batch)
        return
    for event, key, value in items:
        with as_current(event):
            store[key] = value


# --- the fetch wait ------------------------------------------------------------------------
def set_fetch_wait(consumer: Any, wait_ms: float) -> None:
    """Faust 0.15 builds its aiokafka consumer with ``fetch_max_wait_ms=1500`` and no setting
    to change it. A broker that holds a fetch until that wait expires (tansu does, even when
    data arrives) then delays every event by up to 1.5 s once the worker has caught up: set
    the wait on the aiokafka consumer when Faust creates it."""
    thread = require(consumer, "_thread", "set_fetch_wait")
    create = require(thread, "_create_worker_consumer", "set_fetch_wait")

    def create_with_wait(transport: Any) -> Any:
        client = create(transport)
        require(client, "_fetch_max_wait_ms", "set_fetch_wait")
        client._fetch_max_wait_ms = int(wait_ms)
        return client

    thread._create_worker_consumer = create_with_wait


# --- delivery without four tasks per record --------------------------------------------------
def deliver_without_tasks(consumer: Any) -> None:
    """Faust's fetch loop hands every record to the streams through
    ``consumer.wait_first(on_message(record), suspend_flow.wait())``: four tasks and an
    ``asyncio.wait`` per record, so that a rebalance can interrupt a delivery blocked on a
    full buffer. Measured with py-spy on one worker draining a twitch100k slice: ~18% of the
    GIL-holding time. liverank's ``on_message`` never blocks (the streams' queues take
    records without waiting and nothing is sent through Faust's producer buffer), so while
    the flow is not suspended the record is delivered by awaiting ``on_message`` directly;
    every other ``wait_first`` call (and this one during a rebalance or shutdown) keeps
    Faust's behaviour."""
    original = require(consumer, "wait_first", "deliver_without_tasks")
    flow = require(consumer, "suspend_flow", "deliver_without_tasks")
    require(consumer, "should_stop", "deliver_without_tasks")

    async def wait_first(*coros: Any, timeout: Any = None) -> Any:
        if (len(coros) == 2 and getattr(coros[0], "__name__", "") == "on_message"
                and not flow.is_set() and not consumer.should_stop):
            first, suspended = coros
            suspended.close()  # the suspend_flow.wait() coroutine, never started
            return _WAIT_RESULTS([first], [await first], False)
        return await original(*coros, timeout=timeout)

    consumer.wait_first = wait_first


# --- one topic's records straight to the service, past Faust's channels and streams ---------
def deliver_directly(app: faust.App, topic: str,
                     deliver: Callable[[faust.types.EventT], Awaitable[None]] | None) -> None:
    """Hand every record of ``topic`` to ``deliver`` as a raw Faust ``Event``, from the
    consumer's fetch loop, instead of Faust's conductor -> channel queue -> stream -> agent
    path. Why: the service does its own micro-batching and acking; that path cost ~18% of
    the event loop's GIL-held time draining a twitch100k slice (py-spy: the conductor's
    per-record lock, event decode, the producer-buffer check, the channel queue and the
    stream's iteration; docs/service.md, Faust workarounds). What the stream did for each
    record is kept: wait while the flow is suspended (a rebalance), drop records fetched in
    an earlier consumer generation, track the record as unacked (so Faust's rebalance waits
    for it), and the event acks through ``Event.ack`` as before. Other topics (changelogs)
    keep Faust's path.

    ``deliver`` None: the topic is read elsewhere (`fetch_elsewhere`), and a record of it
    that Faust's fetcher hands over all the same is dropped untracked, so it never enters
    Faust's offset bookkeeping (the service's reader delivers it)."""
    consumer = app.consumer
    original = require(consumer, "callback", "deliver_directly")
    unacked = require(consumer, "_unacked_messages", "deliver_directly")
    flow = app.flow_control
    acquire = require(flow, "acquire", "deliver_directly")
    require(app, "consumer_generation_id", "deliver_directly")
    make_event = faust.Event

    async def on_message(message: Any) -> Any:  # the name deliver_without_tasks expects
        if message.topic != topic:
            return await original(message)
        if deliver is None:
            logger.warning("fetched by Faust though read elsewhere, dropped topic=%s "
                           "partition=%d offset=%d", message.topic, message.partition,
                           message.offset)
            return None
        await acquire()  # suspended while partitions move
        if message.generation_id != app.consumer_generation_id:
            return None  # fetched before a rebalance: Faust's streams skip these too
        message.tracked = True
        unacked.add(message)
        await deliver(make_event(app, message.key, message.value, message.headers, message))
        return None

    consumer.callback = on_message  # type: ignore[attr-defined]


# --- one topic read by the service's own librdkafka reader, not by Faust's fetcher -----------
def fetch_elsewhere(consumer: Any, topic: str) -> None:
    """Keep ``topic`` in the group's subscription (its partitions are assigned with the
    tables' changelog partitions, co-partitioned) but never fetch it with aiokafka: the
    service reads it itself (`liverank.broker.clients.PartitionReader`). Why: records
    crossed aiokafka's thread in Python, ~30% of a worker's GIL-held time draining a
    twitch100k slice (docs/service.md, "Reading user-events").

    aiokafka's subscription pauses the topic's partitions in the same call that assigns
    them (``SubscriptionState.assign_from_subscribed``, in the consumer's thread), before
    its fetcher can see them; Faust only pauses and resumes partitions in its own active
    set, never in aiokafka. Faust's check that every assigned partition is being fetched
    (``verify_event_path``) is skipped for the topic: the service's own progress checks
    cover it."""
    thread = require(consumer, "_thread", "fetch_elsewhere")
    create = require(thread, "_create_worker_consumer", "fetch_elsewhere")
    verify = require(consumer, "verify_event_path", "fetch_elsewhere")

    def create_pausing(transport: Any) -> Any:
        client = create(transport)
        subscription = require(client, "_subscription", "fetch_elsewhere")
        assign = require(subscription, "assign_from_subscribed", "fetch_elsewhere")
        require(subscription, "pause", "fetch_elsewhere")

        def assign_paused(assignment: Any) -> None:
            assign(assignment)
            for tp in assignment:
                if tp.topic == topic:
                    subscription.pause(tp)

        subscription.assign_from_subscribed = assign_paused
        return client

    def verify_other_topics(now: float, tp: TP) -> None:
        if tp.topic != topic:
            verify(now, tp)

    thread._create_worker_consumer = create_pausing
    consumer.verify_event_path = verify_other_topics


def follow_pauses(consumer: Any, topic: str, paused: Callable[[set[int]], None],
                  resumed: Callable[[set[int]], None]) -> None:
    """Call ``paused`` / ``resumed`` with the partitions of ``topic`` whenever Faust pauses
    or resumes them (``Consumer.pause_partitions`` / ``resume_partitions``): Faust pauses
    every assigned partition when a rebalance starts and resumes the input partitions once
    table recovery is complete, which is when a reader of the topic may deliver them."""
    pause = require(consumer, "pause_partitions", "follow_pauses")
    resume = require(consumer, "resume_partitions", "follow_pauses")

    def of_topic(tps: Iterable[TP]) -> tuple[list[TP], set[int]]:
        tps = list(tps)
        return tps, {tp.partition for tp in tps if tp.topic == topic}

    def pause_partitions(tps: Iterable[TP]) -> None:
        tps, mine = of_topic(tps)
        pause(tps)
        if mine:
            paused(mine)

    def resume_partitions(tps: Iterable[TP]) -> None:
        tps, mine = of_topic(tps)
        resume(tps)
        if mine:
            resumed(mine)

    consumer.pause_partitions = pause_partitions
    consumer.resume_partitions = resume_partitions


def event_maker(app: faust.App) -> Callable[..., faust.types.EventT]:
    """``make(tp, offset, key, value, headers, timestamp_ms)``: a record read outside Faust
    as the ``Event`` Faust's fetcher would have made of it, of the current consumer
    generation: tracked as unacked (a rebalance waits for it) and acked through
    ``Event.ack`` into Faust's offset bookkeeping, which commits it."""
    unacked = require(app.consumer, "_unacked_messages", "event_maker")
    require(app, "consumer_generation_id", "event_maker")
    message_of, event_of = faust.types.ConsumerMessage, faust.Event

    def make(tp: TP, offset: int, key: bytes | None, value: bytes | None,
             headers: list[tuple[str, bytes]], timestamp_ms: int | None) -> Any:
        message = message_of(
            tp.topic, tp.partition, offset,
            timestamp_ms / 1000 if timestamp_ms is not None else None,  # type: ignore[arg-type]
            0, headers, key, value, None, tp=tp, generation_id=app.consumer_generation_id)
        message.tracked = True
        unacked.add(message)
        return event_of(app, key, value, headers, message)

    return make


# --- offsets Faust skips or acks by itself ---------------------------------------------------
def replace_add_gap(consumer: Any, handler: Callable[[TP, int, int], Awaitable[None]]
                    ) -> Callable[[TP, int, int], Awaitable[None]]:
    """Route Faust's gap acking (``Consumer._add_gap(tp, first, last)``: offsets it marks as
    acked without delivering them) to ``handler``; returns Faust's own, to call for the
    topics where a gap is legitimate and to ack a gap once it was really processed."""
    original = require(consumer, "_add_gap", "GapGuard")
    consumer._add_gap = handler  # the instance attribute wins over the method
    return original  # type: ignore[no-any-return]


def committed_offset(consumer: Any, tp: TP) -> int | None:
    """The committed offset Faust sought to after an assignment (the next record it
    delivers), or None when the group has committed nothing there (or offset 0)."""
    committed = require(consumer, "_committed_offset", "GapGuard")
    return committed.get(tp) or None  # type: ignore[no-any-return]


def check_gap_guard(consumer: Any) -> None:
    """Fail at start-up, not at the first gap, when the guard's attributes are missing."""
    require(consumer, "_add_gap", "GapGuard")
    require(consumer, "_committed_offset", "GapGuard")


# --- table recovery ------------------------------------------------------------------------
def recovered(app: faust.App) -> bool:
    """True once Faust's table recovery finished and is not running again (a rebalance)."""
    recovery = require(app.tables, "recovery", "readiness")
    completed = require(recovery, "completed", "readiness")
    return bool(completed.is_set() and not require(recovery, "in_recovery", "readiness"))


# --- local state its changelog contradicts: wiped and restored, never a crash ----------------
HEAL = "heal_local_state"


def wipe_partition(table: Any, partition: int) -> set[int] | None:
    """Drop a table's local state for one changelog partition, persisted offset included
    (the next `persisted_offset` is None). Returns the partitions whose state is gone:
    ``{partition}``, or None when the store had to drop all of them.

    RocksDB (one database per partition): the partition's database is closed and its
    directory removed; Faust reopens an empty one at the next access. Memory: the keys of
    that partition; a memory store knows a key's partition only for keys it recovered from
    the changelog (writes through the table do not record it), so when it holds any key of
    unknown partition it drops everything, and every partition is restored."""
    store = require(table, "data", HEAL)
    if isinstance(store, rocksdb_store.Store):
        path = require(store, "partition_path", HEAL)(partition)
        require(store, "_db_for_partition", HEAL)  # what reopens it, empty
        db = require(store, "_dbs", HEAL).pop(partition, None)
        if db is not None:
            close = getattr(db, "close", None)  # rocksdict's Rdict
            if close is not None:
                close()
            else:  # python-rocksdb closes (and unlocks) when freed: Faust's revoke does this
                del db
                gc.collect()
        shutil.rmtree(path, ignore_errors=True)
        require(store, "_key_index", HEAL).clear()  # key -> partition: a cache of lookups
        return {partition}
    if isinstance(store, memory_store.Store):
        data = require(store, "data", HEAL)
        owner = require(store, "_key_partition", HEAL)
        if all(key in owner for key in data):
            for key in [k for k, p in owner.items() if p == partition]:
                data.pop(key, None)
                owner.pop(key, None)
            return {partition}
        data.clear()
        owner.clear()
        return None
    raise FaustCompatError(f"{HEAL}: liverank cannot wipe a {type(store).__module__}."
                           f"{type(store).__name__} table store (rocksdb:// or memory://)")


def _contradiction(offset: int, end: int | None, start: int | None) -> str | None:
    """Why a partition whose store says it holds the changelog up to ``offset`` (the last
    record applied) cannot trust it, given the changelog's highwater ``end`` (the next offset
    to be written, as the broker reports it) and its first offset ``start``; None if it can.

    Kept when ``offset <= end - 1``: an acked record lies below any reported highwater, even
    on tansu, which may report a highwater short of the log end (the window changelog is
    sealed, services/app.py `_TableView.seals`), so a persisted offset at ``end - 1`` or below
    is consistent. Wiped when ``offset >= end``, exactly where Faust would stop with
    ``ConsistencyError``; restoring up to the reported highwater is then still exact, for
    the same reason."""
    end = 0 if end is None else end
    if offset >= end:
        return "ahead of its changelog (a fresh broker or a deleted topic?)"
    if start is not None and offset + 1 < start:
        return f"behind its changelog, which starts at offset {start} (records deleted)"
    return None


def heal_local_state(app: faust.App) -> None:
    """Local table state is a cache: when a partition's store is ahead of its changelog (a
    fresh broker, deleted topics) or behind its first offset, wipe that partition's store
    and restore it from the changelog, logging why (Kafka Streams does the same), instead of
    Faust's ``ConsistencyError`` at start-up (or reading on from a stale store).

    The hook: ``Recovery._build_offsets``, where Faust decides, for the active and then the
    standby changelog partitions, from which offset each is read, starting from the offset
    its store persisted (``Recovery._add``). It runs before Faust's consistency check and
    before any seek, for actives and standbys alike; a wiped partition starts from -1
    (nothing read), which Faust's own ``_build_offsets`` then turns into the changelog's
    first offset. Two ListOffsets requests per recovery, only when some store persisted an
    offset."""
    recovery = require(app.tables, "recovery", HEAL)
    build_offsets = require(recovery, "_build_offsets", HEAL)
    tp_to_table = require(recovery, "tp_to_table", HEAL)
    all_offsets = (require(recovery, "active_offsets", HEAL),
                   require(recovery, "standby_offsets", HEAL))
    for cls, name in ((rocksdb_store.Store, "partition_path"),
                      (rocksdb_store.Store, "_db_for_partition"),
                      (rocksdb_store.Store, "persisted_offset")):
        require(cls, name, HEAL)

    async def heal(consumer: Any, tps: set[TP], offsets: Any, title: str) -> None:
        persisted = {tp: o for tp in tps if (o := offsets.get(tp)) is not None and o >= 0}
        if not persisted:
            return
        ends = await require(consumer, "highwaters", HEAL)(*persisted)
        starts = await require(consumer, "earliest_offsets", HEAL)(*persisted)
        healed: set[TP] = set()
        for tp, offset in sorted(persisted.items()):
            if tp in healed:
                continue
            why = _contradiction(offset, ends.get(tp), starts.get(tp))
            if why is None:
                continue
            table = tp_to_table[tp]
            dropped = wipe_partition(table, tp.partition)
            wiped = {t for t, owner in tp_to_table.items()
                     if owner is table and (dropped is None or t.partition in dropped)}
            for t in wiped | {tp}:
                for held in all_offsets:
                    if t in held:
                        held[t] = -1  # nothing read: restored from the changelog's start
            healed |= wiped
            logger.warning(
                "local state of table %s partition %d (%s) wiped: persisted offset %d is %s; "
                "changelog %s highwater %s, first offset %s; restoring it from the changelog"
                "%s", getattr(table, "name", table), tp.partition, title, offset, why, tp.topic,
                ends.get(tp), starts.get(tp),
                "" if dropped is not None else " (the store dropped every partition)")

    async def build_offsets_healed(consumer: Any, tps: set[TP], destination: Any,
                                   title: str) -> None:
        await heal(consumer, tps, destination, title)
        await build_offsets(consumer, tps, destination, title)

    recovery._build_offsets = build_offsets_healed


# --- Faust's sensors without their per-message cost ------------------------------------------
_SKIPPED_HOOKS = ("on_message_in", "on_stream_event_in", "on_stream_event_out",
                  "on_message_out", "track_tp_end_offset")
for _hook in _SKIPPED_HOOKS:  # an override of a renamed hook would silently be dead code
    require(PrometheusMonitor, _hook, "LeanPrometheusMonitor")


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


# --- the app's options -----------------------------------------------------------------------
FAUST_REQUEST_TIMEOUT_S = 90.0  # faust-streaming's own default, above its 60-s session


def faust_app_options(settings: Settings) -> dict[str, Any]:
    """Keyword arguments for ``faust.App(...)``: broker, security, topic defaults, ``store``
    and, on tansu, `tansu.faust_overrides` (checked: a worker with them joins its group and
    reads 1,000 messages with a table write each within ~5 s of starting)."""
    opts: dict[str, Any] = {
        "broker": ",".join(f"kafka://{h.strip()}" for h in settings.kafka_bootstrap.split(",")),
        "topic_partitions": settings.partitions,
        "topic_replication_factor": settings.replication_factor,
        "topic_allow_declare": settings.create_topics,  # changelog and leader topics
        "store": settings.store,
        "datadir": settings.data_dir,  # local state under one directory, not the cwd
        "consumer_auto_offset_reset": "earliest",
    }
    kafka.security_config(settings)  # same checks and messages as the librdkafka clients
    ctx = None
    if settings.security_protocol.endswith("SSL"):
        ctx = ssl.create_default_context(cafile=settings.ssl_cafile)
    if settings.security_protocol.startswith("SASL"):
        opts["broker_credentials"] = faust.SASLCredentials(
            username=settings.sasl_username,
            password=settings.sasl_password.get_secret_value() if settings.sasl_password else None,
            mechanism=settings.sasl_mechanism, ssl_context=ctx)
    elif ctx is not None:
        opts["broker_credentials"] = faust.SSLCredentials(ctx)
    # aiokafka's request timeout: Faust refuses to build its consumer when it is below the
    # session timeout ("broker_session_timeout=60.0 cannot be greater than
    # broker_request_timeout"). A 30-s timeout on every broker served tansu's 6-s sessions
    # and kept a worker from starting on Kafka (Faust's session 60 s, request 90 s).
    if kafka.is_tansu(settings):
        opts.update(tansu.faust_overrides())
    request_s = opts.get("broker_request_timeout", FAUST_REQUEST_TIMEOUT_S)
    opts["broker_request_timeout"] = max(settings.kafka_timeout_s, request_s)
    return opts
