"""``liverank bench e2e`` on the tiny log: every request answered, counted by an independent
reader, with one worker and with two in one group; the run's topics deleted on tansu."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import msgspec
import numpy as np
import pytest
from confluent_kafka.admin import AdminClient

from liverank.cli.bench_e2e import (
    CSV_FIELDS,
    AnswerCounter,
    E2EOptions,
    _Answer,
    _drain,
    format_summary,
    run_e2e,
)
from liverank.model.data.synth import generate
from liverank.model.data.twitch import write_twitch


def _answer(rid: str, trigger: str = "request", fallback: bool = False) -> bytes:
    return msgspec.json.encode({"request_id": rid, "trigger": trigger, "published_ms": 2_000,
                                "produced_ms": 1_500, "fallback": fallback, "items": []})


def test_answer_counter_counts_each_expected_request_once() -> None:
    expected = np.zeros(5, dtype=bool)
    expected[[1, 3]] = True
    counter = AnswerCounter(expected)
    decoder = msgspec.json.Decoder(_Answer)
    for raw in (_answer("req:1"), _answer("req:1"), _answer("req:3", fallback=True),
                _answer("req:2"), _answer("req:9"), _answer("watch:1", trigger="watch"),
                _answer("junk")):
        counter.add(raw, decoder)
    assert counter.answered == 2 and counter.duplicates == 1 and counter.fallback == 1
    assert counter.unexpected == 3  # req:2 was not sent, req:9 is out of range, junk
    assert list(counter.latency_ms) == [500.0, 500.0]
    assert counter.last_published_ms == 2_000


def test_the_drain_stops_loudly_when_the_embedded_broker_exits(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A broker gone mid-run stops the wait at once (it used to sample 0 answers/s until the
    stall timeout), naming its exit code and the file with its whole output."""
    import time

    from liverank.broker.embedded import EmbeddedBroker

    log = tmp_path / "tansu.log"
    broker = EmbeddedBroker.start("127.0.0.1:0", log_path=log)
    try:
        counter = AnswerCounter(np.ones(3, dtype=bool))
        broker.process.kill()
        t0 = time.monotonic()
        with caplog.at_level("ERROR"):
            stalled = _drain(counter, 3, [], stall_s=60.0, errors=[], broker=broker)
        assert stalled and time.monotonic() - t0 < 5
        assert f"exited with code {broker.process.returncode}" in caplog.text
        assert str(log) in caplog.text and "0 of 3 answered" in caplog.text
        assert "tansu broker" in log.read_text()  # what it wrote is on disk
    finally:
        broker.stop()


def test_the_summary_says_when_the_broker_exited() -> None:
    s = {"scale": "tiny", "data": "d", "requests": 3, "workers": 1, "store": "m",
         "partitions": 8, "wall_s": 1.0, "answers_per_s": 1.0, "replay_messages": 9,
         "replay_s": 0.1, "answered": 1, "unanswered": 2, "duplicates": 0,
         "fallback_share": 0.0, "p50_ms": 1, "p99_ms": 2, "end_workers_rss_mb": 1,
         "peak_workers_rss_mb": 1, "end_broker_rss_mb": 1, "peak_broker_rss_mb": 1,
         "end_lag": None, "lag_settle_s": None, "lag_at_last_answer": None,
         "topics_released": 0, "broker_rss_mb_after_release": None,
         "broker_mb_freed_by_topic": {}}
    assert "broker exited" not in format_summary({**s, "broker_exit": None})
    assert "broker exited with code -9" in format_summary({**s, "broker_exit": -9})


@pytest.fixture
def on_session_broker(kafka_bootstrap: str, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("LIVERANK_KAFKA_BOOTSTRAP", kafka_bootstrap)
    monkeypatch.delenv("KAFKA_BOOTSTRAP_SERVERS", raising=False)
    return kafka_bootstrap


def _prefixed(bootstrap: str, prefix: str) -> list[str]:
    topics = AdminClient({"bootstrap.servers": bootstrap}).list_topics(timeout=10).topics
    return [t for t in topics if t.startswith(prefix)]


@pytest.mark.parametrize("workers, steps", [(1, 200), (2, None)])
def test_e2e_answers_every_request(on_session_broker: str, kafka_broker_kind: str,
                                   tmp_path: Path, workers: int, steps: int | None) -> None:
    data = tmp_path / "tiny.csv"
    ds = generate("tiny", seed=0)
    write_twitch(ds, data)
    summary = run_e2e(E2EOptions(data=data, scale="tiny", workers=workers, steps=steps,
                                 store="memory://", sample_s=1.0, stall_s=60.0,
                                 out=tmp_path / "e2e"))
    rows = len(ds) if steps is None else int(np.count_nonzero(ds.start < steps))
    assert summary["requests"] == rows  # a request before every watch replayed
    assert summary["answered"] == rows and summary["unanswered"] == 0
    assert summary["duplicates"] == 0 and summary["unexpected_answers"] == 0
    assert summary["wall_s"] > 0 and not summary["stalled"]
    assert summary["broker_exit"] is None
    assert 0 < summary["fallback_share"] < 1  # a user's first watch has no window yet
    # each worker of the group answered its share
    assert len(summary["answers_by_worker"]) == workers
    assert all(a > 0 for a in summary["answers_by_worker"])
    assert sum(summary["answers_by_worker"]) >= rows
    with open(tmp_path / "e2e" / "e2e.csv") as f:
        samples = list(csv.DictReader(f))
    assert tuple(samples[0]) == CSV_FIELDS
    assert int(samples[-1]["answered"]) == rows and int(samples[-1]["outstanding"]) == 0
    assert (tmp_path / "e2e" / "e2e.png").stat().st_size > 0
    assert json.loads((tmp_path / "e2e" / "summary.json").read_text()) == summary
    if kafka_broker_kind == "tansu":  # every record in memory: the run gave them back
        assert summary["topics_released"] >= 5
        assert _prefixed(on_session_broker, summary["topic_prefix"]) == []


@pytest.mark.parametrize("args, needle", [
    (["--scale", "huge"], "--scale must be one of"),
    (["--data", "/nonexistent/log.csv"], "no such file"),
    (["--data", "BAD"], "not an integer"),
])
def test_bad_input_is_a_one_line_error(tmp_path: Path, args: list[str], needle: str) -> None:
    from typer.testing import CliRunner

    from liverank.cli.main import app

    bad = tmp_path / "bad.csv"
    bad.write_text("user,stream,streamer,start,stop\n1,2,a,x,3\n")
    args = [str(bad) if a == "BAD" else a for a in args]
    result = CliRunner().invoke(app, ["bench", "e2e", *args, "--out", str(tmp_path / "o")])
    assert result.exit_code == 2, result.output
    assert needle in result.output and len(result.output.strip().splitlines()) == 1
