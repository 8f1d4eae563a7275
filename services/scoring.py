"""Loading the model a worker serves, and telling when its directory changed.

`load_scorer` gives an `OnnxScorer` (hash-checked) for an exported directory, or, for a
test directory written by `write_fake_model`, a `FakeScorer`; `model_stamp` is what the
worker polls to notice a new version (a rename or a symlink flip). No faust, no torch.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from liverank.model.scorer import FakeScorer, OnnxScorer, Scorer

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
        return FakeScorer(window_len=int(meta.get("window_len", 16)),
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
