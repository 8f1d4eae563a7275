"""The demo end to end at tiny scale (the same code path as `make demo`), and the
offline/online agreement: every online answer equals the ranking `evaluate --targets all
--availability broadcast` computes for the same request, list for list. The test window is
paced at half the capacity calibrated in the run, so its latency is the service's own."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import msgspec
import pytest
import schema_check
from confluent_kafka.admin import AdminClient

from liverank.broker.kafka import TOPICS, read_topic
from liverank.cli.demo import DemoOptions, run_demo
from liverank.core import events as ev
from liverank.core.settings import Settings
from liverank.model.data.twitch import load_interactions
from liverank.model.evaluate import iter_requests
from liverank.model.scorer import OnnxScorer

SEAL_KEY = b"\x00seal"  # the service's seal of recommendations-latest (docs/events.md)


@pytest.fixture(scope="module")
def demo_run(kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory
             ) -> tuple[dict, Path]:
    out = tmp_path_factory.mktemp("demo")
    mp = pytest.MonkeyPatch()
    mp.setenv("LIVERANK_KAFKA_BOOTSTRAP", kafka_bootstrap)
    mp.delenv("KAFKA_BOOTSTRAP_SERVERS", raising=False)
    before = _demo_prefixes(kafka_bootstrap)
    try:
        report = run_demo(DemoOptions(scale="tiny", out=out, seed=0, timeout_s=240,
                                      keep_topics=True))  # read back below
    finally:
        mp.undo()
    # The run's topics stay on the session's broker: which prefix is this run's.
    (report["topic_prefix"],) = _demo_prefixes(kafka_bootstrap) - before
    return report, out


def _demo_prefixes(bootstrap: str) -> set[str]:
    names = AdminClient({"bootstrap.servers": bootstrap}).list_topics(timeout=10).topics
    return {m.group(1) for t in names if (m := re.fullmatch(r"(demo\d+-)recommendations", t))}


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
                 "online_by_day.png", "latency.png"):
        assert (out / name).exists(), name
    assert set(report["stages_s"]) >= {"broker", "data", "train", "export", "serve",
                                       "fill", "calibrate", "replay", "monitor"}
    assert report["rep"]["all"]["n"] == report["requests"]
    assert set(report["by_day_pop"]) == set(report["by_day_rep"]) == set(report["by_day"])


def test_test_window_is_paced_at_half_the_calibrated_capacity(
        demo_run: tuple[dict, Path]) -> None:
    report, out = demo_run
    pacing = report["pacing"]
    assert pacing["source"] == "calibrated"
    lo, hi = pacing["calibration_steps"]
    assert hi == report["pivot_2"] - 1 and lo <= hi
    # the calibration backlog was answered but not scored
    assert report["requests_not_scored"] == pacing["calibration_requests"] > 0
    assert pacing["rate"] == pytest.approx(0.5 * pacing["calibration_answers_per_s"])
    # whether the service held that rate is judged on the test window's answers and said
    held = pacing["held"]
    assert held["offered_per_s"] == pacing["rate"] and isinstance(held["held"], bool)
    summary = (out / "summary.md").read_text()
    assert ("its own latency, not a backlog's" in summary) == held["held"]
    # the replay sent the test window at that rate: it took (requests / rate) seconds, not
    # the fraction of a second a --speed max replay takes
    replay = json.loads((out / "replay.json").read_text())
    assert replay["seconds"] >= 0.8 * report["requests"] / pacing["rate"]
    assert sum(n for _, n in report["latency_histogram"]) == report["requests"]
    # every user event of both replays was read (the fill sent no End of its own)
    assert report["user_events_read"] == report["user_events_expected"]


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


# What each topic's values decode to (the contract), strictly: the msgspec types, and the
# published schema files (schema_check: also no field the schema does not name).
_VALUES: dict[str, object] = {"stream-events": ev.StreamEvent, "user-events": ev.UserEvent,
                              "recommendations": ev.Recommendation,
                              "recommendations-latest": ev.Recommendation | None,
                              "recommendations-shadow": ev.Recommendation,
                              "dead-letters": ev.DeadLetter}


def test_every_published_record_conforms_to_its_topics_schema(
        demo_run: tuple[dict, Path], kafka_bootstrap: str) -> None:
    """Every record of every topic after the tiny run: keys as docs/events.md says, values
    accepted by the msgspec types and by docs/schemas; the latest topic holds each user's
    last answer."""
    report, _ = demo_run
    settings = Settings(kafka_bootstrap=kafka_bootstrap, topic_prefix=report["topic_prefix"],
                        kafka_timeout_s=10)
    counts: dict[str, int] = {}
    decoded: dict[str, list[tuple[bytes | None, object]]] = {}
    for topic in TOPICS:
        schema = schema_check.load(topic)
        decoder = msgspec.json.Decoder(_VALUES[topic])
        records = decoded[topic] = []
        for msg in read_topic(settings, settings.topic(topic), timeout_s=60):
            value, key, where = msg.value(), msg.key(), f"{topic}@{msg.partition()}:{msg.offset()}"
            assert schema_check.errors(None if value is None else json.loads(value),
                                       schema) == [], where
            rec = decoder.decode(b"null" if value is None else value)
            records.append((key, rec))
            if topic == "stream-events":
                want = None if isinstance(rec, ev.Watermark | ev.End) else ev.stream_key(
                    rec.stream)  # type: ignore[union-attr]
                assert key == want, where
            elif topic == "recommendations-latest" and key == SEAL_KEY:
                assert value is None, where  # a seal: a tombstone under a non-user key
            elif topic == "dead-letters":
                assert key is None, where
            else:
                assert rec is not None and key == ev.user_key(rec.user), where  # type: ignore
        counts[topic] = len(records)
    assert counts["stream-events"] > 0 and counts["user-events"] > report["requests"]
    # no duplicates in a clean run; the calibration backlog's requests are answered too
    assert counts["recommendations"] == report["requests"] + report["requests_not_scored"]
    assert counts["dead-letters"] == 0
    assert counts["recommendations-shadow"] == 0  # no candidate model in the demo
    last: dict[bytes | None, object] = dict(decoded["recommendations"])
    latest = {k: v for k, v in decoded["recommendations-latest"] if k != SEAL_KEY}
    assert latest == last  # written with the answers: each user's latest, nothing else
    assert any(k == SEAL_KEY for k, _ in decoded["recommendations-latest"])


def test_the_demos_steps_work_on_the_topics_it_created(monkeypatch: pytest.MonkeyPatch
                                                      ) -> None:
    """Each ``liverank`` step of the demo gets the run's broker, prefix, store and partition
    count (its own tansu's few partitions, `own_broker_settings`), not the settings'
    defaults, and no second bootstrap variable that could point elsewhere."""
    from liverank.broker.embedded import own_broker_settings
    from liverank.cli.demo import _child_env

    monkeypatch.delenv("LIVERANK_PARTITIONS", raising=False)
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "elsewhere:9092")
    settings = own_broker_settings("127.0.0.1:4242", topic_prefix="demo1-", store="memory://")
    env = _child_env(settings)
    assert "KAFKA_BOOTSTRAP_SERVERS" not in env
    assert env.items() >= {
        "LIVERANK_KAFKA_BOOTSTRAP": "127.0.0.1:4242", "LIVERANK_TOPIC_PREFIX": "demo1-",
        "LIVERANK_STORE": "memory://", "LIVERANK_PARTITIONS": str(settings.partitions)}.items()
    assert Settings().partitions != settings.partitions  # the default would not match
