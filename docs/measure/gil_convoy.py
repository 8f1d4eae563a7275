"""Does a scoring thread keep up next to a busy event loop? (docs/service.md, "Scoring off
the GIL")

    .venv/bin/python docs/measure/gil_convoy.py MODEL_DIR

Ranks batches of 128 requests (16-watch windows, 1,300 live candidates, as in the
`bench service` slice) with the exported model in ``MODEL_DIR``, in a thread, for 3 s:
alone, and next to a main thread that runs plain Python the whole time (a busy event loop).
Once with the whole `Scorer.rank` in the thread (inputs, model run, top k), once with only
the model's run (`Scoring.forward`); then both with a 1-ms GIL switch interval.
"""

import random
import sys
import threading
import time
from collections.abc import Callable

from liverank.model.scorer import OnnxScorer, RankRequest

SECONDS = 3.0


def busy(seconds: float = SECONDS) -> float:
    """Plain Python for ``seconds``: thousands of loop turns per second."""
    end = time.perf_counter() + seconds
    n = 0
    while time.perf_counter() < end:
        for _ in range(1000):
            pass
        n += 1
    return n / seconds


def calls_per_s(work: Callable[[], object], next_to_busy: bool) -> float:
    stop, done = threading.Event(), []

    def loop() -> None:
        n = 0
        while not stop.is_set():
            work()
            n += 1
        done.append(n)

    thread = threading.Thread(target=loop)
    thread.start()
    if next_to_busy:
        busy()
    else:
        time.sleep(SECONDS)
    stop.set()
    thread.join()
    return done[0] / SECONDS


def main(model_dir: str) -> None:
    scorer = OnnxScorer(model_dir, threads=1)
    names = list(scorer.index.names)
    rng = random.Random(0)
    live = rng.sample(names, 1300)
    requests = [RankRequest([(rng.choice(names), 100 - j) for j in range(16)][::-1], 101, live)
                for _ in range(128)]
    model_run = scorer.scoring(requests, 10).forward  # inputs built once; runs the model

    def whole() -> object:
        return scorer.rank(requests, 10)

    for interval in (0.005, 0.001):
        sys.setswitchinterval(interval)
        for name, work in (("whole rank in the thread", whole),
                           ("only the model's run in the thread", model_run)):
            alone = calls_per_s(work, next_to_busy=False)
            beside = calls_per_s(work, next_to_busy=True)
            print(f"switch interval {interval * 1000:.0f} ms, {name}: {alone:.1f} calls/s "
                  f"alone, {beside:.1f} next to a busy thread ({beside / alone:.2f})")


if __name__ == "__main__":
    main(sys.argv[1])
