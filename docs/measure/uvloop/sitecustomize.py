"""An experiment: on ``PYTHONPATH`` with ``UVLOOP=1``, a worker runs on uvloop's event loop
(`mode.loop.use`, what ``faust -L uvloop`` does) instead of asyncio's own. uvloop is not a
dependency of liverank (docs/results.md, session 20): ``.venv/bin/pip install uvloop`` first.

    REPEAT=2 python docs/measure/latency_ticks.py 1800 OUT '{}' \\
        '{"env": {"PYTHONPATH": "docs/measure/uvloop", "UVLOOP": "1"}}'
"""

import os

if os.environ.get("UVLOOP") == "1":
    import mode.loop

    mode.loop.use("uvloop")
