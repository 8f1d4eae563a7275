"""One model run with a candidate row per request against one row for the whole batch.

    python docs/measure/onnx_shared.py MODEL_DIR

MODEL_DIR is an exported model (``model.onnx``), e.g. the random model `liverank bench
service` writes under its work folder. Prints, per batch shape, whether the two forms give
bitwise equal scores and each one's mean run time (onnxruntime, one thread)."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort


def main(model_dir: str) -> None:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    session = ort.InferenceSession(f"{model_dir}/model.onnx", opts,
                                   providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    cfg = json.loads(Path(model_dir, "model.json").read_text(encoding="utf-8"))["config"]
    top = int(cfg["n_items"])  # ids over the whole table: the gather's memory traffic
    length = int(cfg["window_len"])
    rng = np.random.default_rng(0)
    for batch, cands in [(42, 1310), (128, 1310), (256, 2000), (1, 1310)]:
        feed = {"items": rng.integers(1, top, (batch, length)),
                "watch_time": rng.integers(0, 7, (batch, length, 2)),
                "query_time": rng.integers(0, 7, (batch, length, 2)),
                "gaps": rng.integers(0, 15, (batch, length, length)),
                "cand_items": np.tile(rng.integers(1, top, (1, cands)), (batch, 1)),
                "cand_repeat": rng.integers(0, 3, (batch, cands, 2))}
        rows = {n: feed[n].astype(np.int64) for n in names}
        one = {**rows, "cand_items": rows["cand_items"][:1]}
        same = np.array_equal(session.run(None, rows)[0], session.run(None, one)[0])
        times = []
        for form in (rows, one):
            for _ in range(3):
                session.run(None, form)
            t0 = time.perf_counter()
            for _ in range(20):
                session.run(None, form)
            times.append((time.perf_counter() - t0) / 20 * 1000)
        print(f"{batch} x {cands}: bitwise equal {same}; a row per request {times[0]:.2f} ms, "
              f"one row {times[1]:.2f} ms")


if __name__ == "__main__":
    main(sys.argv[1])
