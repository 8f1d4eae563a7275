"""SASRec shapes and masking; the availability-aware negative sampler."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from liverank.model.data.availability import availability
from liverank.model.data.twitch import from_frame
from liverank.model.export import random_inputs
from liverank.model.features import TimeEncoding
from liverank.model.sasrec import ModelConfig, SeqRec
from liverank.model.train import LiveSampler, build_index, configs, make_sequences

ENC = TimeEncoding()


def _model(arch: str = "liverank", **kw: object) -> SeqRec:
    torch.manual_seed(0)
    m = SeqRec(ModelConfig(arch=arch, n_items=30, window_len=6, dim=16, heads=2, **kw))
    return m.eval()


def _tensors(inputs: dict[str, np.ndarray]) -> list[torch.Tensor]:
    names = ("items", "watch_time", "query_time", "gaps", "cand_items", "cand_repeat")
    return [torch.from_numpy(inputs[n]) for n in names]


@pytest.mark.parametrize("arch", ["liverank", "sasrec", "gru", "mf"])
def test_forward_shapes_and_finite_scores_with_all_padding_windows(arch: str) -> None:
    model = _model(arch, time=arch == "liverank", repeat=arch == "liverank")
    inputs = random_inputs(model, ENC, batch=5, candidates=9, rng=np.random.default_rng(0),
                           empty_rows=2)
    assert (inputs["items"][:2] == 0).all()
    with torch.no_grad():
        scores = model(*_tensors(inputs))
        users = model.all_positions(*_tensors(inputs)[:4])
    assert scores.shape == (5, 9)
    assert users.shape == (5, 6, 16)
    assert torch.isfinite(scores).all() and torch.isfinite(users).all()


def test_padding_positions_do_not_leak_into_real_positions() -> None:
    model = _model()
    inputs = random_inputs(model, ENC, batch=4, candidates=5, rng=np.random.default_rng(1),
                           empty_rows=0)
    inputs["items"][:, :3] = 0  # at most three real watches
    inputs["gaps"][:, :, :3] = 0
    inputs["gaps"][:, :3, :] = 0
    with torch.no_grad():
        want = model(*_tensors(inputs))
        noisy = {k: v.copy() for k, v in inputs.items()}
        noisy["watch_time"][:, :3] = [5, 3]  # garbage on padding positions only
        noisy["query_time"][:, :3] = [7, 1]
        got = model(*_tensors(noisy))
    torch.testing.assert_close(got, want)


def test_attention_is_causal() -> None:
    model = _model()
    inputs = random_inputs(model, ENC, batch=3, candidates=4, rng=np.random.default_rng(2),
                           empty_rows=0)
    inputs["items"][:] = np.arange(1, 7)
    with torch.no_grad():
        before = model.all_positions(*_tensors(inputs)[:4])
        inputs["items"][:, -1] = 29  # change the newest watch only
        after = model.all_positions(*_tensors(inputs)[:4])
    torch.testing.assert_close(after[:, :-1], before[:, :-1])
    assert not torch.allclose(after[:, -1], before[:, -1])


def _random_log(seed: int) -> object:
    rng = np.random.default_rng(seed)
    rows = []
    for stream in range(60):
        streamer = int(rng.integers(0, 15))
        start = int(rng.integers(0, 80))
        for _ in range(int(rng.integers(1, 4))):
            s = start + int(rng.integers(0, 5))
            rows.append((int(rng.integers(1, 20)), 1000 + stream, f"s{streamer}", s,
                         s + int(rng.integers(0, 4))))
    frame = pd.DataFrame(rows, columns=["user", "stream", "streamer", "start", "stop"])
    return from_frame(frame)


@pytest.mark.parametrize("seed", range(5))
def test_live_sampler_never_picks_an_off_air_streamer_or_the_positive(seed: int) -> None:
    ds = _random_log(seed)
    for definition in ("broadcast", "rows"):
        live = availability(ds, definition)
        sampler = LiveSampler(live, ds.n_streamers)
        rng = np.random.default_rng(seed)
        steps = ds.start.astype(np.int64)
        positives = ds.streamer.astype(np.int64)
        neg, ok = sampler.sample(steps, positives, 20, rng)
        for i in range(steps.shape[0]):
            n_live = live.streamers_at(int(steps[i])).shape[0]
            assert ok[i].all() == (n_live > 1)
            for s in neg[i][ok[i]]:
                assert live.is_live(int(s), int(steps[i]))
                assert s != positives[i]
        # each other live streamer gets picked at some point (uniform over the live set)
        busiest = int(np.argmax([live.streamers_at(int(s)).shape[0] for s in steps]))
        many, _ = sampler.sample(steps[[busiest]].repeat(1), positives[[busiest]], 2000, rng)
        others = set(live.streamers_at(int(steps[busiest])).tolist()) - {positives[busiest]}
        assert set(many[0].tolist()) == others


def test_sequences_predict_the_next_watch_in_timeline_order() -> None:
    frame = pd.DataFrame({"user": [1, 1, 2, 1, 1], "stream": [10, 11, 10, 12, 13],
                          "streamer": ["a", "b", "a", "c", "a"], "start": [5, 1, 5, 5, 9],
                          "stop": [6, 2, 6, 6, 10]})
    ds = from_frame(frame)
    seqs = make_sequences(ds, np.ones(len(ds), dtype=bool), window_len=2)
    # user 1 in (step, file order): b@1, a@5, c@5, a@9 -> chunks from the end
    names = ds.streamer_names
    got = sorted((tuple(names[seqs.keys[i]]), tuple(names[seqs.target_keys[i]]))
                 for i in range(len(seqs)))
    assert got == [(("", "b"), ("", "a")), (("a", "c"), ("c", "a"))]


def test_index_orders_by_training_popularity_and_maps_rare_to_oov() -> None:
    frame = pd.DataFrame({"user": [1, 2, 3, 1, 2], "stream": [1, 2, 2, 3, 3],
                          "streamer": ["x", "y", "y", "z", "z"], "start": [0, 1, 2, 3, 4],
                          "stop": [1, 2, 3, 4, 5]})
    ds = from_frame(frame)
    index, item_of = build_index(ds, np.ones(len(ds), dtype=bool), min_count=2)
    assert index.names == ("y", "z")  # tie on 2 rows: name order; x has 1 row -> OOV
    assert item_of[ds.streamer_index()["x"]] == index.oov


def test_configs_apply_arch_defaults_and_refuse_unknown_options() -> None:
    m, t = configs("sasrec", "quick")
    assert (m.time, m.repeat, t.negatives) == (False, False, "uniform")
    m, t = configs("liverank", "quick", repeat=False)
    assert (m.time, m.repeat, t.negatives) == (True, False, "live")
    with pytest.raises(ValueError, match="unknown options"):
        configs("liverank", "quick", colour="red")
    with pytest.raises(ValueError, match="unknown arch"):
        configs("bert", "quick")


def _sample_by_global_search(live: object, n_streamers: int, steps: np.ndarray,
                             positives: np.ndarray, n: int, rng: np.random.Generator
                             ) -> tuple[np.ndarray, np.ndarray]:
    """The former `LiveSampler.sample`: the positive found by one search over global
    (step, streamer) keys."""
    span = np.int64(n_streamers + 1)
    cell_steps = np.repeat(np.arange(live.n_steps, dtype=np.int64), live.live_counts())
    cell_keys = cell_steps * span + live.streamers.astype(np.int64)
    inside = (steps >= 0) & (steps < live.n_steps)
    s = np.where(inside, steps, 0)
    lo = live.indptr[s]
    count = np.where(inside, live.indptr[s + 1] - lo, 0)
    key = s * span + positives
    at = np.searchsorted(cell_keys, key)
    found = inside & (at < cell_keys.shape[0])
    found[found] = cell_keys[at[found]] == key[found]
    choices = count - found
    draw = np.floor(rng.random((steps.shape[0], n)) * np.maximum(choices, 1)[:, None])
    draw = draw.astype(np.int64)
    skip = found[:, None] & (draw >= (at - lo)[:, None])
    neg = live.streamers[np.minimum(lo[:, None] + draw + skip, live.streamers.shape[0] - 1)]
    ok = np.broadcast_to((choices > 0)[:, None], neg.shape).copy()
    return np.where(ok, neg, 0).astype(np.int64), ok


@pytest.mark.parametrize("seed", range(5))
def test_live_sampler_draws_exactly_what_the_global_search_drew(seed: int) -> None:
    ds = _random_log(seed)
    rng = np.random.default_rng(100 + seed)
    for definition in ("broadcast", "rows"):
        live = availability(ds, definition)
        sampler = LiveSampler(live, ds.n_streamers)
        m = 400
        # steps inside and outside the index, positives live, off air, unknown and padding
        steps = rng.integers(-3, live.n_steps + 3, size=m).astype(np.int64)
        positives = rng.integers(0, ds.n_streamers + 2, size=m).astype(np.int64)
        live_pick = rng.random(m) < 0.6
        for i in np.flatnonzero(live_pick):
            at = live.streamers_at(int(steps[i]))
            if at.shape[0]:
                positives[i] = at[int(rng.integers(at.shape[0]))]
        got = sampler.sample(steps, positives, 7, np.random.default_rng(seed))
        want = _sample_by_global_search(live, ds.n_streamers, steps, positives, 7,
                                        np.random.default_rng(seed))
        np.testing.assert_array_equal(got[0], want[0])
        np.testing.assert_array_equal(got[1], want[1])
        assert got[1].any() and not got[1].all()


def _sequences_by_loop(ds: object, mask: np.ndarray, window_len: int) -> tuple[np.ndarray, ...]:
    """The former `make_sequences`: one Python iteration per chunk."""
    rows = np.flatnonzero(mask)
    rows = rows[np.lexsort((rows, ds.start[rows], ds.user[rows]))]
    user = ds.user[rows]
    bounds = np.flatnonzero(np.diff(user)) + 1
    starts = np.concatenate([[0], bounds])
    ends = np.concatenate([bounds, [rows.shape[0]]])
    chunks = []
    for a, b in zip(starts.tolist(), ends.tolist(), strict=True):
        for stop in range(b, a + 1, -window_len):
            chunks.append((max(a + 1, stop - window_len), stop))
    shape = (len(chunks), window_len)
    keys, steps = np.zeros(shape, np.int64), np.zeros(shape, np.int64)
    tkeys, tsteps = np.zeros(shape, np.int64), np.zeros(shape, np.int64)
    streamer, start = ds.streamer[rows].astype(np.int64), ds.start[rows].astype(np.int64)
    for i, (lo, hi) in enumerate(chunks):
        n = hi - lo
        keys[i, -n:], steps[i, -n:] = streamer[lo - 1 : hi - 1], start[lo - 1 : hi - 1]
        tkeys[i, -n:], tsteps[i, -n:] = streamer[lo:hi], start[lo:hi]
    return keys, steps, tkeys, tsteps


@pytest.mark.parametrize("seed", range(5))
def test_sequences_equal_the_chunk_by_chunk_cut(seed: int) -> None:
    ds = _random_log(seed)
    rng = np.random.default_rng(seed)
    for window_len in (1, 2, 3, 5, 16):
        for mask in (np.ones(len(ds), dtype=bool), rng.random(len(ds)) < 0.5,
                     np.zeros(len(ds), dtype=bool)):
            seqs = make_sequences(ds, mask, window_len)
            want = _sequences_by_loop(ds, mask, window_len)
            got = (seqs.keys, seqs.steps, seqs.target_keys, seqs.target_steps)
            for g, w in zip(got, want, strict=True):
                assert g.dtype == w.dtype and g.shape == w.shape
                np.testing.assert_array_equal(g, w)


@pytest.mark.parametrize("arch", ["liverank", "sasrec", "gru", "mf"])
def test_training_forms_give_the_plain_forms_scores_and_gradients(arch: str) -> None:
    # Training steps gather rows with an index_add backward (window and candidates at once)
    # and score with a sum instead of nn.Embedding and bmm: same values, same gradients
    # (none for the padding rows).
    model = SeqRec(ModelConfig(arch=arch, n_items=30, window_len=6, dim=16, heads=2,
                               dropout=0.0, time=arch == "liverank",
                               repeat=arch == "liverank"))
    inputs = random_inputs(model, ENC, batch=5, candidates=9, rng=np.random.default_rng(3),
                           empty_rows=1)
    inputs["cand_items"][:, -2:] = 0  # padding candidates too
    tensors = _tensors(inputs)
    per_mode = []
    for training in (False, True):
        model.train(training)
        model.zero_grad()
        cand = torch.from_numpy(np.repeat(inputs["cand_items"][:, None], 6, axis=1))
        rep = torch.from_numpy(np.repeat(inputs["cand_repeat"][:, None], 6, axis=1))
        if training:  # what batch_loss calls: one lookup of window and candidate items
            scores = model.position_scores(*tensors[:4], cand, rep)
        else:
            scores = model.score(model.all_positions(*tensors[:4]), cand, rep)
        (scores.square().mean() + model(*tensors).sum()).backward()
        per_mode.append((scores.detach(), {n: p.grad.clone() for n, p in
                                           model.named_parameters() if p.grad is not None}))
    (plain, plain_grads), (fast, fast_grads) = per_mode
    torch.testing.assert_close(fast, plain)
    assert plain_grads.keys() == fast_grads.keys()
    for name, grad in plain_grads.items():
        torch.testing.assert_close(fast_grads[name], grad, msg=name)
    looked_up = ("item_emb", "ctx_emb", "hour_emb", "day_emb", "q_hour_emb", "q_day_emb",
                 "gap_out_emb", "gap_bias")  # (rec/cnt tables are read whole, not looked up)
    for name in looked_up:
        if hasattr(model, name):
            assert (fast_grads[f"{name}.weight"][0] == 0).all(), name
    assert (fast_grads["item_emb.weight"] != 0).any()


@pytest.mark.parametrize("arch", ["liverank", "sasrec", "gru", "mf"])
def test_serving_forward_equals_the_last_position_of_training(arch: str) -> None:
    # `forward` runs the last block for the last position alone and scores with the user
    # vector on the left (one GEMM when the candidate row is shared): the same scores as
    # the training form at the last position, for a row per request and one shared row.
    model = _model(arch, time=arch == "liverank", repeat=arch == "liverank")
    inputs = random_inputs(model, ENC, batch=6, candidates=11, rng=np.random.default_rng(4),
                           empty_rows=1)
    inputs["items"][1, :4] = 0  # a short window among full ones
    tensors = _tensors(inputs)
    with torch.no_grad():
        users = model.all_positions(*tensors[:4])
        assert model.encode(tensors[0], tensors[1], tensors[3], last_only=True).shape[1] == (
            6 if arch in ("gru", "mf") else 1)
        for cand in (tensors[4], tensors[4][:1]):
            want = model.score(users[:, -1], cand.expand(6, -1), tensors[5])
            torch.testing.assert_close(model(*tensors[:4], cand, tensors[5]), want)
