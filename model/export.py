"""Export a checkpoint to ``model.onnx`` + ``model.json`` for the torch-free scorer.

    liverank export --checkpoint out/models/liverank --out out/models/liverank-onnx

``model.onnx``: inputs as in `liverank.model.features` (int64; batch and candidate axes
dynamic, the window length fixed), output ``scores`` (B, C) float32. The TorchScript-based
exporter (``dynamo=False``) is used: it needs no extra package and keeps the dynamic axes.
After writing, the export is checked against torch on random batches that include
all-padding windows (max abs difference <= 1e-4, else it fails) and the figure is stored.

``model.json``: format, version, arch, config, window_len, time_encoding, items (item i is
``items[i-1]``; OOV is ``len(items)+1``), popularity (training rows per item), inputs
(name -> shape), output, metrics (validation + parity), training info, ``lineage`` (the
parent's checkpoint version -- ``training.checkpoint_version`` of the parent's model.json,
whose ``version`` it prefixes -- or null, the data period, the items a warm start added;
None for checkpoints older than lineage) and ``files`` (sha256 and size of ``model.onnx``),
which `OnnxScorer` verifies.
"""

from __future__ import annotations

import json
import logging
import pickle
import shutil
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .checkpoint import load_checkpoint
from .features import (
    INPUT_NAMES,
    OUTPUT_NAME,
    TimeEncoding,
    query_steps,
    repeat_features_positions,
    time_features,
)
from .sasrec import SeqRec
from .scorer import MODEL_FORMAT, sha256_file

logger = logging.getLogger(__name__)

PARITY_TOLERANCE = 1e-4
INPUT_SHAPES = {
    "items": ["batch", "window_len"], "watch_time": ["batch", "window_len", 2],
    "query_time": ["batch", "window_len", 2], "gaps": ["batch", "window_len", "window_len"],
    "cand_items": ["cand_rows", "candidates"], "cand_repeat": ["batch", "candidates", 2],
}  # cand_rows: the batch, or 1 when every request has the same candidates (broadcast)


class ExportError(ValueError):
    """The checkpoint cannot be loaded or ``out`` cannot be used; the message is one line."""


def random_inputs(model: SeqRec, enc: TimeEncoding, batch: int, candidates: int,
                  rng: np.random.Generator, empty_rows: int = 1) -> dict[str, np.ndarray]:
    """Plausible model inputs built with the serving feature code: windows of random length
    (the first ``empty_rows`` all padding), increasing steps, candidates that partly repeat
    the window, OOV ids included."""
    cfg = model.cfg
    length, top = cfg.window_len, cfg.n_items + 1  # top = the OOV id
    items = np.zeros((batch, length), dtype=np.int64)
    steps = np.zeros((batch, length), dtype=np.int64)
    for r in range(batch):
        n = 0 if r < empty_rows else int(rng.integers(1, length + 1))
        if n:
            items[r, length - n :] = rng.integers(1, top + 1, size=n)
            steps[r, length - n :] = np.cumsum(rng.integers(0, 300, size=n)) + 1000
    valid = items != 0
    request = steps[:, -1] + rng.integers(0, 200, size=batch)
    query = query_steps(steps, request)
    watch_time, query_time, gaps = time_features(steps, valid, query, enc)
    cand = rng.integers(1, top + 1, size=(batch, candidates))
    take = rng.random((batch, candidates)) < 0.3
    cand = np.where(take & valid[:, -1:], items[:, -1:], cand)
    rep = repeat_features_positions(items, steps, valid, query, cand[:, None, :], enc)[:, -1]
    return {"items": items, "watch_time": watch_time, "query_time": query_time, "gaps": gaps,
            "cand_items": cand, "cand_repeat": rep}


def _torch_scores(model: SeqRec, inputs: dict[str, np.ndarray]) -> np.ndarray:
    with torch.no_grad():
        return model(*(torch.from_numpy(inputs[k]) for k in INPUT_NAMES)).numpy()


def write_onnx(model: SeqRec, path: Path) -> None:
    model.eval()
    example = random_inputs(model, TimeEncoding(), batch=3, candidates=5,
                            rng=np.random.default_rng(0))
    axes: dict[str, dict[int, str]] = {n: {0: "batch"} for n in INPUT_NAMES}
    axes["cand_items"] = {0: "cand_rows", 1: "candidates"}  # or one row for all: broadcast
    axes["cand_repeat"] = {0: "batch", 1: "candidates"}
    axes[OUTPUT_NAME] = {0: "batch", 1: "candidates"}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
        torch.onnx.export(model, tuple(torch.from_numpy(example[k]) for k in INPUT_NAMES),
                          str(path), input_names=list(INPUT_NAMES),
                          output_names=[OUTPUT_NAME], dynamic_axes=axes, opset_version=17,
                          dynamo=False)


def parity(model: SeqRec, path: Path, rounds: int = 4, seed: int = 1) -> float:
    """Max abs difference torch vs onnxruntime over random batches (padding-only included)."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    rng = np.random.default_rng(seed)
    worst = 0.0
    for r in range(rounds):
        inputs = random_inputs(model, TimeEncoding(), batch=[1, 7, 32, 64][r % 4],
                               candidates=[3, 50, 300, 1000][r % 4], rng=rng,
                               empty_rows=1)
        # Each batch twice: a candidate row per request, and the first row given once for
        # all (the serving form when requests share their live streams: `shared_candidates`).
        first = inputs["cand_items"][:1]
        shared = {**inputs, "cand_items": first}
        repeated = {**inputs, "cand_items": np.repeat(first, len(inputs["items"]), axis=0)}
        for feed in (inputs, shared):
            want = _torch_scores(model, inputs if feed is inputs else repeated)
            (got,) = session.run([OUTPUT_NAME], {n: feed[n] for n in names})
            if not np.isfinite(got).all():
                raise FloatingPointError(f"{path}: onnxruntime produced non-finite scores")
            if got.shape != want.shape:
                raise ExportError(f"{path}: onnxruntime gave scores of shape {got.shape}, "
                                  f"torch {want.shape}")
            worst = max(worst, float(np.abs(got - want).max()))
    return worst


def export(checkpoint: str | Path, out: str | Path) -> dict[str, Any]:
    """Write ``model.onnx`` and ``model.json`` from a checkpoint; returns model.json's dict.

    Raises `ExportError` before touching ``out`` when the checkpoint cannot be loaded or
    ``out`` is not a directory; a folder this call created is removed if the export fails.
    """
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ExportError(f"{out}: exists and is not a directory")
    model, meta = _load(Path(checkpoint))
    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    done = False
    try:
        info = _write(model, meta, out)
        done = True
    finally:
        if created and not done:
            shutil.rmtree(out, ignore_errors=True)
    logger.info("exported checkpoint=%s out=%s version=%s parity=%.2e", checkpoint, out,
                info["version"], info["metrics"]["onnx_max_abs_diff"])
    return info


def _load(checkpoint: Path) -> tuple[SeqRec, dict[str, Any]]:
    """`load_checkpoint`, its failures (missing files, bad JSON, a wrong format, weights
    that do not fit the config) as one-line `ExportError`s naming the checkpoint."""
    if not checkpoint.is_dir():
        what = "no such directory" if not checkpoint.exists() else "not a directory"
        raise ExportError(f"{checkpoint}: {what} (expected a checkpoint from `liverank train`)")
    try:
        return load_checkpoint(checkpoint)
    except (OSError, ValueError, KeyError, TypeError, RuntimeError,
            pickle.UnpicklingError) as exc:
        lines = str(exc).strip().splitlines()
        reason = lines[0] if lines else type(exc).__name__
        if str(checkpoint) not in reason:
            reason = f"{checkpoint}: not a usable checkpoint ({type(exc).__name__}: {reason})"
        raise ExportError(reason) from exc


def _write(model: SeqRec, meta: dict[str, Any], out: Path) -> dict[str, Any]:
    onnx_path = out / "model.onnx"
    write_onnx(model, onnx_path)
    diff = parity(model, onnx_path)
    if diff > PARITY_TOLERANCE:
        raise RuntimeError(f"{onnx_path}: onnxruntime differs from torch by {diff:.2e} "
                           f"(> {PARITY_TOLERANCE})")
    digest = sha256_file(onnx_path)
    validation = meta.get("validation", {})
    info = {
        "format": MODEL_FORMAT,
        "version": f"{meta['version']}-{digest[:8]}",
        "arch": meta["model"]["arch"],
        "config": meta["model"],
        "window_len": meta["model"]["window_len"],
        "time_encoding": meta["time_encoding"],
        "items": meta["items"],
        "popularity": meta["popularity"],
        "inputs": {n: INPUT_SHAPES[n] for n in INPUT_NAMES},
        "output": OUTPUT_NAME,
        "metrics": {"validation": validation, "onnx_max_abs_diff": diff},
        "training": {"train": meta["train"], "data": meta["data"],
                     "history": meta.get("history", []), "checkpoint_version": meta["version"]},
        "lineage": meta.get("lineage"),
        "files": {"model.onnx": {"sha256": digest, "bytes": onnx_path.stat().st_size}},
    }
    (out / "model.json").write_text(json.dumps(info, indent=1), encoding="utf-8")
    return info
