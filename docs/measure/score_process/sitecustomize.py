"""An experiment, never a setting: on ``PYTHONPATH`` with ``SCORE_PROCESS=1``, a worker ranks
in a child process holding its own scorer of the worker's model directory; with
``SCORE_PROCESS=pool`` through a one-process `ProcessPoolExecutor` (its feeder and manager
threads take the GIL from the loop at every batch), with ``SCORE_PROCESS=1`` over the
child's stdin and stdout read and written by the event loop itself (no thread). A
prototype to measure before building it.

    python docs/measure/latency_ticks.py 1800 OUT '{}' \\
        '{"env": {"PYTHONPATH": "docs/measure/score_process", "SCORE_PROCESS": "1"}}'
"""

import os
import pickle
import struct
import sys

_scorer = None


def _load(model_dir):  # type: ignore[no-untyped-def]
    global _scorer
    from liverank.model.scorer import load_scorer
    _scorer = load_scorer(model_dir, 1)


def _rank_in_child(requests, k):  # type: ignore[no-untyped-def]
    return _scorer.rank(requests, k)


def child(model_dir):  # type: ignore[no-untyped-def]
    _load(model_dir)
    inp, out = sys.stdin.buffer, sys.stdout.buffer
    while True:
        head = inp.read(4)
        if len(head) < 4:
            return
        requests, k = pickle.loads(inp.read(struct.unpack("<I", head)[0]))
        body = pickle.dumps(_scorer.rank(requests, k), protocol=5)
        out.write(struct.pack("<I", len(body)) + body)
        out.flush()


mode = os.environ.get("SCORE_PROCESS")
if mode == "pool":
    import asyncio
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    from liverank.services import app

    pools: dict = {}

    async def _rank(self, scorer, requests, k):  # type: ignore[no-untyped-def]
        pool = pools.get(self.model_dir)
        if pool is None:
            pool = pools[self.model_dir] = ProcessPoolExecutor(
                1, mp_context=multiprocessing.get_context("spawn"),
                initializer=_load, initargs=(self.model_dir,))
        return await asyncio.get_running_loop().run_in_executor(
            pool, _rank_in_child, requests, k)

    app.Service._rank = _rank  # type: ignore[method-assign]
elif mode == "1" and "SCORE_CHILD" not in os.environ:
    import asyncio

    from liverank.services import app

    procs: dict = {}

    async def _rank(self, scorer, requests, k):  # type: ignore[no-untyped-def]
        got = procs.get(self.model_dir)
        if got is None:
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-c",
                f"import sitecustomize; sitecustomize.child({self.model_dir!r})",
                stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
                env={**os.environ, "SCORE_CHILD": "1"})
            got = procs[self.model_dir] = (proc, asyncio.Lock())
        proc, lock = got
        async with lock:
            body = pickle.dumps((requests, k), protocol=5)
            proc.stdin.write(struct.pack("<I", len(body)) + body)
            await proc.stdin.drain()
            n = struct.unpack("<I", await proc.stdout.readexactly(4))[0]
            return pickle.loads(await proc.stdout.readexactly(n))

    app.Service._rank = _rank  # type: ignore[method-assign]
