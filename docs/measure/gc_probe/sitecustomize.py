"""A garbage-collector probe for a worker: on ``PYTHONPATH`` with ``GC_PROBE_OUT=PATH`` set,
the process appends to ``PATH.<pid>`` a line per collection of 2 ms or more (wall ms,
generation, duration ms, objects collected), and at the 30th and 50th full collection the
tracked objects by type and their referents by type (what a collection walks).

    python docs/measure/latency_ticks.py 1920 OUT \\
        '{"env": {"PYTHONPATH": "docs/measure/gc_probe", "GC_PROBE_OUT": "OUT/gc.log"}}'

With ``GC_SUM_OUT=PATH`` it appends to ``PATH.<pid>`` every second a tally instead: the wall
time, then per generation ``g<gen>:<collections>:<ms>`` since the start (docs/results.md,
session 25: collections took ~9% of the event loop's time in a drain). ``GC_THRESHOLD=a,b,c``
starts the process with that threshold (`gc.set_threshold`) instead of the interpreter's.

    REPEAT=2 python docs/measure/drain_variants.py OUT \\
        '{"env": {"PYTHONPATH": "docs/measure/gc_probe", "GC_SUM_OUT": "OUT/gc-on"}}' \\
        '{"env": {"PYTHONPATH": "docs/measure/gc_probe", "GC_SUM_OUT": "OUT/gc-off",
                  "LIVERANK_GC_BACKLOG_THRESHOLD": "0"}}'
"""

from __future__ import annotations

import collections
import gc
import os
import threading
import time
from collections.abc import Callable


def _type_name(o: object) -> str:
    return f"{type(o).__module__}.{type(o).__qualname__}"


def _on_each(done: Callable[[dict[str, int], float], None]) -> None:
    """Call ``done(info, seconds)`` after every collection, with how long it took."""
    started = [0.0]

    def callback(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            started[0] = time.perf_counter()
        else:
            done(info, time.perf_counter() - started[0])

    gc.callbacks.append(callback)


def _install(out: str) -> None:
    log = open(f"{out}.{os.getpid()}", "a", buffering=1)  # noqa: SIM115 - open for the process
    full = [0]

    def walked() -> None:
        objs = gc.get_objects()
        kinds = collections.Counter(_type_name(o) for o in objs)
        refs: collections.Counter[str] = collections.Counter()
        for o in objs:
            refs[_type_name(o)] += len(gc.get_referents(o))
        log.write(f"# tracked {len(objs)} frozen {gc.get_freeze_count()}: "
                  f"{kinds.most_common(12)}\n")
        log.write(f"# referents {sum(refs.values())}: {refs.most_common(12)}\n")

    def done(info: dict[str, int], seconds: float) -> None:
        ms = seconds * 1000
        if ms >= 2:
            log.write(f"{time.time() * 1000:.0f} {info['generation']} {ms:.1f} "
                      f"{info['collected']}\n")
        if info["generation"] == 2:
            full[0] += 1
            if full[0] in (30, 50):
                walked()

    _on_each(done)


def _tally(out: str) -> None:
    if os.environ.get("GC_THRESHOLD"):
        gc.set_threshold(*map(int, os.environ["GC_THRESHOLD"].split(",")))
    totals = {g: [0, 0.0] for g in range(3)}  # generation -> [collections, seconds]

    def done(info: dict[str, int], seconds: float) -> None:
        total = totals[info["generation"]]
        total[0] += 1
        total[1] += seconds

    def write() -> None:
        while True:
            time.sleep(1)
            line = " ".join(f"g{g}:{n}:{s * 1000:.1f}" for g, (n, s) in totals.items())
            with open(f"{out}.{os.getpid()}", "a") as f:
                f.write(f"{time.time():.1f} {line}\n")

    _on_each(done)
    threading.Thread(target=write, name="gc-tally", daemon=True).start()


if os.environ.get("GC_PROBE_OUT"):
    _install(os.environ["GC_PROBE_OUT"])
if os.environ.get("GC_SUM_OUT"):
    _tally(os.environ["GC_SUM_OUT"])
