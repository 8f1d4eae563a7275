"""Drains of `liverank bench service`'s latency slice by one worker, variants alternating on
one embedded broker: answers/s and the worker's CPU ms per answer (as `bench service`
computes them), optionally with a py-spy profile of the drain.

    REPEAT=2 python docs/measure/drain_variants.py OUT '{}' '{"env": {"LIVERANK_BATCH_SIZE": "32"}}'

Each JSON argument is one variant: ``env`` goes to the worker's environment (after the
bench's own settings), ``profile`` true records ``OUT/profile-<round>-<variant>.txt``,
``model`` a model directory of its own; ``{"consume": true}`` is `bench service`'s
reference (c) instead, the Faust app that only consumes the slice's user-events (its
events/s and CPU per event, two events an answer). Model: ``MODEL`` (default
``out/bench-work/random-model``), data ``out/data/twitch100k.csv``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from worker_env import latency_slice, rounds, worker_env

import liverank.cli.bench_service as bs


def main(out: Path, variants: list[dict[str, Any]]) -> None:
    env = worker_env()
    with latency_slice(out) as (base, part, model, work):
        for rnd, i, variant in rounds(env, variants):
            profile = out / f"profile-{rnd}-{i}.txt" if variant.get("profile") else None
            if variant.get("consume"):  # the reference (c): Faust consume-only, same records
                events_s, event_ms = bs._consume_only(base, part.measured, work)
                print(json.dumps({"round": rnd, "variant": variant,
                                  "answers_per_s": events_s / 2,
                                  "cpu_ms_per_answer": event_ms * 2}), flush=True)
                continue
            rate, share, cpu_ms = bs._drain(base, part,
                                            Path(variant.get("model", model)), work,
                                            f"v{i}", profile=profile)
            print(json.dumps({"round": rnd, "variant": variant, "answers_per_s": rate,
                              "cpu_ms_per_answer": cpu_ms, "fallback_share": share}),
                  flush=True)


if __name__ == "__main__":
    main(Path(sys.argv[1]), [json.loads(v) for v in sys.argv[2:]] or [{}])
