"""What the fault tests share: the tiny model, brokers they can signal, `liverank serve`
workers they can kill or pause, a replay held at gates, and bounded waits.

Copied in spirit from ``tests/test_service_kafka.py`` (its helpers live in a test module,
not importable here), with what faults need on top: several gates, SIGSTOP/SIGCONT, a tansu
process restartable on the same port with the same storage, and waits that count answers
on the recommendations topic itself.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from checker import Answer, Log, Result, read_answers
from confluent_kafka import Consumer, KafkaError, Producer, TopicPartition

from liverank.broker import kafka
from liverank.broker.embedded import TANSU_CLUSTER_ID, broker_binary, free_port, port_open
from liverank.core import events as ev
from liverank.core.settings import Settings
from liverank.model.data.synth import write as write_synth
from liverank.model.data.timeline import REQUEST, build_timeline
from liverank.model.data.twitch import load_interactions
from liverank.replay.producer import ForwardingSink
from liverank.replay.producer import replay as replay_to
from liverank.services.app import stalled_tail_within_s
from liverank.services.testing import FAKE_MODEL_FORMAT, write_fake_model

# Options of the suite, taken out of the environment when this module is imported (by the
# suite's conftest, before any test): `Settings` refuses every unknown LIVERANK_* variable,
# so left in place they would fail every test that builds one.
REPORT_FILE = os.environ.pop("FAULT_REPORT", None)  # JSON lines of the results
# A durable --storage-engine for the broker-restart test (tansu's memory keeps nothing).
BROKER_STORAGE = os.environ.pop("FAULT_BROKER_STORAGE", None)

CLI = [sys.executable, "-c", "from liverank.cli.main import main; main()"]
K = int(Settings.model_fields["top_k"].default)  # the worker's default top_k


# --- the model -------------------------------------------------------------------------------
@dataclass(frozen=True)
class FaultModel:
    csv: Path  # the tiny synthetic log the replay sends and the checker reads
    model_dir: Path
    real: bool  # a trained, exported ONNX model (else a fake-scorer directory)


def train_tiny(root: Path) -> FaultModel:
    """``liverank train --preset tiny`` + ``export`` on the tiny synthetic log (~10 s); the
    fake scorer's directory when training is unavailable (said on stdout)."""
    csv = root / "tiny.csv"
    write_synth("tiny", 0, csv)
    ckpt, out = root / "ckpt", root / "model"
    try:
        for args in (["train", "--data", str(csv), "--out", str(ckpt), "--preset", "tiny",
                      "--seed", "1", "--threads", "1", "--val-offset", "100",
                      "--test-offset", "50"],
                     ["export", "--checkpoint", str(ckpt), "--out", str(out)]):
            subprocess.run(CLI + args, check=True, capture_output=True, timeout=240)
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as exc:
        detail = getattr(exc, "stderr", b"") or b""
        print(f"liverank train/export unavailable ({exc}; {detail[-300:]!r}): "  # noqa: T201
              "the fault tests use the fake scorer")
        return FaultModel(csv, write_fake_model(root / "fake", "fake-v1"), real=False)
    return FaultModel(csv, out, real=True)


def is_fake(model_dir: Path) -> bool:
    return FAKE_MODEL_FORMAT in (model_dir / "model.json").read_text()


def settings_for(bootstrap: str, test_name: str) -> Settings:
    """A test's settings: its own topic prefix (and consumer group), memory:// store."""
    name = re.sub(r"[^A-Za-z0-9._-]", "-", test_name)[:50]
    return Settings(kafka_bootstrap=bootstrap, topic_prefix=f"f-{name}-{uuid.uuid4().hex[:6]}.",
                    store="memory://", broker_kind="tansu", kafka_timeout_s=10.0)


# --- waiting ---------------------------------------------------------------------------------
def wait_for(pred: Callable[[], bool], timeout: float, what: str,
             tail: Callable[[], str] = lambda: "", every: float = 0.05) -> None:
    """Poll ``pred`` until true; `TimeoutError` naming ``what`` (and a log tail) after
    ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not within {timeout:.0f} s\n{tail()}")
        time.sleep(every)


def now_ms() -> int:
    return time.time_ns() // 1_000_000


# --- workers ---------------------------------------------------------------------------------
class Worker:
    """One ``liverank serve`` subprocess with default settings, except the broker, topics,
    ``memory://`` store, web port and group given here (and ``env``: LIVERANK_<KEY>=value).
    Its log goes to a file; `tail` shows it in failure messages."""

    def __init__(self, settings: Settings, model_dir: Path, workdir: Path, name: str,
                 **env: str):
        self.name = name
        self.port = free_port()
        self.log = workdir / f"worker-{name}-{self.port}.log"
        self.env = {k: v for k, v in os.environ.items()
                    if not k.startswith("LIVERANK_") and k != "KAFKA_BOOTSTRAP_SERVERS"}
        self.env |= {"LIVERANK_KAFKA_BOOTSTRAP": settings.kafka_bootstrap,
                     "LIVERANK_TOPIC_PREFIX": settings.topic_prefix,
                     "LIVERANK_BROKER_KIND": settings.broker_kind,
                     "LIVERANK_STORE": settings.store,
                     "LIVERANK_WEB_PORT": str(self.port), "LIVERANK_WORKER_ID": "svc",
                     "LIVERANK_MODEL_DIR": str(model_dir)}
        self.env |= {f"LIVERANK_{k.upper()}": v for k, v in env.items()}
        self.model_dir, self.workdir = model_dir, workdir
        self.proc: subprocess.Popen[bytes] | None = None
        self.paused = False

    def start(self) -> Worker:
        # A fake model directory is served through the fake's loader (`liverank serve`
        # itself only serves exported models).
        cmd = ([sys.executable, "-m", "liverank.services.testing", "serve"]
               if is_fake(self.model_dir) else CLI + ["serve"])
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(cmd, env=self.env, cwd=self.workdir, stdout=log,
                                         stderr=subprocess.STDOUT)
        return self

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def _get(self, path: str, timeout: float = 1.0) -> bytes | None:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}",
                                        timeout=timeout) as r:
                return r.read()  # type: ignore[no-any-return]
        except urllib.error.HTTPError as exc:  # 503 while not ready: still a JSON body
            return exc.read()  # type: ignore[no-any-return]
        except (OSError, ValueError):
            return None

    def health(self, path: str = "/readyz") -> dict[str, object] | None:
        body = self._get(path)
        try:
            return json.loads(body) if body is not None else None  # type: ignore[no-any-return]
        except ValueError:
            return None

    def answers(self) -> float | None:
        """Answers delivered by this process (its ``liverank_answers_total``), None when
        it does not answer (killed, paused, starting)."""
        body = self._get("/metrics", timeout=2.0)
        if body is None:
            return None
        for line in body.decode(errors="replace").splitlines():
            if line.startswith('liverank_answers_total{trigger="request"}'):
                return float(line.split()[-1])
        return 0.0

    def wait_ready(self, timeout: float = 90.0) -> None:
        def ready() -> bool:
            assert self.running, f"worker {self.name} exited\n{self.tail()}"
            h = self.health()
            return bool(h and h.get("ready"))

        wait_for(ready, timeout, f"worker {self.name} ready", self.tail, every=0.3)

    def kill(self) -> None:
        if self.running:
            assert self.proc is not None
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=10)

    def pause(self) -> None:
        assert self.proc is not None and self.running
        self.proc.send_signal(signal.SIGSTOP)
        self.paused = True

    def resume(self) -> None:
        if self.proc is not None and self.paused:
            self.proc.send_signal(signal.SIGCONT)
            self.paused = False

    def stop(self) -> None:
        self.resume()  # a stopped process would not handle SIGTERM
        if self.running:
            assert self.proc is not None
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.kill()

    def tail(self, chars: int = 3000) -> str:
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return f"--- {self.log.name} ---\n{text[-chars:]}"


def total_answers(workers: Sequence[Worker]) -> float:
    return sum(a for w in workers if (a := w.answers()) is not None)


def wait_answers(workers: Sequence[Worker], at_least: float, timeout: float,
                 base: float = 0.0) -> None:
    """Until ``base`` + the answers the ``workers`` delivered reach ``at_least`` (polled on
    /metrics, so a kill lands close to the mark)."""
    wait_for(lambda: base + total_answers(workers) >= at_least, timeout,
             f"{at_least:.0f} answers", lambda: "\n".join(w.tail(1500) for w in workers),
             every=0.02)


class AnswerTail:
    """Follows the recommendations topic from its start in a thread and counts the distinct
    requests of ``log`` answered so far: progress a test can poll every few milliseconds
    (a worker's own answer count includes what it redoes after a restart)."""

    def __init__(self, settings: Settings, log: Log):
        self.settings, self.ids = settings, set(log.requests)
        self.seen: set[str] = set()
        self.count = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="answer-tail")

    def start(self) -> AnswerTail:
        self._thread.start()
        return self

    def _run(self) -> None:
        topic = self.settings.topic(kafka.RECOMMENDATIONS)
        c = Consumer({**kafka.consumer_config(self.settings), "fetch.wait.max.ms": 10,
                      "enable.partition.eof": False})
        c.assign([TopicPartition(topic, p, 0) for p in range(self.settings.partitions)])
        try:
            while not self._stop.is_set():
                for m in c.consume(1000, 0.05):
                    if m.error() is not None:
                        continue
                    rec = ev.decode(m.value() or b"", ev.Recommendation)
                    rid = rec.request_id  # type: ignore[union-attr]
                    if rid in self.ids and rid not in self.seen:
                        self.seen.add(rid)
                        self.count += 1
        finally:
            c.close()

    def wait(self, at_least: float, timeout: float, tail: Callable[[], str]) -> None:
        wait_for(lambda: self.count >= at_least, timeout,
                 f"{at_least:.0f} distinct requests answered", tail, every=0.01)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)


def answered_ids(settings: Settings, log: Log) -> set[str]:
    return {a.rec.request_id for a in read_answers(settings)} & set(log.requests)


def wait_all_answered(settings: Settings, log: Log, timeout: float,
                      alive: Callable[[], bool] = lambda: True, stall_s: float | None = None,
                      settle_s: float = 2.0) -> list[Answer]:
    """The answers on the recommendations topic once every request of ``log`` has one and
    the topic stopped growing for ``settle_s`` (late duplicates included). Returns early,
    with what is there, after ``timeout``, when nothing new came for ``stall_s``, or when
    ``alive()`` turns false (a dead worker): the checker then counts what is lost.

    ``stall_s`` by default outlasts a worker's own recovery of a partition Faust stopped
    delivering (`stalled_tail_within_s`, then 10 s to read it back and answer): 20 s gave
    up on a worker that found such a tail 18 s after its rejoin (CI, session 19)."""
    if stall_s is None:
        stall_s = stalled_tail_within_s(settings) + 10.0
    deadline = time.monotonic() + timeout
    last_growth, seen = time.monotonic(), -1
    while True:
        answers = read_answers(settings)
        ids = {a.rec.request_id for a in answers}
        if ids >= set(log.requests):
            break
        now = time.monotonic()
        if len(answers) != seen:
            last_growth, seen = now, len(answers)
        if now > deadline or now - last_growth > stall_s or not alive():
            return answers
        time.sleep(1.0)
    settle_deadline = time.monotonic() + 5 * settle_s
    while time.monotonic() < settle_deadline:
        time.sleep(settle_s)
        again = read_answers(settings)
        if len(again) == len(answers):
            break
        answers = again
    return answers


@dataclass
class LostPlaces:
    """Where unanswered requests sit on user-events, next to the group's commits."""

    group: str
    lost: int
    committed: dict[int, int]  # partition -> the group's committed offset (-1001: none)
    ends: dict[int, int]  # partition -> offset after its last record
    offsets: dict[int, list[int]]  # partition -> offsets of unanswered requests

    @property
    def never_committed(self) -> bool:
        """Every unanswered request sits at or after its partition's committed offset: its
        record was never processed to a commit (not committed and then not answered)."""
        return all(o >= self.committed.get(p, -1) for p, offs in self.offsets.items()
                   for o in offs)

    def describe(self) -> str:
        lines = [f"{self.lost} requests unanswered; user-events of group {self.group}:"]
        for p in sorted(self.ends):
            offs = self.offsets.get(p, [])
            span = f"{len(offs)} unanswered at offsets {offs[0]}..{offs[-1]}" if offs else "-"
            lines.append(f"  partition {p}: committed {self.committed.get(p)} "
                         f"end {self.ends.get(p)} {span}")
        return "\n".join(lines)


def lost_places(settings: Settings, log: Log, answers: Sequence[Answer]) -> LostPlaces | None:
    missing = set(log.requests) - {a.rec.request_id for a in answers}
    if not missing:
        return None
    topic = settings.topic(kafka.USER_EVENTS)
    where: dict[int, list[int]] = {}
    ends: dict[int, int] = {}
    for m in kafka.read_topic(settings, topic, timeout_s=20):
        p, o = int(m.partition() or 0), int(m.offset() or 0)
        ends[p] = max(ends.get(p, -1), o + 1)
        value = m.value() or b""
        rid = value.split(b'"event_id":"', 1)[-1].split(b'"', 1)[0].decode(errors="replace")
        if rid in missing:
            where.setdefault(p, []).append(o)
    group = f"{settings.topic_prefix}svc"
    c = Consumer({**kafka.consumer_config(settings, group), "enable.auto.commit": False})
    try:
        committed = {tp.partition: tp.offset for tp in c.committed(
            [TopicPartition(topic, p) for p in range(settings.partitions)], 10)}
    finally:
        c.close()
    return LostPlaces(group, len(missing), committed, ends, where)


def diagnose_lost(settings: Settings, log: Log, answers: Sequence[Answer]) -> str:
    """Where the unanswered requests sit (partition: offsets) next to the group's committed
    offset and the partition's end: evidence for a failure message."""
    places = lost_places(settings, log, answers)
    return places.describe() if places is not None else ""


def explain(result: object, settings: Settings, log: Log, answers: Sequence[Answer],
            workers: Sequence[Worker], *extra: str) -> str:
    """A failure message: the checker's problems, where the lost requests sit, the
    workers' log tails (a plain string: pytest shows it whole)."""
    parts = ["checker: " + "; ".join(getattr(result, "problems", [])),
             diagnose_lost(settings, log, answers), *(w.tail() for w in workers), *extra]
    return "\n".join(p for p in parts if p)


def assert_answered_right(result: Result, settings: Settings, log: Log,
                          answers: Sequence[Answer], workers: Sequence[Worker],
                          *extra: str) -> None:
    """The checker's verdict: no answer may differ from its duplicate, name a stream not
    live, hold a wrong count, be stale, late, malformed or unexpected; no request may be
    lost. (A loss whose every request sits after its partition's committed offset was a
    stalled partition: Faust dropped a partition's last records after a reassignment;
    GapGuard.stalled now reads such a tail back. The explanation names where they sit.)"""
    bad = {k: getattr(result, k) for k in ("differing", "not_live", "wrong_count", "stale",
                                           "late", "unexpected", "malformed")}
    assert not any(bad.values()), explain(result, settings, log, answers, workers, *extra)
    if result.lost:
        places = lost_places(settings, log, answers)
        where = places.describe() if places is not None else ""
        raise AssertionError(explain(result, settings, log, answers, workers, *extra)
                             + "\n" + where)


# --- the replay, held at gates -----------------------------------------------------------------
class GatedSink(ForwardingSink):
    """A producer that stops before the ``gates[i]``-th user event until `open(i)`; what a
    test does meanwhile lands mid-replay by construction, whatever the machine's speed.
    Everything before a gate is on the broker when the gate is reached."""

    def __init__(self, settings: Settings, gates: Sequence[int], wait_s: float = 240.0):
        super().__init__(Producer(kafka.producer_config(settings)))
        self.user_topic = settings.topic(kafka.USER_EVENTS)
        self.gates = list(gates)
        self.wait_s = wait_s
        self.sent = 0
        self.reached = [threading.Event() for _ in gates]
        self._open = [threading.Event() for _ in gates]

    def produce(self, topic: str, value: object = None, key: object = None,
                partition: int = -1, **kwargs: object) -> None:
        if topic == self.user_topic:
            for i, gate in enumerate(self.gates):
                if self.sent == gate:
                    self.producer.flush(60)
                    self.reached[i].set()
                    if not self._open[i].wait(self.wait_s):
                        raise TimeoutError(f"gate {i} never opened")
            self.sent += 1
        super().produce(topic, value, key, partition, **kwargs)

    def open(self, i: int) -> None:
        self._open[i].set()

    def open_all(self) -> None:
        for e in self._open:
            e.set()


class GatedReplay:
    """The replay of ``csv`` at full speed in a thread, held at ``shares`` of its user
    events (one gate each)."""

    def __init__(self, csv: Path, settings: Settings, shares: Sequence[float]):
        tl = build_timeline(load_interactions(csv))
        counts = kafka.ensure_topics(settings)
        user_steps = tl.step[tl.kind >= REQUEST]
        gates = [int(len(user_steps) * s) for s in shares]
        self.sink = GatedSink(settings, gates)
        self.gate_steps = [int(user_steps[g]) for g in gates]  # the step held back at each
        self.errors: list[str] = []

        def run() -> None:
            try:
                report = replay_to(tl, self.sink,
                                   partitions=counts[settings.topic(kafka.STREAM_EVENTS)],
                                   stream_topic=settings.topic(kafka.STREAM_EVENTS),
                                   user_topic=self.sink.user_topic)
                if not report.ok:
                    self.errors.append(str(report.first_error))
            except Exception as exc:  # noqa: BLE001 - reported by `join`
                self.errors.append(repr(exc))

        self.thread = threading.Thread(target=run, daemon=True, name="gated-replay")

    def start(self) -> GatedReplay:
        self.thread.start()
        return self

    def wait_gate(self, i: int, timeout: float = 60.0) -> None:
        wait_for(lambda: self.sink.reached[i].is_set() or bool(self.errors), timeout,
                 f"replay at gate {i}")
        assert not self.errors, self.errors

    def open(self, i: int) -> None:
        self.sink.open(i)

    def join(self, timeout: float = 120.0) -> None:
        self.thread.join(timeout)
        assert not self.thread.is_alive(), f"the replay did not finish in {timeout:.0f} s"
        assert not self.errors, self.errors

    def close(self) -> None:
        """Let a held replay run out (teardown)."""
        self.sink.open_all()


# --- a tansu that can be restarted with its data ------------------------------------------------
def _die_with_parent() -> None:
    if sys.platform.startswith("linux"):
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


class BrokerDownError(RuntimeError):
    pass


class TansuProcess:
    """tansu on a fixed port with the given ``--storage-engine``: `kill` and `start` again
    give the same address and, if the storage keeps it, the same data (the embedded broker
    always uses memory)."""

    def __init__(self, storage: str, workdir: Path, port: int | None = None):
        self.storage = storage
        self.port = port or free_port()
        self.log = workdir / f"tansu-{self.port}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self, timeout: float = 20.0) -> TansuProcess:
        if port_open("127.0.0.1", self.port):
            raise BrokerDownError(f"port {self.port} is in use")
        url = f"tcp://127.0.0.1:{self.port}"
        cmd = [broker_binary(), "broker", "--cluster-id", TANSU_CLUSTER_ID, "--listener-url",
               url, "--advertised-listener-url", url, "--storage-engine", self.storage]
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, start_new_session=True,
                                         preexec_fn=_die_with_parent)
        deadline = time.monotonic() + timeout
        while not port_open("127.0.0.1", self.port):
            if self.proc.poll() is not None:
                raise BrokerDownError(f"tansu exited with code {self.proc.returncode}: "
                                 f"{self.tail(600)}")
            if time.monotonic() > deadline:
                raise BrokerDownError(f"tansu not listening after {timeout:.0f} s: "
                                      f"{self.tail(600)}")
            time.sleep(0.05)
        return self

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.kill()
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.send_signal(signal.SIGINT)  # tansu ignores SIGTERM
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.kill()

    def tail(self, chars: int = 2000) -> str:
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        text = re.sub(r"\x1b\[[0-9;]*m", "", text[-chars:])  # tansu colours its log
        errors = [ln for ln in text.splitlines() if ln.startswith("Error:")]
        return errors[-1] if errors else " | ".join(text.splitlines()[-6:])


def probe_durable(storage: str, workdir: Path) -> str | None:
    """None when tansu with ``storage`` keeps topics, messages and committed offsets across
    a SIGKILL and a restart on the same port; else what was lost (or why it did not
    start)."""
    broker = TansuProcess(storage, workdir)
    settings = Settings(kafka_bootstrap=broker.bootstrap, topic_prefix="probe.",
                        broker_kind="tansu", kafka_timeout_s=5.0)
    topic, group = "probe.t", "probe-group"
    try:
        broker.start()
        kafka.ensure_topics(settings, ["t"])
        p = Producer(kafka.producer_config(settings))
        for i in range(10):
            p.produce(topic, b"%d" % i, b"k", i % settings.partitions)
        if p.flush(10):
            return "messages not acknowledged before the restart"
        c = Consumer({**kafka.consumer_config(settings, group), "enable.auto.commit": False})
        c.commit(offsets=[TopicPartition(topic, 0, 1)], asynchronous=False)
        c.close()
        broker.kill()
        broker.start()
        meta = kafka.admin_client(settings).list_topics(timeout=5)
        if topic not in meta.topics:
            return f"the topic is gone after a restart (topics: {sorted(meta.topics)})"
        c = Consumer({**kafka.consumer_config(settings, group), "enable.auto.commit": False})
        try:
            committed = c.committed([TopicPartition(topic, 0)], 5)[0].offset
        finally:
            c.close()
        if committed != 1:
            return f"the committed offset is gone after a restart ({committed})"
        n = _count(settings, topic)
        return None if n == 10 else f"{n} of 10 messages left after a restart"
    except BrokerDownError as exc:
        return f"tansu with --storage-engine {storage} does not run: {exc}"
    except Exception as exc:  # noqa: BLE001 - any failure means "cannot keep data"
        return f"{type(exc).__name__}: {exc}"
    finally:
        broker.stop()


def _count(settings: Settings, topic: str) -> int:
    c = Consumer(kafka.consumer_config(settings))
    c.assign([TopicPartition(topic, p, 0) for p in range(settings.partitions)])
    eof: set[int] = set()
    n = 0
    deadline = time.monotonic() + 10
    try:
        while len(eof) < settings.partitions and time.monotonic() < deadline:
            for m in c.consume(1000, 0.5):
                if m.error() is None:
                    n += 1
                elif m.error().code() == KafkaError._PARTITION_EOF:
                    eof.add(m.partition())
    finally:
        c.close()
    return n
