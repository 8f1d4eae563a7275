"""Training on tiny synthetic data, every arch exported, and the three CLI commands."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from liverank.cli.main import app
from liverank.model.data.availability import availability
from liverank.model.data.split import time_split
from liverank.model.data.synth import generate
from liverank.model.data.twitch import from_frame, in_event_order, write_twitch
from liverank.model.evaluate import iter_targets, period
from liverank.model.export import export
from liverank.model.features import TimeEncoding
from liverank.model.sasrec import SeqRec
from liverank.model.scorer import OnnxScorer, RankRequest
from liverank.model.train import (
    Batcher,
    _adam,
    _validation_targets,
    build_index,
    configs,
    make_sequences,
    train,
)

OFFSETS = {"val_offset": 120, "test_offset": 60}


@pytest.fixture(scope="module")
def tiny() -> object:
    return generate("tiny", seed=0)


@pytest.mark.parametrize("arch", ["liverank", "sasrec", "gru", "mf"])
def test_each_arch_trains_exports_and_scores(tiny: object, tmp_path: Path, arch: str) -> None:
    model_cfg, cfg = configs(arch, "tiny", threads=1, dim=16, epochs=1, **OFFSETS)
    result = train(tiny, tmp_path / "ckpt", model_cfg, cfg, progress=False)
    assert np.isfinite(result.history[0]["loss"])
    assert 0.0 < result.best_ndcg10 <= 1.0
    meta = json.loads((tmp_path / "ckpt" / "checkpoint.json").read_text())
    assert meta["model"]["arch"] == arch and meta["items"]
    info = export(tmp_path / "ckpt", tmp_path / "onnx")
    assert info["metrics"]["onnx_max_abs_diff"] <= 1e-4
    scorer = OnnxScorer(tmp_path / "onnx")
    out = scorer.rank([RankRequest([(meta["items"][0], 300)], 301, meta["items"][:20])], 5)
    assert len(out[0].streamers) == 5


def test_training_learns_something_beyond_its_first_epoch(tiny: object, tmp_path: Path) -> None:
    model_cfg, cfg = configs("liverank", "tiny", threads=1, epochs=3, patience=3, **OFFSETS)
    result = train(tiny, tmp_path / "ckpt", model_cfg, cfg, progress=False)
    losses = [h["loss"] for h in result.history]
    assert losses[-1] < losses[0]
    assert result.best_ndcg10 == max(h["val_ndcg10"] for h in result.history)


def test_split_offsets_beyond_the_data_are_a_clear_error(tiny: object, tmp_path: Path) -> None:
    model_cfg, cfg = configs("liverank", "tiny", threads=1)  # 500/250 on ~432 steps
    with pytest.raises(ValueError, match="no training rows"):
        train(tiny, tmp_path / "ckpt", model_cfg, cfg, progress=False)


def test_cli_train_export_evaluate(tiny: object, tmp_path: Path) -> None:
    data = tmp_path / "tiny.csv"
    write_twitch(tiny, data)
    runner = CliRunner()
    offsets = ["--val-offset", "120", "--test-offset", "60"]
    r = runner.invoke(app, ["train", "--data", str(data), "--out", str(tmp_path / "ck"),
                            "--preset", "tiny", "--threads", "1", *offsets])
    assert r.exit_code == 0, r.output
    assert "validation NDCG@10" in r.output
    r = runner.invoke(app, ["export", "--checkpoint", str(tmp_path / "ck"), "--out",
                            str(tmp_path / "onnx")])
    assert r.exit_code == 0, r.output
    out = tmp_path / "eval.json"
    r = runner.invoke(app, ["evaluate", "--data", str(data), "--model", str(tmp_path / "onnx"),
                            "--model", str(tmp_path / "ck"), "--json", str(out), *offsets])
    assert r.exit_code == 0, r.output
    result = json.loads(out.read_text())
    models = result["models"]
    assert set(models) == {"POP", "LivePop", "REP", "REP-count", "onnx (onnx)", "ck (torch)"}
    # the exported model and its checkpoint answer identically
    assert models["onnx (onnx)"]["all"] == models["ck (torch)"]["all"]
    assert out.with_suffix(".md").read_text().startswith("| model |")
    r = runner.invoke(app, ["train", "--data", str(data), "--out", str(tmp_path / "x"),
                            "--preset", "tiny", "--negatives", "sometimes", *offsets])
    assert r.exit_code == 2 and "negatives" in r.output


def test_uniform_negatives_draw_the_oov_item_but_never_the_positives_item(tiny: object) -> None:
    # Regression: uniform negatives were drawn over known items only, so the OOV item (all
    # rare streamers together, a frequent target) was never a negative; its score grew until
    # the tied unknown candidates filled every top 10 (GRU/MF stuck at NDCG@10 ~0.025).
    ds = tiny
    model_cfg, cfg = configs("gru", "tiny", threads=1, min_count=5, **OFFSETS)
    mask = ds.start < ds.max_step - OFFSETS["val_offset"]
    index, item_of = build_index(ds, mask, cfg.min_count)
    seqs = make_sequences(ds, mask, model_cfg.window_len)
    batcher = Batcher(seqs, item_of, index, model_cfg, cfg, TimeEncoding(), None)
    batch = batcher(np.arange(len(seqs)), np.random.default_rng(0))
    cand, ok = batch["cand_items"].numpy(), batch["neg_ok"].numpy()
    neg, pos = cand[..., 1:], cand[..., :1]
    oov_share = (item_of[1:] == index.oov).mean()
    assert 0.05 < oov_share < 0.95, "tiny data should have rare (OOV) streamers"
    assert abs((neg == index.oov).mean() - oov_share) < 0.05
    assert not (ok & (neg == pos))[batch["valid"].numpy()].any()


def _validation_targets_by_timeline(ds: object, split: object, window_len: int,
                                    cfg: object) -> list:
    """The former `_validation_targets`: every target of the period from `iter_targets`
    (a walk over the whole timeline), then the evenly spaced ones kept."""
    lo, hi = period(split, "validation")
    targets = list(iter_targets(ds, lo, hi, window_len, cfg.availability))
    if len(targets) > cfg.val_targets:
        keep = np.linspace(0, len(targets) - 1, cfg.val_targets).astype(np.int64)
        targets = [targets[i] for i in keep]
    return targets


@pytest.mark.parametrize("seed", range(4))
def test_validation_targets_equal_the_timeline_walk(tiny: object, seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = 600
    frame = pd.DataFrame({"user": rng.integers(1, 25, n), "stream": rng.integers(1, 40, n),
                          "start": rng.integers(0, 60, n)})
    frame["streamer"] = "s" + (frame["stream"] % 13).astype(str)
    frame["stop"] = frame["start"] + rng.integers(0, 4, n)
    shuffled = from_frame(frame[["user", "stream", "streamer", "start", "stop"]])
    for ds in (shuffled, in_event_order(shuffled), tiny):
        split = time_split(ds, 30 if ds is not tiny else 120, 10 if ds is not tiny else 60)
        live = availability(ds, "broadcast")
        for window_len, val_targets in ((1, 10_000), (3, 37), (16, 200)):
            _, cfg = configs("liverank", "tiny", val_targets=val_targets)
            got = _validation_targets(ds, split, window_len, cfg, live)
            want = _validation_targets_by_timeline(ds, split, window_len, cfg)
            assert len(got) == len(want) == min(val_targets, len(want)) > 0
            assert got == want
            assert any(t.repeat for t in got) and any(t.request.window for t in got)


def test_training_adam_takes_the_plain_adam_steps() -> None:
    model_cfg, cfg = configs("liverank", "tiny", n_items=40, dim=16, weight_decay=0.01)
    torch.manual_seed(0)
    models = [SeqRec(model_cfg), SeqRec(model_cfg)]
    models[1].load_state_dict(models[0].state_dict())
    opts = [_adam(models[0], cfg), torch.optim.Adam(models[1].parameters(), lr=cfg.lr,
                                                    weight_decay=cfg.weight_decay)]
    assert opts[0].defaults["fused"], "this torch has the fused CPU Adam"
    for step in range(5):
        for model, opt in zip(models, opts, strict=True):
            gen = torch.Generator().manual_seed(step)
            for p in model.parameters():  # about half the rows get no gradient, as in a batch
                rows = (torch.rand(p.shape[:1], generator=gen) < 0.5).float()
                p.grad = torch.randn(p.shape, generator=gen) * rows.view(-1, *[1] * (p.dim() - 1))
            opt.step()
    for (name, fused), plain in zip(models[0].named_parameters(), models[1].parameters(),
                                    strict=True):
        torch.testing.assert_close(fused, plain, msg=name)
