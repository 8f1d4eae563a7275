"""An event-loop probe for a worker: on ``PYTHONPATH`` with ``LOOP_PROBE_OUT=PATH`` set, the
process appends to ``PATH.<pid>``:

* ``C wall_ms ms what``: every callback of the main thread's event loop that ran for
  ``LOOP_PROBE_MS`` (default 10) or more, with what it was (a task's coroutine, or the
  callback's name);
* ``S wall_ms ms stack``: the loop thread's stack seen by a watchdog thread while such a
  callback runs (each ``LOOP_PROBE_MS`` into it): what a long callback spends its time on;
* ``B wall_ms busy_ms n``: per 100-ms window, the loop's time in callbacks and their count;
* in ``PATH.<pid>.agg``, every 2 s after a ``# wall_ms`` line, so far: per kind of
  callback (as in ``C``) the callbacks run, their CPU ms (the thread's own CPU time: no
  wait for a core or the GIL) and wall ms, tab-separated.

    python docs/measure/latency_ticks.py 1700 OUT \\
        '{"env": {"PYTHONPATH": "docs/measure/loop_probe", "LOOP_PROBE_OUT": "OUT/loop.log"}}'

Then `docs/measure/loop_stalls.py OUT` sets the answers' latency against it.
"""

from __future__ import annotations

import asyncio.events
import os
import sys
import threading
import time
import traceback
from typing import Any


def _what(handle: Any) -> str:
    cb = getattr(handle, "_callback", None)
    owner = getattr(cb, "__self__", None)
    if isinstance(owner, asyncio.Task):
        coro = owner.get_coro()
        return f"task {getattr(coro, '__qualname__', coro)}"
    return f"cb {getattr(cb, '__qualname__', cb)}"


def _install(out: str, slow_ms: float) -> None:
    log = open(f"{out}.{os.getpid()}", "a", buffering=1)  # noqa: SIM115 - open for the process
    main = threading.main_thread().ident
    state: dict[str, Any] = {"since": None, "watching": False, "win": 0, "busy": 0.0, "n": 0,
                             "dumped": 0.0}
    agg: dict[str, list[Any]] = {}
    lock = threading.Lock()
    run = asyncio.events.Handle._run

    def timed(self: Any) -> None:
        if threading.get_ident() != main:
            return run(self)
        if not state["watching"]:
            state["watching"] = True
            threading.Thread(target=watch, name="loop-probe", daemon=True).start()
        t0 = time.perf_counter()
        c0 = time.thread_time()
        state["since"] = t0
        try:
            return run(self)
        finally:
            t1 = time.perf_counter()
            cpu = (time.thread_time() - c0) * 1000
            state["since"] = None
            ms = (t1 - t0) * 1000
            what = _what(self)
            row = agg.get(what)
            if row is None:
                row = agg[what] = [0, 0.0, 0.0]
            row[0] += 1
            row[1] += cpu
            row[2] += ms
            if t1 - state["dumped"] >= 2:
                state["dumped"] = t1
                with open(f"{out}.{os.getpid()}.agg", "a") as f:
                    f.write(f"# {time.time() * 1000:.0f}\n")
                    f.writelines(f"{w}\t{n}\t{c:.1f}\t{m:.1f}\n" for w, (n, c, m) in
                                 sorted(agg.items(), key=lambda kv: -kv[1][1]))
            win = int(t1 * 10)
            with lock:
                if win != state["win"]:
                    if state["n"]:
                        log.write(f"B {time.time() * 1000:.0f} {state['busy']:.1f} {state['n']}\n")
                    state["win"], state["busy"], state["n"] = win, 0.0, 0
                state["busy"] += ms
                state["n"] += 1
                if ms >= slow_ms:
                    log.write(f"C {time.time() * 1000:.0f} {ms:.1f} {what}\n")

    def watch() -> None:
        seen: tuple[float, int] | None = None
        while True:
            time.sleep(slow_ms / 1000)
            since = state["since"]
            if since is None:
                continue
            into = (time.perf_counter() - since) * 1000
            if into < slow_ms:
                continue
            step = int(into // slow_ms)
            if seen == (since, step):
                continue
            seen = (since, step)
            frame = sys._current_frames().get(main)
            if frame is None:
                continue
            stack = ";".join(f"{f.name}({os.path.basename(f.filename)}:{f.lineno})"
                             for f in traceback.extract_stack(frame)[-14:])
            with lock:
                log.write(f"S {time.time() * 1000:.0f} {into:.1f} {stack}\n")

    asyncio.events.Handle._run = timed  # type: ignore[method-assign]


if os.environ.get("LOOP_PROBE_OUT"):
    _install(os.environ["LOOP_PROBE_OUT"], float(os.environ.get("LOOP_PROBE_MS", "10")))
