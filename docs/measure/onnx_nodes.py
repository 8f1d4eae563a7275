"""Where a model run's time goes: onnxruntime's per-node profile of one serving batch, for
one or more exported models, alternating.

    python docs/measure/onnx_nodes.py BATCH CANDIDATES MODEL_DIR [MODEL_DIR ...]

Each model scores the same inputs (``BATCH`` requests of random 16-entry windows sharing
one row of ``CANDIDATES`` random streamers, built by the model's own `OnnxScorer`, as the
service builds them); per model and round: the mean run time over 200 runs (one thread,
no profiling), then the 12 slowest nodes of 100 profiled runs (microseconds a run). Two
rounds, models alternating, so a busy spell of the machine hits each alike."""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

from liverank.model.scorer import OnnxScorer, RankRequest


def feed_of(scorer: OnnxScorer, batch: int, candidates: int) -> dict[str, np.ndarray]:
    names = scorer.index.names
    rng = np.random.default_rng(0)
    cands = tuple(names[i] for i in rng.choice(len(names), candidates, replace=False))
    requests = [RankRequest([(names[j], 3000 + t) for t, j in
                             enumerate(rng.choice(len(names), 16))], 3020, cands)
                for _ in range(batch)]
    inputs = scorer.inputs(requests, [scorer.candidates(cands)] * batch)
    return {n: inputs[n] for n in scorer._input_names}


def run_ms(session: ort.InferenceSession, feed: dict[str, np.ndarray], n: int = 200) -> float:
    for _ in range(20):
        session.run(None, feed)
    t0 = time.perf_counter()
    for _ in range(n):
        session.run(None, feed)
    return (time.perf_counter() - t0) / n * 1e3


def nodes_us(model_dir: str, feed: dict[str, np.ndarray], n: int = 100) -> dict[str, float]:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = opts.inter_op_num_threads = 1
    opts.enable_profiling = True
    with tempfile.TemporaryDirectory() as tmp:
        opts.profile_file_prefix = f"{tmp}/ort"
        session = ort.InferenceSession(f"{model_dir}/model.onnx", opts,
                                       providers=["CPUExecutionProvider"])
        for _ in range(n):
            session.run(None, feed)
        events = json.loads(Path(session.end_profiling()).read_text(encoding="utf-8"))
    per: dict[str, float] = {}
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            key = f"{e['args'].get('op_name')} {e['name'][: -len('_kernel_time')]}"
            per[key] = per.get(key, 0.0) + e["dur"] / n
    return per


def main(batch: int, candidates: int, models: list[str]) -> None:
    for rnd in range(2):
        for model_dir in models:
            scorer = OnnxScorer(model_dir, threads=1)
            feed = feed_of(scorer, batch, candidates)
            ms = run_ms(scorer.session, feed)
            per = nodes_us(model_dir, feed)
            top = sorted(per.items(), key=lambda kv: -kv[1])[:12]
            print(json.dumps({"round": rnd, "model": model_dir, "batch": batch,
                              "candidates": candidates, "shared": scorer.shared_candidates,
                              "run_ms": round(ms, 3),
                              "profiled_node_us": round(sum(per.values()), 1),
                              "slowest_us": {k: round(v, 1) for k, v in top}}), flush=True)


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3:])
