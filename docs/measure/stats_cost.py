"""What librdkafka's statistics every 50 ms cost a producer (`ProducerIdWatch`'s interval,
which stays for the producer's life): two producers that have sent to every partition of
the replay's two topics, one with the statistics and one without, each polled for
``SECONDS`` while idle and while producing; the process's CPU in each part.

    python docs/measure/stats_cost.py [SECONDS]
"""

from __future__ import annotations

import contextlib
import sys
import time

from confluent_kafka import Producer

from liverank.broker import kafka
from liverank.broker.embedded import configured_or_embedded


def part(producer: Producer, seconds: float, topics: list[str], rate: int, parts: int
         ) -> tuple[float, int]:
    """CPU seconds of the process over ``seconds`` of polling (and producing ``rate``
    messages/s spread over ``topics``' partitions), and how many were sent."""
    cpu0, t0, sent = time.process_time(), time.monotonic(), 0
    while (now := time.monotonic()) - t0 < seconds:
        due = int((now - t0) * rate)
        while sent < due:
            topic = topics[sent % len(topics)]
            producer.produce(topic, value=b"x" * 60, key=str(sent).encode(),
                             partition=sent % parts)
            sent += 1
        producer.poll(0.005)
    producer.flush(10)
    return time.process_time() - cpu0, sent


def main(seconds: float = 10.0) -> None:
    with contextlib.ExitStack() as stack:
        settings, _ = configured_or_embedded(stack)
        made = kafka.ensure_topics(settings, ["stream-events", "user-events"])
        topics, parts = list(made), min(made.values())
        calls = [0, 0]

        def on_stats(stats: str) -> None:
            calls[0] += 1
            calls[1] += len(stats)
            watch(stats)

        for with_stats in (True, False, True, False):
            watch = kafka.ProducerIdWatch()
            conf = kafka.producer_config(settings)
            if with_stats:
                conf = {**conf, **watch.config(), "stats_cb": on_stats}
            producer = Producer(conf)
            for i in range(2 * parts):
                producer.produce(topics[i // parts], value=b"x", partition=i % parts)
            producer.flush(10)
            calls[:] = [0, 0]
            for rate in (0, 2_000):
                cpu, sent = part(producer, seconds, topics, rate, parts)
                per = f", {calls[0]} statistics of {calls[1] // max(calls[0], 1):,} chars" \
                    if with_stats else ""
                print(f"statistics {'on ' if with_stats else 'off'} producing {rate:5,}/s: "
                      f"CPU {cpu / seconds * 100:5.2f}% of a core{per}", flush=True)
                calls[:] = [0, 0]
            del producer


if __name__ == "__main__":
    main(*(float(a) for a in sys.argv[1:2]))
