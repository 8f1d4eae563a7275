"""Does an idempotent produce on tansu cost more once the broker has served many producers
and topics, even after those topics were deleted? (docs/platform-notes.md)

    .venv/bin/python docs/measure/tansu_meta_cost.py

tansu 0.6.0's memory storage keeps one metadata object (``Meta``: every producer id with
its sequence number per topic and partition, and every topic) and, for every batch an
idempotent producer sends, clones it, changes one sequence number and writes it back as
JSON (``tansu-storage/src/dynostore.rs``, ``produce`` -> ``OptiCon::with_mut``). Deleting
a topic removes it from ``Meta.topics`` but not from the producers' sequences, and
producers are never removed. So the cost of each idempotent batch would grow with every
producer and topic partition the broker has seen.

Starts an embedded tansu; times 3,000 one-record batches of a fresh idempotent producer
(and of a plain one, the control) to a fresh 8-partition topic; then lets ``STEP``
short-lived idempotent producers each write one record to every partition of a new
8-partition topic that is then deleted (what one `bench service` part's replay, worker
and readers leave behind, roughly), and times again; reports the broker's CPU per batch.
"""

import os
import time

from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, NewTopic

from liverank.broker.embedded import EmbeddedBroker

BATCHES = 3_000
PARTITIONS = 8
STEP = 40


def cpu_s(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def timed(bootstrap: str, pid: int, topic: str, idempotent: bool) -> float:
    """Broker CPU ms per batch of BATCHES one-record batches, spread over the partitions."""
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 0,
                         "batch.num.messages": 1, "enable.idempotence": idempotent})
    producer.list_topics(timeout=10)
    c0 = cpu_s(pid)
    for i in range(BATCHES):
        producer.produce(topic, b"x" * 100, partition=i % PARTITIONS)
        producer.flush()  # one record a batch, one batch in flight
    return (cpu_s(pid) - c0) * 1000 / BATCHES


def main() -> None:
    with EmbeddedBroker.start() as broker:
        pid, boot = broker.process.pid, broker.bootstrap
        admin = AdminClient({"bootstrap.servers": boot})

        def create(name: str) -> None:
            admin.create_topics([NewTopic(name, PARTITIONS, 1)])[name].result()

        def delete(name: str) -> None:
            admin.delete_topics([name])[name].result()

        seen = 0
        for rnd in range(4):
            for kind, idem in (("idempotent", True), ("plain", False)):
                name = f"w{rnd}-{kind}"
                create(name)
                t0 = time.perf_counter()
                ms = timed(boot, pid, name, idem)
                wall = (time.perf_counter() - t0) * 1000 / BATCHES
                delete(name)
                print(f"producers seen before={seen:4d} {kind:10s} broker cpu/batch="
                      f"{ms:.3f} ms wall/batch={wall:.2f} ms", flush=True)
            for i in range(STEP):  # short-lived producers on topics deleted afterwards
                name = f"p{rnd}-{i}"
                create(name)
                p = Producer({"bootstrap.servers": boot, "enable.idempotence": True})
                for part in range(PARTITIONS):
                    p.produce(name, b"y", partition=part)
                p.flush()
                delete(name)
                seen += 1
            seen += 2  # the two timed producers


if __name__ == "__main__":
    main()
