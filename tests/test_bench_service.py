"""`liverank bench service`'s pure parts: the warm-up before a measured slice, the table
with the fallback share next to every figure; no broker."""

from __future__ import annotations

import time

import numpy as np
import pytest

from liverank.cli.bench import _service_rows, format_table
from liverank.cli.bench_service import (
    CONSUME_ONLY,
    FAKE,
    SCORE_ONLY,
    SERVICE,
    _broker_floor,
    _loop_cpu_s,
    _part,
    bench_table,
    latency_figures,
    paced_load,
)
from liverank.core.settings import Settings
from liverank.model.data.synth import generate
from liverank.model.data.timeline import REQUEST, START, WATCH, build_timeline


@pytest.fixture(scope="module")
def tiny():  # type: ignore[no-untyped-def]
    return generate("tiny", seed=0)


def test_part_warms_up_without_requests_then_measures_the_slice(tiny) -> None:  # type: ignore[no-untyped-def]
    part = _part(tiny, 300, 339, warm_steps=100, base=Settings())
    warm, measured = part.warm, part.measured
    assert not np.any(warm.kind == REQUEST) and warm.step.max() < 300
    assert part.warm_watches == int(np.count_nonzero((tiny.start >= 200) & (tiny.start < 300)))
    # streams live when the warm-up begins have their start sent first
    early = warm.step < 200
    assert np.any(early) and np.all(warm.kind[early] == START)
    assert measured.step.min() == 300 and measured.step.max() == 339
    watches = measured.kind == WATCH
    assert part.requests == int(np.count_nonzero(watches)) > 0  # a request per watch
    whole = build_timeline(tiny, from_step=200, to_step=339, requests_from=300)
    assert np.array_equal(np.concatenate([warm.seq, measured.seq]), whole.seq)


def test_a_cold_slice_has_no_warm_up(tiny) -> None:  # type: ignore[no-untyped-def]
    part = _part(tiny, 300, 339, warm_steps=0, base=Settings())
    assert part.warm_watches == 0 and np.all(part.warm.kind == START)


def _result() -> dict:
    return {"data": "d.csv", "model": "m", "steps": 40, "requests": 1000, "live_mean": 12.0,
            "warm_steps": 1008, "warm_watches": 5000,
            "answers_per_s": {SERVICE: 2000.0, FAKE: 3000.0, SCORE_ONLY: 4000.0,
                              CONSUME_ONLY: 4500.0},
            "fallback_share": {SERVICE: 0.036, FAKE: 0.036, SCORE_ONLY: 0.036,
                               CONSUME_ONLY: None},
            "ratio": 0.67,
            "latency": {"rate": 1000.0, "answers": 900, "fallback_share": 0.04,
                        "p50_ms": 30.0, "p99_ms": 90.0}}


def test_every_figure_carries_its_fallback_share() -> None:
    table = bench_table(_result())
    assert "after 1008 warm-up steps holding 5,000 watches" in table
    assert f"| {SERVICE} | 2,000 | 3.6% |" in table
    assert f"| {CONSUME_ONLY} | 4,500 | - |" in table
    assert "fallback share 4.0%" in table
    rows = _service_rows(_result())
    assert all("fallback" in r[1] for r in rows)
    assert [r[3] for r in rows[:3]] == [f"{FAKE}, fallback 3.6%", f"{SCORE_ONLY}, fallback 3.6%",
                                        CONSUME_ONLY]


def test_cpu_per_answer_is_reported_against_the_consume_only_app() -> None:
    r = _result() | {"cpu_ms_per_answer": {SERVICE: 0.32, FAKE: 0.25, CONSUME_ONLY: 0.16},
                     "consume_ratio": 2000.0 / 4500.0, "consume_cpu_ratio": 0.16 / 0.32}
    table = bench_table(r)
    assert "ratio service / consume-only = 0.44 (answers/s)" in table
    assert "service 0.320, fake scorer 0.250, consume-only (two events) 0.160" in table
    assert "consume-only / service = 0.50" in table
    cpu = [row for row in _service_rows(r) if "CPU" in row[1]]
    assert cpu == [("service", "worker CPU ms per answer, onnxruntime model", 0.32,
                    "Faust consume-only CPU ms per two events", 0.16)]
    # `make bench`'s table keeps the small figures readable (0.225 was printed as 0.2)
    line = format_table([("service", "CPU", 0.225, "reference", 0.143)])
    assert "| 0.225 | reference | 0.143 | 1.57 |" in line
    assert "| 6,617.4 |" in format_table([("service", "answers/s", 6617.4, "ref", 14.56)])


def test_the_latency_row_stands_next_to_the_broker_floor() -> None:
    r = _result()
    r["latency"] |= {"messages_per_s": 2100.0,
                     "broker_floor": {"messages_per_s": 2100.0, "records": 21000,
                                      "p50_ms": 10.0, "p99_ms": 24.5}}
    table = bench_table(r)
    assert ("broker floor (librdkafka produce -> consume, same broker, 2,100 messages/s): "
            "p50 10.0 ms, p99 24.5 ms; the worker adds p50 20.0 ms, p99 65.5 ms") in table
    floor = [row for row in _service_rows(r) if "broker floor" in row[1]]
    assert floor == [("service", "broker floor p99 ms (bare librdkafka produce -> consume, "
                      "2,100 messages/s)", 24.5, "service p99 ms", 90.0)]


def test_latency_leaves_out_the_warm_up_and_shows_a_stall_in_its_window() -> None:
    rng = np.random.default_rng(0)
    produced = np.sort(rng.integers(0, 22_000, 20_000))  # 22 s of requests
    lat = rng.integers(20, 40, len(produced))
    lat[produced < 2_000] = 900  # the first 2 s: connections, first calls
    stall = (produced >= 14_000) & (produced < 14_300)
    lat[stall] = 400  # one 0.3-s stall
    got = latency_figures(produced, produced + lat)
    assert got["steady_answers"] == int(np.count_nonzero(produced >= 2_000))
    assert 19.5 < got["steady_s"] <= 20.0
    assert got["p50_ms"] < 40 and got["p99_ms"] == 400.0  # 1.5% of the steady answers
    w = got["p99_ms_windows"]
    assert len(w) == 3 and w[2] == 400.0 and max(w[:2]) < 40  # 12-17 s holds it; 17-20 s
    # is a partial window, left out


def test_latency_refuses_a_run_without_produced_stamps() -> None:
    with pytest.raises(ValueError, match="produced_ms"):
        latency_figures(np.array([], dtype=np.int64), np.array([], dtype=np.int64))


def test_the_latency_row_says_what_half_capacity_it_was_paced_at() -> None:
    r = _result()
    r["latency"] |= {"capacity": 2000.0, "steady_s": 20.4, "p99_ms_windows": [40.0, 90.0,
                                                                           45.0, 50.0],
                     "window_s": 5.0}
    table = bench_table(r)
    assert ("latency at 1,000 requests/s offered, half of 2,000 answers/s drained on the "
            "same steps (900 answers, 20 s steady, fallback share 4.0%)") in table
    assert "p99 per 5-s window (4 windows): 40.0-90.0 ms, median 50.0 ms" in table
    windows = [row for row in _service_rows(r) if "window" in row[1]]
    assert windows == [("service", "p99 ms, best 5-s window of 4 (20 s steady)", 40.0,
                        "worst window", 90.0)]


def test_profiling_without_py_spy_is_an_error_not_a_run_without_a_profile(
        tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    import shutil
    import sys

    from liverank.cli import bench_service

    monkeypatch.setattr(shutil, "which", lambda name: None)
    monkeypatch.setattr(sys, "executable", str(tmp_path / "bin" / "python"))
    with pytest.raises(RuntimeError, match="--profile needs py-spy"):
        bench_service._py_spy(1, tmp_path / "p.txt")


def test_a_py_spy_that_wrote_nothing_is_reported(tmp_path) -> None:  # type: ignore[no-untyped-def]
    import subprocess
    import sys

    from liverank.cli import bench_service

    # A stand-in that, like a py-spy refused by the kernel, answers SIGINT with an error.
    script = ("import signal, sys, time\n"
              "def stop(*_):\n"
              "    sys.stderr.write('Permission denied'); sys.exit(1)\n"
              "signal.signal(signal.SIGINT, stop)\n"
              "print('ready', flush=True)\n"
              "time.sleep(30)\n")
    spy = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE)
    assert spy.stdout is not None and spy.stdout.readline() == b"ready\n"
    with pytest.raises(RuntimeError, match="py-spy wrote no profile") as err:
        bench_service._stop_py_spy(spy, tmp_path / "none.txt")
    assert "Permission denied" in str(err.value)  # what py-spy said comes with it


def test_the_broker_floor_reads_every_record_it_paced(kafka_bootstrap: str,
                                                     kafka_broker_kind: str) -> None:
    """The latency row's in-run reference: a bare produce -> consume at a given rate."""
    base = Settings(kafka_bootstrap=kafka_bootstrap, broker_kind=kafka_broker_kind)
    floor = _broker_floor(base, per_s=400, seconds=2.5)
    assert floor["records"] == 1000 and floor["messages_per_s"] == 400
    assert 0 < floor["p50_ms"] <= floor["p99_ms"] < 5000


def test_a_broker_floor_that_reads_too_little_is_an_error(
        kafka_bootstrap: str, kafka_broker_kind: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Records produced and never read make no floor figure (a p99 of what arrived)."""
    import confluent_kafka

    class Deaf:  # a consumer that reads nothing
        def __init__(self, conf: dict) -> None: ...
        def assign(self, partitions: list) -> None: ...
        def poll(self, timeout: float) -> None:
            time.sleep(timeout)
        def close(self) -> None: ...

    monkeypatch.setattr(confluent_kafka, "Consumer", Deaf)
    base = Settings(kafka_bootstrap=kafka_bootstrap, broker_kind=kafka_broker_kind)
    with pytest.raises(RuntimeError, match="broker floor: read 0 of 200 records"):
        _broker_floor(base, per_s=200, seconds=1.0, wait_s=0.5)


def test_the_consume_only_reference_alternates_with_the_drains_and_the_best_is_taken(
        monkeypatch, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """A reference measured once, after the drains, on a broker that has slowed down since
    (tansu does), or in a busy spell, moves the ratio: (c) runs beside the service and (a)
    in every round, and each figure is its best."""
    from types import SimpleNamespace

    import liverank.broker.embedded as embedded
    import liverank.cli.bench_service as bs
    import liverank.model.data.twitch as twitch

    calls: list[str] = []
    rates = {"onnx": [100.0, 120.0], "fake": [200.0, 180.0]}
    events = [(300.0, 0.2), (500.0, 0.1)]  # events/s, CPU ms per event

    def drain(base, part, model, work, name, profile=None, fake=False):  # type: ignore[no-untyped-def]
        calls.append(name)
        return (rates[name].pop(0) if name in rates else 90.0), 0.036, {"onnx": 0.3}.get(name, 0.2)

    def consume(base, tl, work):  # type: ignore[no-untyped-def]
        calls.append("consume")
        return events.pop(0)

    monkeypatch.setattr(twitch, "load_interactions", lambda path: SimpleNamespace())
    monkeypatch.setattr(embedded, "configured_or_embedded", lambda stack: (Settings(), None))
    monkeypatch.setattr(bs, "_part", lambda *a: SimpleNamespace(measured="slice", requests=10,
                                                                warm_watches=0))
    monkeypatch.setattr(bs, "_fake_like", lambda model, work: tmp_path / "fake")
    monkeypatch.setattr(bs, "_drain", drain)
    monkeypatch.setattr(bs, "_consume_only", consume)
    monkeypatch.setattr(bs, "_score_only", lambda *a: (calls.append("score"), (1000.0, 0.036))[1])
    monkeypatch.setattr(bs, "_latency", lambda *a, **k: {"p50_ms": 20.0, "p99_ms": 40.0,
                                                         "messages_per_s": 100.0})
    monkeypatch.setattr(bs, "_broker_floor", lambda *a: {})
    monkeypatch.setattr(bs, "_live_mean", lambda *a: 12.0)
    r = bs.run_bench(tmp_path / "d.csv", tmp_path / "model", 40, 60, 100, tmp_path, repeat=2)
    assert calls[:6] == ["onnx", "fake", "consume"] * 2
    assert r["answers_per_s"][CONSUME_ONLY] == 250.0  # the best of 150 and 250 answers/s
    assert r["answers_per_s"][SERVICE] == 120.0
    assert r["consume_ratio"] == pytest.approx(120.0 / 250.0)
    assert r["cpu_ms_per_answer"][CONSUME_ONLY] == pytest.approx(0.2)  # the least, per answer
    assert r["drains"]["consume"] == [150.0, 250.0]


def test_the_paced_load_says_how_busy_the_event_loop_was() -> None:
    got = paced_load(loop_s=6.3, worker_s=7.5, wall_s=10.0, answers=32_000)
    assert got["loop_share"] == pytest.approx(0.63)
    assert got["worker_share"] == pytest.approx(0.75)
    assert got["loop_us_per_answer"] == pytest.approx(196.875)
    r = _result()
    r["latency"] |= {"paced_load": got}
    assert ("while paced: the worker's event loop 63% of a core (197 us of its CPU an "
            "answer), the whole worker 75%") in bench_table(r)
    rows = [row for row in _service_rows(r) if "event loop" in row[1]]
    assert rows == [("service", "event loop's share of a core while paced at half capacity",
                     pytest.approx(0.63), "whole worker's share", pytest.approx(0.75))]


@pytest.mark.parametrize(("wall_s", "answers"), [(0.0, 100), (10.0, 0)])
def test_a_paced_load_over_nothing_is_an_error(wall_s: float, answers: int) -> None:
    with pytest.raises(ValueError, match="nothing was measured"):
        paced_load(1.0, 1.0, wall_s, answers)


def test_the_event_loop_cpu_is_the_main_thread_alone() -> None:
    """A busy second thread does not count; the main thread's own work does."""
    import os
    import threading

    pid = os.getpid()

    def spin(seconds: float) -> None:
        end = time.thread_time() + seconds
        while time.thread_time() < end:
            pass

    before = _loop_cpu_s(pid)
    other = threading.Thread(target=spin, args=(0.3,))
    other.start()
    other.join()
    after_other = _loop_cpu_s(pid)
    spin(0.3)
    after_own = _loop_cpu_s(pid)
    assert after_other - before < 0.1
    assert after_own - after_other >= 0.25


def test_the_event_loop_cpu_of_a_gone_worker_is_an_error() -> None:
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    with pytest.raises(RuntimeError, match=f"event loop .pid {proc.pid}"):
        _loop_cpu_s(proc.pid)
