"""Collections during the paced part of latency runs probed with `gc_probe` (the runs of
`gc_windows_ab.sh`): per run, p50/p99 and p99 per 5-s window as `bench service` computes
them, and the collections (count, p50/max ms, total ms) of each generation between the
first and last produced request.

    python docs/measure/gc_paced.py OUT      # OUT of gc_windows_ab.sh
"""

from __future__ import annotations

import glob
import json
import sys
from pathlib import Path

import numpy as np

from liverank.cli.bench_service import latency_figures


def report(run: Path, gc_log: Path) -> dict[str, object]:
    a = np.load(next(run.glob("answers-*.npy")))
    t0, t1 = a[:, 0].min(), a[:, 0].max()
    lat = latency_figures(a[:, 0], a[:, 1])
    rows = [line.split()[:3] for f in glob.glob(f"{gc_log}.*")
            for line in Path(f).read_text().splitlines() if not line.startswith("#")]
    g = np.array(rows, dtype=float).reshape(-1, 3)
    paced = g[(g[:, 0] >= t0) & (g[:, 0] <= t1)]
    out: dict[str, object] = {"run": run.name, "p50": lat["p50_ms"], "p99": lat["p99_ms"],
                              "p99_windows": [round(w) for w in lat["p99_ms_windows"]],
                              "paced_s": round((t1 - t0) / 1000, 1)}
    for gen in (0, 1, 2):
        d = paced[paced[:, 1] == gen, 2]
        out[f"gen{gen}"] = {"n": len(d), "p50_ms": float(np.median(d)) if len(d) else None,
                            "max_ms": float(d.max()) if len(d) else None,
                            "sum_ms": round(float(d.sum()), 1)}
    return out


if __name__ == "__main__":
    out = Path(sys.argv[1])
    for run in sorted(p for p in out.iterdir() if p.is_dir()):
        print(json.dumps(report(run, out / f"gc-{run.name}.log")))
