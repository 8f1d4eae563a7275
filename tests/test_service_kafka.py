"""The recommendation service on a broker: `liverank serve` subprocesses fed by the replay.

* every request gets exactly one answer, of min(k, live) live streams sorted by score, equal
  (scores within 1e-5) to the offline ranking of `liverank evaluate`'s requests;
* SIGKILL mid-replay, restart (memory:// and rocksdb:// stores): every request answered,
  duplicates share a request_id and an answer, and every answer equals the offline one
  (which the first test shows is what an uninterrupted run gives);
* a second worker joining mid-replay: the same, across the rebalance;
* a model swap by symlink flip mid-replay: nothing lost or answered twice, and each answer
  is the ranking of the model version it names;
* `GapGuard` and `committed_floor` on their own.

Mid-replay is made certain by a gate in the replay (`GatedSink`), not by timing.
The model is a tiny one trained and exported by ``liverank train`` / ``export`` once per
session (about 20 s for two); if training is unavailable the tests use the fake scorer and
say so. Each test has its own topic prefix and consumer group; every wait is bounded.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from confluent_kafka import Producer

from liverank.broker import kafka
from liverank.broker.embedded import free_port
from liverank.core import events as ev
from liverank.core.settings import Settings
from liverank.model.data.availability import availability
from liverank.model.data.synth import write as write_synth
from liverank.model.data.timeline import REQUEST, build_timeline
from liverank.model.data.twitch import Interactions, load_interactions
from liverank.model.evaluate import iter_requests
from liverank.model.pushes import PushRule, offline_pushes
from liverank.model.scorer import Ranked, Scorer, load_scorer
from liverank.replay.producer import ForwardingSink, replay_to_kafka
from liverank.replay.producer import replay as replay_to
from liverank.services.testing import FAKE_MODEL_FORMAT, load_fake_model, write_fake_model

TOL = 1e-5
K = 10
CLI = [sys.executable, "-c", "from liverank.cli.main import main; main()"]


@dataclass(frozen=True)
class Models:
    data: Interactions
    csv: Path
    v1: Path
    v2: Path
    real: bool  # trained + exported ONNX models (else fake-scorer directories)


@pytest.fixture(scope="session")
def models(tmp_path_factory: pytest.TempPathFactory) -> Models:
    root = tmp_path_factory.mktemp("service-models")
    csv = root / "tiny.csv"
    write_synth("tiny", 0, csv)
    data = load_interactions(csv)
    dirs = []
    for seed in (1, 2):
        ckpt, out = root / f"ckpt{seed}", root / f"model{seed}"
        try:
            for args in (["train", "--data", str(csv), "--out", str(ckpt), "--preset", "tiny",
                          "--seed", str(seed), "--threads", "1", "--val-offset", "100",
                          "--test-offset", "50"],
                         ["export", "--checkpoint", str(ckpt), "--out", str(out)]):
                subprocess.run(CLI + args, check=True, capture_output=True, timeout=240)
            dirs.append(out)
        except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as exc:
            detail = getattr(exc, "stderr", b"") or b""
            print(f"liverank train/export unavailable ({exc}; {detail[-300:]!r}): "  # noqa: T201
                  "the service tests use the fake scorer")
            return Models(data, csv, write_fake_model(root / "fake1", "fake-v1"),
                          write_fake_model(root / "fake2", "fake-v2"), real=False)
    return Models(data, csv, dirs[0], dirs[1], real=True)


class Worker:
    """One ``liverank serve`` subprocess; its log goes to a file (shown on failure)."""

    def __init__(self, settings: Settings, kind: str, model: Path, workdir: Path,
                 poll_s: float = 0.0, **env: str):
        self.port = free_port()
        self.log = workdir / f"worker-{self.port}.log"
        self.env = {k: v for k, v in os.environ.items()
                    if not k.startswith("LIVERANK_") and k != "KAFKA_BOOTSTRAP_SERVERS"}
        self.env |= {"LIVERANK_KAFKA_BOOTSTRAP": settings.kafka_bootstrap,
                     "LIVERANK_TOPIC_PREFIX": settings.topic_prefix,
                     "LIVERANK_BROKER_KIND": kind, "LIVERANK_STORE": "memory://",
                     "LIVERANK_WEB_PORT": str(self.port), "LIVERANK_WORKER_ID": "svc",
                     "LIVERANK_MODEL_POLL_S": str(poll_s),
                     "LIVERANK_WATERMARK_WAIT_MS": "10000"}
        self.env |= {f"LIVERANK_{k.upper()}": v for k, v in env.items()}
        self.model, self.workdir = model, workdir
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Worker:
        # A fake model directory is served through the fake's loader, handed in by the test
        # (`liverank serve` itself only serves exported models).
        cmd = ([sys.executable, "-m", "liverank.services.testing", "serve"]
               if is_fake(self.model) else CLI + ["serve"])
        self.env["LIVERANK_MODEL_DIR"] = str(self.model)
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(cmd,
                                         env=self.env, cwd=self.workdir, stdout=log,
                                         stderr=subprocess.STDOUT)
        return self

    def health(self, path: str = "/health") -> dict[str, object] | None:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}",
                                        timeout=1) as r:
                return json.loads(r.read())  # type: ignore[no-any-return]
        except urllib.error.HTTPError as exc:  # 503 while not ready: still a JSON body
            return json.loads(exc.read())  # type: ignore[no-any-return]
        except (OSError, ValueError):
            return None

    def metrics(self) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics", timeout=2) as r:
            return r.read().decode()

    def wait_ready(self, timeout: float = 90.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc is not None and self.proc.poll() is None, self.tail()
            h = self.health()
            if h and h.get("ready"):
                return
            time.sleep(0.3)
        raise TimeoutError(f"worker not ready in {timeout:.0f} s\n{self.tail()}")

    def get(self, path: str) -> tuple[int, bytes]:
        """(HTTP status, body) of a GET on this worker's web port."""
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}",
                                        timeout=5) as r:
                return r.status, r.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.kill()

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-3000:] if self.log.exists() else ""


@pytest.fixture
def workers(tmp_path: Path) -> Iterator[list[Worker]]:
    started: list[Worker] = []
    yield started
    for w in started:
        w.stop()


def read_answers(settings: Settings, timeout_s: float = 30.0) -> list[ev.Recommendation]:
    msgs = kafka.read_topic(settings, settings.topic(kafka.RECOMMENDATIONS),
                            timeout_s=timeout_s)
    return [ev.decode(m.value(), ev.Recommendation) for m in msgs]  # type: ignore[misc]


def wait_answers(settings: Settings, want: set[str], timeout: float, worker: Worker
                 ) -> list[ev.Recommendation]:
    deadline = time.monotonic() + timeout
    while True:
        recs = read_answers(settings)
        if {r.request_id for r in recs} >= want:
            return recs
        if time.monotonic() > deadline:
            missing = len(want - {r.request_id for r in recs})
            raise TimeoutError(f"{missing} of {len(want)} requests unanswered after "
                               f"{timeout:.0f} s\n{worker.tail()}")
        time.sleep(1.0)


def is_fake(model_dir: Path) -> bool:
    return FAKE_MODEL_FORMAT in (model_dir / "model.json").read_text()


def load(model_dir: Path) -> Scorer:
    """The scorer of a model directory: the exported model, or the fake's (test fallback)."""
    return load_fake_model(model_dir) if is_fake(model_dir) else load_scorer(model_dir)


def offline(models: Models, model_dir: Path) -> dict[str, Ranked]:
    """`liverank evaluate`'s requests for every watch, ranked by the same exported model."""
    scorer = load(model_dir)
    reqs = list(iter_requests(models.data, 0, models.data.max_step, scorer.window_len))
    ranked = scorer.rank([r for _, r, _ in reqs], K)
    return {event_id: r for (event_id, _, _), r in zip(reqs, ranked, strict=True)}


def same_ranking(rec: ev.Recommendation, ref: Ranked) -> bool:
    """Same streamers in the same order with scores within TOL; neighbours whose scores are
    within TOL of each other may come in either order (float noise across batch shapes)."""
    if len(rec.items) != len(ref.streamers):
        return False
    for item, name, score in zip(rec.items, ref.streamers, ref.scores, strict=True):
        if abs(item.score - score) > TOL:
            return False
        if item.streamer != name:
            near = [n for n, s in zip(ref.streamers, ref.scores, strict=True)
                    if abs(s - item.score) <= TOL]
            if item.streamer not in near:
                return False
    return True


def assert_all_answered_as_offline(recs: list[ev.Recommendation], want: set[str],
                                   ref: dict[str, Ranked]) -> None:
    """Every request answered; every answer, duplicates (at-least-once) included, carries
    its request_id and equals the offline ranking."""
    by_id: dict[str, list[ev.Recommendation]] = {}
    for r in recs:
        by_id.setdefault(r.request_id, []).append(r)
    assert set(by_id) == want
    for rid, answers in by_id.items():
        for a in answers:
            assert same_ranking(a, ref[rid]), (rid, a.items, ref[rid])


def replay(models: Models, settings: Settings) -> None:
    report = replay_to_kafka(build_timeline(models.data), settings)
    assert report.ok, report.first_error


def request_ids(models: Models) -> set[str]:
    return {f"req:{r}" for r in range(len(models.data))}


@pytest.mark.parametrize("reader", ["librdkafka", "faust"])
def test_every_request_answered_once_with_live_streams_sorted_and_as_offline(
        models: Models, kafka_settings: Settings, kafka_broker_kind: str, tmp_path: Path,
        workers: list[Worker], reader: str) -> None:
    """With Faust's fetcher of user-events (the default) and with the worker's own reader
    (``user_reader="librdkafka"``, opt-in)."""
    kafka.ensure_topics(kafka_settings)
    worker = Worker(kafka_settings, kafka_broker_kind, models.v1, tmp_path,
                    user_reader=reader).start()
    workers.append(worker)
    worker.wait_ready()
    ready, live = worker.health("/readyz"), worker.health("/livez")
    assert ready is not None and ready["ready"] is True and ready["broker_up"] is True
    assert live is not None and live["live"] is True
    replay(models, kafka_settings)
    # Hostile records on both input topics: dead letters, the worker keeps going.
    p = Producer(kafka.producer_config(kafka_settings))
    p.produce(kafka_settings.topic(kafka.USER_EVENTS), b"{not json", b"1")
    p.produce(kafka_settings.topic(kafka.STREAM_EVENTS), b'{"kind":"stream_start"}', b"1")
    p.flush(10)
    want = request_ids(models)
    recs = wait_answers(kafka_settings, want, 120, worker)
    assert len(recs) == len(want)  # exactly one answer each, nothing else
    av = availability(models.data, "broadcast")
    index = models.data.streamer_index()
    ref = offline(models, models.v1)
    version = load(models.v1).version
    for r in recs:
        live = av.streamers_at(r.step)
        assert len(r.items) == min(K, len(live))
        scores = [i.score for i in r.items]
        assert scores == sorted(scores, reverse=True)
        for i in r.items:  # live at the request's step, as the stream that answers for it
            assert av.stream_of(index[i.streamer], r.step) == i.stream
        assert r.model_version == version and r.trigger == "request"
        assert r.produced_ms is not None and r.published_ms >= r.produced_ms
        assert same_ranking(r, ref[r.request_id]), r.request_id
    deadline = time.monotonic() + 30
    while True:
        dead = kafka.read_topic(kafka_settings, kafka_settings.topic(kafka.DEAD_LETTERS),
                                timeout_s=10)
        if len(dead) >= 2 or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    letters = [ev.decode(m.value(), ev.DeadLetter) for m in dead]
    assert sorted(d.topic for d in letters) == sorted(  # type: ignore[union-attr]
        [kafka_settings.topic(kafka.STREAM_EVENTS), kafka_settings.topic(kafka.USER_EVENTS)])
    text = worker.metrics()
    assert f"liverank_answers_total{{trigger=\"request\"}} {float(len(want))}" in text
    assert 'liverank_dead_letters_total{reason="undecodable"' in text
    assert "liverank_late_requests_total 0.0" in text
    assert "faust_" in text  # Faust's own sensors in the same registry
    log = worker.tail() + worker.log.read_text(errors="replace")
    assert ("user reader started" in log) == (reader == "librdkafka"), log[-2000:]
    assert "fetched by Faust though read elsewhere" not in log


def test_pushes_on_live_change_equal_the_offline_computation(
        models: Models, kafka_settings: Settings, kafka_broker_kind: str, tmp_path: Path,
        workers: list[Worker]) -> None:
    """With pushes on, the worker publishes a ``live_change`` answer for exactly the pushes
    `offline_pushes` computes from the same timeline, ranked alike; requests are still
    answered once each, and the latest-answer table holds pushes too."""
    kafka.ensure_topics(kafka_settings)
    worker = Worker(kafka_settings, kafka_broker_kind, models.v1, tmp_path,
                    push_on_live="true").start()
    workers.append(worker)
    worker.wait_ready()
    timeline = build_timeline(models.data)
    events = [timeline.event(i) for i in range(len(timeline))]
    scorer = load(models.v1)
    want = {r.request_id: r for r in offline_pushes(
        events, scorer, K, kafka_settings.partitions, PushRule.of(kafka_settings),
        kafka_settings.epoch_ms)}
    assert len(want) > 10
    replay(models, kafka_settings)
    recs = wait_answers(kafka_settings, request_ids(models) | set(want), 120, worker)
    pushes = [r for r in recs if r.trigger == "live_change"]
    assert len(recs) == len(request_ids(models)) + len(want)  # nothing else, no repeats
    assert {r.request_id for r in pushes} == set(want)
    for r in pushes:
        ref = want[r.request_id]
        assert (r.seq, r.step, r.user, r.late) == (ref.seq, ref.step, ref.user, False)
        assert same_ranking(r, Ranked([i.streamer for i in ref.items],
                                      [i.score for i in ref.items], ref.fallback)), r
    text = worker.metrics()
    assert f'liverank_answers_total{{trigger="live_change"}} {float(len(want))}' in text


def test_a_shadow_model_ranks_every_request_to_the_shadow_topic_only(
        models: Models, kafka_settings: Settings, kafka_broker_kind: str, tmp_path: Path,
        workers: list[Worker]) -> None:
    """With LIVERANK_SHADOW_MODEL_DIR the candidate (v2) ranks every request on the same
    windows and candidates: its answers, marked shadow, equal v2's offline ranking and go to
    recommendations-shadow only; recommendations holds v1's answers alone."""
    kafka.ensure_topics(kafka_settings)
    worker = Worker(kafka_settings, kafka_broker_kind, models.v1, tmp_path,
                    shadow_model_dir=str(models.v2)).start()
    workers.append(worker)
    worker.wait_ready()
    replay(models, kafka_settings)
    want = request_ids(models)
    recs = wait_answers(kafka_settings, want, 120, worker)
    v1, v2 = load(models.v1).version, load(models.v2).version
    assert v1 != v2
    assert len(recs) == len(want) and {r.model_version for r in recs} == {v1}
    assert not any(r.shadow for r in recs)
    shadow_topic = kafka_settings.topic(kafka.RECOMMENDATIONS_SHADOW)
    deadline = time.monotonic() + 60
    while True:
        shadowed = [ev.decode(m.value(), ev.Recommendation) for m in
                    kafka.read_topic(kafka_settings, shadow_topic, timeout_s=10)]
        if len({r.request_id for r in shadowed}) >= len(want) or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert {r.request_id for r in shadowed} == want and len(shadowed) == len(want)
    ref = offline(models, models.v2)
    for r in shadowed:
        assert r.shadow and r.model_version == v2
        assert same_ranking(r, ref[r.request_id]), r.request_id
    assert f"liverank_shadow_answers_total {float(len(want))}" in worker.metrics()


def answers_metric(worker: Worker) -> float:
    for line in worker.metrics().splitlines():
        if line.startswith('liverank_answers_total{trigger="request"}'):
            return float(line.split()[-1])
    return 0.0


class GatedSink(ForwardingSink):
    """A producer that stops before the ``gate``-th user event until `open` is called, so
    what a test does while it waits lands mid-replay, whatever the machine's speed."""

    def __init__(self, settings: Settings, gate: int):
        super().__init__(Producer(kafka.producer_config(settings)))
        self.user_topic = settings.topic(kafka.USER_EVENTS)
        self.gate, self.sent = gate, 0
        self.reached, self._open = threading.Event(), threading.Event()

    def produce(self, topic: str, value: object = None, key: object = None,
                partition: int = -1, **kwargs: object) -> None:
        if topic == self.user_topic:
            if self.sent == self.gate:
                self.producer.flush(30)  # everything before the gate is on the broker
                self.reached.set()
                assert self._open.wait(120), "the gate was never opened"
            self.sent += 1
        super().produce(topic, value, key, partition, **kwargs)

    def open(self) -> None:
        self._open.set()


def gated_replay(models: Models, settings: Settings, worker: Worker, share: float = 0.6,
                 answered: float = 1 / 3) -> tuple[threading.Thread, GatedSink, set[str]]:
    """Replay at full speed up to ``share`` of the user events and hold the rest back;
    return once the worker answered ``answered`` of all requests (all before the gate)."""
    tl = build_timeline(models.data)
    counts = kafka.ensure_topics(settings)
    users = int(np.count_nonzero(tl.kind >= REQUEST))
    sink = GatedSink(settings, int(users * share))
    errors: list[str] = []

    def run() -> None:
        report = replay_to(tl, sink, partitions=counts[settings.topic(kafka.STREAM_EVENTS)],
                           stream_topic=settings.topic(kafka.STREAM_EVENTS),
                           user_topic=sink.user_topic)
        if not report.ok:
            errors.append(str(report.first_error))

    feeder = threading.Thread(target=run, daemon=True)
    feeder.start()
    want = request_ids(models)
    deadline = time.monotonic() + 90
    while answers_metric(worker) < len(want) * answered:  # /metrics: a quick poll
        assert time.monotonic() < deadline, worker.tail()
        assert not errors, errors
        time.sleep(0.02)
    assert sink.reached.is_set() or feeder.is_alive()
    return feeder, sink, want


@pytest.mark.parametrize("store", ["memory://", "rocksdb://"])
def test_sigkill_mid_replay_then_restart_answers_like_an_uninterrupted_run(
        models: Models, kafka_settings: Settings, kafka_broker_kind: str, tmp_path: Path,
        workers: list[Worker], store: str) -> None:
    """memory://: the table comes back from the changelog alone; rocksdb:// (production):
    from the local store the killed worker left in the same data directory, then the
    changelog from the offset the store says it holds."""
    kafka.ensure_topics(kafka_settings)
    # Default settings: the replay compresses days into seconds, so between a commit and
    # the kill a user can watch many streams; windows keep what the committed floor says
    # may be read again (see UserWindows), however many that is.
    first = Worker(kafka_settings, kafka_broker_kind, models.v1, tmp_path,
                   store=store).start()
    workers.append(first)
    first.wait_ready()
    # A backlog of 80% of the log, killed at the first tenth answered: mid-batch, with
    # answers and window records published past the last commit.
    feeder, gate, want = gated_replay(models, kafka_settings, first, share=0.8,
                                      answered=0.1)
    first.kill()
    before = len(read_answers(kafka_settings))
    assert before < len(want)  # killed mid-replay: the requests past the gate are unsent
    second = Worker(kafka_settings, kafka_broker_kind, models.v1, tmp_path,
                    store=store).start()
    workers.append(second)
    gate.open()
    feeder.join(timeout=60)
    assert not feeder.is_alive()
    recs = wait_answers(kafka_settings, want, 150, second)
    assert_all_answered_as_offline(recs, want, offline(models, models.v1))
    dups = len(recs) - len(want)
    print(f"restart: {before} answers before SIGKILL, {dups} duplicates")  # noqa: T201


def test_a_second_worker_joining_mid_replay_takes_partitions_and_answers_agree(
        models: Models, kafka_settings: Settings, kafka_broker_kind: str, tmp_path: Path,
        workers: list[Worker]) -> None:
    """Two replicas in one group (the Kubernetes deployment): the second joins mid-replay,
    the rebalance moves user partitions and their windows (restored from the changelog);
    every request is answered, duplicates from the handover carry the same answer, and
    every answer equals the offline ranking."""
    kafka.ensure_topics(kafka_settings)
    first = Worker(kafka_settings, kafka_broker_kind, models.v1, tmp_path).start()
    workers.append(first)
    first.wait_ready()
    feeder, gate, want = gated_replay(models, kafka_settings, first, share=0.5)
    second = Worker(kafka_settings, kafka_broker_kind, models.v1, tmp_path).start()
    workers.append(second)
    # Until its tables are recovered the new worker answers lookups with 503.
    statuses = set()
    deadline = time.monotonic() + 90
    while not (second.health() or {}).get("ready"):
        assert time.monotonic() < deadline, second.tail()
        if second.health() is not None:
            statuses.add(second.get("/users/1/recommendations")[0])
        time.sleep(0.05)
    assert 503 in statuses, statuses
    gate.open()
    feeder.join(timeout=60)
    assert not feeder.is_alive()
    recs = wait_answers(kafka_settings, want, 150, second)
    assert answers_metric(second) > 0 and answers_metric(first) > 0  # both served
    assert_all_answered_as_offline(recs, want, offline(models, models.v1))
    check_lookups(recs, first, second, models)
    print(f"two workers: {answers_metric(first):.0f} + {answers_metric(second):.0f} "  # noqa: T201
          f"answers, {len(recs) - len(want)} duplicates")


def check_lookups(recs: list[ev.Recommendation], first: Worker, second: Worker,
                  models: Models) -> None:
    """GET /users/{user}/recommendations on either worker: the user's latest answer (routed
    to the owner of its partition), 404 for an unknown user; ?now=1 ranks live streams."""
    latest: dict[int, ev.Recommendation] = {}
    for r in recs:
        if r.user not in latest or r.seq > latest[r.user].seq:
            latest[r.user] = r
    users = sorted(latest)[:: max(1, len(latest) // 12)]
    for user in users:
        for worker in (first, second):
            status, body = worker.get(f"/users/{user}/recommendations")
            assert status == 200, (user, status, body[:200])
            got = ev.decode(body, ev.Recommendation)
            assert got.request_id == latest[user].request_id
            assert [i.streamer for i in got.items] == [i.streamer for i in latest[user].items]
    status, _ = first.get("/users/987654321/recommendations")
    assert status == 404
    status, body = second.get(f"/users/{users[0]}/recommendations?now=1")
    assert status == 200
    now = ev.decode(body, ev.Recommendation)
    assert now.trigger == "lookup" and now.user == users[0]
    live = availability(models.data, "broadcast").streamers_at(now.step)
    assert len(now.items) == min(K, len(live))


def test_model_swap_mid_replay_loses_nothing_and_answers_name_their_model(
        models: Models, kafka_settings: Settings, kafka_broker_kind: str, tmp_path: Path,
        workers: list[Worker]) -> None:
    kafka.ensure_topics(kafka_settings)
    current = tmp_path / "current"
    current.symlink_to(models.v1)
    worker = Worker(kafka_settings, kafka_broker_kind, current, tmp_path, poll_s=0.2).start()
    workers.append(worker)
    worker.wait_ready()
    feeder, gate, want = gated_replay(models, kafka_settings, worker, share=0.5)
    flip = tmp_path / "flip"
    flip.symlink_to(models.v2)
    os.replace(flip, current)  # atomic switch to the new version, mid-replay
    deadline = time.monotonic() + 30
    while "liverank_model_swaps_total 1.0" not in worker.metrics():
        assert time.monotonic() < deadline, worker.tail()
        time.sleep(0.2)
    gate.open()  # the rest is answered by the new version
    feeder.join(timeout=60)
    assert not feeder.is_alive()
    recs = wait_answers(kafka_settings, want, 120, worker)
    assert len(recs) == len(want) == len({r.request_id for r in recs})
    v1, v2 = load(models.v1).version, load(models.v2).version
    versions = [r.model_version for r in recs]
    assert set(versions) == {v1, v2}, set(versions)
    ref = {v1: offline(models, models.v1), v2: offline(models, models.v2)}
    checked = distinct = 0
    for r in recs[:: max(1, len(recs) // 300)]:  # a sample, re-scored with both models
        other = v2 if r.model_version == v1 else v1
        assert same_ranking(r, ref[r.model_version][r.request_id])
        checked += 1
        if not r.fallback and not same_ranking(r, ref[other][r.request_id]):
            distinct += 1  # the other model would have answered differently
    assert checked >= 100
    if models.real:
        assert distinct > 0
    assert "liverank_model_swaps_total 1.0" in worker.metrics()


async def test_gap_guard_reads_skipped_offsets_back_and_acks_them_after_delivery(
        kafka_settings: Settings) -> None:
    """The Faust workaround on its own: the guard checks offsets itself (Faust's own gap
    acking is off for user-events), reads missing records back from the broker in order,
    and acks a gap to Faust once its records were delivered."""
    from faust.types import TP

    from liverank.services.gaps import GapGuard

    kafka.ensure_topics(kafka_settings)
    topic = kafka_settings.topic(kafka.USER_EVENTS)
    p = Producer(kafka.producer_config(kafka_settings))
    for i in range(20):
        p.produce(topic, f"v{i}".encode(), b"k", 3, headers=[("produced_ms", b"%d" % i)])
    assert p.flush(10) == 0

    class FakeConsumer:
        def __init__(self) -> None:
            self._committed_offset = {TP(topic, 3): 5, TP(topic, 2): None}
            self.acked: list[tuple[TP, int, int]] = []

        async def _add_gap(self, tp: TP, first: int, last: int) -> None:
            self.acked.append((tp, first, last))

    consumer = FakeConsumer()
    guard = GapGuard(consumer, topic, kafka_settings, f"{kafka_settings.topic_prefix}gaps")
    await consumer._add_gap(TP("other", 0), 1, 2)  # other topics: Faust's behaviour
    await consumer._add_gap(TP(topic, 3), 6, 13)  # user-events: Faust's gap is not acked
    assert consumer.acked == [(TP("other", 0), 1, 2)]

    class Event:
        def __init__(self, partition: int, offset: int) -> None:
            self.message = type("M", (), {"tp": TP(topic, partition), "offset": offset})()

    # Partition 3 was committed at 5: Faust delivers 13 first (5..12 dropped while paused).
    gap = guard.check(Event(3, 13))
    assert gap is not None and (gap.first, gap.last) == (5, 12)
    assert guard.check(Event(3, 14)) is None  # in order again
    assert guard.check(Event(3, 14)) is None  # a re-delivery is not a gap
    later = guard.check(Event(3, 17))
    assert later is not None and (later.first, later.last) == (15, 16)
    # Partition 2 has no commit: the first record must be offset 0.
    assert guard.check(Event(2, 0)) is None
    guard.forget([TP(topic, 2)])  # reassigned: expected from the committed offset again
    first = guard.check(Event(2, 4))
    assert first is not None and (first.first, first.last) == (0, 3)

    back = guard.read_back(gap)
    assert [e.message.offset for e in back] == list(range(5, 13))
    assert [e.message.value for e in back] == [f"v{i}".encode() for i in range(5, 13)]
    assert back[0].message.headers == [("produced_ms", b"5")]
    for e in back[:-1]:
        await guard.delivered(e)
    assert len(consumer.acked) == 1  # not before the last one is delivered
    await guard.delivered(back[-1])
    assert consumer.acked[-1] == (TP(topic, 3), 5, 12)
    assert guard.refetched == 8


async def test_a_gap_starts_at_the_groups_committed_offset_whatever_faust_says(
        kafka_settings: Settings) -> None:
    """Seen in CI after a takeover: Faust's committed offset for a partition read None
    while its fetcher started at the group's committed 483. The guard then took 0..482 for
    a gap and answered them again after the live index had moved on (empty, stale): the
    read-back starts at the group's committed offset, read from the broker."""
    from confluent_kafka import Consumer, TopicPartition
    from faust.types import TP

    from liverank.services.gaps import Gap, GapGuard

    kafka.ensure_topics(kafka_settings)
    topic = kafka_settings.topic(kafka.USER_EVENTS)
    p = Producer(kafka.producer_config(kafka_settings))
    for i in range(20):
        p.produce(topic, f"v{i}".encode(), b"k", 2)
    assert p.flush(10) == 0
    group = f"{kafka_settings.topic_prefix}gap-group"
    committer = Consumer({**kafka.consumer_config(kafka_settings, group),
                          "enable.auto.commit": False})
    committer.commit(offsets=[TopicPartition(topic, 2, 10)], asynchronous=False)
    committer.close()

    class FakeConsumer:
        def __init__(self) -> None:
            self._committed_offset: dict[TP, int | None] = {}  # Faust knows nothing
            self.acked: list[tuple[TP, int, int]] = []

        async def _add_gap(self, tp: TP, first: int, last: int) -> None:
            self.acked.append((tp, first, last))

    consumer = FakeConsumer()
    guard = GapGuard(consumer, topic, kafka_settings, group)

    class Event:
        def __init__(self, partition: int, offset: int) -> None:
            self.message = type("M", (), {"tp": TP(topic, partition), "offset": offset})()

    gap = guard.check(Event(2, 12))
    assert gap is not None and (gap.first, gap.last) == (0, 11)  # what Faust's None implies
    back = guard.read_back(gap)
    assert [e.message.offset for e in back] == [10, 11]  # not 0..9: committed already
    for e in back:
        await guard.delivered(e)
    assert consumer.acked == [(TP(topic, 2), 10, 11)]
    # Everything before the first record delivered was committed: nothing is read back.
    whole = Gap(TP(topic, 2), 0, 9)
    assert guard.read_back(whole) == []
    await guard.settle_empty(whole)
    assert consumer.acked == [(TP(topic, 2), 10, 11)]  # and nothing acked for it
    # A tail read back starts at the committed offset too.
    tail = guard.read_back(Gap(TP(topic, 2), 3, None))
    assert [e.message.offset for e in tail] == list(range(10, 20))


def test_committed_floor_is_the_oldest_step_the_group_may_read_again(
        kafka_settings: Settings) -> None:
    """What the live index may forget: per partition the step at the group's committed
    offset (first record without a commit, last record once all is committed), the
    smallest over partitions; empty partitions add no bound."""
    from confluent_kafka import Consumer, TopicPartition

    from liverank.broker.clients import committed_floor

    kafka.ensure_topics(kafka_settings)
    topic = kafka_settings.topic(kafka.USER_EVENTS)
    p = Producer(kafka.producer_config(kafka_settings))
    for partition, steps in {0: [1, 2, 3, 4, 5], 1: [2, 3, 4], 3: [7, 8]}.items():
        for step in steps:
            p.produce(topic, b"%d" % step, b"k", partition)
    assert p.flush(10) == 0
    group = f"{kafka_settings.topic_prefix}floor"
    committer = Consumer({**kafka.consumer_config(kafka_settings, group),
                          "enable.auto.commit": False})

    def commit(offsets: dict[int, int]) -> None:
        committer.commit(offsets=[TopicPartition(topic, q, o) for q, o in offsets.items()],
                         asynchronous=False)

    def floor() -> int | None:
        return committed_floor(kafka_settings, topic, group, 4, int)

    try:
        assert floor() == 1  # nothing committed: every partition's first record
        commit({0: 3, 3: 2})  # p0 resumes at step 4; p3 is done (its last record: 8)
        assert floor() == 2  # p1, never committed, starts at step 2
        commit({1: 1})
        assert floor() == 3
        commit({1: 3})  # all of p1 committed: its last record, step 4
        assert floor() == 4
    finally:
        committer.close()
