"""Every Faust workaround of `liverank.services.faustcompat`, run on real Faust objects.

A Faust release that changes what a workaround patches or reads fails here (and stops the
worker at start-up with `FaustCompatError`), instead of the workaround silently doing nothing.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import faust
import pytest
from faust.sensors.prometheus import PrometheusMonitor
from faust.tables.recovery import Recovery
from faust.transport.consumer import Consumer as FaustConsumer
from faust.types import TP

from liverank.core.settings import Settings
from liverank.services import faustcompat as fc
from liverank.services.app import Service
from liverank.services.gaps import GapGuard
from liverank.services.testing import FakeScorer, MemoryPublisher


@pytest.fixture
def app() -> Iterator[faust.App]:
    yield faust.App("liverank-compat-test", broker="kafka://127.0.0.1:1", store="memory://",
                    autodiscover=False, web_enabled=False)


def test_only_the_pinned_minor_versions_are_accepted() -> None:
    fc.check_versions()  # what is installed here
    with pytest.raises(fc.FaustCompatError, match=r"faust-streaming 0\.16\.0 is installed"):
        fc.check_versions(lambda dist: "0.16.0" if dist == "faust-streaming" else "0.7.1")
    with pytest.raises(fc.FaustCompatError, match=r"mode-streaming 0\.8\.2"):
        fc.check_versions(lambda dist: "0.15.3" if dist == "faust-streaming" else "0.8.2")
    fc.check_versions(lambda dist: {"faust-streaming": "0.15.9", "mode-streaming": "0.7"}[dist])


def test_a_missing_internal_names_itself_and_the_workaround() -> None:
    with pytest.raises(fc.FaustCompatError, match=r"no attribute '_add_gap'.*'GapGuard'"):
        fc.require(object(), "_add_gap", "GapGuard")


def test_the_service_refuses_to_start_when_faust_lacks_what_a_workaround_patches(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delattr(FaustConsumer, "_add_gap")  # as a Faust upgrade might
    settings = Settings(kafka_bootstrap="127.0.0.1:1", broker_kind="kafka", store="memory://")
    with pytest.raises(fc.FaustCompatError, match="_add_gap"):
        Service(settings, FakeScorer(), publisher=MemoryPublisher(), web=False)


async def test_as_current_makes_the_event_faust_s_current_event(app: faust.App) -> None:
    msg = faust.types.Message("t", 3, 10, 0.0, 0, {}, b"k", b"v", None)
    event = faust.Event(app, b"k", b"v", {}, msg)
    assert faust.current_event() is None
    with fc.as_current(event):
        assert faust.current_event() is event  # what Faust's tables read the partition from
    assert faust.current_event() is None


async def test_fetch_wait_is_set_on_the_aiokafka_consumer_faust_creates(
        app: faust.App) -> None:
    consumer = app.consumer
    fc.set_fetch_wait(consumer, 20)
    client = consumer._thread._create_worker_consumer(app.transport)
    try:
        assert client._fetch_max_wait_ms == 20  # Faust's own: 1500
    finally:
        await client.stop()


@pytest.mark.parametrize("kind", ["tansu", "kafka"])
async def test_every_latency_bound_read_of_a_worker_uses_the_fetch_wait(kind: str) -> None:
    """Faust's aiokafka consumer (user-events), the worker's own user-events reader and the
    stream-events feed all fetch with ``fetch_wait_ms``, on either broker."""
    from liverank.broker.clients import PartitionReader, StreamFeed

    for wait in (20.0, 7.0):
        settings = Settings(kafka_bootstrap="127.0.0.1:1", broker_kind=kind,
                            store="memory://", fetch_wait_ms=wait)
        service = Service(settings, FakeScorer(), publisher=MemoryPublisher(), web=False)
        client = service.app.consumer._thread._create_worker_consumer(service.app.transport)
        try:
            assert client._fetch_max_wait_ms == int(wait)  # Faust's own: 1500
        finally:
            await client.stop()
        loop = asyncio.get_running_loop()
        feed = StreamFeed(settings, "t.stream-events", 2, lambda records: None, loop)
        reader = PartitionReader(settings, "t.user-events", "g", _no_delivery,
                                 lambda p, o: None, lambda exc: None)
        assert feed._config["fetch.wait.max.ms"] == int(wait)
        assert reader._config["fetch.wait.max.ms"] == int(wait)
    with pytest.raises(ValueError, match="fetch_wait_ms"):  # a wait is never negative
        Settings(broker_kind=kind, fetch_wait_ms=-1)


@pytest.mark.parametrize("kind", ["tansu", "kafka"])
async def test_faust_accepts_the_request_timeout_on_either_broker(kind: str) -> None:
    """Faust builds no consumer whose request timeout is below its session timeout; a
    30-s request timeout against Faust's 60-s session kept a worker from starting on Kafka.
    Its consumer and producer are built here as a worker's start builds them."""
    for timeout_s in (10.0, 120.0):
        settings = Settings(kafka_bootstrap="127.0.0.1:1", broker_kind=kind,
                            store="memory://", kafka_timeout_s=timeout_s)
        app = Service(settings, FakeScorer(), publisher=MemoryPublisher(), web=False).app
        assert app.conf.broker_request_timeout >= app.conf.broker_session_timeout
        assert app.conf.broker_request_timeout >= timeout_s
        consumer = app.consumer._thread._create_worker_consumer(app.transport)
        producer = app.producer._new_producer()
        await consumer.stop()
        await producer.stop()


async def _no_delivery(records: object) -> None:
    return None


async def test_records_reach_the_streams_without_tasks_unless_the_flow_is_suspended(
        app: faust.App) -> None:
    """Faust's per-record ``wait_first(on_message(..), suspend_flow.wait())`` awaits
    ``on_message`` directly while the flow runs; with the flow suspended (a rebalance) it
    goes through Faust's own ``wait_first``, which also waits on the flow."""
    consumer = app.consumer
    fc.deliver_without_tasks(consumer)
    got: list[int] = []

    async def on_message(n: int) -> int:
        got.append(n)
        return n * 2

    fast = await consumer.wait_first(on_message(1), consumer.suspend_flow.wait())
    assert got == [1] and fast.results == [2] and len(fast.done) == 1
    consumer.suspend_flow.set()
    slow = await asyncio.wait_for(
        consumer.wait_first(on_message(2), consumer.suspend_flow.wait()), 5)
    assert got == [1, 2] and len(slow.done) == 2 and sorted(map(str, slow.results)) == [
        "4", "True"]


async def test_one_topic_goes_straight_to_the_service_past_faust_streams(
        app: faust.App) -> None:
    """`deliver_directly`: records of the topic reach the handler as raw Faust events,
    tracked as unacked and acked through ``Event.ack``; other topics keep Faust's callback;
    records of an earlier consumer generation are dropped; while the flow is suspended (a
    rebalance) delivery waits."""
    consumer = app.consumer
    faust_path: list[Any] = []

    async def original(message: Any) -> None:
        faust_path.append(message)

    consumer.callback = original
    got: list[Any] = []

    async def deliver(event: Any) -> None:
        got.append(event)

    fc.deliver_directly(app, "t.user-events", deliver)
    app.consumer_generation_id = 3

    def message(topic: str, offset: int, generation: int = 3) -> Any:
        return faust.types.Message(topic, 0, offset, 0.0, 0, {}, b"7", b"raw", None,
                                   generation_id=generation)

    app.flow_control.resume()
    mine, other, stale = message("t.user-events", 5), message("t.changelog", 6), message(
        "t.user-events", 7, generation=2)
    for m in (mine, other, stale):
        await consumer.callback(m)
    assert [e.message for e in got] == [mine] and faust_path == [other]
    assert got[0].value == b"raw" and got[0].key == b"7" and mine.tracked
    assert mine in consumer._unacked_messages and stale not in consumer._unacked_messages
    app.flow_control.suspend()
    waiting = asyncio.ensure_future(consumer.callback(message("t.user-events", 8)))
    await asyncio.sleep(0.05)
    assert not waiting.done() and len(got) == 1  # held while partitions move
    app.flow_control.resume()
    await asyncio.wait_for(waiting, 5)
    assert [e.message.offset for e in got] == [5, 8]


def test_direct_delivery_refuses_a_consumer_without_the_callback(app: faust.App) -> None:
    del app.consumer.callback  # what a Faust without ``Consumer.callback`` would give
    with pytest.raises(fc.FaustCompatError, match="callback.*deliver_directly"):
        fc.deliver_directly(app, "t.user-events", lambda e: asyncio.sleep(0))


async def test_gap_acking_goes_to_the_guard_for_user_events_only(app: faust.App) -> None:
    consumer = app.consumer
    settings = Settings(kafka_bootstrap="127.0.0.1:1", broker_kind="kafka")
    faust_gaps: list[tuple[TP, int, int]] = []
    original = consumer._add_gap

    async def spy(tp: TP, first: int, last: int) -> None:
        faust_gaps.append((tp, first, last))
        await original(tp, first, last)

    consumer._add_gap = spy
    guard = GapGuard(consumer, "user-events", settings, "g")
    await consumer._add_gap(TP("user-events", 0), 3, 5)  # Faust's fetcher noticed a gap
    assert faust_gaps == []  # not acked behind the guard's back
    await consumer._add_gap(TP("windows-changelog", 0), 3, 5)
    assert faust_gaps == [(TP("windows-changelog", 0), 3, 5)]  # other topics: Faust's way
    assert guard.refetched == 0


def test_committed_offset_reads_what_faust_sought_to(app: faust.App) -> None:
    consumer = app.consumer
    tp = TP("user-events", 2)
    assert fc.committed_offset(consumer, tp) is None
    consumer._committed_offset[tp] = 41  # as Faust records it after an assignment
    assert fc.committed_offset(consumer, tp) == 41


def test_recovery_is_not_done_before_the_app_ran(app: faust.App) -> None:
    assert fc.recovered(app) is False


def test_the_lean_sensor_overrides_hooks_faust_really_calls() -> None:
    for hook in fc._SKIPPED_HOOKS:
        assert hook in vars(PrometheusMonitor) or any(
            hook in vars(base) for base in PrometheusMonitor.__mro__[1:])
        assert getattr(fc.LeanPrometheusMonitor, hook) is not getattr(PrometheusMonitor, hook)


def test_faust_options_name_real_faust_settings() -> None:
    opts: dict[str, Any] = fc.faust_app_options(Settings(broker_kind="tansu"))
    faust.App("liverank-options", **opts)  # an unknown key would raise here


# --- heal_local_state: a store its changelog contradicts is wiped, not a crash ---------------
class ListOffsets:
    """The two offset lookups of Faust's consumer that recovery makes (ListOffsets)."""

    def __init__(self, ends: dict[TP, int], starts: dict[TP, int] | None = None):
        self.ends, self.starts = ends, starts or {}

    async def highwaters(self, *tps: TP) -> dict[TP, int]:
        return {tp: self.ends.get(tp, 0) for tp in tps}

    async def earliest_offsets(self, *tps: TP) -> dict[TP, int]:
        return {tp: self.starts.get(tp, 0) for tp in tps}


def _event(app: faust.App, partition: int, offset: int = 0, key: bytes = b"k",
           value: bytes | None = b"v") -> faust.Event:
    msg = faust.types.Message("windows-changelog", partition, offset, 0.0, 0, {}, key, value,
                              None)
    return faust.Event(app, key, value, {}, msg)


def _stored(store: str, tmp_path: Path) -> tuple[faust.App, Any]:
    """A real app and a 4-partition table in a real store (RocksDB under tmp_path)."""
    app = faust.App("liverank-heal-test", broker="kafka://127.0.0.1:1", store=store,
                    datadir=str(tmp_path), autodiscover=False, web_enabled=False)
    return app, app.Table("windows", key_type=bytes, value_type=bytes, partitions=4)


@pytest.fixture(params=["rocksdb://", "memory://"])
def stored(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[faust.App, Any]:
    return _stored(request.param, tmp_path)


def _tp(table: Any, partition: int) -> TP:
    return TP(table.changelog_topic.get_topic_name(), partition)


def _write(app: faust.App, table: Any, partition: int, key: bytes, offset: int) -> None:
    """What the service does: a write under the event that owns the key, then the offset
    the changelog was written to (rocksdb keeps it; memory ignores it)."""
    with fc.as_current(_event(app, partition)):
        table.data[key] = b"v%d" % partition
    table.data.set_persisted_offset(_tp(table, partition), offset)


def _read(app: faust.App, table: Any, partition: int, key: bytes) -> Any:
    with fc.as_current(_event(app, partition)):
        return table.data.get(key)


def test_put_many_writes_each_key_in_its_owners_partition(
        stored: tuple[faust.App, Any]) -> None:
    """The batched write the service uses for windows and latest answers: the same result
    as ``table.data[key] = value`` under each key's owning event, whatever the store."""
    app, table = stored
    owners = {b"a": _event(app, 0), b"b": _event(app, 2), b"c": _event(app, 2)}
    fc.put_many(table, [(owners[k], k, b"x" + k) for k in (b"a", b"b", b"c")])
    fc.put_many(table, [(owners[b"b"], b"b", b"y")])  # a later batch overwrites
    assert _read(app, table, 0, b"a") == b"xa"
    assert _read(app, table, 2, b"b") == b"y" and _read(app, table, 2, b"c") == b"xc"
    if isinstance(table.data, fc.rocksdb_store.Store):  # one database per partition
        assert _read(app, table, 1, b"a") is None and _read(app, table, 0, b"b") is None
        assert table.data._key_index[b"b"] == 2
    else:
        assert table.data.data[b"b"] == b"y"


def test_put_many_refuses_a_store_without_what_it_writes_through(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    app, table = _stored("rocksdb://", tmp_path)
    monkeypatch.delattr(fc.rocksdb_store.Store, "_db_for_partition")
    with pytest.raises(fc.FaustCompatError, match="_db_for_partition.*put_many"):
        fc.put_many(table, [(_event(app, 0), b"a", b"x")])


def test_wiping_a_rocksdb_partition_drops_its_data_and_persisted_offset(
        tmp_path: Path) -> None:
    app, table = _stored("rocksdb://", tmp_path)
    assert isinstance(table.data, fc.rocksdb_store.Store)  # rocksdict is installed
    _write(app, table, 0, b"a", 41)
    _write(app, table, 1, b"b", 7)
    path = table.data.partition_path(0)
    assert path.exists() and table.persisted_offset(_tp(table, 0)) == 41
    assert fc.wipe_partition(table, 0) == {0}
    assert not path.exists()  # the database itself, not just its keys
    assert table.persisted_offset(_tp(table, 0)) is None  # reopened, empty
    assert _read(app, table, 0, b"a") is None
    assert _read(app, table, 1, b"b") == b"v1" and table.persisted_offset(_tp(table, 1)) == 7
    _write(app, table, 0, b"a", 3)  # the reopened database works like a new one
    assert _read(app, table, 0, b"a") == b"v0" and table.persisted_offset(_tp(table, 0)) == 3


def test_wiping_a_memory_partition_drops_its_keys_or_everything_when_it_cannot_tell(
        tmp_path: Path) -> None:
    app, table = _stored("memory://", tmp_path)
    store = table.data
    assert isinstance(store, fc.memory_store.Store)
    # Recovered from the changelog: the store knows each key's partition.
    store.apply_changelog_batch([_event(app, 0, 5, b"a"), _event(app, 1, 6, b"b")],
                                lambda k: k, lambda v: v)
    assert fc.wipe_partition(table, 0) == {0}
    assert dict(store.data) == {b"b": b"v"}
    # Written through the table: its partition is not recorded, so everything goes.
    _write(app, table, 2, b"c", 9)
    assert fc.wipe_partition(table, 1) is None
    assert dict(store.data) == {}


async def test_recovery_wipes_and_restores_partitions_ahead_of_their_changelog_only(
        stored: tuple[faust.App, Any], caplog: pytest.LogCaptureFixture) -> None:
    """Persisted offsets against the changelog's highwater (next offset) and first offset:
    p0 41 vs an empty changelog (a fresh broker): wiped; p1 9 vs 10 (the seal at the last
    offset): kept; p2 10 vs 10: wiped (Faust's ConsistencyError case); p3 3, but the
    changelog starts at 10: wiped. Faust's own `_build_offsets` then starts each wiped one
    at the changelog's first offset - 1, and its consistency check passes."""
    app, table = stored
    rocks = isinstance(table.data, fc.rocksdb_store.Store)
    recovery = app.tables.recovery
    fc.heal_local_state(app)
    tps = [_tp(table, p) for p in range(4)]
    persisted = {0: 41, 1: 9, 2: 10, 3: 3}
    for p, offset in persisted.items():
        _write(app, table, p, b"k%d" % p, offset)
    for tp in tps:
        recovery.add_active(table, tp)
    if not rocks:  # memory persists nothing: the offsets an earlier recovery read
        for p, offset in persisted.items():
            recovery.active_offsets[tps[p]] = offset
    consumer = ListOffsets({tps[0]: 0, tps[1]: 10, tps[2]: 10, tps[3]: 20}, {tps[3]: 10})
    with caplog.at_level(logging.WARNING, logger=fc.__name__):
        await recovery._build_offsets(consumer, recovery.active_tps, recovery.active_offsets,
                                      "active")
    highwaters = {tp: consumer.ends[tp] - 1 for tp in tps}  # Faust's: the last offset
    offsets = recovery.active_offsets
    assert not any(offsets[tp] and highwaters[tp] and offsets[tp] > highwaters[tp]
                   for tp in tps)  # Faust's consistency check
    if rocks:
        assert offsets == {tps[0]: -1, tps[1]: 9, tps[2]: -1, tps[3]: 9}
        assert [table.persisted_offset(tp) for tp in tps] == [None, 9, None, None]
        assert [_read(app, table, p, b"k%d" % p) for p in range(4)] == [None, b"v1", None,
                                                                         None]
        warned = {(r.args[1], r.args[3]) for r in caplog.records}  # type: ignore[index]
        assert warned == {(0, 41), (2, 10), (3, 3)}
        assert "highwater 0" in caplog.text and "starts at offset 10" in caplog.text
    else:  # keys written through the table: the whole table is wiped and restored once
        assert offsets == {tps[0]: -1, tps[1]: -1, tps[2]: -1, tps[3]: 9}
        assert dict(table.data.data) == {} and len(caplog.records) == 1
        assert "every partition" in caplog.text
    assert "table windows partition 0 (active) wiped: persisted offset 41" in caplog.text


async def test_nothing_persisted_means_no_lookups_and_nothing_wiped(
        stored: tuple[faust.App, Any]) -> None:
    app, table = stored
    fc.heal_local_state(app)
    recovery = app.tables.recovery
    recovery.add_standby(table, _tp(table, 0))

    class NoLookups(ListOffsets):
        async def highwaters(self, *tps: TP) -> dict[TP, int]:
            raise AssertionError("no ListOffsets without a persisted offset")

    await recovery._build_offsets(NoLookups({}), recovery.standby_tps,
                                  recovery.standby_offsets, "standby")
    assert recovery.standby_offsets == {_tp(table, 0): -1}


def test_healing_refuses_a_faust_without_the_recovery_hook(
        app: faust.App, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delattr(Recovery, "_build_offsets")
    with pytest.raises(fc.FaustCompatError, match=r"'_build_offsets'.*'heal_local_state'"):
        fc.heal_local_state(app)
    monkeypatch.undo()
    monkeypatch.delattr(fc.rocksdb_store.Store, "partition_path")
    with pytest.raises(fc.FaustCompatError, match=r"'partition_path'.*'heal_local_state'"):
        fc.heal_local_state(app)


def test_the_service_heals_its_local_state() -> None:
    settings = Settings(kafka_bootstrap="127.0.0.1:1", broker_kind="kafka", store="memory://")
    service = Service(settings, FakeScorer(), publisher=MemoryPublisher(), web=False)
    hook = service.app.tables.recovery._build_offsets
    assert getattr(hook, "__name__", "") == "build_offsets_healed"


def test_a_partition_with_records_beyond_what_was_delivered_is_reported_stalled_when_idle(
        app: faust.App) -> None:
    guard = GapGuard(app.consumer, "user-events",
                     Settings(kafka_bootstrap="127.0.0.1:1", broker_kind="kafka"), "g")
    tp = TP("user-events", 3)
    guard.forget([tp])  # assigned at t0
    t0 = guard.since[tp]
    assert guard.stalled(tp, committed=725, high=725, idle_s=10, now=t0 + 60) is None  # no lag
    assert guard.stalled(tp, committed=725, high=1174, idle_s=10, now=t0 + 5) is None  # young
    gap = guard.stalled(tp, committed=725, high=1174, idle_s=10, now=t0 + 11)
    assert gap is not None and (gap.first, gap.last) == (725, None)  # to the partition's end
    assert guard.stalled(tp, committed=725, high=1174, idle_s=10, now=t0 + 12) is None  # once
    guard.expected[tp] = 1174  # everything delivered since
    assert guard.stalled(tp, committed=725, high=1174, idle_s=10, now=t0 + 100) is None


def test_a_partition_is_not_stalled_while_records_of_other_partitions_still_arrive(
        app: faust.App) -> None:
    """Under a backlog Faust can leave one partition undelivered for a while as it serves
    the others: reading its tail back then delivered those records twice."""
    guard = GapGuard(app.consumer, "user-events",
                     Settings(kafka_bootstrap="127.0.0.1:1", broker_kind="kafka"), "g")
    quiet, busy = TP("user-events", 3), TP("user-events", 4)
    guard.forget([quiet, busy])
    t0 = guard.since[quiet]
    guard.last_any = t0 + 50  # a record of `busy` came at t0 + 50
    assert guard.stalled(quiet, committed=725, high=1174, idle_s=10, now=t0 + 55) is None
    assert guard.stalled(quiet, committed=725, high=1174, idle_s=10, now=t0 + 59) is None
    gap = guard.stalled(quiet, committed=725, high=1174, idle_s=10, now=t0 + 61)  # all quiet
    assert gap is not None and (gap.first, gap.last) == (725, None)


# --- user-events read by the service's own reader ------------------------------------------------
async def test_a_topic_read_elsewhere_is_paused_in_aiokafka_in_the_call_that_assigns_it(
        app: faust.App) -> None:
    """`fetch_elsewhere`: the aiokafka consumer Faust creates pauses the topic's partitions
    as they are assigned (its fetcher never asks for them); other topics are fetched; Faust's
    check that assigned partitions are fetched skips the topic."""
    from aiokafka.structs import TopicPartition as AioTP

    consumer = app.consumer
    checked: list[TP] = []
    consumer.verify_event_path = lambda now, tp: checked.append(tp)
    fc.fetch_elsewhere(consumer, "t.user-events")
    client = consumer._thread._create_worker_consumer(app.transport)
    try:
        subscription = client._subscription
        subscription.subscribe(topics={"t.user-events", "t.windows-changelog"})
        mine = {AioTP("t.user-events", 0), AioTP("t.user-events", 1)}
        other = AioTP("t.windows-changelog", 0)
        subscription.assign_from_subscribed(mine | {other})
        assert subscription.paused_partitions() == mine
        assert subscription.assigned_partitions() == mine | {other}
        subscription.assign_from_subscribed({AioTP("t.user-events", 2), other})  # rebalance
        assert subscription.paused_partitions() == {AioTP("t.user-events", 2)}
    finally:
        await client.stop()
    consumer.verify_event_path(0.0, TP("t.user-events", 0))
    consumer.verify_event_path(0.0, TP("t.windows-changelog", 0))
    assert checked == [TP("t.windows-changelog", 0)]


def test_reading_elsewhere_refuses_a_consumer_it_cannot_keep_from_fetching() -> None:
    class Thread:  # a Faust whose consumer thread no longer creates aiokafka this way
        pass

    class Consumer:
        _thread = Thread()

        def verify_event_path(self, now: float, tp: TP) -> None: ...

    with pytest.raises(fc.FaustCompatError, match="_create_worker_consumer.*fetch_elsewhere"):
        fc.fetch_elsewhere(Consumer(), "t.user-events")


def test_pauses_and_resumes_of_the_topic_are_followed_and_faust_still_keeps_its_own(
        app: faust.App) -> None:
    consumer = app.consumer
    consumer._active_partitions = set()  # as after an assignment
    paused: list[set[int]] = []
    resumed: list[set[int]] = []
    fc.follow_pauses(consumer, "t.user-events", paused.append, resumed.append)
    u0, u1, c0 = TP("t.user-events", 0), TP("t.user-events", 1), TP("t.changelog", 0)
    consumer.pause_partitions([u0, u1, c0])  # a rebalance begins
    assert paused == [{0, 1}] and consumer._paused_partitions == {u0, u1, c0}
    consumer.resume_partitions([c0])  # recovery reads the changelog
    assert resumed == []
    consumer.resume_partitions({u1})  # recovery done: the input partitions resume
    assert resumed == [{1}] and consumer._paused_partitions == {u0}
    assert u1 in consumer._active_partitions


def test_following_pauses_refuses_a_consumer_without_them() -> None:
    class Consumer:  # pauses, but resumes under another name
        def pause_partitions(self, tps: Any) -> None: ...

    with pytest.raises(fc.FaustCompatError, match="resume_partitions.*follow_pauses"):
        fc.follow_pauses(Consumer(), "t.user-events", print, print)


def test_a_record_read_elsewhere_is_a_tracked_event_acked_into_faust_s_offsets(
        app: faust.App) -> None:
    consumer = app.consumer
    app.topics._acking_topics.add("t.user-events")  # as for a topic an agent reads
    app.consumer_generation_id = 4
    make = fc.event_maker(app)
    tp = TP("t.user-events", 2)
    event = make(tp, 17, b"k", b"v", [("produced_ms", b"1")], 1_700_000_000_000)
    m = event.message
    assert (m.topic, m.partition, m.offset, m.tp, m.generation_id) == (
        "t.user-events", 2, 17, tp, 4)
    assert (event.key, event.value, m.headers) == (b"k", b"v", [("produced_ms", b"1")])
    assert m.timestamp == 1_700_000_000.0 and m.tracked and m in consumer._unacked_messages
    assert make(tp, 18, None, None, [], None).message.timestamp is None
    event.ack()
    assert m not in consumer._unacked_messages and list(consumer._acked[tp]) == [17]
    assert consumer._new_offset(tp) == 18  # what Faust's next commit writes


def test_event_maker_refuses_a_consumer_without_its_unacked_set(app: faust.App) -> None:
    del app.consumer._unacked_messages
    with pytest.raises(fc.FaustCompatError, match="_unacked_messages.*event_maker"):
        fc.event_maker(app)


async def test_a_record_of_a_topic_read_elsewhere_is_dropped_untracked_if_faust_fetched_it(
        app: faust.App, caplog: pytest.LogCaptureFixture) -> None:
    consumer = app.consumer
    faust_path: list[Any] = []

    async def original(message: Any) -> None:
        faust_path.append(message)

    consumer.callback = original
    fc.deliver_directly(app, "t.user-events", None)
    app.flow_control.resume()
    mine = faust.types.ConsumerMessage("t.user-events", 0, 5, 0.0, 0, {}, b"7", b"raw", None)
    other = faust.types.ConsumerMessage("t.changelog", 0, 6, 0.0, 0, {}, b"7", b"raw", None)
    with caplog.at_level(logging.WARNING):
        await consumer.callback(mine)
        await consumer.callback(other)
    assert faust_path == [other] and not mine.tracked
    assert mine not in consumer._unacked_messages
    assert "fetched by Faust though read elsewhere" in caplog.text
