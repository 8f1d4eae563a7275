"""Second by second through a paced run: the answers' latency beside what the machine's
threads did, to tell a slow core from a busy one when the tail forms.

    python docs/measure/cpu_sampler.py OUT/cpu.jsonl &
    REPEAT=3 python docs/measure/latency_ticks.py 3000 OUT '{}'
    python docs/measure/tail_seconds.py OUT OUT/cpu.jsonl

For each ``OUT/answers-*.npy`` (`latency_ticks.py`; the first 2 s left out as `bench
service` does) and each interval between two of the sampler's lines that falls in it: the
answers published in it, their p99 and largest latency, the event loop's thread's CPU
(percent of a core) and its wait on a run queue, and that CPU per answer (us); the rest of
the worker, the broker and the driver (the load generator) in percent of a core. Then the
loop's CPU per answer in the seconds that hold the run's p99 answers against the others.

The loop's CPU per answer is the probe: on a core that runs slow (the host's doing,
docs/measure/cpu_steadiness.py) the same work takes more CPU time; behind other threads or
processes on a core it waits on the run queue instead, at the same CPU per answer.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np


def _samples(path: Path) -> list[dict[str, float]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _split(line: dict[str, float]) -> dict[str, float]:
    """A sampler line as the loop thread's CPU and wait, the worker's other threads, the
    broker and the driver (percent of a core)."""
    out = {"loop": 0.0, "loop_wait": 0.0, "worker_rest": 0.0, "tansu": 0.0, "driver": 0.0}
    for key, value in line.items():
        if key == "t":
            continue
        parts = key.split("|")
        waited = parts[0] == "wait"
        kind, pid, thread = parts[1:] if waited else parts
        tid = thread.rsplit(":", 1)[1]
        if kind == "worker" and tid == pid:
            out["loop_wait" if waited else "loop"] += value
        elif not waited:
            out["worker_rest" if kind == "worker" else kind] += value
    return out


def seconds(answers: Path, samples: list[dict[str, float]], warm_ms: int = 2_000
            ) -> list[dict[str, float]]:
    a = np.load(answers)
    a = a[a[:, 0] >= a[:, 0].min() + warm_ms]
    published, lat = a[:, 1] / 1000, a[:, 1] - a[:, 0]
    rows = []
    for before, line in zip(samples, samples[1:], strict=False):
        lo, hi = before["t"], line["t"]
        if hi <= published.min() or lo >= published.max():
            continue
        inside = (published > lo) & (published <= hi)
        n = int(inside.sum())
        if not n:
            continue
        cpu = _split(line)
        rows.append({"t": hi, "answers": n, "p99": float(np.percentile(lat[inside], 99)),
                     "max": float(lat[inside].max()), **cpu,
                     "loop_us_per_answer": cpu["loop"] * 10_000 * (hi - lo) / n})
    return rows


def main(out: Path, cpu: Path) -> None:
    samples = _samples(cpu)
    for path in sorted(out.glob("answers-*.npy")):
        rows = seconds(path, samples)
        if not rows:
            print(f"{path.name}: no sampler lines during the run")
            continue
        a = np.load(path)
        lat = a[:, 1] - a[:, 0]
        p99 = float(np.percentile(lat[a[:, 0] >= a[:, 0].min() + 2_000], 99))
        print(f"{path.name}: p99 {p99:.0f} ms")
        print("  s   answers  p99  max  loop%  wait%  us/answer  rest%  tansu%  driver%")
        t0 = rows[0]["t"]
        for r in rows:
            print(f"  {r['t'] - t0:4.1f} {r['answers']:6d} {r['p99']:5.0f} {r['max']:4.0f} "
                  f"{r['loop']:6.0f} {r['loop_wait']:6.1f} {r['loop_us_per_answer']:9.0f} "
                  f"{r['worker_rest']:6.0f} {r['tansu']:7.0f} {r['driver']:7.0f}")
        tail = [r for r in rows if r["max"] > p99]
        rest = [r for r in rows if r["max"] <= p99]
        for name, group in (("seconds holding answers above p99", tail), ("the others", rest)):
            if group:
                us = np.median([r["loop_us_per_answer"] for r in group])
                wait = np.median([r["loop_wait"] for r in group])
                print(f"  {name}: {len(group)}, loop us/answer median {us:.0f}, "
                      f"wait% median {wait:.1f}")


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
