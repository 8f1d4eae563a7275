"""Worker faults mid-replay: SIGKILL at ~10/50/90 % answered and restart, a worker paused
past its session timeout, two workers with one killed.

The replay is held at gates, so each fault lands while the worker answers a backlog and
part of the log is still unsent. Workers run with default settings (memory:// store).
Every check is strict. (These tests found a partition whose last records Faust dropped
after a reassignment; `GapGuard.stalled` now reads such a tail back.)
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest
from checker import Log, check
from helpers import (
    AnswerTail,
    FaultModel,
    GatedReplay,
    K,
    Worker,
    answered_ids,
    assert_answered_right,
    now_ms,
    wait_all_answered,
    wait_answers,
)

from liverank.broker import kafka, tansu
from liverank.core.settings import Settings

pytestmark = [pytest.mark.kafka, pytest.mark.faults]


@pytest.mark.timeout(240)
def test_worker_sigkill_at_10_50_90_percent_then_restart(
        fault_model: FaultModel, fault_log: Log, fault_settings: Settings,
        workers: list[Worker], replays: list[GatedReplay], tmp_path: Path,
        record_fault: Callable[..., str]) -> None:
    """Three SIGKILLs, each followed by a restart with default settings: at ~10 %, ~50 %
    and ~90 % of the requests answered, every time with a backlog being answered and the
    rest of the log held back. Every request answered; duplicates (answers published after
    the last commit, redone by the next worker) identical: windows keep the entries behind
    the committed floor (`UserWindows`), so a redone request sees the history it saw."""
    kafka.ensure_topics(fault_settings)
    total = len(fault_log.requests)
    # Kill marks (distinct requests answered, followed on the topic); answers come in
    # bursts of batches faster than they can be followed, so a kill lands a few percent
    # past its mark (the third aims a little low to land near 90 %), and always before its
    # gate: mid-replay by construction.
    marks = (0.1, 0.5, 0.85)
    replay = GatedReplay(fault_model.csv, fault_settings, [0.35, 0.75, 0.995])
    replays.append(replay)
    worker = Worker(fault_settings, fault_model.model_dir, tmp_path, "w0").start()
    workers.append(worker)
    worker.wait_ready(60)
    progress = AnswerTail(fault_settings, fault_log).start()
    replay.start()
    kills: list[int] = []
    at_kill: list[int] = []
    try:
        for i, mark in enumerate(marks):
            progress.wait(mark * total, 90, worker.tail)
            worker.kill()
            kills.append(now_ms())
            at_kill.append(len(answered_ids(fault_settings, fault_log)))
            assert at_kill[-1] < total, f"kill {i}: everything was answered already"
            worker = Worker(fault_settings, fault_model.model_dir, tmp_path,
                            f"w{i + 1}").start()
            workers.append(worker)
            replay.open(i)
    finally:
        progress.stop()
    replay.join(120)
    answers = wait_all_answered(fault_settings, fault_log, 120, lambda: worker.running)
    result = check(fault_log, answers, K, kills)
    record_fault("worker_sigkill", result, runs=1,
                 answered_at_kills=[round(a / total, 3) for a in at_kill])
    print(f"answered at the kills: {[f'{a / total:.0%}' for a in at_kill]}")  # noqa: T201
    assert_answered_right(result, fault_settings, fault_log, answers, workers)


@pytest.mark.parametrize("peer", [False, True], ids=["alone", "with-a-peer"])
@pytest.mark.timeout(180)
def test_worker_paused_past_its_session_timeout(
        fault_model: FaultModel, fault_log: Log, fault_settings: Settings,
        workers: list[Worker], replays: list[GatedReplay], tmp_path: Path,
        record_fault: Callable[..., str], peer: bool) -> None:
    """A slow consumer: a worker SIGSTOPped for longer than its session timeout while it
    answers a backlog, then SIGCONT; everything answered, duplicates identical.

    ``alone``: the only member of its group (tansu 0.6.0 then lets it carry on: nothing
    else asks the coordinator to expire it). ``with-a-peer``: a second worker is in the
    group; the paused one's partitions move to it during the pause, and when the paused
    one wakes up it still holds the batches it was processing (a zombie) and must rejoin:
    what both publish must agree."""
    session_s = float(tansu.faust_overrides()["broker_session_timeout"])
    pause_s = session_s + 4.0
    kafka.ensure_topics(fault_settings)
    worker = Worker(fault_settings, fault_model.model_dir, tmp_path, "w1").start()
    group = [worker]
    if peer:
        group.append(Worker(fault_settings, fault_model.model_dir, tmp_path, "w2").start())
    workers.extend(group)
    for w in [*group, worker]:  # the first one again: ready after the peer's rebalance
        w.wait_ready(60)
    total = len(fault_log.requests)
    replay = GatedReplay(fault_model.csv, fault_settings, [0.5]).start()
    replays.append(replay)
    wait_answers(group, total / 3, 60)
    paused = now_ms()
    worker.pause()
    try:
        replay.open(0)
        time.sleep(pause_s)
    finally:
        worker.resume()
    resumed = now_ms()
    replay.join(120)
    answers = wait_all_answered(fault_settings, fault_log, 120,
                                lambda: all(w.running for w in group))
    # Recovery: alone, from the SIGCONT; with a peer, from the SIGSTOP (the group is to
    # recover by itself, the peer taking the paused worker's partitions).
    result = check(fault_log, answers, K, [paused if peer else resumed])
    record_fault("worker_paused" + ("_with_peer" if peer else ""), result, pause_s=pause_s)
    assert_answered_right(result, fault_settings, fault_log, answers, group)
    assert all(w.running for w in group), [w.tail() for w in group]


@pytest.mark.timeout(240)
def test_two_workers_one_killed_the_survivor_takes_over(
        fault_model: FaultModel, fault_log: Log, fault_settings: Settings,
        workers: list[Worker], replays: list[GatedReplay], tmp_path: Path,
        record_fault: Callable[..., str]) -> None:
    """Two workers in one group share the user partitions; one is SIGKILLed mid-replay.
    After its session times out the survivor gets its partitions (windows restored from
    the changelog) and redoes what was not committed: everything answered, duplicates
    identical."""
    kafka.ensure_topics(fault_settings)
    first = Worker(fault_settings, fault_model.model_dir, tmp_path, "w1").start()
    second = Worker(fault_settings, fault_model.model_dir, tmp_path, "w2").start()
    workers += [first, second]
    first.wait_ready(60)
    second.wait_ready(60)
    first.wait_ready(60)  # ready again only after the rebalance that gave w2 its share
    total = len(fault_log.requests)
    replay = GatedReplay(fault_model.csv, fault_settings, [0.5]).start()
    replays.append(replay)
    wait_answers([first, second], total / 3, 60)
    served = {w.name: w.answers() for w in (first, second)}
    first.kill()
    killed = now_ms()
    replay.open(0)
    replay.join(120)
    answers = wait_all_answered(fault_settings, fault_log, 150, lambda: second.running)
    result = check(fault_log, answers, K, [killed])
    record_fault("two_workers_one_killed", result, before_kill=served)
    assert all(served.values()), f"both workers should have served before the kill: {served}"
    assert_answered_right(result, fault_settings, fault_log, answers, [first, second])
    assert second.running, second.tail()
