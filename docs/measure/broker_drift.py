"""Does one embedded broker get slower as benchmark parts run on it one after another, each
deleting its topics when done? (docs/results.md, session 23)

    REPEAT=4 python docs/measure/broker_drift.py OUT

Drains `bench service`'s latency slice ``REPEAT`` times on one embedded tansu (the
worker's topics deleted after each, as every part does), reporting per drain the answers/s,
the broker's CPU per answer over the drain, its RSS after the topics were deleted, and
the topics left on it. Model ``MODEL`` (default ``out/bench-work/random-model``), data
``out/data/twitch100k.csv``.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

from worker_env import broker_pids, latency_slice

import liverank.cli.bench_service as bs
from liverank.broker import kafka
from liverank.cli.bench_soak import read_rss_mb


def main(out: Path) -> None:
    with latency_slice(out) as (base, part, model, work):
        (broker,) = broker_pids()
        for rnd in range(int(os.environ.get("REPEAT", "4"))):
            c0, t0 = bs._cpu_s(broker), time.monotonic()
            rate, _, worker_ms = bs._drain(base, part, model, work, f"d{rnd}")
            broker_s, wall = bs._cpu_s(broker) - c0, time.monotonic() - t0
            topics = sorted(kafka.admin_client(base).list_topics(timeout=10).topics)
            print(json.dumps({"round": rnd, "answers_per_s": round(rate),
                              "worker_cpu_ms_per_answer": round(worker_ms, 3),
                              "broker_cpu_share": round(broker_s / wall, 3),
                              "broker_cpu_ms_per_answer": round(
                                  broker_s * 1000 / part.requests, 3),
                              "broker_rss_mb": read_rss_mb(broker),
                              "topics_left": topics}), flush=True)


if __name__ == "__main__":
    main(Path(sys.argv[1]))
