"""How steady this machine's CPUs are, with nothing else running: a fixed unit of pure-Python
work (~1 ms) timed back to back for SECONDS in PROCS processes at once (one per core),
then its duration's percentiles, how often a unit took 2x / 5x its median, and the speed
in phases: per 250-ms window, whether most units ran slow (> 1.25x the fastest decile's
duration), drawn as one character a window ('#' mostly slow, '+' partly, '.' fast). With no
other load of ours, a core that runs slow for seconds at a time is the host's doing (a busy
sibling thread, other tenants), which no change in liverank can win back (docs/results.md,
session 28).

    python docs/measure/cpu_steadiness.py [SECONDS] [PROCS]
"""

from __future__ import annotations

import json
import multiprocessing
import sys
import time


def unit() -> int:
    total = 0
    for i in range(20_000):
        total += i * i % 7
    return total


def probe(seconds: float) -> list[tuple[float, float]]:
    """(seconds since the start, ms) of each unit."""
    rows = []
    t0 = time.perf_counter()
    end = t0 + seconds
    while (t := time.perf_counter()) < end:
        unit()
        rows.append((t - t0, (time.perf_counter() - t) * 1000))
    return rows


def phases(rows: list[tuple[float, float]], window_s: float = 0.25) -> str:
    fast = sorted(ms for _, ms in rows)[len(rows) // 10]  # the fastest decile's edge
    slow: dict[int, list[bool]] = {}
    for at, ms in rows:
        slow.setdefault(int(at // window_s), []).append(ms > 1.25 * fast)
    shares = [sum(v) / len(v) for _, v in sorted(slow.items())]
    return "".join("#" if s > 0.5 else "+" if s > 0.1 else "." for s in shares)


def summary(rows: list[tuple[float, float]]) -> dict[str, float | str]:
    ms = sorted(d for _, d in rows)
    n = len(ms)
    med = ms[n // 2]
    drawn = phases(rows)
    return {"units": n, "median_ms": round(med, 3),
            **{f"p{q}_ms": round(ms[min(n - 1, int(n * q / 100))], 3)
               for q in (90, 99, 99.9)},
            "max_ms": round(ms[-1], 2),
            "share_over_2x": round(sum(d > 2 * med for d in ms) / n, 5),
            "share_over_5x": round(sum(d > 5 * med for d in ms) / n, 5),
            "fast_decile_ms": round(ms[n // 10], 3),
            "windows_mostly_slow": round(drawn.count("#") / len(drawn), 3),
            "phases": drawn}


def main(seconds: float = 60.0, procs: int = 2) -> None:
    with multiprocessing.Pool(procs) as pool:
        runs = pool.map(probe, [seconds] * procs)
    for i, rows in enumerate(runs):
        print(json.dumps({"proc": i, **summary(rows)}))


if __name__ == "__main__":
    main(*(float(a) for a in sys.argv[1:2]), *(int(a) for a in sys.argv[2:3]))
