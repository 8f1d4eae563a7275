"""A garbage-collector probe for a worker: on ``PYTHONPATH`` with ``GC_PROBE_OUT=PATH`` set,
the process appends to ``PATH.<pid>`` a line per collection of 2 ms or more (wall ms,
generation, duration ms, objects collected), and at the 30th and 50th full collection the
tracked objects by type and their referents by type (what a collection walks).

    python docs/measure/latency_ticks.py 1920 OUT \\
        '{"env": {"PYTHONPATH": "docs/measure/gc_probe", "GC_PROBE_OUT": "OUT/gc.log"}}'
"""

from __future__ import annotations

import collections
import gc
import os
import time
from typing import Any


def _type_name(o: object) -> str:
    return f"{type(o).__module__}.{type(o).__qualname__}"


def _install(out: str) -> None:
    log = open(f"{out}.{os.getpid()}", "a", buffering=1)  # noqa: SIM115 - open for the process
    state: dict[str, Any] = {"full": 0, "start": 0.0}

    def walked() -> None:
        objs = gc.get_objects()
        kinds = collections.Counter(_type_name(o) for o in objs)
        refs: collections.Counter[str] = collections.Counter()
        for o in objs:
            refs[_type_name(o)] += len(gc.get_referents(o))
        log.write(f"# tracked {len(objs)} frozen {gc.get_freeze_count()}: "
                  f"{kinds.most_common(12)}\n")
        log.write(f"# referents {sum(refs.values())}: {refs.most_common(12)}\n")

    def callback(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            state["start"] = time.perf_counter()
            return
        ms = (time.perf_counter() - state["start"]) * 1000
        if ms >= 2:
            log.write(f"{time.time() * 1000:.0f} {info['generation']} {ms:.1f} "
                      f"{info['collected']}\n")
        if info["generation"] == 2:
            state["full"] += 1
            if state["full"] in (30, 50):
                walked()

    gc.callbacks.append(callback)


if os.environ.get("GC_PROBE_OUT"):
    _install(os.environ["GC_PROBE_OUT"])
