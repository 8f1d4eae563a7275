"""`PartitionReader`: the worker's own librdkafka reader of user-events, on a real broker.

It reads the partitions it is told to from the consumer group's committed offsets, in
offset order, and after a revocation delivers nothing more of a partition, not even records
read before it (the next owner reads them from the committed offset).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

import pytest
from confluent_kafka import Consumer, Producer
from confluent_kafka import TopicPartition as KafkaPartition

from liverank.broker import kafka
from liverank.broker.clients import PartitionReader, Read
from liverank.core.settings import Settings


def _produce(settings: Settings, topic: str, counts: dict[int, int]) -> None:
    p = Producer(kafka.producer_config(settings))
    for partition, n in counts.items():
        for i in range(n):
            p.produce(topic, f"{partition}:{i}".encode(), b"k", partition,
                      headers=[("produced_ms", b"%d" % i)])
    assert p.flush(10) == 0


def _commit(settings: Settings, group: str, topic: str, offsets: dict[int, int]) -> None:
    c = Consumer({**kafka.consumer_config(settings, group), "enable.auto.commit": False})
    try:
        c.commit(offsets=[KafkaPartition(topic, p, o) for p, o in offsets.items()],
                 asynchronous=False)
    finally:
        c.close()


class Harness:
    """A reader whose deliveries, starts and failures are recorded on the running loop."""

    def __init__(self, settings: Settings, topic: str, group: str,
                 deliver: Callable[[list[Read]], Awaitable[None]] | None = None,
                 batch: int = 1000):
        self.got: list[Read] = []
        self.starts: list[tuple[int, int]] = []
        self.failures: list[BaseException] = []

        async def record(records: list[Read]) -> None:
            self.got.extend(records)

        self.reader = PartitionReader(settings, topic, group, deliver or record,
                                      lambda p, o: self.starts.append((p, o)),
                                      self.failures.append, batch=batch)

    def offsets(self, partition: int) -> list[int]:
        return [r[1] for r in self.got if r[0] == partition]

    async def until(self, done: Callable[[], bool], timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while not done():
            assert not self.failures, self.failures
            if time.monotonic() > deadline:
                raise TimeoutError(f"not done in {timeout} s: got {len(self.got)} records, "
                                   f"starts {self.starts}")
            await asyncio.sleep(0.05)


async def test_assigned_partitions_are_read_in_order_from_the_groups_committed_offsets(
        kafka_settings: Settings) -> None:
    kafka.ensure_topics(kafka_settings)
    topic = kafka_settings.topic(kafka.USER_EVENTS)
    group = f"{kafka_settings.topic_prefix}group"
    _produce(kafka_settings, topic, {0: 12, 1: 5, 2: 4})
    _commit(kafka_settings, group, topic, {0: 7})  # partition 1: nothing committed
    h = Harness(kafka_settings, topic, group)
    h.reader.start(asyncio.get_running_loop())
    try:
        h.reader.assign({0, 1})
        await h.until(lambda: len(h.got) == 5 + 5)
        await asyncio.sleep(0.5)  # nothing else comes: partition 2 is not assigned
        assert h.offsets(0) == list(range(7, 12)) and h.offsets(1) == list(range(5))
        assert h.offsets(2) == []
        assert sorted(h.starts) == [(0, 7), (1, -1)]
        first = next(r for r in h.got if r[0] == 0)
        assert first[2:5] == (b"k", b"0:7", [("produced_ms", b"7")])
        assert first[5] is not None and abs(first[5] / 1000 - time.time()) < 120
        assert h.reader.partitions == {0, 1}
        _produce(kafka_settings, topic, {1: 2})  # records after the start keep coming
        await h.until(lambda: len(h.offsets(1)) == 7)
        assert h.offsets(1) == list(range(7))
        h.reader.assign({0})  # resumed again without a pause: nothing moved, nothing re-read
        await asyncio.sleep(0.5)
        assert h.offsets(0) == list(range(7, 12)) and len(h.starts) == 2
    finally:
        h.reader.stop()
    assert not h.failures


async def test_nothing_read_before_a_revocation_is_delivered_after_it(
        kafka_settings: Settings) -> None:
    """Records of partition 0 already read and queued for the loop when it is revoked are
    dropped; given back, it is read again from the committed offset (at-least-once)."""
    kafka.ensure_topics(kafka_settings)
    topic = kafka_settings.topic(kafka.USER_EVENTS)
    group = f"{kafka_settings.topic_prefix}group"
    _produce(kafka_settings, topic, {0: 300, 1: 3})
    release = asyncio.Event()
    got: list[Read] = []

    async def slow(records: list[Read]) -> None:
        got.extend(records)
        await release.wait()  # the loop is busy: the reader queues its next batches

    h = Harness(kafka_settings, topic, group, deliver=slow, batch=50)
    h.reader.start(asyncio.get_running_loop())
    try:
        h.reader.assign({0})
        await h.until(lambda: len(got) == 50)
        await h.until(lambda: h.reader._handed.qsize() >= 2)  # read, not yet delivered
        h.reader.revoke({0})
        assert h.reader.partitions == set()
        release.set()
        await asyncio.sleep(1.0)
        assert [r[1] for r in got] == list(range(50))  # the queued batches were dropped
        got.clear()
        h.reader.assign({0, 1})  # given back: from the committed offset (none: the start)
        deadline = time.monotonic() + 30
        while len(got) < 303 and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert sorted(r[1] for r in got if r[0] == 0) == list(range(300))
        assert sorted(r[1] for r in got if r[0] == 1) == [0, 1, 2]
    finally:
        release.set()
        h.reader.stop()
    assert not h.failures


async def test_a_delivery_that_fails_stops_the_reader_loudly(
        kafka_settings: Settings, caplog: pytest.LogCaptureFixture) -> None:
    kafka.ensure_topics(kafka_settings)
    topic = kafka_settings.topic(kafka.USER_EVENTS)
    group = f"{kafka_settings.topic_prefix}group"
    _produce(kafka_settings, topic, {0: 20})
    calls: list[int] = []

    async def broken(records: list[Read]) -> None:
        calls.append(len(records))
        raise RuntimeError("the batcher refused it")

    h = Harness(kafka_settings, topic, group, deliver=broken, batch=5)
    h.reader.start(asyncio.get_running_loop())
    try:
        with caplog.at_level(logging.ERROR):
            h.reader.assign({0})
            deadline = time.monotonic() + 30
            while not h.failures and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            assert [str(e) for e in h.failures] == ["the batcher refused it"]
            await asyncio.sleep(0.5)
        assert calls == [5]  # nothing delivered after the failure
        assert "user reader could not deliver records" in caplog.text
    finally:
        h.reader.stop()


async def test_an_assignment_waits_out_a_broker_that_does_not_answer(
        caplog: pytest.LogCaptureFixture) -> None:
    """The committed offsets cannot be read: the reader says so (rate-limited) and keeps
    trying; it neither delivers nor fails the worker (the worker's outage limit does)."""
    settings = Settings(kafka_bootstrap="127.0.0.1:1", broker_kind="kafka",
                        kafka_timeout_s=1.0)
    h = Harness(settings, "t.user-events", "g")
    h.reader.start(asyncio.get_running_loop())
    try:
        with caplog.at_level(logging.WARNING):
            h.reader.assign({0})
            deadline = time.monotonic() + 20
            while "cannot (re)assign" not in caplog.text and time.monotonic() < deadline:
                await asyncio.sleep(0.1)
        assert "user reader cannot (re)assign topic=t.user-events" in caplog.text
        assert h.got == [] and h.starts == [] and h.failures == []
    finally:
        h.reader.stop()


async def test_a_reader_that_cannot_run_stops_the_worker_loudly(
        caplog: pytest.LogCaptureFixture) -> None:
    """A reader thread that ends on an error (here librdkafka refuses its configuration)
    reports it, so the worker stops instead of sitting idle with lag."""
    settings = Settings(kafka_bootstrap="127.0.0.1:1", broker_kind="kafka",
                        kafka_timeout_s=0.5)  # librdkafka's connection timeout: >= 1 s
    h = Harness(settings, "t.user-events", "g")
    with caplog.at_level(logging.ERROR):
        h.reader.start(asyncio.get_running_loop())
        h.reader.assign({0})
        deadline = time.monotonic() + 10
        while not h.failures and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
    h.reader.stop()
    assert len(h.failures) == 1 and "socket.connection.setup.timeout.ms" in str(h.failures[0])
    assert "user reader stopped topic=t.user-events" in caplog.text
