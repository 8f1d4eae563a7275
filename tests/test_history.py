"""Training from the topics: a log replayed into the broker and read back up to a cut gives
the CSV's rows as known at the cut, and ``train --from-topics`` the same weights as
``train --data`` on those rows."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import torch
import typer
from typer.testing import CliRunner

from liverank.client.history import read_log
from liverank.core.settings import Settings
from liverank.model.cli import register
from liverank.model.data.eventlog import as_known_at
from liverank.model.data.synth import generate
from liverank.model.data.timeline import build_timeline
from liverank.model.data.twitch import Interactions, write_twitch
from liverank.replay.producer import replay_to_kafka

CUT = 300


@pytest.fixture(scope="module")
def tiny() -> Interactions:
    return generate("tiny", seed=0)


def _app() -> typer.Typer:
    app = typer.Typer()
    register(app, read_log=read_log)  # as the root CLI wires it
    return app


def _env(settings: Settings) -> dict[str, str]:
    return {"LIVERANK_KAFKA_BOOTSTRAP": settings.kafka_bootstrap,
            "LIVERANK_TOPIC_PREFIX": settings.topic_prefix,
            "LIVERANK_BROKER_KIND": settings.broker_kind,
            "LIVERANK_KAFKA_TIMEOUT_S": str(settings.kafka_timeout_s)}


def test_training_from_topics_equals_training_from_the_csv(
        kafka_settings: Settings, tiny: Interactions, tmp_path: Path) -> None:
    report = replay_to_kafka(build_timeline(tiny), kafka_settings)
    assert report.ok, report

    log = read_log(kafka_settings, until_step=CUT, timeout_s=60)
    pd.testing.assert_frame_equal(log.to_frame(), as_known_at(tiny, CUT).to_frame())
    everything = read_log(kafka_settings, timeout_s=60)
    assert len(everything) == len(tiny)

    data = tmp_path / "tiny.csv"
    write_twitch(tiny, data)
    common = ["--until", f"step:{CUT}", "--preset", "tiny", "--epochs", "1", "--val-offset",
              "120", "--test-offset", "60", "--threads", "1"]
    runner, app = CliRunner(), _app()
    r = runner.invoke(app, ["train", "--from-topics", "--out", str(tmp_path / "topics"),
                            *common], env=_env(kafka_settings))
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["train", "--data", str(data), "--out", str(tmp_path / "csv"),
                            *common])
    assert r.exit_code == 0, r.output
    a = torch.load(tmp_path / "topics" / "weights.pt", weights_only=True)
    b = torch.load(tmp_path / "csv" / "weights.pt", weights_only=True)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_from_topics_without_a_broker_is_one_line(tmp_path: Path) -> None:
    env = {"LIVERANK_KAFKA_BOOTSTRAP": "127.0.0.1:1", "LIVERANK_KAFKA_TIMEOUT_S": "1",
           "LIVERANK_BROKER_KIND": "kafka"}
    r = CliRunner().invoke(_app(), ["train", "--from-topics", "--out", str(tmp_path / "x")],
                           env=env)
    assert r.exit_code == 2, r.output
    lines = [line for line in r.output.splitlines() if line.strip()]
    assert len(lines) == 1 and "no Kafka broker answered at 127.0.0.1:1" in lines[0], r.output
    assert not (tmp_path / "x").exists()
