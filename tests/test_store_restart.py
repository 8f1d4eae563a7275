"""Local state is a cache: a worker whose RocksDB store is ahead of its changelog restarts.

The scenario of a fresh broker (or deleted topics) under an old data directory: a worker
with ``LIVERANK_STORE=rocksdb://`` answers a tiny log and stops, leaving persisted changelog
offsets in its data directory; then a fresh embedded broker gets the same log, and a worker
with the same data directory starts against it. Faust alone stops that worker at start-up
with ``ConsistencyError`` (persisted offset above the changelog's highwater);
`liverank.services.faustcompat.heal_local_state` wipes the partitions instead, logs it and
restores them from the (empty) changelog, and the worker answers every request once, as
the first, fresh worker did. The fake scorer serves (no training); every wait is bounded.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from liverank.broker import kafka
from liverank.broker.embedded import EmbeddedBroker, free_port
from liverank.core import events as ev
from liverank.core.settings import Settings
from liverank.model.data.synth import write as write_synth
from liverank.model.data.timeline import build_timeline
from liverank.model.data.twitch import load_interactions
from liverank.replay.producer import replay_to_kafka
from liverank.services.testing import write_fake_model

WIPED = "wiped: persisted offset"  # heal_local_state's warning


class Worker:
    """``python -m liverank.services.testing serve`` (the fake scorer) with a RocksDB store in
    ``data_dir``; its log goes to a file."""

    def __init__(self, settings: Settings, model: Path, data_dir: Path, log: Path):
        self.port = free_port()
        self.log = log
        self.env = {k: v for k, v in os.environ.items()
                    if not k.startswith("LIVERANK_") and k != "KAFKA_BOOTSTRAP_SERVERS"}
        self.env |= {"LIVERANK_KAFKA_BOOTSTRAP": settings.kafka_bootstrap,
                     "LIVERANK_TOPIC_PREFIX": settings.topic_prefix,
                     "LIVERANK_BROKER_KIND": settings.broker_kind,
                     "LIVERANK_STORE": "rocksdb://", "LIVERANK_DATA_DIR": str(data_dir),
                     "LIVERANK_WEB_PORT": str(self.port), "LIVERANK_WORKER_ID": "svc",
                     "LIVERANK_MODEL_DIR": str(model), "LIVERANK_MODEL_POLL_S": "0",
                     "LIVERANK_WATERMARK_WAIT_MS": "10000"}
        with open(log, "ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "liverank.services.testing", "serve"], env=self.env,
                cwd=data_dir.parent, stdout=out, stderr=subprocess.STDOUT)

    def tail(self, n: int = 4000) -> str:
        return self.log.read_text(errors="replace")[-n:] if self.log.exists() else ""

    def wait_ready(self, timeout: float = 90.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, f"the worker exited:\n{self.tail()}"
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/health",
                                            timeout=1) as r:
                    ready = json.loads(r.read()).get("ready")
            except urllib.error.HTTPError as exc:  # 503 while not ready
                ready = json.loads(exc.read()).get("ready")
            except (OSError, ValueError):
                ready = False
            if ready:
                return
            time.sleep(0.3)
        raise TimeoutError(f"worker not ready in {timeout:.0f} s\n{self.tail()}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)


@pytest.fixture
def workers() -> Iterator[list[Worker]]:
    started: list[Worker] = []
    yield started
    for w in started:
        w.stop()


def answers(settings: Settings, want: set[str], worker: Worker, timeout: float = 120.0
            ) -> list[ev.Recommendation]:
    """The recommendations topic once every request of ``want`` is answered (bounded)."""
    deadline = time.monotonic() + timeout
    while True:
        msgs = kafka.read_topic(settings, settings.topic(kafka.RECOMMENDATIONS),
                                timeout_s=30)
        recs = [ev.decode(m.value(), ev.Recommendation) for m in msgs]
        got = {r.request_id for r in recs}  # type: ignore[union-attr]
        if got >= want:
            return recs  # type: ignore[return-value]
        assert worker.proc.poll() is None, f"the worker exited:\n{worker.tail()}"
        if time.monotonic() > deadline:
            raise TimeoutError(f"{len(want - got)} of {len(want)} requests unanswered after "
                               f"{timeout:.0f} s\n{worker.tail()}")
        time.sleep(1.0)


def by_request(recs: list[ev.Recommendation]) -> dict[str, list[tuple[str, str, float]]]:
    """Each request's answer (streamer, stream, score), asserting there is one per request."""
    out: dict[str, list[tuple[str, str, float]]] = {}
    for r in recs:
        assert r.request_id not in out, f"{r.request_id} answered twice"
        out[r.request_id] = [(i.streamer, i.stream, round(i.score, 5)) for i in r.items]
    return out


def test_a_store_ahead_of_a_own_broker_is_wiped_and_restored_not_a_crash(
        kafka_settings: Settings, own_broker: EmbeddedBroker,
        tmp_path: Path, workers: list[Worker]) -> None:
    t0 = time.monotonic()
    csv = tmp_path / "tiny.csv"
    write_synth("tiny", 0, csv)
    data = load_interactions(csv)
    tl = build_timeline(data)
    want = {f"req:{r}" for r in range(len(data))}
    model = write_fake_model(tmp_path / "model", "fake-v1")
    data_dir = tmp_path / "service-data"
    data_dir.mkdir()

    # 1. A fresh worker answers the log and stops: its store holds changelog offsets.
    first_settings = kafka_settings
    kafka.ensure_topics(first_settings)
    first = Worker(first_settings, model, data_dir, tmp_path / "first.log")
    workers.append(first)
    first.wait_ready()
    report = replay_to_kafka(tl, first_settings)
    assert report.ok, report.first_error
    reference = by_request(answers(first_settings, want, first))
    first.stop()
    assert first.proc.returncode is not None
    t1 = time.monotonic()

    # 2. A fresh broker, the same log, the same data directory.
    settings = kafka_settings.model_copy(update={"kafka_bootstrap": own_broker.bootstrap,
                                                 "broker_kind": "tansu"})
    kafka.ensure_topics(settings)
    report = replay_to_kafka(tl, settings)
    assert report.ok, report.first_error
    second = Worker(settings, model, data_dir, tmp_path / "second.log")
    workers.append(second)
    second.wait_ready()
    recs = answers(settings, want, second)
    assert second.proc.poll() is None, second.tail()
    log = second.log.read_text(errors="replace")
    assert "ConsistencyError" not in log
    wipes = [line for line in log.splitlines() if WIPED in line]
    assert wipes, f"no wipe logged:\n{second.tail()}"
    assert all("ahead of its changelog" in line and "highwater 0" in line for line in wipes)
    got = by_request(recs)  # each request answered once...
    assert set(got) == want
    assert got == reference  # ... as the fresh worker answered it
    print(f"store restart: {len(want)} requests, {len(wipes)} partitions wiped; "  # noqa: T201
          f"first run {t1 - t0:.1f} s, restart on a fresh broker {time.monotonic() - t1:.1f} s")
