"""Scorer throughput: onnxruntime vs torch eager on the same requests, in the same run.

    liverank bench scorer --threads 2 --out out/bench_scorer.json

Each case (batch B, candidates C) times ``scorer.rank(batch, k=10)`` -- the whole serving
path: window and candidate features (numpy), the model, the tie-broken top-k -- and the
model call alone on prepared inputs. Requests in a batch share one live set, as requests
at the same step do in the service.
"""

from __future__ import annotations

import json
import logging
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import typer

from liverank.model.scorer import ModelScorer, OnnxScorer, RankRequest

logger = logging.getLogger(__name__)

BATCHES = (1, 32, 256)
CANDIDATES = (500, 3000)


def _random_checkpoint(directory: Path, items: int, names: tuple[str, ...] | None = None,
                       counts: np.ndarray | None = None, blocks: int = 2) -> Path:
    """A freshly initialised liverank model (``blocks`` attention blocks, d 64, L 16) saved as
    a checkpoint; ``names``/``counts`` give it a real item index (default: ``items`` made-up
    streamers)."""
    import torch

    from liverank.model.checkpoint import CHECKPOINT_FORMAT, save_checkpoint
    from liverank.model.features import ItemIndex, TimeEncoding
    from liverank.model.sasrec import ModelConfig, SeqRec

    torch.manual_seed(0)
    if names is None:
        names = tuple(f"s{i}" for i in range(items))
        counts = np.arange(items, 0, -1, dtype=np.int64)
    assert counts is not None
    cfg = ModelConfig(n_items=len(names), blocks=blocks)
    index = ItemIndex(names, np.asarray(counts, dtype=np.int64))
    meta = {"format": CHECKPOINT_FORMAT, "version": "bench-random", "model": cfg.to_json(),
            "train": {}, "time_encoding": TimeEncoding().to_json(),
            "items": list(index.names), "popularity": index.counts.tolist(), "data": {},
            "history": []}
    save_checkpoint(directory, SeqRec(cfg), meta)
    return directory


def export_random_model(names: tuple[str, ...], counts: np.ndarray, out: Path,
                        blocks: int = 2) -> Path:
    """A randomly initialised liverank model over ``names``, exported to ONNX at ``out``.

    For serving benchmarks: scoring cost depends on the model's shapes, not its training.
    Needs torch (the ``train`` extra); the service itself never does.
    """
    from liverank.model.export import export

    with tempfile.TemporaryDirectory() as tmp:
        export(_random_checkpoint(Path(tmp) / "ckpt", len(names), names, counts, blocks), out)
    return out


def _requests(names: list[str], batch: int, candidates: int, window_len: int,
              rng: np.random.Generator) -> list[RankRequest]:
    live = [names[i] for i in rng.choice(len(names), size=candidates, replace=False)]
    out = []
    for _ in range(batch):
        n = int(rng.integers(1, window_len + 1))
        picks = rng.choice(len(live), size=n)  # windows repeat live streamers sometimes
        window = [(live[i] if rng.random() < 0.5 else names[int(rng.integers(len(names)))],
                   1000 + 10 * j) for j, i in enumerate(picks)]
        out.append(RankRequest(window, 1000 + 10 * n + 5, live))
    return out


def _time(fn: Any, seconds: float) -> float:
    """Seconds per call: at least 3 calls and ``seconds`` of calls (after one warm-up)."""
    fn()
    calls, t0 = 0, time.perf_counter()
    while calls < 3 or time.perf_counter() - t0 < seconds:
        fn()
        calls += 1
    return (time.perf_counter() - t0) / calls


def bench_scorer(checkpoint: Path | None = None, items: int = 20000, threads: int = 2,
                 seconds: float = 1.0) -> dict[str, Any]:
    import torch

    from liverank.model.checkpoint import TorchScorer
    from liverank.model.export import export

    torch.set_num_threads(threads)
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = checkpoint or _random_checkpoint(Path(tmp) / "ckpt", items)
        export(ckpt, Path(tmp) / "onnx")
        engines: dict[str, ModelScorer] = {
            "onnxruntime": OnnxScorer(Path(tmp) / "onnx", threads=threads),
            "torch": TorchScorer.from_checkpoint(ckpt, threads=threads),
        }
    names = list(engines["torch"].index.names)
    rng = np.random.default_rng(0)
    cases = []
    for c in CANDIDATES:
        for b in BATCHES:
            requests = _requests(names, b, c, engines["torch"].window_len, rng)
            row: dict[str, Any] = {"batch": b, "candidates": c}
            for name, scorer in engines.items():
                sets = [scorer.candidates(r.candidates) for r in requests]
                inputs = scorer.inputs(requests, sets)
                full = _time(lambda s=scorer, r=requests: s.rank(r, 10), seconds)
                model = _time(lambda s=scorer, x=inputs: s._forward(x), seconds)
                row[name] = {"users_per_s": b / full, "model_users_per_s": b / model,
                             "ms_per_batch": full * 1e3}
            cases.append(row)
            logger.info("bench batch=%d candidates=%d onnx=%.0f torch=%.0f users/s", b, c,
                        row["onnxruntime"]["users_per_s"], row["torch"]["users_per_s"])
    return {"threads": threads, "checkpoint": str(checkpoint or "random"),
            "window_len": engines["torch"].window_len, "items": len(names), "cases": cases}


def table(result: dict[str, Any]) -> str:
    lines = ["| batch | candidates | onnxruntime users/s | torch users/s | onnx model-only "
             "users/s | torch model-only users/s |", "|---|---|---|---|---|---|"]
    for r in result["cases"]:
        o, t = r["onnxruntime"], r["torch"]
        lines.append(f"| {r['batch']} | {r['candidates']} | {o['users_per_s']:.0f} | "
                     f"{t['users_per_s']:.0f} | {o['model_users_per_s']:.0f} | "
                     f"{t['model_users_per_s']:.0f} |")
    return "\n".join(lines)


def bench_scorer_command(
    checkpoint: Path | None = typer.Option(None, "--checkpoint",
                                           help="Checkpoint to time (default: a random "
                                                "SASRec-sized liverank model)."),
    items: int = typer.Option(20000, "--items", help="Vocabulary of the random model."),
    threads: int = typer.Option(2, "--threads", help="Threads for onnxruntime and torch."),
    seconds: float = typer.Option(1.0, "--seconds", help="Time per case and engine."),
    out: Path = typer.Option(Path("out/bench_scorer.json"), "--out", help="Result JSON."),
) -> None:
    """Users/s at batch 1, 32, 256 with 500 and 3,000 candidates: the full `rank` path
    (features + model + top-k) with onnxruntime vs torch eager, in the same run."""
    result = bench_scorer(checkpoint, items=items, threads=threads, seconds=seconds)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2), encoding="utf-8")
    typer.echo(table(result))
    typer.echo(f"wrote {out}")
