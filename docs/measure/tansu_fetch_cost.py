"""Does a tansu fetch cost more as a partition holds more batches? (docs/platform-notes.md)

    .venv/bin/python docs/measure/tansu_fetch_cost.py

Starts an embedded tansu, writes one-record batches into a one-partition topic, and at
1,000 / 10,000 / 40,000 batches times 40 fetches of the last five records (a consumer at
the head of a busy partition), reporting wall time and the broker's CPU time per fetch.
"""

import os
import time

from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from liverank.broker.embedded import EmbeddedBroker

FETCHES = 40


def cpu_s(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main() -> None:
    with EmbeddedBroker.start() as broker:
        pid = broker.process.pid
        AdminClient({"bootstrap.servers": broker.bootstrap}).create_topics(
            [NewTopic("t", 1, 1)])["t"].result()
        producer = Producer({"bootstrap.servers": broker.bootstrap, "linger.ms": 0,
                             "batch.num.messages": 1})
        total = 0
        for target in (1_000, 10_000, 40_000):
            while total < target:
                producer.produce("t", b"x" * 100, partition=0)
                total += 1
                if total % 500 == 0:
                    producer.flush()
            producer.flush()
            consumer = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": "g",
                                 "enable.auto.commit": False, "fetch.wait.max.ms": 10,
                                 "enable.partition.eof": True})
            c0, t0 = cpu_s(pid), time.perf_counter()
            for _ in range(FETCHES):
                consumer.assign([TopicPartition("t", 0, total - 5)])
                got = 0
                while got < 5:
                    msg = consumer.poll(5)
                    if msg is None:
                        break  # not answered within 5 s
                    if not msg.error():
                        got += 1
            wall, cpu = time.perf_counter() - t0, cpu_s(pid) - c0
            consumer.close()
            print(f"batches={total} fetches={FETCHES} wall/fetch={wall / FETCHES * 1000:.1f} ms "
                  f"broker cpu/fetch={cpu / FETCHES * 1000:.1f} ms", flush=True)


if __name__ == "__main__":
    main()
