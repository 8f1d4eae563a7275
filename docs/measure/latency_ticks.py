"""Latency runs of `liverank bench service`'s latency slice, answers grouped by paced tick.

    python docs/measure/latency_ticks.py RATE OUT '{"flush_ticks": false}' '{}' ...
    REPEAT=2 python docs/measure/latency_ticks.py 2000 out/ticks '{}' \
        '{"env": {"LIVERANK_USER_READER": "librdkafka"}}'

Each JSON argument is one variant: ``env`` goes to the worker's environment, ``model`` a
model directory of its own (``MODEL`` by default; with ``"fake": true`` a fake model's
directory, served by the fake scorer's worker as `bench service`'s (a)), ``flush_ticks``
and ``spread_ticks`` set `EvenRateSink`'s attributes of those names in the replay,
``tick_s`` the paced tick (`liverank.broker.tansu.PACED_TICK_S`), ``rate_block`` the
entries the replay encodes at a time (`liverank.replay.producer.RATE_BLOCK_EVENTS`), ``pin``
(``[worker_cpus, other_cpus]``) the worker's threads to ``worker_cpus`` and the driver's
and the broker's to ``other_cpus`` for that run (`worker_env.pinned`), ``nice``
(``{"worker": n, "driver": n, "broker": n}``) their nice values (`worker_env.niced`).
Variants alternate (REPEAT rounds) on one embedded broker, after a warm-up of the same
slice, on ``out/data/twitch100k.csv`` with the random model `bench service` leaves in its
work folder (``out/bench-work/random-model`` after `liverank bench service --out
out/bench.json`; ``MODEL`` overrides). Per run: p50/p99 as `bench service` computes
them, then per tick (answers whose produce times lie within 3 ms of each other: the paced
sink stamps a tick's messages, or a partition's share of a spread tick, together) the first
and last answer's latency and the micro-batches that answered it (distinct publish times: a
batch is stamped once). Writes ``OUT/answers-<round>-<variant>.npy`` (produced_ms,
published_ms, step) and the worker's /metrics text next to it.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
from worker_env import latency_slice, niced, pinned, rounds, worker_env

import liverank.cli.bench_service as bs
import liverank.replay.producer as rp
from liverank.broker import tansu
from liverank.replay.producer import EvenRateSink


def ticks(path: Path, warm_ms: int = 2_000) -> dict[str, Any]:
    a = np.load(path)
    a = a[np.argsort(a[:, 0])]
    a = a[a[:, 0] >= a[0, 0] + warm_ms]
    lat = a[:, 1] - a[:, 0]
    groups = np.split(np.arange(len(a)), np.flatnonzero(np.diff(a[:, 0]) > 3) + 1)
    first = np.array([lat[g].min() for g in groups])
    last = np.array([lat[g].max() for g in groups])
    batches = np.array([len(np.unique(a[g, 1])) for g in groups])
    gaps = np.concatenate([np.diff(np.unique(a[g, 1])) for g in groups])
    tail = np.percentile(lat, 99)
    in_tail = [i for i, g in enumerate(groups) if lat[g].max() > tail]
    pct = lambda v: [float(np.percentile(v, q)) for q in (10, 50, 90)]  # noqa: E731
    steps = {}
    if a.shape[1] > 2:  # the answers' steps: a tick whose requests reach a step no earlier
        # tick did may wait for that step's stream watermark (`Service._wait_watermark`)
        seen, new = -1, np.zeros(len(groups), dtype=bool)
        for i, g in enumerate(groups):
            top = int(a[g, 2].max())
            new[i], seen = top > seen, max(seen, top)
        none = [np.zeros(0, dtype=np.intp)]
        in_new = np.concatenate([g for i, g in enumerate(groups) if new[i]] or none)
        rest = np.concatenate([g for i, g in enumerate(groups) if not new[i]] or none)
        steps = {"new_step_ticks": int(new.sum()),
                 "new_step_p50_p99": [float(np.percentile(lat[in_new], q)) for q in (50, 99)],
                 "other_p50_p99": [float(np.percentile(lat[rest], q)) for q in (50, 99)],
                 "share_of_tail_in_new_step_ticks": float(np.mean(
                     np.isin(np.flatnonzero(lat > tail), in_new)))}
    return {**steps, "answers": len(a), "p50": float(np.percentile(lat, 50)), "p99": float(tail),
            "ticks": len(groups), "most_requests_in_a_tick": max(len(g) for g in groups),
            "first_p10_50_90": pct(first), "last_p10_50_90": pct(last),
            "split_ticks": int(np.count_nonzero(batches > 1)),
            "gap_between_batches_p10_50_90": pct(gaps) if len(gaps) else None,
            "ticks_above_p99": len(in_tail),
            "of_them_split": int(np.count_nonzero(batches[in_tail] > 1))}


def main(rate: float, out: Path, variants: list[dict[str, Any]]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    env = worker_env()
    tag = [""]
    stop, answers, init = bs._BenchWorker.stop, bs._answers, bs._BenchWorker.__init__
    fake = [False]

    def init_fake_or_not(self: Any, *a: Any, **kw: Any) -> None:
        init(self, *a, **{**kw, "fake": fake[0]})

    def stop_saving_metrics(self: Any, *a: Any, **kw: Any) -> Any:
        text = self._metrics_text()
        if text:
            (out / f"metrics-{tag[0]}.txt").write_text(text)
        return stop(self, *a, **kw)

    def answers_saved(settings: Any) -> Any:
        recs = answers(settings)
        rows = [(r.produced_ms, r.published_ms, r.step) for r in recs
                if r.produced_ms is not None]
        np.save(out / f"answers-{tag[0]}.npy", np.array(rows, dtype=np.int64))
        return recs

    bs._BenchWorker.stop, bs._answers = stop_saving_metrics, answers_saved
    bs._BenchWorker.__init__ = init_fake_or_not  # type: ignore[method-assign]
    tick_s, rate_block = tansu.PACED_TICK_S, rp.RATE_BLOCK_EVENTS
    with latency_slice(out) as (base, part, model, work):
        for rnd, i, variant in rounds(env, variants):
            EvenRateSink.flush_ticks = variant.get("flush_ticks", True)
            EvenRateSink.spread_ticks = variant.get("spread_ticks", True)
            tansu.PACED_TICK_S = variant.get("tick_s", tick_s)
            rp.RATE_BLOCK_EVENTS = variant.get("rate_block", rate_block)
            tag[0] = f"{rnd}-{i}"
            fake[0] = bool(variant.get("fake", False))
            with pinned(variant.get("pin")), niced(variant.get("nice")):
                bs._latency(base, part, Path(variant.get("model", model)), work, rate=rate)
            print(json.dumps({"round": rnd, "variant": variant,
                              **ticks(out / f"answers-{tag[0]}.npy")}), flush=True)


if __name__ == "__main__":
    main(float(sys.argv[1]), Path(sys.argv[2]), [json.loads(v) for v in sys.argv[3:]] or [{}])
