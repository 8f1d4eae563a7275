"""An experiment, never a setting: on ``PYTHONPATH`` with ``CHEAP_ANSWER=1``, a worker ranks
nothing: `Service._rank` answers every request with its first k candidates (no model
inputs, no model run, no top k), so a latency run shows what the rest of the worker does
to the tail, the bound on what taking the ranking off the event loop could give.

    python docs/measure/latency_ticks.py 1800 OUT '{}' \\
        '{"env": {"PYTHONPATH": "docs/measure/cheap_answer", "CHEAP_ANSWER": "1"}}'
"""

import os

if os.environ.get("CHEAP_ANSWER") == "1":
    from liverank.model.scorer import Ranked
    from liverank.services import app

    async def _rank(self, scorer, requests, k):  # type: ignore[no-untyped-def]
        return [Ranked(list(r.candidates[:k]), [0.0] * min(k, len(r.candidates)), False)
                for r in requests]

    app.Service._rank = _rank  # type: ignore[method-assign]
