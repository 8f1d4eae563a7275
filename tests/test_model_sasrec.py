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
