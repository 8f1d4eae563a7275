"""The broker floor (`bench service`'s bare librdkafka produce -> consume) with and without
the paced sink's spread tick, alternating on one embedded broker (docs/results.md, session
15).

    python docs/measure/floor_spread.py [MESSAGES_PER_S] [ROUNDS]
"""

from __future__ import annotations

import contextlib
import json
import sys

import liverank.cli.bench_service as bs
from liverank.broker.embedded import configured_or_embedded
from liverank.replay.producer import EvenRateSink


def main(per_s: float = 4200.0, rounds: int = 2) -> None:
    with contextlib.ExitStack() as stack:
        base, _ = configured_or_embedded(stack)
        for rnd in range(rounds):
            for spread in (False, True):
                EvenRateSink.spread_ticks = spread
                f = bs._broker_floor(base, per_s)
                print(json.dumps({"round": rnd, "spread": spread, "p50_ms": f["p50_ms"],
                                  "p99_ms": f["p99_ms"]}), flush=True)


if __name__ == "__main__":
    main(*(float(a) for a in sys.argv[1:2]), *(int(a) for a in sys.argv[2:3]))
