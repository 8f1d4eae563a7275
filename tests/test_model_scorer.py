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
from liverank.model.features import INPUT_NAMES, ItemIndex, TimeEncoding
from liverank.model.scorer import (
    ModelDirError,
    ModelScorer,
    OnnxScorer,
    RankRequest,
    rank_scored,
)
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


def assert_same_answers(got: list, want: list) -> None:
    """The same lists (names, order, fallback) with the same scores to float32 precision.
    Scores of one request run in a batch of another size or shape may differ in the last
    bit: onnxruntime picks its matrix kernels and their blocking by shape, and on some CPUs
    (seen on an AMD EPYC) that changes the summation order; the lists must not change."""
    assert [(a.streamers, a.fallback) for a in got] == [(a.streamers, a.fallback) for a in want]
    for a, b in zip(got, want, strict=True):
        np.testing.assert_allclose(a.scores, b.scores, rtol=1e-6, atol=1e-6)


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
    assert_same_answers(job.ranked(), want)
    # `ranked` takes the top k from the score matrices; it must be the top k of `scored`,
    # fallback answers and unknown names (equal scores, tie by name) included.
    assert any(not r.window for r in requests) and any(r.window for r in requests)
    unknown = [f"zz-new-{i}" for i in range(5)]
    mixed = requests + [RankRequest(r.window, r.step, list(r.candidates) + unknown)
                        for r in requests[:40]]
    job = scorer.scoring(mixed, 10)
    job.forward()
    assert job.ranked() == rank_scored(job.scored(), 10)


def test_requests_sharing_live_streams_give_the_model_one_candidate_row(
        tiny: object, exported: tuple[Path, Path]) -> None:
    """An exported model broadcasts one candidate row over its batch: the scorer finds that
    out at load, then runs a chunk per candidate set with ``cand_items`` of shape (1, C),
    and ranks exactly as with a row per request (the form every model takes)."""
    split = time_split(tiny, **OFFSETS)
    requests = [r for _, r, _ in iter_requests(tiny, split.pivot_2, split.max_step, 40)][:300]
    shared, rowwise = OnnxScorer(exported[1]), OnnxScorer(exported[1])
    assert shared.shared_candidates and rowwise.shared_candidates
    rowwise.shared_candidates = False
    shapes: list[tuple[int, int, int]] = []
    model_run = shared._forward

    def noting(x: dict[str, np.ndarray]) -> np.ndarray:
        shapes.append((len(x["items"]), *x["cand_items"].shape))
        return model_run(x)

    shared._forward = noting  # type: ignore[method-assign]
    shared.max_batch = 16
    shared.share_min_cells = 0  # tiny's sets are small: give every one its own row here
    assert_same_answers(shared.rank(requests, 10), rowwise.rank(requests, 10))
    sets = {tuple(r.candidates) for r in requests if r.window and r.candidates}
    assert len(sets) > 1 and len(shapes) >= len(sets)  # a run per candidate set at least
    assert all(rows == 1 and b <= 16 for b, rows, _ in shapes)
    assert sum(b for b, _, _ in shapes) == sum(1 for r in requests if r.window and r.candidates)
    for a, b in zip(shared.score_all(requests), rowwise.score_all(requests), strict=True):
        assert a.streamers == b.streamers
        np.testing.assert_allclose(a.scores, b.scores, rtol=1e-6, atol=1e-6)
    torch_scorer = TorchScorer.from_checkpoint(exported[0])
    assert torch_scorer.shared_candidates
    assert [r.streamers for r in torch_scorer.rank(requests, 10)] == [
        r.streamers for r in rowwise.rank(requests, 10)]


class _RowPerRequestModel(ModelScorer):
    """A model that scores a candidate by its id and its request's last window item, the
    way a graph without broadcasting would: ``refuse`` raises on one candidate row,
    otherwise it gives (1, C) scores for it."""

    def __init__(self, names: list[str], refuse: bool, broken: bool = False) -> None:
        super().__init__(ItemIndex(tuple(names), np.ones(len(names), dtype=np.int64)), 4,
                         TimeEncoding(), "rows-1")
        self.refuse, self.broken = refuse, broken

    def _forward(self, inputs: dict[str, np.ndarray]) -> np.ndarray:
        if self.broken:
            raise RuntimeError("Non-zero status code returned while running Gather node")
        cands = inputs["cand_items"]
        if self.refuse and len(cands) != len(inputs["items"]):
            raise RuntimeError("Got invalid dimensions for input: cand_items")
        return (cands * 0.5 + inputs["items"][: len(cands), -1:] * 0.01).astype(np.float32)


@pytest.mark.parametrize("refuse", [True, False])
def test_a_model_that_does_not_broadcast_candidates_keeps_a_row_per_request(
        refuse: bool, caplog: pytest.LogCaptureFixture) -> None:
    names = [f"s{i}" for i in range(8)]
    scorer = _RowPerRequestModel(names, refuse)
    with caplog.at_level("WARNING", logger="liverank.model.scorer"):
        assert scorer.probe_shared_candidates() is False
    assert not scorer.shared_candidates
    assert "a row per request" in caplog.text and "rows-1" in caplog.text
    requests = [RankRequest([(names[i], 5)], 9, names[:6]) for i in range(4)]
    out = scorer.rank(requests, 3)
    assert [r.streamers for r in out] == [["s5", "s4", "s3"]] * 4
    # Forced on anyway, the model's refusal or scores of the wrong shape stop the batch
    # (the shapes named), never a wrong list.
    scorer.shared_candidates = True
    with pytest.raises(RuntimeError if refuse else ValueError,
                       match="invalid dimensions" if refuse
                       else r"shape \(1, 6\) for 4 requests of 6 candidates"):
        scorer.rank(requests, 3)


def test_export_parity_covers_the_one_candidate_row_form(exported: tuple[Path, Path]
                                                         ) -> None:
    import onnx

    graph = onnx.load(str(exported[1] / "model.onnx")).graph
    dims = {i.name: [d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim]
            for i in graph.input}
    assert dims["cand_items"][0] == "cand_rows" and dims["items"][0] == "batch"
    meta = json.loads((exported[1] / "model.json").read_text())
    assert meta["inputs"]["cand_items"] == ["cand_rows", "candidates"]


def test_a_model_that_cannot_score_at_all_is_not_taken_for_one_without_broadcast() -> None:
    """The probe's first run (a row per request) is not guarded: a model that fails it
    fails its load, loudly, rather than loading with a warning about broadcasting."""
    scorer = _RowPerRequestModel([f"s{i}" for i in range(8)], refuse=False, broken=True)
    with pytest.raises(RuntimeError, match="Gather node"):
        scorer.probe_shared_candidates()
    assert not scorer.shared_candidates


def test_an_onnx_model_that_loads_but_cannot_score_is_refused_at_load(
        exported: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    def fails(self: OnnxScorer, inputs: dict[str, np.ndarray]) -> np.ndarray:
        raise RuntimeError("Non-zero status code returned while running Gather node")

    monkeypatch.setattr(OnnxScorer, "_forward", fails)
    with pytest.raises(ModelDirError, match="cannot score three probe requests.*Gather"):
        OnnxScorer(exported[1])


class _BroadcastingModel(ModelScorer):
    """Scores a candidate by its id and its request's last window item, broadcasting one
    candidate row like an exported graph; notes each run's shapes."""

    def __init__(self, names: list[str]) -> None:
        super().__init__(ItemIndex(tuple(names), np.ones(len(names), dtype=np.int64)), 4,
                         TimeEncoding(), "broadcast-1")
        self.runs: list[tuple[int, ...]] = []

    def _forward(self, inputs: dict[str, np.ndarray]) -> np.ndarray:
        self.runs.append((len(inputs["items"]), *inputs["cand_items"].shape))
        return (inputs["cand_items"] * 0.5 + inputs["items"][:, -1:] * 0.01).astype(
            np.float32)


def test_only_sets_large_enough_get_a_run_of_their_own() -> None:
    """Sharing a row saves (requests - 1) x candidates gathered vectors; a set below
    `share_min_cells` rides with the other small ones, a row per request (a chunk of its
    own cost more than it saved on the demo's small log)."""
    names = [f"s{i:03d}" for i in range(300)]
    scorer = _BroadcastingModel(names)
    assert scorer.probe_shared_candidates() and scorer.share_min_cells == 8192
    big, small_a, small_b = names[:200], names[:10], names[5:30]
    requests = ([RankRequest([(names[i], 5)], 9, big) for i in range(50)]  # 49 x 200 = 9,800
                + [RankRequest([(names[i], 5)], 8, small_a) for i in range(3)]
                + [RankRequest([(names[i], 5)], 7, small_b) for i in range(2)])
    requests = requests[::2] + requests[1::2]  # the sets interleaved in the batch
    scorer.runs.clear()
    got = scorer.rank(requests, 5)
    assert sorted(scorer.runs) == [(5, 5, 25), (50, 1, 200)]
    scorer.shared_candidates = False
    assert got == scorer.rank(requests, 5)  # the same lists a row per request gives


class _WindowReadingModel(_BroadcastingModel):
    """Ranks by how near a candidate's id lies to the request's last window item, then by
    the bucketed gap since that watch: a row given another request's window arrays ranks
    differently."""

    def _forward(self, inputs: dict[str, np.ndarray]) -> np.ndarray:
        self.runs.append((len(inputs["items"]), *inputs["cand_items"].shape))
        last = inputs["items"][:, -1:]
        gap = inputs["gaps"][:, -1, -1:]
        near = -np.abs(inputs["cand_items"] - last).astype(np.float32)
        return near + ((inputs["cand_items"] % 5) == (gap % 5)).astype(np.float32) * 3.5


def test_a_batch_builds_its_window_inputs_once_and_each_chunk_takes_its_own_rows() -> None:
    """A batch of requests at several steps runs a chunk per large candidate set (and per
    ``max_batch``); the window side (items, times, gaps) is built once for the batch and
    each chunk takes its requests' rows: the lists are those of each request ranked alone."""
    names = [f"s{i:03d}" for i in range(300)]
    scorer = _WindowReadingModel(names)
    assert scorer.probe_shared_candidates()
    sets = [tuple(names[:200]), tuple(names[50:250]), tuple(names[:10])]
    requests = [RankRequest([(names[(37 * i + j) % 300], 3 * j + i % 7) for j in range(i % 6)],
                            40 + i % 9, sets[i % 3]) for i in range(150)]
    built: list[int] = []
    window_inputs = scorer.window_inputs
    scorer.window_inputs = lambda rs: built.append(len(rs)) or window_inputs(rs)  # type: ignore[method-assign]
    scorer.max_batch = 16
    scorer.runs.clear()
    got = scorer.rank(requests, 5)
    modelled = sum(1 for r in requests if r.window)
    assert built == [modelled]  # once for the whole batch
    assert len(scorer.runs) >= 3 and sum(b for b, *_ in scorer.runs) == modelled
    assert any(rows == 1 for _, rows, _ in scorer.runs)  # the large sets: one shared row
    assert any(rows == b > 1 for b, rows, _ in scorer.runs)  # the small one: a row each
    alone = _WindowReadingModel(names)
    alone.probe_shared_candidates()
    want = [alone.rank([r], 5)[0] for r in requests]
    assert got == want
    assert len({tuple(r.streamers) for r in got if not r.fallback}) > 10  # windows matter


def test_a_candidate_tuple_is_found_by_identity_and_a_changed_list_by_its_content() -> None:
    """The live index hands every request of a step the same tuple: the scorer finds its
    set by identity, without building a content key. A list may change in place between
    calls, so a list is looked up by its content every time: never a stale set."""
    names = [f"s{i:03d}" for i in range(100)]
    scorer = _BroadcastingModel(names)

    class CountingCache(dict):  # the content cache, counting its lookups
        gets = 0

        def get(self, key, default=None):  # type: ignore[no-untyped-def, override]
            CountingCache.gets += 1
            return super().get(key, default)

    scorer._cands = CountingCache()  # type: ignore[assignment]
    scorer._cands.move_to_end = lambda key: None  # type: ignore[attr-defined]
    scorer._cands.popitem = lambda last=False: None  # type: ignore[attr-defined, assignment, misc]
    live = tuple(names[:40])
    first = scorer.candidates(live)
    assert scorer.candidates(live) is first and CountingCache.gets == 1  # by identity
    assert scorer.candidates(tuple(names[:40])) is first and CountingCache.gets == 2
    listed = list(names[:40])
    assert scorer.candidates(listed) is first
    listed[0] = names[60]
    changed = scorer.candidates(listed)
    assert names[60] in changed.names and names[0] not in changed.names
    assert CountingCache.gets == 4
