"""Training checkpoints and scoring with torch: the torch side of a trained model.

A checkpoint directory holds ``weights.pt`` and ``checkpoint.json`` (config, item index,
time encoding, version, lineage). `grow_items` adds streamers to a trained model's
vocabulary without changing what it answers for the known ones (warm starts). `TorchScorer`
runs the torch model through the same request path as the torch-free `OnnxScorer`
(validation during training, checkpoints in ``evaluate``, the scorer benchmark). Imported
by train, export and evaluate; imports none of them.
"""

from __future__ import annotations

import json
import pickle
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .features import ItemIndex, TimeEncoding
from .sasrec import ModelConfig, SeqRec
from .scorer import ModelScorer

CHECKPOINT_FORMAT = "liverank-checkpoint/1"


# -- checkpoints -------------------------------------------------------------------------


def save_checkpoint(out: Path, model: SeqRec, meta: dict[str, Any]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), out / "weights.pt")
    (out / "checkpoint.json").write_text(json.dumps(meta, indent=1), encoding="utf-8")


def load_checkpoint(path: str | Path) -> tuple[SeqRec, dict[str, Any]]:
    path = Path(path)
    meta_path, weights = path / "checkpoint.json", path / "weights.pt"
    for p in (meta_path, weights):
        if not p.exists():
            raise FileNotFoundError(f"{path}: not a training checkpoint ({p.name} missing)")
    meta = json.loads(meta_path.read_text(encoding="utf-8"))
    if meta.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{meta_path}: format {meta.get('format')!r}, "
                         f"expected {CHECKPOINT_FORMAT!r}")
    model = SeqRec(ModelConfig.from_json(meta["model"]))
    model.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    model.eval()
    return model, meta


def read_checkpoint_meta(path: str | Path) -> dict[str, Any]:
    """``checkpoint.json`` of a checkpoint directory (weights not loaded)."""
    meta_path = Path(path) / "checkpoint.json"
    if not meta_path.exists():
        raise FileNotFoundError(f"{path}: not a training checkpoint (checkpoint.json missing)")
    meta: dict[str, Any] = json.loads(meta_path.read_text(encoding="utf-8"))
    if meta.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{meta_path}: format {meta.get('format')!r}, "
                         f"expected {CHECKPOINT_FORMAT!r}")
    return meta


# -- vocabulary growth -------------------------------------------------------------------

GROW_INITS = ("oov", "mean")


def grow_items(model: SeqRec, n_new: int, init: str = "oov") -> SeqRec:
    """A copy of ``model`` whose vocabulary has ``n_new`` more items.

    Items ``1..n`` keep their rows, so every known streamer scores exactly as before; the
    new items take ids ``n+1..n+n_new`` and the OOV id moves to the end (``n+n_new+1``) with
    its row. A new item's row (in every item table: the embedding, and MF's context table)
    starts as ``init``:

    * ``"oov"``: a copy of the OOV row. Until training moves it, a new streamer scores
      exactly as it did while the model did not know it (as a candidate and in a window),
      so growth alone changes no answer;
    * ``"mean"``: the mean of the known items' rows (a typical streamer; the OOV row when
      there are none).
    """
    if init not in GROW_INITS:
        raise ValueError(f"unknown init {init!r}: use one of {GROW_INITS}")
    if n_new < 0:
        raise ValueError(f"cannot shrink the vocabulary (n_new={n_new})")
    n = model.cfg.n_items
    grown = SeqRec(replace(model.cfg, n_items=n + n_new))
    state = model.state_dict()
    for name in ("item_emb.weight", "ctx_emb.weight"):
        if name not in state:
            continue
        old = state[name]  # (n + 2, D): padding, items 1..n, OOV
        fill = old[n + 1] if init == "oov" or n == 0 else old[1 : n + 1].mean(0)
        state[name] = torch.cat([old[: n + 1], fill.expand(n_new, -1).clone(), old[n + 1 :]])
    grown.load_state_dict(state)
    grown.train(model.training)
    return grown


@dataclass(frozen=True)
class WarmStart:
    """A trained checkpoint to continue from."""

    path: Path
    model: SeqRec
    index: ItemIndex
    enc: TimeEncoding
    version: str


def load_warm_start(path: str | Path, model_cfg: ModelConfig | None = None) -> WarmStart:
    """The checkpoint at ``path``; `ValueError` (one line) when it cannot be loaded or its
    model config differs from ``model_cfg`` in anything but ``n_items``."""
    path = Path(path)
    try:
        model, meta = load_checkpoint(path)
        index = ItemIndex(tuple(meta["items"]), np.asarray(meta["popularity"], np.int64))
        enc = TimeEncoding.from_json(meta["time_encoding"])
        version = str(meta["version"])
    except (OSError, ValueError, KeyError, TypeError, RuntimeError,
            pickle.UnpicklingError) as exc:
        lines = str(exc).strip().splitlines()
        reason = lines[0] if lines else type(exc).__name__
        if str(path) not in reason:
            reason = f"{path}: cannot warm-start from it ({type(exc).__name__}: {reason})"
        raise ValueError(reason) from exc
    if model_cfg is not None:
        mine, theirs = model_cfg.to_json(), model.cfg.to_json()
        differ = [f"{k} (parent {theirs[k]!r}, asked {mine[k]!r})" for k in mine
                  if k != "n_items" and mine[k] != theirs[k]]
        if differ:
            raise ValueError(f"{path}: a warm start keeps the parent's model config; it "
                             f"differs in {', '.join(differ)}")
    return WarmStart(path, model, index, enc, version)


class TorchScorer(ModelScorer):
    """The same request path as `OnnxScorer`, running the torch model (eager, no grad)."""

    def __init__(self, model: SeqRec, index: ItemIndex, enc: TimeEncoding, version: str,
                 threads: int | None = None) -> None:
        super().__init__(index, model.cfg.window_len, enc, version)
        self.model = model
        self.threads = threads
        self.probe_shared_candidates()

    @classmethod
    def from_checkpoint(cls, path: str | Path, threads: int | None = None) -> TorchScorer:
        model, meta = load_checkpoint(path)
        index = ItemIndex(tuple(meta["items"]), np.asarray(meta["popularity"], np.int64))
        return cls(model, index, TimeEncoding.from_json(meta["time_encoding"]),
                   meta["version"], threads)

    def _forward(self, inputs: dict[str, np.ndarray]) -> np.ndarray:
        if self.threads:
            torch.set_num_threads(self.threads)
        self.model.eval()
        with torch.no_grad():
            out = self.model(*(torch.from_numpy(inputs[k]) for k in (
                "items", "watch_time", "query_time", "gaps", "cand_items", "cand_repeat")))
        return out.numpy().astype(np.float32)
