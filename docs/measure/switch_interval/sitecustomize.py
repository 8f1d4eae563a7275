"""An experiment: on ``PYTHONPATH`` with ``SWITCH_INTERVAL_S=0.001``, a worker's GIL switch
interval (`sys.setswitchinterval`, 5 ms by default) is that; with ``THREAD_RUN=1`` too, every
model run goes to the scoring thread as in [`thread_run`](../thread_run/sitecustomize.py)
(one ``sitecustomize`` is imported per process, so this one runs that one's file).

Why: a thread waiting for the GIL behind a busy thread waits up to the switch interval
(docs/service.md, "Scoring off the GIL": the model's run in a thread next to a busy
thread kept 0.55 of its rate at 5 ms, 0.86 at 1 ms).

    REPEAT=2 python docs/measure/pinned_half.py OUT '{}' \\
        '{"env": {"PYTHONPATH": "docs/measure/switch_interval", "SWITCH_INTERVAL_S": "0.001"}}'
"""

import os
import runpy
import sys

if "SWITCH_INTERVAL_S" in os.environ:
    sys.setswitchinterval(float(os.environ["SWITCH_INTERVAL_S"]))
if os.environ.get("THREAD_RUN") == "1":
    runpy.run_path(os.path.join(os.path.dirname(__file__), "..", "thread_run",
                                "sitecustomize.py"))
