"""Warm starts: vocabulary growth keeps every known streamer's score, new streamers get their
own embeddings, and the lineage (parent, data period) reaches model.json."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import typer
from typer.testing import CliRunner

from liverank.model.checkpoint import TorchScorer, grow_items, load_checkpoint
from liverank.model.cli import register
from liverank.model.data.eventlog import as_known_at
from liverank.model.data.synth import generate
from liverank.model.data.twitch import Interactions, in_event_order, write_twitch
from liverank.model.export import export
from liverank.model.features import ItemIndex, TimeEncoding
from liverank.model.scorer import RankRequest
from liverank.model.train import build_index, configs, retrain, train

OFFSETS = {"val_offset": 120, "test_offset": 60}
CUT = 300  # the parent knows the log up to this step


@pytest.fixture(scope="module")
def tiny() -> Interactions:
    return generate("tiny", seed=0)


@pytest.fixture(scope="module")
def parent(tiny: Interactions, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("parent") / "ckpt"
    model_cfg, cfg = configs("liverank", "tiny", threads=1, dim=16, epochs=1, **OFFSETS)
    train(as_known_at(tiny, CUT), out, model_cfg, cfg, progress=False)
    return out


def _grown_index(tiny: Interactions, base: ItemIndex) -> ItemIndex:
    ds = in_event_order(tiny)
    return build_index(ds, ds.start < ds.max_step - OFFSETS["val_offset"], 2, base=base)[0]


def _scores(scorer: TorchScorer, requests: list[RankRequest]) -> list[dict[str, float]]:
    return [dict(zip(s.streamers, s.scores.tolist(), strict=True))
            for s in scorer.score_all(requests)]


def _requests(window_names: list[str], cand_names: list[str]) -> list[RankRequest]:
    window = [(n, 300 + 3 * i) for i, n in enumerate(window_names)]
    return [RankRequest(window, 350, cand_names), RankRequest(window[-3:], 351, cand_names),
            RankRequest(window[-1:], 500, cand_names)]


@pytest.mark.parametrize("init", ["oov", "mean"])
def test_growth_keeps_known_scores_and_gives_new_streamers_rows(
        tiny: Interactions, parent: Path, init: str) -> None:
    model, meta = load_checkpoint(parent)
    old = ItemIndex(tuple(meta["items"]), np.asarray(meta["popularity"]))
    index = _grown_index(tiny, old)
    n, added = old.n_items, index.n_items - old.n_items
    assert added > 0 and index.names[:n] == old.names  # known streamers keep their ids
    new_names = list(index.names[n:])
    grown = grow_items(model, added, init)
    assert grown.cfg.n_items == index.n_items
    enc = TimeEncoding()
    before = TorchScorer(model, old, enc, "parent")
    after = TorchScorer(grown, index, enc, "grown")

    known = list(old.names[:12])
    requests = _requests(known[:8], known)
    assert _scores(after, requests) == _scores(before, requests)  # exactly, not close

    table = grown.item_emb.weight.detach()
    parent_table = model.item_emb.weight.detach()
    assert torch.equal(table[: n + 1], parent_table[: n + 1])
    assert torch.equal(table[-1], parent_table[-1])  # OOV moved to the end with its row
    fresh = table[n + 1 : n + 1 + added]
    want = parent_table[n + 1] if init == "oov" else parent_table[1 : n + 1].mean(0)
    assert torch.allclose(fresh, want.expand_as(fresh))
    mixed = _requests(known[:4] + new_names[:4], known[:6] + new_names[:6])
    same = _scores(after, mixed) == _scores(before, mixed)
    # "oov": a new streamer scores as it did while unknown; "mean": it no longer does.
    assert same == (init == "oov")
    # An empty window is answered by popularity, which the grown index counts afresh.
    (empty,) = after.score_all([RankRequest((), 352, known)])
    assert empty.fallback
    assert np.allclose(empty.scores, np.log1p(index.counts[index.ids(empty.streamers) - 1]))


def test_growth_refuses_nonsense(parent: Path) -> None:
    model, _ = load_checkpoint(parent)
    with pytest.raises(ValueError, match="unknown init 'zero'"):
        grow_items(model, 3, "zero")
    with pytest.raises(ValueError, match="cannot shrink"):
        grow_items(model, -1)


def test_retrain_learns_new_rows_and_records_its_lineage(
        tiny: Interactions, parent: Path, tmp_path: Path) -> None:
    _, pmeta = load_checkpoint(parent)
    result = retrain(tiny, tmp_path / "child", parent, preset="tiny", epochs=2, threads=1,
                     period={"note": "test"}, **OFFSETS)
    assert result.best_epoch >= 1  # an epoch beat the warm start (else the rows stay put)
    child, meta = load_checkpoint(tmp_path / "child")
    lineage = meta["lineage"]
    n = len(pmeta["items"])
    assert lineage["parent"] == pmeta["version"] and lineage["parent_checkpoint"] == str(parent)
    assert lineage["vocabulary"]["kept"] == n
    assert lineage["vocabulary"]["added"] == len(meta["items"]) - n > 0
    assert meta["items"][:n] == pmeta["items"]
    assert 0.0 < lineage["warm_start"]["val_ndcg10"] <= 1.0
    data = lineage["data"]
    assert data["rows"] == len(tiny) and data["last_step"] == int(tiny.start.max())
    assert data["validation_steps"][0] == tiny.max_step - OFFSETS["val_offset"]
    assert data["note"] == "test" and data["first_time"].startswith("2019-10-")
    rows = child.item_emb.weight.detach()[n + 1 : -1]
    oov = child.item_emb.weight.detach()[-1]
    assert not torch.allclose(rows, oov.expand_as(rows))  # trained away from the OOV copy
    assert torch.unique(rows, dim=0).shape[0] == rows.shape[0]  # and apart from each other

    info = export(tmp_path / "child", tmp_path / "child-onnx")
    assert info["lineage"] == lineage
    written = json.loads((tmp_path / "child-onnx" / "model.json").read_text())
    assert written["lineage"]["parent"] == pmeta["version"]
    assert written["version"].startswith(meta["version"])
    assert pmeta["lineage"]["parent"] is None  # trained from scratch
    assert pmeta["lineage"]["data"]["source"].endswith(f"as known at step {CUT}")


def test_retrain_keeps_the_parents_model_config(tiny: Interactions, parent: Path,
                                                tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"asked to change arch \(parent 'liverank', "
                                         r"asked 'gru'\)"):
        retrain(tiny, tmp_path / "x", parent, arch="gru", **OFFSETS)
    with pytest.raises(ValueError, match="not a training checkpoint"):
        retrain(tiny, tmp_path / "x", tmp_path / "missing", **OFFSETS)
    model_cfg, cfg = configs("liverank", "tiny", threads=1, dim=32, **OFFSETS)
    with pytest.raises(ValueError, match=r"differs in dim \(parent 16, asked 32\)"):
        train(tiny, tmp_path / "x", model_cfg, cfg, progress=False, parent=parent)
    assert not (tmp_path / "x").exists()


# --- the command line ----------------------------------------------------------------------

def _app() -> typer.Typer:
    app = typer.Typer()
    register(app)  # no topic reader: the root CLI hands one in
    return app


def test_cli_cut_then_warm_start_then_export(tiny: Interactions, tmp_path: Path) -> None:
    data = tmp_path / "tiny.csv"
    write_twitch(tiny, data)
    runner, app = CliRunner(), _app()
    offsets = ["--val-offset", "120", "--test-offset", "60", "--threads", "1"]
    r = runner.invoke(app, ["train", "--data", str(data), "--until", f"step:{CUT}", "--out",
                            str(tmp_path / "p"), "--preset", "tiny", *offsets])
    assert r.exit_code == 0, r.output
    pmeta = json.loads((tmp_path / "p" / "checkpoint.json").read_text())
    assert pmeta["lineage"]["data"]["until_step"] == CUT
    assert pmeta["lineage"]["data"]["last_step"] == CUT
    r = runner.invoke(app, ["train", "--data", str(data), "--warm-start", str(tmp_path / "p"),
                            "--out", str(tmp_path / "c"), "--preset", "tiny", *offsets])
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["export", "--checkpoint", str(tmp_path / "c"), "--out",
                            str(tmp_path / "c-onnx")])
    assert r.exit_code == 0, r.output
    lineage = json.loads((tmp_path / "c-onnx" / "model.json").read_text())["lineage"]
    assert lineage["parent"] == pmeta["version"] and lineage["vocabulary"]["added"] > 0


@pytest.mark.parametrize(("args", "message"), [
    (["--data", "{data}", "--from-topics"], "give either --data FILE or --from-topics"),
    ([], "give either --data FILE or --from-topics"),
    (["--from-topics"], "--from-topics needs the topic reader"),
    (["--data", "{data}", "--until", "soon"], "--until/--since: 'soon': not an ISO-8601"),
    (["--data", "{data}", "--since", "step:9", "--until", "step:3"], "is after --until"),
    (["--data", "{data}", "--warm-start", "{tmp}/none"], "not a training checkpoint"),
    (["--data", "{data}", "--since", "step:100000"], "no rows in steps 100000..432"),
])
def test_cli_train_refuses_bad_sources_in_one_line(tiny: Interactions, tmp_path: Path,
                                                   args: list[str], message: str) -> None:
    data = tmp_path / "tiny.csv"
    write_twitch(tiny, data)
    argv = ["train", "--out", str(tmp_path / "out"), "--preset", "tiny",
            *[a.format(data=data, tmp=tmp_path) for a in args]]
    r = CliRunner().invoke(_app(), argv)
    assert r.exit_code == 2, r.output
    lines = [line for line in r.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], r.output
    assert not (tmp_path / "out").exists()
