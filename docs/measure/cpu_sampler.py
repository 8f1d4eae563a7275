"""Per-second CPU of the broker, the bench workers (per thread) and the bench driver
(docs/results.md, session 10: the broker's share during a paced run).

    .venv/bin/python docs/measure/cpu_sampler.py out/cpu.jsonl &   # then run a benchmark

Every second, one JSON line: the time, and for each thread that used CPU since the last
line, ``kind|pid|thread-name:tid`` -> percent of one core. Kinds: ``tansu``, ``worker``
(a ``serve`` process), ``driver`` (``liverank bench`` or a script under docs/measure).
A worker's main thread (the event loop) is the one whose tid is its pid. Each thread's
time spent runnable but waiting for a core (``/proc/PID/task/TID/schedstat``, second field)
comes as ``wait|kind|pid|thread-name:tid`` -> percent of the second (docs/results.md,
session 16: the event loop's thread waited 16% of a paced run, 30% of a small-batch drain).
"""

import json
import os
import sys
import time

from liverank.cli.bench_soak import parse_cpu_ticks

HZ = os.sysconf("SC_CLK_TCK")
DRIVERS = ("liverank bench", "docs/measure/")


def kinds() -> dict[str, str]:
    found = {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmd = f.read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if "tansu" in cmd:
            found[pid] = "tansu"
        elif "serve" in cmd and "python" in cmd:
            found[pid] = "worker"
        elif any(d in cmd for d in DRIVERS):
            found[pid] = "driver"
    return found


def thread_ticks(pid: str) -> dict[str, int]:
    out = {}
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{tid}/stat") as f:
                stat = f.read()
            ticks = parse_cpu_ticks(stat)  # a thread's stat reads like a process's
            if ticks is not None:
                out[f"{stat[stat.index('(') + 1 : stat.rindex(')')]}:{tid}"] = ticks
    except OSError:
        pass  # the process ended
    return out


def thread_waits(pid: str) -> dict[str, int]:
    """Nanoseconds each thread has waited on a run queue (schedstat's second field)."""
    out = {}
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                waited = int(f.read().split()[1])
            with open(f"/proc/{pid}/task/{tid}/comm") as f:
                out[f"{f.read().strip()}:{tid}"] = waited
    except (OSError, IndexError, ValueError):
        pass  # the process ended, or a kernel without schedstat
    return out


def main() -> None:
    previous: dict[str, int] = {}
    with open(sys.argv[1], "w") as out:
        while True:
            found = kinds().items()
            now = {f"{kind}|{pid}|{thread}": ticks for pid, kind in found
                   for thread, ticks in thread_ticks(pid).items()}
            waits = {f"wait|{kind}|{pid}|{thread}": ns for pid, kind in found
                     for thread, ns in thread_waits(pid).items()}
            line: dict[str, float] = {"t": time.time()}
            for key, ticks in now.items():
                if ticks > previous.get(key, ticks):
                    line[key] = (ticks - previous[key]) * 100 / HZ
            for key, ns in waits.items():
                if ns > previous.get(key, ns):
                    line[key] = (ns - previous[key]) / 1e7  # percent of the ~1-s interval
            previous = {**now, **waits}
            out.write(json.dumps(line) + "\n")
            out.flush()
            time.sleep(1)


if __name__ == "__main__":
    main()
