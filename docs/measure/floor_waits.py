"""The broker floor of `bench service` (a bare librdkafka produce -> consume through the
embedded tansu, paced as the latency run is) at several consumer fetch waits, alternating:
how much of produce-to-publish latency tansu's fetch hold takes (it answers a fetch only
when its wait has run out, docs/platform-notes.md).

    python docs/measure/floor_waits.py [RATE] [WAITS...]     # default 4600 20 10 5 2

Prints one line per wait and round: the wait (ms), p50 and p99 (ms)."""

from __future__ import annotations

import contextlib
import sys

import liverank.cli.bench_service as bs
from liverank.broker.embedded import configured_or_embedded


def main(rate: float, waits: list[float]) -> None:
    with contextlib.ExitStack() as stack:
        base, _ = configured_or_embedded(stack)
        for rnd in range(2):
            for wait in waits:
                settings = base.model_copy(update={"fetch_wait_ms": wait})
                r = bs._broker_floor(settings, rate, seconds=8)
                print(rnd, wait, round(r["p50_ms"], 1), round(r["p99_ms"], 1), flush=True)


if __name__ == "__main__":
    args = sys.argv[1:]
    main(float(args[0]) if args else 4600.0,
         [float(a) for a in args[1:]] or [20.0, 10.0, 5.0, 2.0])
