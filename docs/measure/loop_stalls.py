"""What the worker's event loop did while the slowest answers waited.

    python docs/measure/loop_stalls.py OUT

Reads ``OUT/answers-*.npy`` (`latency_ticks.py`) and ``OUT/loop.log.*`` (the
`loop_probe`), leaves out the first 2 s as `bench service` does, and prints per run: p50 /
p99, the loop's busy share per 100 ms (p50, p90, max), the long callbacks (>= the probe's
threshold) by what they were, how many of the answers above p99 waited through at least
one of them, and the innermost frames of the watchdog's stacks by count.
"""

from __future__ import annotations

import collections
import sys
from pathlib import Path

import numpy as np


def _probe(path: Path) -> tuple[list[tuple[float, float, str]], list[tuple[float, str]],
                                 np.ndarray]:
    calls, stacks, busy = [], [], []
    for line in path.read_text().splitlines():
        kind, wall, rest = line.split(" ", 2)
        if kind == "C":
            ms, what = rest.split(" ", 1)
            calls.append((float(wall) - float(ms), float(wall), what))
        elif kind == "S":
            stacks.append((float(wall), rest.split(" ", 1)[1]))
        elif kind == "B":
            busy.append(float(rest.split()[0]))
    return calls, stacks, np.array(busy)


def report(out: Path) -> None:
    logs = sorted((p for p in out.glob("loop.log.*") if p.suffix != ".agg"),  # not the tallies
                  key=lambda p: p.stat().st_mtime)
    runs = sorted(out.glob("answers-*.npy"), key=lambda p: p.stat().st_mtime)
    for answers, log in zip(runs, logs[-len(runs):], strict=False):
        a = np.load(answers)
        a = a[np.argsort(a[:, 0])]
        a = a[a[:, 0] >= a[0, 0] + 2_000].astype(float)
        lat = a[:, 1] - a[:, 0]
        p99 = np.percentile(lat, 99)
        calls, stacks, busy = _probe(log)
        t0, t1 = a[0, 0], a[-1, 1]
        calls = [c for c in calls if t0 <= c[1] <= t1]
        stacks = [s for s in stacks if t0 <= s[0] <= t1]
        print(f"== {answers.name} ({log.name}): p50 {np.percentile(lat, 50):.0f} p99 {p99:.0f} ms;"
              f" loop busy per 100 ms p50 {np.percentile(busy, 50):.0f} p90 "
              f"{np.percentile(busy, 90):.0f} max {busy.max():.0f} ms")
        kinds = collections.Counter()
        ms = collections.Counter()
        for start, end, what in calls:
            kinds[what] += 1
            ms[what] += end - start
        for what, n in kinds.most_common(12):
            print(f"  {n:5d} long callbacks, {ms[what]:7.0f} ms: {what}")
        tail = a[lat > p99]
        hit = sum(any(s < e_pub and e > prod for s, e, _ in calls) for prod, e_pub, *_ in tail)
        print(f"  answers above p99: {len(tail)}, {hit} waited through a long callback")
        inner = collections.Counter(";".join(s.split(";")[-3:]) for _, s in stacks)
        for frames, n in inner.most_common(15):
            print(f"  {n:5d} {frames}")


if __name__ == "__main__":
    report(Path(sys.argv[1]))
