"""How long does one message take through tansu at a given fetch wait? (docs/results.md,
session 10)

    .venv/bin/python docs/measure/fetch_latency.py 20 100 5

Starts an embedded tansu (or uses LIVERANK_KAFKA_BOOTSTRAP), and for each fetch wait (ms)
produces 150 single messages ~15-30 ms apart, each flushed at once, to 8 partitions, read
by a librdkafka consumer and by an aiokafka consumer (Faust's client), each on its own
topics; prints produce-to-read latency min / p50 / p90 / max per reader.
"""

import asyncio
import contextlib
import struct
import sys
import threading
import time
import uuid
from typing import Any

import numpy as np
from aiokafka import AIOKafkaConsumer, TopicPartition
from confluent_kafka import Consumer, Producer
from confluent_kafka import TopicPartition as KafkaPartition

from liverank.broker import kafka
from liverank.broker.embedded import configured_or_embedded

MESSAGES = 150
PARTITIONS = 8


def _gap(i: int) -> float:
    return 0.0137 + (i % 7) * 0.003  # not a multiple of any fetch wait


def _stamp() -> bytes:
    return struct.pack("d", time.time()) + b"x" * 100


def _latency_ms(value: bytes) -> float:
    return (time.time() - struct.unpack("d", value[:8])[0]) * 1000


def _report(name: str, wait: int, lat: list[float]) -> None:
    a = np.array(lat[10:])  # after the first fetches
    print(f"{name} fetch wait {wait} ms: n={len(lat)} min {a.min():.1f} "
          f"p50 {np.percentile(a, 50):.1f} p90 {np.percentile(a, 90):.1f} max {a.max():.1f}",
          flush=True)


def librdkafka(settings: Any, topic: str, wait: int) -> None:
    consumer = Consumer(kafka.consumer_config(settings) | {"fetch.wait.max.ms": wait})
    consumer.assign([KafkaPartition(topic, p, 0) for p in range(PARTITIONS)])
    producer = Producer(kafka.producer_config(settings) | {"linger.ms": 0})
    producer.list_topics(timeout=10)
    lat: list[float] = []
    stop = threading.Event()

    def read() -> None:
        while not stop.is_set():
            m = consumer.poll(0.1)
            if m is not None and m.error() is None:
                lat.append(_latency_ms(m.value() or b""))

    reader = threading.Thread(target=read)
    reader.start()
    time.sleep(2)
    for i in range(MESSAGES):
        producer.produce(topic, _stamp(), partition=i % PARTITIONS)
        producer.flush()
        time.sleep(_gap(i))
    time.sleep(1)
    stop.set()
    reader.join()
    consumer.close()
    _report("librdkafka", wait, lat)


async def aiokafka(settings: Any, topic: str, wait: int) -> None:
    consumer = AIOKafkaConsumer(bootstrap_servers=settings.kafka_bootstrap,
                                fetch_max_wait_ms=wait, enable_auto_commit=False)
    await consumer.start()
    tps = [TopicPartition(topic, p) for p in range(PARTITIONS)]
    consumer.assign(tps)
    for tp in tps:
        consumer.seek(tp, 0)
    producer = Producer(kafka.producer_config(settings) | {"linger.ms": 0})
    producer.list_topics(timeout=10)
    lat: list[float] = []

    async def read() -> None:
        while True:
            for records in (await consumer.getmany(timeout_ms=100)).values():
                lat.extend(_latency_ms(r.value or b"") for r in records)

    reader = asyncio.ensure_future(read())
    await asyncio.sleep(2)
    for i in range(MESSAGES):
        producer.produce(topic, _stamp(), partition=i % PARTITIONS)
        producer.flush()
        await asyncio.sleep(_gap(i))
    await asyncio.sleep(1)
    reader.cancel()
    await consumer.stop()
    _report("aiokafka", wait, lat)


def main() -> None:
    waits = [int(w) for w in sys.argv[1:]] or [20]
    with contextlib.ExitStack() as stack:
        base, _ = configured_or_embedded(stack)
        for wait in waits:
            for run in (librdkafka, aiokafka):
                settings = base.model_copy(update={
                    "topic_prefix": f"fetch-latency-{uuid.uuid4().hex[:6]}.",
                    "partitions": PARTITIONS})
                kafka.ensure_topics(settings)
                topic = settings.topic(kafka.USER_EVENTS)
                if run is aiokafka:
                    asyncio.run(aiokafka(settings, topic, wait))
                else:
                    librdkafka(settings, topic, wait)


if __name__ == "__main__":
    main()
