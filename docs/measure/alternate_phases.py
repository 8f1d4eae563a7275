"""Per policy, the phases of `alternate_run`: the loop's CPU per answer and the latency.

    python docs/measure/alternate_phases.py OUT [PERIOD_S]

Reads ``OUT/phases.*`` (`alternate_run`'s log) and ``OUT/answers-*.npy``
(`latency_ticks.py`; the first 2 s of each run left out as `bench service` does). A phase's
answers are those published in it; its loop and process CPU run from its first model run
to the next phase's. Prints each phase, then per policy the answers' pooled p50 / p99, the
median loop and process CPU per answer, and over pairs of neighbouring phases (one of each
policy, the same spell of the machine more often than not) the median ratio variant / as-is
of the loop's CPU per answer and of the phase's p99.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np


def main(out: Path, period: float = 2.0) -> None:
    marks: dict[int, tuple[str, float, float]] = {}
    nxt: dict[int, tuple[float, float]] = {}
    for path in out.glob("phases.*"):
        rows = [line.split() for line in path.read_text().splitlines() if line.strip()]
        for (ph, pol, loop, proc), after in zip(rows, rows[1:] + [None], strict=True):
            if after is not None and int(after[0]) == int(ph) + 1:
                marks[int(ph)] = (pol, float(loop), float(proc))
                nxt[int(ph)] = (float(after[2]), float(after[3]))
    lat_by: dict[int, np.ndarray] = {}
    for path in sorted(out.glob("answers-*.npy")):
        a = np.load(path)
        a = a[a[:, 0] >= a[:, 0].min() + 2_000]
        phase = (a[:, 1] // int(period * 1000)).astype(np.int64)
        for ph in np.unique(phase):
            lat_by[int(ph)] = (a[phase == ph, 1] - a[phase == ph, 0]).astype(float)
    table = []
    for ph in sorted(set(marks) & set(lat_by)):
        pol, loop, proc = marks[ph]
        lat = lat_by[ph]
        if len(lat) < 0.5 * np.median([len(v) for v in lat_by.values()]):
            continue  # a phase cut by the run's start or end
        loop_us = (nxt[ph][0] - loop) * 1e6 / len(lat)
        proc_us = (nxt[ph][1] - proc) * 1e6 / len(lat)
        table.append((ph, pol, len(lat), loop_us, proc_us, np.percentile(lat, 50),
                      np.percentile(lat, 99)))
        print(f"{ph} {pol:6s} answers {len(lat):5d} loop {loop_us:4.0f} us/answer "
              f"process {proc_us:4.0f}  p50 {table[-1][5]:4.0f} p99 {table[-1][6]:4.0f} ms")
    for pol in ["as-is", *sorted({r[1] for r in table} - {"as-is"})]:
        rows = [r for r in table if r[1] == pol]
        if not rows:
            continue
        lat = np.concatenate([lat_by[r[0]] for r in rows])
        print(f"{pol}: {len(rows)} phases, p50 {np.percentile(lat, 50):.0f} / p99 "
              f"{np.percentile(lat, 99):.0f} ms, loop {np.median([r[3] for r in rows]):.0f} "
              f"us/answer, process {np.median([r[4] for r in rows]):.0f}")
    by_ph = {r[0]: r for r in table}
    pairs = [(by_ph[p], by_ph[p + 1]) for p in by_ph if p + 1 in by_ph]
    pairs = [(a, b) if a[1] == "as-is" else (b, a) for a, b in pairs]
    if pairs:
        loop = np.median([t[3] / a[3] for a, t in pairs])
        p99 = np.median([t[6] / a[6] for a, t in pairs])
        print(f"{len(pairs)} neighbouring pairs: variant / as-is loop CPU an answer {loop:.2f}, "
              f"p99 {p99:.2f} (median ratios)")


if __name__ == "__main__":
    main(Path(sys.argv[1]), *(float(v) for v in sys.argv[2:3]))
