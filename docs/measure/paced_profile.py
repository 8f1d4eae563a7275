"""py-spy of the worker during the paced part of `bench service`'s latency run only (after
its warm-up), to compare with a drain's profile: where a worker at half capacity spends
its CPU.

    python docs/measure/paced_profile.py RATE OUT        # OUT/paced.txt (raw stacks)

Same data, slice and model as `latency_ticks.py` (``MODEL`` overrides the model).
"""

from __future__ import annotations

import contextlib
import os
import sys
from pathlib import Path
from typing import Any

import liverank.cli.bench_service as bs
from liverank.broker.embedded import configured_or_embedded
from liverank.model.data.twitch import load_interactions


def main(rate: float, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    spy: list[Any] = []
    warm_up, stop = bs._warm_up, bs._BenchWorker.stop

    def warm_then_record(settings: Any, part: Any, worker: Any) -> None:
        warm_up(settings, part, worker)
        spy.append(bs._py_spy(worker.proc.pid, out / "paced.txt"))

    def stop_recording(self: Any, *a: Any, **kw: Any) -> Any:
        if spy:
            bs._stop_py_spy(spy.pop(), out / "paced.txt")
        return stop(self, *a, **kw)

    bs._warm_up, bs._BenchWorker.stop = warm_then_record, stop_recording
    ds = load_interactions(Path("out/data/twitch100k.csv"))
    model = Path(os.environ.get("MODEL", "out/bench-work/random-model"))
    lo = ds.max_step // 2 + 40
    with contextlib.ExitStack() as stack:
        base, _ = configured_or_embedded(stack)
        part = bs._part(ds, lo, lo + 59, bs.WARM_STEPS, base)
        (out / "work").mkdir(exist_ok=True)
        r = bs._latency(base, part, model, out / "work", rate=rate)
        print({k: r[k] for k in ("p50_ms", "p99_ms", "p99_ms_windows", "p50_ms_halves")})


if __name__ == "__main__":
    main(float(sys.argv[1]), Path(sys.argv[2]))
