"""`repeat_features_last` and `top_k_rows` of the working tree against another revision's
`liverank.model.features`, alternating, on one serving batch's shapes.

    python docs/measure/features_ab.py REV [BATCH CANDIDATES] [MODEL_DIR]

A batch of ``BATCH`` (default 21) requests with 40-entry windows, half their names among
the ``CANDIDATES`` (default 1,310) live streamers of one shared set, over the model's item
index (``MODEL_DIR``, default ``out/bench-work/random-model``). Prints microseconds a call,
two rounds, and checks that both revisions give the same arrays."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from liverank.model import features as new
from liverank.model.scorer import load_scorer


def load_rev(rev: str, folder: str) -> Any:
    source = subprocess.run(["git", "show", f"{rev}:model/features.py"], check=True,
                            capture_output=True, text=True).stdout
    path = Path(folder) / "features_old.py"
    path.write_text(source, encoding="utf-8")
    spec = importlib.util.spec_from_file_location("features_old", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["features_old"] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def per_call_us(fn: Callable[[], Any], n: int = 2000) -> float:
    fn()
    t0 = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - t0) / n * 1e6


def main(rev: str, batch: int, candidates: int, model: str) -> None:
    scorer = load_scorer(model)
    names = scorer.index.names
    rng = np.random.default_rng(0)
    live = tuple(names[i] for i in rng.choice(len(names), candidates, replace=False))
    cset = scorer.candidates(live)
    windows = [[(names[j] if rng.random() < 0.5 else live[j % candidates], 3000 + t)
                for t, j in enumerate(rng.choice(len(names), 40))] for _ in range(batch)]
    steps = [3050] * batch
    scores = rng.standard_normal((batch, candidates)).astype(np.float32)
    with tempfile.TemporaryDirectory() as tmp:
        old = load_rev(rev, tmp)
        for mod in (old, new):
            a = mod.repeat_features_last(windows, scorer.window_len, steps, [cset] * batch,
                                         candidates, scorer.time)
            b = mod.top_k_rows(scores, 10)
            if mod is old:
                want = (a, b)
        assert all(np.array_equal(x, y) for x, y in zip(want, (a, b), strict=True))
        for rnd in range(2):
            for label, mod in ((rev, old), ("working tree", new)):
                rep = per_call_us(lambda m=mod: m.repeat_features_last(
                    windows, scorer.window_len, steps, [cset] * batch, candidates,
                    scorer.time))
                top = per_call_us(lambda m=mod: m.top_k_rows(scores, 10))
                print(f"round {rnd} {label}: repeat_features_last {rep:.0f} us, "
                      f"top_k_rows {top:.0f} us ({batch} x {candidates})", flush=True)


if __name__ == "__main__":
    args = sys.argv[1:]
    main(args[0], int(args[1]) if len(args) > 1 else 21,
         int(args[2]) if len(args) > 2 else 1310,
         args[3] if len(args) > 3 else "out/bench-work/random-model")
