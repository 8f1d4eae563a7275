"""Ranking metrics on hand-made ranks."""

from __future__ import annotations

import math

import numpy as np
import pytest

from liverank.model.metrics import Accumulator, ranking_metrics


def test_metrics_on_hand_made_ranks() -> None:
    m = ranking_metrics(np.array([1, 2, np.inf, 10, 11]))
    assert m["n"] == 5
    assert m["HR@1"] == pytest.approx(0.2)
    assert m["HR@5"] == pytest.approx(0.4)
    assert m["HR@10"] == pytest.approx(0.6)
    assert m["NDCG@1"] == pytest.approx(0.2)
    assert m["NDCG@5"] == pytest.approx((1 + 1 / math.log2(3)) / 5)
    assert m["NDCG@10"] == pytest.approx((1 + 1 / math.log2(3) + 1 / math.log2(11)) / 5)
    assert m["MRR"] == pytest.approx((1 + 0.5 + 0 + 0.1 + 1 / 11) / 5)


def test_accumulator_splits_new_and_repeat_targets() -> None:
    acc = Accumulator()
    for rank, repeat in [(1, True), (3, True), (None, False), (2, False)]:
        acc.add(rank, repeat)
    r = acc.result()
    assert r["repeat_ratio"] == 0.5 and r["unranked"] == 1
    assert r["repeat"]["HR@1"] == 0.5 and r["new"]["HR@1"] == 0.0
    assert r["new"]["MRR"] == pytest.approx(0.25)
    assert r["all"]["n"] == 4


def test_empty_rank_list_gives_nan_not_an_error() -> None:
    assert math.isnan(ranking_metrics(np.array([]))["HR@1"])
