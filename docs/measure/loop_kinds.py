"""The event loop's CPU by kind of callback, per answer, from the `loop_probe`'s tallies.

    python docs/measure/loop_kinds.py OUT [ANSWERS]

Reads the newest ``OUT/loop.log.*.agg`` (the probe's running totals, a snapshot every 2 s)
and the newest ``OUT/answers-*.npy`` (`latency_ticks.py`; for `drain_variants.py`, which
keeps no answers, ``ANSWERS`` gives their count: a drain answers all within), takes the
totals between the first snapshot in which `Service._answer` had run and the last one in
which its count still changed (the measured part: the warm-up answers nothing), and divides
each kind's CPU and wall ms by the answers published between those two snapshots: a paced
run and a drain of the same slice compare per answer (docs/results.md, session 26). The
counts are callbacks, a task's steps between awaits: `Service._answer` takes one a batch
when the model runs on the loop, two when it runs in the scoring thread.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np


def snapshots(path: Path) -> list[tuple[float, dict[str, tuple[int, float, float]]]]:
    """(wall ms, kind -> (callbacks, CPU ms, wall ms)) per snapshot, oldest first."""
    out: list[tuple[float, dict[str, tuple[int, float, float]]]] = []
    for line in path.read_text().splitlines():
        if line.startswith("# "):
            out.append((float(line[2:]), {}))
        elif out:
            what, n, cpu, wall = line.rsplit("\t", 3)
            out[-1][1][what] = (int(n), float(cpu), float(wall))
    return out


def report(out: Path, count: int | None = None) -> None:
    newest = lambda paths: max(paths, key=lambda p: p.stat().st_mtime)  # noqa: E731
    snaps = snapshots(newest(list(out.glob("loop.log.*.agg"))))
    runs = [s[1].get("task Service._answer", (0, 0.0, 0.0))[0] for s in snaps]
    first = next(i for i, n in enumerate(runs) if n)
    last = next(i for i in range(len(runs) - 1, -1, -1) if runs[i] != runs[-1] or i == first)
    last = min(last + 1, len(snaps) - 1)  # the snapshot that saw the last change
    (t0, a), (t1, b) = snaps[first], snaps[last]
    if count is None:
        published = np.load(newest(list(out.glob("answers-*.npy"))))[:, 1]
        count = int(np.count_nonzero((published > t0) & (published <= t1)))
    n = count
    delta = {k: tuple(v[j] - a.get(k, (0, 0.0, 0.0))[j] for j in range(3)) for k, v in b.items()}
    cpu = sum(v[1] for v in delta.values())
    print(
        f"{(t1 - t0) / 1000:.1f} s, {n} answers ({runs[first]} `Service._answer` callbacks "
        f"before it: with ANSWERS, few); loop CPU {cpu:.0f} ms = "
        f"{cpu * 1000 / max(n, 1):.0f} us an answer, {cpu / (t1 - t0) * 100:.0f}% of a core"
    )
    print("   us an answer: CPU   wall  callbacks  kind")
    for what, (calls, c, w) in sorted(delta.items(), key=lambda kv: -kv[1][1])[:10]:
        print(f"   {c * 1000 / n:17.1f} {w * 1000 / n:6.1f} {calls:10d}  {what[:70]}")


if __name__ == "__main__":
    report(Path(sys.argv[1]), int(sys.argv[2]) if len(sys.argv) > 2 else None)
