"""An experiment, never a setting: on ``PYTHONPATH`` with ``THREAD_RUN=1``, a worker runs
every model run in its scoring thread (`liverank.services.app.Service._rank` takes the
backlog's path always), where it runs a run on the loop when no batch waits; to measure
what the GIL hand-overs cost a paced worker now that no other Python thread is busy.
`thread_rank` is that `_rank` (`alternate_run` switches to it every other phase).

    REPEAT=2 python docs/measure/latency_ticks.py 1800 OUT '{}' \\
        '{"env": {"PYTHONPATH": "docs/measure/thread_run", "THREAD_RUN": "1"}}'
"""

import asyncio
import os

from liverank.model.scorer import BaseScorer
from liverank.services import app

rank = app.Service._rank


async def thread_rank(self, scorer, requests, k):  # type: ignore[no-untyped-def]
    if not isinstance(scorer, BaseScorer):
        return await rank(self, scorer, requests, k)
    job = scorer.scoring(requests, k)
    self.metrics.model_runs.labels("thread").inc()
    await asyncio.get_running_loop().run_in_executor(self._pool, job.forward)
    return job.ranked()


if os.environ.get("THREAD_RUN") == "1":
    app.Service._rank = thread_rank  # type: ignore[method-assign]
