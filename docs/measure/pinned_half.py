"""`liverank bench service`'s latency part (two drains of the latency slice, then the slice
paced at half of the better) per variant, variants alternating on one embedded broker: is
half capacity a load the worker holds when the drain and the paced run give it the same
CPU?

    REPEAT=2 python docs/measure/pinned_half.py OUT '{}' '{"pin": [[1], [0]]}'

Each JSON argument is one variant: ``pin`` ``[worker_cpus, other_cpus]`` runs the worker on
``worker_cpus`` and this driver (the replay) and the broker on ``other_cpus``, in the drains
and in the paced run alike (`worker_env.pinned`); ``nice`` as in `latency_ticks.py`
(`worker_env.niced`); ``env`` goes to the worker's environment; ``model`` a model directory
of its own; ``settings`` overrides `Settings` fields for the run's topics, the replay and
the worker alike (``{"settings": {"partitions": 4}}``). Model ``MODEL`` (default
``out/bench-work/random-model``), data ``out/data/twitch100k.csv``. Each line also gives
the broker's CPU per answer over the latency run (warm-up, paced part, reading back).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from worker_env import broker_pids, latency_slice, niced, pinned, rounds, worker_env

import liverank.cli.bench_service as bs


def main(out: Path, variants: list[dict[str, Any]]) -> None:
    env = worker_env()
    with latency_slice(out) as (base, part, model, work):
        (broker,) = broker_pids()
        for rnd, i, variant in rounds(env, variants):
            own = Path(variant.get("model", model))
            run = base.model_copy(update=variant.get("settings", {}))
            with pinned(variant.get("pin")), niced(variant.get("nice")):
                drains = [bs._drain(run, part, own, work, f"v{i}") for _ in range(2)]
                capacity = max(d[0] for d in drains)
                c0 = bs._cpu_s(broker)
                lat = bs._latency(run, part, own, work, rate=capacity / 2)
                broker_ms = (bs._cpu_s(broker) - c0) * 1000 / part.requests
            print(json.dumps({"round": rnd, "variant": variant,
                              "drains": [d[0] for d in drains],
                              "cpu_ms_per_answer": [d[2] for d in drains],
                              "rate": lat["rate"], "p50": lat["p50_ms"],
                              "p99": lat["p99_ms"], "p50_halves": lat["p50_ms_halves"],
                              "p99_windows": lat["p99_ms_windows"],
                              # the whole latency run (warm-up, paced part, reading back)
                              "broker_cpu_ms_per_answer": round(broker_ms, 3)}), flush=True)


if __name__ == "__main__":
    main(Path(sys.argv[1]), [json.loads(v) for v in sys.argv[2:]] or [{}])
