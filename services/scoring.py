"""Loading the model a worker serves, and telling when its directory changed.

`load_scorer` gives an `OnnxScorer` (hash-checked) for an exported directory, or, for a
test directory written by `write_fake_model`, a `FakeScorer`; `model_stamp` is what the
worker polls to notice a new version (a rename or a symlink flip). No faust, no torch.
"""

from __future__ import annotations

import json
import logging
import os
import zlib
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from liverank.model.features import CandidateSet
from liverank.model.scorer import FakeScorer, OnnxScorer, RankRequest, Scored, Scorer

logger = logging.getLogger(__name__)

FAKE_MODEL_FORMAT = "liverank-fake/1"  # test-only model directory: `FakeScorer`, no files


def load_scorer(model_dir: str | Path, threads: int = 1) -> Scorer:
    """`OnnxScorer` for an exported model (hash-checked); `FakeScorer` for a test directory
    whose model.json has ``"format": "liverank-fake/1"`` (see `write_fake_model`)."""
    path = Path(model_dir) / "model.json"
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        meta = None  # OnnxScorer names the problem
    if isinstance(meta, dict) and meta.get("format") == FAKE_MODEL_FORMAT:
        logger.warning("serving the FAKE scorer dir=%s version=%s (test model)", model_dir,
                       meta.get("version"))
        return CachedFakeScorer(window_len=int(meta.get("window_len", 16)),
                                version=str(meta.get("version", "fake-1")))
    return OnnxScorer(model_dir, threads=threads)


def write_fake_model(model_dir: str | Path, version: str, window_len: int = 16) -> Path:
    """A model directory that `load_scorer` serves with `FakeScorer` (tests, benchmarks)."""
    path = Path(model_dir)
    path.mkdir(parents=True, exist_ok=True)
    (path / "model.json").write_text(json.dumps(
        {"format": FAKE_MODEL_FORMAT, "version": version, "window_len": window_len}))
    return path


def model_stamp(model_dir: str | Path) -> tuple[str, int, int, int] | None:
    """What changes when a model directory is replaced: its real path and inode, and
    model.json's mtime and size. None while the path does not exist (mid-rename)."""
    try:
        real = os.path.realpath(model_dir)
        meta = os.stat(os.path.join(real, "model.json"))
        return real, os.stat(real).st_ino, meta.st_mtime_ns, meta.st_size
    except OSError:
        return None


class CachedFakeScorer(FakeScorer):
    """`FakeScorer`'s scores, with its per-candidate-list work (sorting the names, one CRC32
    per name) done once per live set instead of once per request: requests at one step
    share the live set, and with ~1,000 candidates that work made the fake scorer slower
    than the ONNX model (measured 1.2k vs 2.4k answers/s), useless as the benchmark's
    "no model cost" reference."""

    _sets: OrderedDict[tuple[str, ...], tuple[CandidateSet, np.ndarray]]

    def score_all(self, requests: Sequence[RankRequest]) -> list[Scored]:
        if not hasattr(self, "_sets"):
            self._sets = OrderedDict()
        out = []
        for req in requests:
            key = tuple(req.candidates)
            hit = self._sets.get(key)
            if hit is None:
                cset = self.candidates(key)
                base = np.asarray([zlib.crc32(n.encode()) / 2**33 for n in cset.names],
                                  dtype=np.float32)
                hit = self._sets[key] = (cset, base)
                if len(self._sets) > 64:
                    self._sets.popitem(last=False)
            cset, base = hit
            window = list(req.window[-self.window_len:]) if self.window_len else []
            counts = np.zeros(len(cset.names), dtype=np.float32)
            for name, _ in window:
                col = cset.cols.get(name)
                if col is not None:
                    counts[col] += 1.0
            out.append(Scored(cset.names, base + counts, not window))
        return out
