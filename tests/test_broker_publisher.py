"""`KafkaPublisher`: delivery reports served on the publishing event loop, no poll thread.

Each `publish` gets a future that settles once the broker acknowledged every message of it
(or fails with `PublishError`); the reports are polled by the loop itself, so these tests
also check that nothing is left waiting on a thread that no longer exists: a report not
polled would leave its future pending and the bounded waits below would fail.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest

from liverank.broker import kafka
from liverank.broker.clients import KafkaPublisher, PublishError
from liverank.core.settings import Settings


def _publisher(settings: Settings, **config: Any) -> KafkaPublisher:
    return KafkaPublisher({**kafka.producer_config(settings), **config})


async def test_deliveries_settle_on_the_publishing_loop_without_a_thread(
        kafka_settings: Settings) -> None:
    topic = kafka_settings.topic(kafka.RECOMMENDATIONS)
    kafka.ensure_topics(kafka_settings, [kafka.RECOMMENDATIONS])
    publisher = _publisher(kafka_settings)
    report_threads: set[int] = set()
    delivered = publisher._delivered

    def spy(*a: Any) -> None:
        report_threads.add(threading.get_ident())
        delivered(*a)

    publisher._delivered = spy  # type: ignore[method-assign]
    try:
        await asyncio.get_running_loop().run_in_executor(None, publisher.connect, 10.0)
        threads_before = {t.name for t in threading.enumerate()}
        first = publisher.publish([(topic, b"u1", b"a", 0), (topic, b"u2", b"b", 1),
                                   (topic, b"u3", b"c", 0)])
        second = publisher.publish([(topic, b"u4", b"d", 1)])
        got = await asyncio.wait_for(asyncio.gather(first, second), 10)
        assert got[0] == {(topic, 0): 1, (topic, 1): 0}
        assert got[1] == {(topic, 1): 1}
        assert report_threads == {threading.get_ident()}  # the loop's own thread
        assert {t.name for t in threading.enumerate()} == threads_before
        # Idle, the loop still polls (rarely: librdkafka's error and log events), and a
        # later publish settles as fast.
        idle = publisher._timer
        assert idle is not None and not publisher._timer_fast
        await asyncio.sleep(KafkaPublisher.IDLE_POLL_S * 1.5)
        assert publisher._timer is not None and publisher._timer is not idle  # fired, re-armed
        third = await asyncio.wait_for(publisher.publish([(topic, b"u5", b"e", 0)]), 10)
        assert third == {(topic, 0): 2}
        assert await publisher.publish([]) == {}
    finally:
        publisher.close()


async def test_a_full_local_queue_is_served_by_the_publish_itself(
        kafka_settings: Settings) -> None:
    """librdkafka's queue holds 5 messages: publishing 40 serves the reports in between
    (no thread would), and every message is delivered once, in order."""
    topic = kafka_settings.topic(kafka.RECOMMENDATIONS)
    kafka.ensure_topics(kafka_settings, [kafka.RECOMMENDATIONS])
    publisher = _publisher(kafka_settings, **{"queue.buffering.max.messages": 5})
    try:
        await asyncio.get_running_loop().run_in_executor(None, publisher.connect, 10.0)
        fut = publisher.publish([(topic, b"u", b"%d" % i, 2) for i in range(40)])
        assert await asyncio.wait_for(fut, 20) == {(topic, 2): 39}
    finally:
        publisher.close()


async def test_a_broker_that_never_answers_fails_the_publish_after_its_timeout() -> None:
    """Nothing listens at the address: librdkafka times the messages out (message.timeout.ms,
    here 1 s); the loop's polls deliver those failed reports, the future fails naming why,
    and each message is counted as a failure."""
    failures: list[int] = []
    settings = Settings(kafka_bootstrap="127.0.0.1:1", broker_kind="kafka",
                        outage_timeout_s=1.0)
    publisher = KafkaPublisher(kafka.producer_config(settings),
                               on_failure=lambda: failures.append(1))
    try:
        fut = publisher.publish([("t", b"k", b"a", None), ("t", b"k", b"b", None)])
        with pytest.raises(PublishError, match="did not acknowledge"):
            await asyncio.wait_for(fut, 10)
        assert len(failures) == 2
    finally:
        publisher._producer.purge()  # nothing to flush at close: it would wait 10 s
        publisher.close()


async def test_publishing_after_close_or_from_another_loop_is_refused() -> None:
    settings = Settings(kafka_bootstrap="127.0.0.1:1", broker_kind="kafka")
    publisher = KafkaPublisher(kafka.producer_config(settings))
    assert await publisher.publish([]) == {}  # binds the publisher to this loop

    async def elsewhere() -> None:
        publisher.publish([("t", b"k", b"v", None)])

    with pytest.raises(RuntimeError, match="second event loop"):
        await asyncio.get_running_loop().run_in_executor(None, asyncio.run, elsewhere())
    publisher.close()
    with pytest.raises(PublishError, match="closed"):
        publisher.publish([("t", b"k", b"v", None)])
