"""One model run in one process with 1 and with 2 onnxruntime intra-op threads, alternating.

    python docs/measure/ort_threads.py [MODEL_DIR]

``MODEL_DIR`` defaults to ``out/bench-work/random-model`` (`liverank bench service`'s work
folder). Batches of 24, 64 and 128 requests over one set of 1,310 random live streamers
(`liverank bench scorer`'s requests: windows of 1 to L entries, half of them live), as
`OnnxScorer.scoring` builds them; per thread count and round the mean wall ms of 30 runs of
`Scoring.forward` (docs/results.md, session 26).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np

from liverank.cli.bench_scorer import _requests
from liverank.model.scorer import load_scorer


def main(model_dir: Path) -> None:
    items = json.loads((model_dir / "model.json").read_text())["items"]
    rng = np.random.default_rng(0)
    scorers = {t: load_scorer(model_dir, threads=t) for t in (1, 2)}
    for batch in (24, 64, 128):
        requests = _requests(items, batch, 1310, scorers[1].window_len, rng)
        ms: dict[int, list[float]] = {1: [], 2: []}
        for _ in range(3):
            for threads, scorer in scorers.items():
                job = scorer.scoring(requests, 10)
                t0 = time.perf_counter()
                for _ in range(30):
                    job.forward()
                ms[threads].append(round((time.perf_counter() - t0) / 30 * 1000, 2))
        for threads, runs in ms.items():
            print(f"{batch} requests, {threads} thread(s): {runs} ms a run")


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "out/bench-work/random-model"))
