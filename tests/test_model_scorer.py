"""The torch-free scorer: ONNX export parity, ranking contract, fallback, refusals."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from liverank.model.checkpoint import TorchScorer, load_checkpoint
from liverank.model.data.split import time_split
from liverank.model.data.synth import generate
from liverank.model.evaluate import iter_requests
from liverank.model.export import export, random_inputs
from liverank.model.features import INPUT_NAMES, TimeEncoding
from liverank.model.scorer import ModelDirError, OnnxScorer, RankRequest, rank_scored
from liverank.model.train import configs, train
from liverank.services.testing import FakeScorer

OFFSETS = {"val_offset": 120, "test_offset": 60}


@pytest.fixture(scope="module")
def tiny() -> object:
    return generate("tiny", seed=0)


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory, tiny: object) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("model")
    model_cfg, cfg = configs("liverank", "tiny", threads=1, dim=32, **OFFSETS)
    train(tiny, root / "ckpt", model_cfg, cfg, progress=False)
    export(root / "ckpt", root / "onnx")
    return root / "ckpt", root / "onnx"


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def test_importing_the_scorer_leaves_torch_out() -> None:
    code = ("import sys, liverank.model.scorer, liverank.model.features; "
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "False"


def test_model_json_holds_config_index_time_and_hash(exported: tuple[Path, Path]) -> None:
    meta = json.loads((exported[1] / "model.json").read_text())
    assert meta["format"] == "liverank-model/1"
    assert meta["config"]["n_items"] == len(meta["items"]) == len(meta["popularity"])
    assert set(meta["inputs"]) == set(INPUT_NAMES) and meta["output"] == "scores"
    assert meta["time_encoding"]["steps_per_day"] == 144
    assert len(meta["files"]["model.onnx"]["sha256"]) == 64
    assert meta["metrics"]["onnx_max_abs_diff"] <= 1e-4
    assert meta["version"].startswith("liverank-")


def test_onnx_matches_torch_on_random_batches_with_padding_only_windows(
        exported: tuple[Path, Path]) -> None:
    model, _ = load_checkpoint(exported[0])
    scorer = OnnxScorer(exported[1])
    rng = np.random.default_rng(7)
    for batch, cands in [(1, 1), (9, 40), (64, 700)]:
        inputs = random_inputs(model, TimeEncoding(), batch, cands, rng, empty_rows=1)
        with torch.no_grad():
            want = model(*(torch.from_numpy(inputs[k]) for k in INPUT_NAMES)).numpy()
        got = scorer._forward(inputs)
        assert got.shape == (batch, cands) and np.isfinite(got).all()
        assert np.abs(got - want).max() <= 1e-4


def test_onnx_and_torch_scorers_give_the_same_lists_on_the_timeline(
        tiny: object, exported: tuple[Path, Path]) -> None:
    onnx, torch_scorer = OnnxScorer(exported[1]), TorchScorer.from_checkpoint(exported[0])
    split = time_split(tiny, **OFFSETS)
    triples = list(iter_requests(tiny, split.pivot_2, split.max_step, window_len=40))
    requests = [r for _, r, _ in triples][:300]
    a, b = onnx.rank(requests, 10), torch_scorer.rank(requests, 10)
    assert [x.streamers for x in a] == [y.streamers for y in b]
    assert any(not x.fallback for x in a)


def test_rank_contract_fallback_oov_and_k(exported: tuple[Path, Path]) -> None:
    scorer = OnnxScorer(exported[1])
    known = list(json.loads((exported[1] / "model.json").read_text())["items"])[:5]
    cands = known + ["never-seen-1", "never-seen-2", known[0]]  # a duplicate counts once
    reqs = [RankRequest([], 400, cands),
            RankRequest([(known[1], 380), ("never-seen-3", 390)] * 20, 400, cands),
            RankRequest([(known[2], 390)], 400, [])]
    out = scorer.rank(reqs, k=3)
    assert out[0].fallback and not out[1].fallback
    assert len(out[0].streamers) == 3 and len(out[1].streamers) == 3 and out[2].streamers == []
    assert all(np.isfinite(s) for r in out for s in r.scores)
    assert out[0].streamers == known[:3]  # popularity prior, ties by index
    full = scorer.rank(reqs[:2], k=100)
    assert all(len(r.streamers) == 7 for r in full)
    assert all(r.scores == sorted(r.scores, reverse=True) for r in full)
    # only the last window_len entries matter
    longer = RankRequest([("never-seen-9", 1)] * 50 + list(reqs[1].window), 400, cands)
    assert scorer.rank([longer], 7)[0] == full[1]


@pytest.mark.parametrize("damage, message", [
    ("hash", "sha256"), ("missing_onnx", "missing"), ("no_json", "no model.json"),
    ("items", "item names"), ("bad_json", "not valid JSON"), ("keys", "missing keys"),
])
def test_scorer_refuses_a_damaged_directory(exported: tuple[Path, Path], tmp_path: Path,
                                            damage: str, message: str) -> None:
    d = _copy(exported[1], tmp_path / "m")
    meta_path = d / "model.json"
    meta = json.loads(meta_path.read_text())
    if damage == "hash":
        with open(d / "model.onnx", "ab") as f:
            f.write(b"\0")
    elif damage == "missing_onnx":
        (d / "model.onnx").unlink()
    elif damage == "no_json":
        meta_path.unlink()
    elif damage == "items":
        meta["items"] = meta["items"][:-1]
        meta_path.write_text(json.dumps(meta))
    elif damage == "bad_json":
        meta_path.write_text("{not json")
    elif damage == "keys":
        del meta["time_encoding"]
        meta_path.write_text(json.dumps(meta))
    with pytest.raises(ModelDirError, match=message):
        OnnxScorer(d)


def test_fake_scorer_is_deterministic_and_follows_the_contract() -> None:
    fake = FakeScorer(window_len=2)
    req = RankRequest([("c", 1), ("a", 2), ("b", 3)], 4, ["a", "b", "c", "d"])
    first = fake.rank([req], 2)[0]
    assert first == fake.rank([req], 2)[0] == FakeScorer(window_len=2).rank([req], 2)[0]
    assert set(first.streamers) == {"a", "b"}  # only the last two entries count
    assert not first.fallback
    empty = fake.rank([RankRequest([], 4, ["a", "b", "c"])], 5)[0]
    assert empty.fallback and len(empty.streamers) == 3


def test_answers_do_not_depend_on_batch_composition_and_oov_ties_go_by_name(
        tiny: object, exported: tuple[Path, Path]) -> None:
    scorer = OnnxScorer(exported[1])
    split = time_split(tiny, **OFFSETS)
    requests = [r for _, r, _ in iter_requests(tiny, split.pivot_2, split.max_step, 40)][:200]
    together = scorer.rank(requests, 10)
    assert together == [s.top(10) for s in scorer.score_all(requests)]  # row-wise top-k
    assert len({id(r.candidates) for r in requests}) < len(requests)  # shared lists, stacked
    alone = [scorer.rank([r], 10)[0] for r in requests[::7]]
    assert [r.streamers for r in together[::7]] == [r.streamers for r in alone]
    unknown = [f"zz-new-{i}" for i in range(6)]
    out = scorer.rank([RankRequest(requests[0].window, requests[0].step, unknown[::-1])], 6)[0]
    assert out.streamers == unknown and len(set(out.scores)) == 1


def test_scoring_in_steps_is_rank_with_only_the_model_run_in_forward(
        tiny: object, exported: tuple[Path, Path]) -> None:
    """The service builds inputs and ranks on its event loop and runs only `forward` in its
    scoring thread: the steps must give `rank`'s lists, and `forward` must hold the model
    runs (one per chunk of ``max_batch``) and nothing before it."""
    scorer = OnnxScorer(exported[1])
    split = time_split(tiny, **OFFSETS)
    requests = [r for _, r, _ in iter_requests(tiny, split.pivot_2, split.max_step, 40)][:200]
    want = scorer.rank(requests, 10)
    runs: list[int] = []
    model_run = scorer._forward
    scorer._forward = lambda inputs: runs.append(len(inputs["items"])) or model_run(inputs)  # type: ignore[method-assign]
    scorer.max_batch = 64
    job = scorer.scoring(requests, 10)
    assert runs == []  # inputs built, the model not run yet
    with pytest.raises(RuntimeError, match="before Scoring.forward"):
        job.ranked()
    job.forward()
    modelled = sum(1 for r in requests if r.window and r.candidates)
    assert sum(runs) == modelled > 64 and max(runs) <= 64  # every model request, in chunks
    assert job.ranked() == want
    # `ranked` takes the top k from the score matrices; it must be the top k of `scored`,
    # fallback answers and unknown names (equal scores, tie by name) included.
    assert any(not r.window for r in requests) and any(r.window for r in requests)
    unknown = [f"zz-new-{i}" for i in range(5)]
    mixed = requests + [RankRequest(r.window, r.step, list(r.candidates) + unknown)
                        for r in requests[:40]]
    job = scorer.scoring(mixed, 10)
    job.forward()
    assert job.ranked() == rank_scored(job.scored(), 10)
