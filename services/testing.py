"""Test doubles of the service's narrow interfaces, handed in by tests and benchmarks.

* `FakeScorer`: a deterministic `Scorer` (no model files, no onnxruntime);
* `MemoryPublisher`: a `Publisher` that keeps what would be sent, per topic;
* `write_fake_model` / `load_fake_model`: a model *directory* for the fake, so model swaps
  are exercised through the real directory watch; the loader is handed to `Service` /
  `serve.run` as ``load=`` (as httpx hands in ``MockTransport``);
* ``python -m liverank.services.testing serve`` runs a worker with that loader (the
  benchmark's "no model cost" reference, tests without a trained model).

Production code never imports this module (an import-linter contract checks it), and a
``model.json`` never switches the service to a fake.
"""

from __future__ import annotations

import asyncio
import json
import sys
import zlib
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from liverank.broker.clients import Offsets, Outgoing
from liverank.model.features import CandidateSet, ItemIndex
from liverank.model.scorer import BaseScorer, RankRequest, Scored, Scorer

FAKE_MODEL_FORMAT = "liverank-fake/1"  # a test model directory: no model files


class FakeScorer(BaseScorer):
    """A deterministic scorer for tests: no model files, no onnxruntime.

    Score = number of times the candidate appears in the last ``window_len`` window entries
    plus a stable per-name value in [0, 0.5) (CRC32 of the name); the tie-break index is the
    name's sort order. An empty window gives ``fallback=True`` with the per-name values.

    The per-candidate-list work (sorting, one CRC32 per name) is cached per live set:
    requests of one step share it, and without the cache the fake was slower than the ONNX
    model (1.2k vs 2.4k answers/s), useless as the benchmarks' "no model cost" reference.
    """

    CACHE_SIZE = 64

    def __init__(self, window_len: int = 16, version: str = "fake-1") -> None:
        super().__init__(ItemIndex((), np.zeros(0, dtype=np.int64)))
        self.window_len = window_len
        self.version = version
        self._sets: OrderedDict[tuple[str, ...], tuple[CandidateSet, np.ndarray]] = (
            OrderedDict())

    def candidates(self, names: Sequence[str]) -> CandidateSet:
        ordered = sorted(set(names))
        return CandidateSet(tuple(ordered), np.zeros(len(ordered), dtype=np.int64),
                            {n: i for i, n in enumerate(ordered)})

    def _candidate_scores(self, names: Sequence[str]) -> tuple[CandidateSet, np.ndarray]:
        key = tuple(names)
        hit = self._sets.get(key)
        if hit is None:
            cset = self.candidates(key)
            base = np.asarray([zlib.crc32(n.encode()) / 2**33 for n in cset.names],
                              dtype=np.float32)
            hit = self._sets[key] = (cset, base)
            if len(self._sets) > self.CACHE_SIZE:
                self._sets.popitem(last=False)
        return hit

    def score_all(self, requests: Sequence[RankRequest]) -> list[Scored]:
        out = []
        for req in requests:
            cset, base = self._candidate_scores(req.candidates)
            window = list(req.window[-self.window_len:]) if self.window_len else []
            counts = np.zeros(len(cset.names), dtype=np.float32)
            for name, _ in window:
                col = cset.cols.get(name)
                if col is not None:
                    counts[col] += 1.0
            out.append(Scored(cset.names, base + counts, not window))
        return out


class MemoryPublisher:
    """Keeps what would be published, per topic (tests, the Faust test context)."""

    def __init__(self) -> None:
        self.sent: dict[str, list[tuple[bytes | None, bytes | None]]] = {}
        self.partitions: dict[str, list[int | None]] = {}

    def publish(self, messages: Sequence[Outgoing]) -> asyncio.Future[Offsets]:
        for topic, key, value, partition in messages:
            self.sent.setdefault(topic, []).append((key, value))
            self.partitions.setdefault(topic, []).append(partition)
        fut: asyncio.Future[Offsets] = asyncio.get_running_loop().create_future()
        fut.set_result({})
        return fut

    def connect(self, timeout_s: float) -> None:
        return None

    def close(self) -> None:
        return None


def write_fake_model(model_dir: str | Path, version: str, window_len: int = 16) -> Path:
    """A model directory that `load_fake_model` serves with `FakeScorer`."""
    path = Path(model_dir)
    path.mkdir(parents=True, exist_ok=True)
    (path / "model.json").write_text(json.dumps(
        {"format": FAKE_MODEL_FORMAT, "version": version, "window_len": window_len}))
    return path


def load_fake_model(model_dir: str | Path, threads: int = 1) -> Scorer:
    """The loader of `write_fake_model` directories (same signature as `load_scorer`);
    anything else is refused with ValueError, as a broken model directory would be."""
    path = Path(model_dir) / "model.json"
    meta = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(meta, dict) or meta.get("format") != FAKE_MODEL_FORMAT:
        raise ValueError(f"{path}: not a fake model directory (format {FAKE_MODEL_FORMAT})")
    return FakeScorer(window_len=int(meta.get("window_len", 16)),
                      version=str(meta.get("version", "fake-1")))


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m liverank.services.testing serve [--loglevel L]``: one worker serving the
    fake model directory of ``LIVERANK_MODEL_DIR`` (settings from the environment)."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] != "serve":
        raise SystemExit("usage: python -m liverank.services.testing serve [--loglevel L]")
    loglevel = args[args.index("--loglevel") + 1] if "--loglevel" in args else "info"
    from liverank.core.settings import Settings
    from liverank.services.serve import run

    run(Settings(), loglevel, load=load_fake_model)


if __name__ == "__main__":
    main()
