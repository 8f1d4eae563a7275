"""A per-function CPU probe for a worker: on ``PYTHONPATH`` with ``FN_PROBE_OUT=PATH`` set,
the main thread's calls of the functions below are counted with their CPU time (the
thread's own: no wait for a core or the GIL), and every 2 s ``PATH.<pid>`` gets a
``# wall_ms`` line and, per function, ``name<TAB>calls<TAB>cpu_ms`` so far.

    python docs/measure/drain_variants.py OUT \\
        '{"env": {"PYTHONPATH": "docs/measure/fn_probe", "FN_PROBE_OUT": "OUT/fn.log"}}'
"""

from __future__ import annotations

import functools
import os
import threading
import time
from typing import Any


def _install(out: str) -> None:
    from liverank.model import features, scorer
    from liverank.services import app, state

    main = threading.main_thread().ident
    agg: dict[str, list[float]] = {}
    dumped = [0.0]

    def wrap(owner: Any, name: str) -> None:
        fn = getattr(owner, name)
        label = f"{getattr(owner, '__name__', owner)}.{name}"
        row = agg.setdefault(label, [0, 0.0])

        @functools.wraps(fn)
        def timed(*a: Any, **kw: Any) -> Any:
            if threading.get_ident() != main:
                return fn(*a, **kw)
            c0 = time.thread_time()
            try:
                return fn(*a, **kw)
            finally:
                row[0] += 1
                row[1] += (time.thread_time() - c0) * 1000
                now = time.perf_counter()
                if now - dumped[0] >= 2:
                    dumped[0] = now
                    with open(f"{out}.{os.getpid()}", "a") as f:
                        f.write(f"# {time.time() * 1000:.0f}\n")
                        f.writelines(f"{k}\t{n}\t{c:.1f}\n" for k, (n, c) in agg.items())

        setattr(owner, name, timed)
        for module in (features, scorer, state, app):  # names imported from elsewhere
            if getattr(module, name, None) is fn:
                setattr(module, name, timed)

    for owner, names in (
            (scorer.ModelScorer, ("scoring", "inputs")),
            (scorer.BaseScorer, ("_plan", "candidates")),
            (scorer.Scoring, ("forward", "ranked")),
            (scorer, ("candidate_set",)),
            (features, ("window_arrays", "time_features", "repeat_features_last",
                        "top_k_rows")),
            (state, ("build_answers", "ask", "plan_batch", "rank_inputs")),
            (state.UserWindows, ("flush",)),
            (app.Service, ("_answers_out", "_count_watches_not_live", "_decode_user")),
            (app._TableView, ("put_all",))):
        for name in names:
            wrap(owner, name)


if os.environ.get("FN_PROBE_OUT"):
    _install(os.environ["FN_PROBE_OUT"])
