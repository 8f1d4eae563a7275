"""The answer path without a broker: `bench service`'s latency slice, after its warm-up,
cut into micro-batches of a given size and answered as the worker answers them
(`plan_batch`, `ask`, `answer_asked` with the model run inline), one process, no Kafka.

    python docs/measure/answer_path.py EVENTS_PER_BATCH [MODEL_DIR]

Prints the answers, batches and the CPU-bound microseconds an answer spends in each part
(wall time of a single-threaded loop: nothing else runs). A batch is also cut at every
stream event (the worker's live index moves between batches). ``MODEL_DIR`` defaults to
``out/bench-work/random-model``; the data is ``out/data/twitch100k.csv``. Compare code or
models alternating in one session: figures move with the machine's load."""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path

import liverank.cli.bench_service as bs
from liverank.core import events as ev
from liverank.core.settings import Settings
from liverank.model.data.live import LiveStreams
from liverank.model.data.twitch import load_interactions
from liverank.model.scorer import load_scorer
from liverank.services.state import UserWindows, answer_asked, ask, plan_batch


async def answer_slice(size: int, model: str) -> str:
    base = Settings()
    ds = load_interactions(Path("out/data/twitch100k.csv"))
    lo = ds.max_step // 2 + 40  # the slice `bench service` paces
    part = bs._part(ds, lo, lo + 59, bs.WARM_STEPS, base)
    scorer = load_scorer(model, threads=1)
    live = LiveStreams(partitions=1, stopped_horizon=10**6)
    windows = UserWindows({}, scorer.window_len, base.window_slack)
    for e in part.warm:
        if isinstance(e, ev.Watch | ev.RecRequest):
            plan_batch([(ev.user_key(e.user), e, None)], windows)
        elif not isinstance(e, ev.End):
            live.apply(e, 0)
    spent = {"plan": 0.0, "ask": 0.0, "answer": 0.0}
    answers = batches = 0

    async def answer(batch: list[ev.UserEvent]) -> None:
        nonlocal answers, batches
        t0 = time.perf_counter()
        jobs = plan_batch([(ev.user_key(e.user), e, None) for e in batch], windows)
        t1 = time.perf_counter()
        asked = ask(jobs, live)
        t2 = time.perf_counter()
        recs = await answer_asked(asked, scorer, base.top_k, lambda: 0)
        t3 = time.perf_counter()
        spent["plan"] += t1 - t0
        spent["ask"] += t2 - t1
        spent["answer"] += t3 - t2
        answers += len(recs)
        batches += 1

    batch: list[ev.UserEvent] = []
    for e in part.measured:
        if isinstance(e, ev.Watch | ev.RecRequest):
            batch.append(e)
            if len(batch) >= size:
                await answer(batch)
                batch = []
        elif not isinstance(e, ev.End):
            if batch:
                await answer(batch)
                batch = []
            live.apply(e, 0)
    if batch:
        await answer(batch)
    us = {k: round(v / answers * 1e6) for k, v in spent.items()}
    return (f"events/batch {size}: {answers} answers in {batches} batches "
            f"({answers / batches:.1f} a batch); us an answer {us}, "
            f"total {sum(us.values())}; answer ms a batch "
            f"{spent['answer'] / batches * 1e3:.2f}")


if __name__ == "__main__":
    print(asyncio.run(answer_slice(int(sys.argv[1]), sys.argv[2] if len(sys.argv) > 2
                                   else "out/bench-work/random-model")))
