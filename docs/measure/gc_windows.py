"""What one full collection costs with a worker's window cache (`Settings.window_cache`:
16,384 windows; 50 entries each here), by how the windows are held: lists of tracked
structs (before session 15), lists of untracked ones (``Entry`` with ``gc=False``), tuples
of untracked ones (what `UserWindows` caches now). Everything alive before is frozen, as
the worker freezes its start-up heap.

    python docs/measure/gc_windows.py
"""

from __future__ import annotations

import gc
import time
from collections import OrderedDict

import msgspec

from liverank.services.state import Entry


class Tracked(msgspec.Struct, frozen=True, array_like=True):
    streamer: str
    step: int
    seq: int
    event_id: str


def collections_ms(repeat: int = 5) -> list[float]:
    out = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        gc.collect(2)
        out.append(round((time.perf_counter() - t0) * 1000, 1))
    return out


def main(windows: int = 16_500, entries: int = 50) -> None:
    gc.collect()
    gc.freeze()
    print("nothing cached", collections_ms())
    kinds = {
        "lists of tracked entries": lambda: [Tracked(f"s{j}", j, j, f"w{j}")
                                             for j in range(entries)],
        "lists of untracked entries": lambda: [Entry(f"s{j}", j, j, f"w{j}")
                                               for j in range(entries)],
        "tuples of untracked entries": lambda: tuple(Entry(f"s{j}", j, j, f"w{j}")
                                                     for j in range(entries)),
    }
    for name, make in kinds.items():
        cache = OrderedDict((b"%d" % i, make()) for i in range(windows))
        print(name, collections_ms())
        del cache


if __name__ == "__main__":
    main()
