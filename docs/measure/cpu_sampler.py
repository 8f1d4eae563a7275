"""Per-second CPU of the broker, the bench workers (per thread) and the bench driver
(docs/results.md, session 10: the broker's share during a paced run).

    .venv/bin/python docs/measure/cpu_sampler.py out/cpu.jsonl &   # then run a benchmark

Every second, one JSON line: the time, and for each thread that used CPU since the last
line, ``kind|pid|thread-name:tid`` -> percent of one core. Kinds: ``tansu``, ``worker``
(a ``serve`` process), ``driver`` (``liverank bench`` or a script under docs/measure).
A worker's main thread (the event loop) is the one whose tid is its pid.
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


def main() -> None:
    previous: dict[str, int] = {}
    with open(sys.argv[1], "w") as out:
        while True:
            now = {f"{kind}|{pid}|{thread}": ticks
                   for pid, kind in kinds().items()
                   for thread, ticks in thread_ticks(pid).items()}
            line: dict[str, float] = {"t": time.time()}
            for key, ticks in now.items():
                if ticks > previous.get(key, ticks):
                    line[key] = (ticks - previous[key]) * 100 / HZ
            previous = now
            out.write(json.dumps(line) + "\n")
            out.flush()
            time.sleep(1)


if __name__ == "__main__":
    main()
