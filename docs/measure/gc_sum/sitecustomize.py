"""A garbage-collector tally for a worker: on ``PYTHONPATH`` with ``GC_SUM_OUT=PATH`` set,
the process appends to ``PATH.<pid>`` every second a line: the wall time, then per
generation ``g<gen>:<collections>:<ms>`` since the start (docs/results.md, session 25:
collections took ~9% of the event loop's time in a drain). With ``GC_THRESHOLD=a,b,c``
the process starts with that threshold (`gc.set_threshold`) instead of the interpreter's.

    REPEAT=3 python docs/measure/drain_variants.py OUT \\
        '{"env": {"PYTHONPATH": "docs/measure/gc_sum", "GC_SUM_OUT": "OUT/gc"}}' \\
        '{"env": {"PYTHONPATH": "docs/measure/gc_sum", "GC_SUM_OUT": "OUT/gc",
                  "LIVERANK_GC_BACKLOG_THRESHOLD": "0"}}'
"""

from __future__ import annotations

import gc
import os
import threading
import time
from typing import Any


def _install(out: str) -> None:
    if os.environ.get("GC_THRESHOLD"):
        gc.set_threshold(*map(int, os.environ["GC_THRESHOLD"].split(",")))
    started = [0.0]
    totals = {g: [0, 0.0] for g in range(3)}  # generation -> [collections, seconds]

    def callback(phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            started[0] = time.perf_counter()
            return
        total = totals[info["generation"]]
        total[0] += 1
        total[1] += time.perf_counter() - started[0]

    def write() -> None:
        while True:
            time.sleep(1)
            line = " ".join(f"g{g}:{n}:{s * 1000:.1f}" for g, (n, s) in totals.items())
            with open(f"{out}.{os.getpid()}", "a") as f:
                f.write(f"{time.time():.1f} {line}\n")

    gc.callbacks.append(callback)
    threading.Thread(target=write, name="gc-sum", daemon=True).start()


if os.environ.get("GC_SUM_OUT"):
    _install(os.environ["GC_SUM_OUT"])
