"""An experiment, never a setting: on ``PYTHONPATH`` with ``ALTERNATE_OUT=PATH``, a worker
runs as is in even phases of ``ALTERNATE_S`` seconds (default 2, aligned to the clock) and
with a variant in odd ones. ``ALTERNATE_WHAT`` picks the variant: ``thread`` (the default)
runs every model run in the scoring thread, as [`thread_run`](../thread_run/sitecustomize.py)
does, where `liverank.services.app.Service._rank` runs it on the loop unless a batch waits;
``switch:S`` sets the GIL switch interval to S seconds (`sys.setswitchinterval`, 5 ms by
default); ``thread:S`` does both; ``free`` replaces the model's run with a copy of a fixed
random score matrix of the run's shape (no onnxruntime, ~no CPU): the most a move of the
run off the loop (a process of its own) could give. At the first model run of each phase
it appends ``phase policy loop_cpu_s process_cpu_s`` to ``PATH.<pid>``.

Why: this machine's cores change speed by up to 1.8x for seconds at a time
(`cpu_steadiness.py`), which moves the loop's CPU per answer by ~20% from one run to the
next; two variants alternating within one run, a phase of each every few seconds, meet
the same spells. `alternate_phases.py` reads the log beside the answers.

    REPEAT=4 python docs/measure/latency_ticks.py 3200 OUT \\
        '{"env": {"PYTHONPATH": "docs/measure/alternate_run", "ALTERNATE_OUT": "OUT/phases"}}'
    python docs/measure/alternate_phases.py OUT
"""

import os
import runpy
import sys
import threading
import time

if os.environ.get("ALTERNATE_OUT"):
    from liverank.services import app

    rank = app.Service._rank
    thread_rank = runpy.run_path(os.path.join(os.path.dirname(__file__), "..", "thread_run",
                                              "sitecustomize.py"))["thread_rank"]
    period = float(os.environ.get("ALTERNATE_S", "2"))
    log = open(f"{os.environ['ALTERNATE_OUT']}.{os.getpid()}", "a", buffering=1)  # noqa: SIM115
    what = os.environ.get("ALTERNATE_WHAT", "thread")
    switch = float(what.split(":", 1)[1]) if ":" in what else None
    default_switch = sys.getswitchinterval()
    scores = __import__("numpy").random.default_rng(0).random((512, 4096), dtype="float32")

    def free_forward(inputs):  # type: ignore[no-untyped-def]
        rows, cols = inputs["cand_repeat"].shape[:2]
        return scores[:rows, :cols].copy()
    seen = [-1]

    async def _rank(self, scorer, requests, k):  # type: ignore[no-untyped-def]
        phase = int(time.time() / period)
        variant = phase % 2 == 1
        if phase != seen[0] and threading.current_thread() is threading.main_thread():
            seen[0] = phase
            if switch is not None:
                sys.setswitchinterval(switch if variant else default_switch)
            log.write(f"{phase} {what if variant else 'as-is'} {time.thread_time():.6f} "
                      f"{time.process_time():.6f}\n")
        if what == "free":
            if variant:
                scorer._forward = free_forward
            else:
                scorer.__dict__.pop("_forward", None)
        if not variant or what.startswith("switch:") or what == "free":
            return await rank(self, scorer, requests, k)
        return await thread_rank(self, scorer, requests, k)

    app.Service._rank = _rank  # type: ignore[method-assign]
