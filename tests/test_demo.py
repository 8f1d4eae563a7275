"""The demo end to end at tiny scale (the same code path as `make demo`), and the
offline/online agreement: every online answer equals the ranking `evaluate --targets all
--availability broadcast` computes for the same request, list for list."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from liverank.cli.demo import DemoOptions, run_demo
from liverank.model.data.twitch import load_interactions
from liverank.model.evaluate import iter_requests
from liverank.model.scorer import OnnxScorer


@pytest.fixture(scope="module")
def demo_run(kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory
             ) -> tuple[dict, Path]:
    out = tmp_path_factory.mktemp("demo")
    mp = pytest.MonkeyPatch()
    mp.setenv("LIVERANK_KAFKA_BOOTSTRAP", kafka_bootstrap)
    mp.delenv("KAFKA_BOOTSTRAP_SERVERS", raising=False)
    try:
        report = run_demo(DemoOptions(scale="tiny", out=out, seed=0, timeout_s=240))
    finally:
        mp.undo()
    return report, out


def test_demo_answers_every_request_with_live_streams_better_than_pop(
        demo_run: tuple[dict, Path]) -> None:
    report, out = demo_run
    assert report["requests"] > 100
    assert report["answered_requests"] == report["requests"]
    assert report["duplicates"] == 0
    assert report["live_share"] == 1.0
    model, pop = report["model"]["all"], report["pop"]["all"]
    assert model["n"] == report["requests"]
    assert model["NDCG@10"] > pop["NDCG@10"]
    for name in ("summary.md", "online.json", "offline.json", "answers.jsonl",
                 "online_by_day.png"):
        assert (out / name).exists(), name
    assert set(report["stages_s"]) >= {"broker", "data", "train", "export", "serve",
                                       "replay", "monitor"}


def test_online_answers_equal_offline_rankings(demo_run: tuple[dict, Path]) -> None:
    report, out = demo_run
    ds = load_interactions(out / "tiny.csv")
    scorer = OnnxScorer(out / "model")
    answers = {a["request_id"]: a for a in map(json.loads, (out / "answers.jsonl").open())}
    triples = list(iter_requests(ds, report["pivot_2"], ds.max_step, scorer.window_len))
    assert len(triples) == report["requests"]
    ranked = scorer.rank([r for _, r, _ in triples], k=report["k"])
    hits_offline = hits_online = 0
    for (rid, _, truth), offline in zip(triples, ranked, strict=True):
        online = answers[rid]
        assert not online["late"], rid
        assert online["streamers"] == offline.streamers, rid
        for a, b in zip(online["scores"], offline.scores, strict=True):
            assert math.isclose(a, b, abs_tol=1e-5), rid
        hits_offline += truth in offline.streamers
        hits_online += truth in online["streamers"]
    assert hits_online == hits_offline
    assert math.isclose(hits_online / len(triples), report["model"]["all"]["HR@10"])
