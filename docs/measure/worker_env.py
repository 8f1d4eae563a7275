"""The environment of the workers `liverank.cli.bench_service` starts, for the measure
scripts next to this file (run as ``python docs/measure/<script>.py``, so this folder is on
the import path): `worker_env` returns a dict, and what it holds when the bench starts a
``serve`` worker goes into that worker's environment, after the bench's own settings.
`pinned` runs the workers started meanwhile on CPUs of their own (Linux affinity), the
driver and the embedded broker on the others."""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import liverank.cli.bench_service as bs


def worker_env() -> dict[str, str]:
    env: dict[str, str] = {}
    popen = subprocess.Popen

    def worker_popen(cmd: Any, *a: Any, **kw: Any) -> Any:
        if "serve" in cmd and "env" in kw:
            kw["env"] = {**kw["env"], **env}
        return popen(cmd, *a, **kw)

    subprocess.Popen = worker_popen  # type: ignore[misc]  # the bench starts the worker
    return env


def _tasks(pid: int) -> list[int]:
    return [int(t) for t in os.listdir(f"/proc/{pid}/task")]


def broker_pids() -> list[int]:
    """This process's embedded broker (a tansu binary it started), not another run's."""
    pids = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        with contextlib.suppress(OSError):
            with open(f"/proc/{pid}/stat", "rb") as f:
                parent = int(f.read().rsplit(b")", 1)[1].split()[1])
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                exe = f.read().split(b"\0")[0]
            if parent == os.getpid() and b"tansu" in exe:
                pids.append(int(pid))
    return pids


def pin(pids: list[int], cpus: set[int]) -> None:
    """Every thread of ``pids`` to ``cpus`` (threads started later inherit it)."""
    for pid in pids:
        for tid in _tasks(pid):
            with contextlib.suppress(ProcessLookupError):
                os.sched_setaffinity(tid, cpus)


@contextlib.contextmanager
def each_worker(started: Callable[[int], None]) -> Iterator[None]:
    """``started(pid)`` for every worker the bench starts meanwhile, right after its start."""
    init = bs._BenchWorker.__init__

    def init_and_call(self: Any, *a: Any, **kw: Any) -> None:
        init(self, *a, **kw)
        started(self.proc.pid)

    bs._BenchWorker.__init__ = init_and_call  # type: ignore[method-assign]
    try:
        yield
    finally:
        bs._BenchWorker.__init__ = init  # type: ignore[method-assign]


@contextlib.contextmanager
def pinned(split: Any) -> Iterator[None]:
    """With ``split`` ``[worker_cpus, other_cpus]``: every worker the bench starts meanwhile
    on ``worker_cpus``, this process and the broker on ``other_cpus``; all CPUs again after.
    ``None``: nothing pinned."""
    every = os.sched_getaffinity(0)
    if not split:
        yield
        return
    pin([os.getpid(), *broker_pids()], set(split[1]))
    try:
        with each_worker(lambda pid: pin([pid], set(split[0]))):
            yield
    finally:
        pin([os.getpid(), *broker_pids()], every)


def renice(pids: list[int], value: int) -> None:
    """Every thread of ``pids`` to nice ``value`` (threads started later inherit it from
    the thread that starts them)."""
    for pid in pids:
        for tid in _tasks(pid):
            with contextlib.suppress(ProcessLookupError):
                os.setpriority(os.PRIO_PROCESS, tid, value)


@contextlib.contextmanager
def niced(spec: Any) -> Iterator[None]:
    """With ``spec`` ``{"worker": n, "driver": n, "broker": n}`` (each optional, default
    0): every worker the bench starts meanwhile, this process and the embedded broker at
    those nice values (CFS weights: each step of 1 is ~1.25x less share of a contended
    core); 0 again after. ``None``: nothing changed."""
    if not spec:
        yield
        return
    renice([os.getpid()], int(spec.get("driver", 0)))
    renice(broker_pids(), int(spec.get("broker", 0)))
    try:
        with each_worker(lambda pid: renice([pid], int(spec.get("worker", 0)))):
            yield
    finally:
        renice([os.getpid(), *broker_pids()], 0)


@contextlib.contextmanager
def latency_slice(out: Path) -> Iterator[tuple[Any, Any, Path, Path]]:
    """(broker settings, part, model, work folder): `bench service`'s latency slice of
    ``out/data/twitch100k.csv`` (its 60 paced steps after the 40 it drains, with their
    warm-up) on an embedded broker (or the configured one) for the ``with`` block; the model
    ``MODEL`` (default ``out/bench-work/random-model``); the work folder ``OUT/work``."""
    from liverank.broker.embedded import configured_or_embedded
    from liverank.model.data.twitch import load_interactions

    out.mkdir(parents=True, exist_ok=True)
    ds = load_interactions(Path("out/data/twitch100k.csv"))
    model = Path(os.environ.get("MODEL", "out/bench-work/random-model"))
    work = out / "work"
    work.mkdir(parents=True, exist_ok=True)
    lo = ds.max_step // 2 + 40  # the slice `bench service` paces (after its 40 drained)
    with contextlib.ExitStack() as stack:
        base, _ = configured_or_embedded(stack)
        yield base, bs._part(ds, lo, lo + 59, bs.WARM_STEPS, base), model, work


def rounds(env: dict[str, str], variants: list[dict[str, Any]]
           ) -> Iterator[tuple[int, int, dict[str, Any]]]:
    """(round, index, variant) for ``REPEAT`` rounds (default 1) of the variants in turn,
    so a busy spell of the machine hits each alike; ``env`` (`worker_env`'s dict) holds the
    variant's ``env`` while its turn runs."""
    for rnd in range(int(os.environ.get("REPEAT", "1"))):
        for i, variant in enumerate(variants):
            env.clear()
            env.update(variant.get("env", {}))
            yield rnd, i, variant
