"""Training checkpoints and scoring with torch: the torch side of a trained model.

A checkpoint directory holds ``weights.pt`` and ``checkpoint.json`` (config, item index,
time encoding, version). `TorchScorer` runs the torch model through the same request path
as the torch-free `OnnxScorer` (validation during training, checkpoints in ``evaluate``,
the scorer benchmark). Imported by train, export and evaluate; imports none of them.
"""

from __future__ import annotations

import json
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



class TorchScorer(ModelScorer):
    """The same request path as `OnnxScorer`, running the torch model (eager, no grad)."""

    def __init__(self, model: SeqRec, index: ItemIndex, enc: TimeEncoding, version: str,
                 threads: int | None = None) -> None:
        super().__init__(index, model.cfg.window_len, enc, version)
        self.model = model
        self.threads = threads

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
