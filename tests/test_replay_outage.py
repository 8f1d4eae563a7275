"""The replay and a broker that goes away: waited out, logged once per interval, never a
traceback; past ``LIVERANK_OUTAGE_TIMEOUT_S`` a one-line error naming the broker.

* Without a broker (fakes): a transient ``produce`` error is retried for the same message
  (nothing skipped or reordered), a fatal one stops the replay at once, an outage longer
  than the limit stops it with `ReplayReport.outage`; librdkafka's repeated lines are held
  back (`RepeatFilter`).
* On a broker (``kafka``): each test starts its own embedded tansu, since freezing a broker
  other tests share would break them, and freezes it with SIGSTOP mid-replay, which is made
  certain by a gate in the producer (`GatedSink`), not by timing. SIGCONT and the broker's
  stop are in a ``finally``; every wait is bounded.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import confluent_kafka
import pytest
from confluent_kafka import KafkaError, KafkaException
from typer.testing import CliRunner

from liverank.broker import kafka as kf
from liverank.broker.embedded import EmbeddedBroker
from liverank.broker.kafka import RepeatFilter
from liverank.cli.main import app
from liverank.core import events as ev
from liverank.core.settings import Settings
from liverank.model.data.synth import generate
from liverank.model.data.timeline import WATERMARK, Timeline, build_timeline
from liverank.model.data.twitch import write_twitch
from liverank.replay import producer as rp
from liverank.replay.producer import (
    ForwardingSink,
    MemorySink,
    is_end,
    replay,
    replay_to_kafka,
)

P = 4  # partitions


@pytest.fixture(scope="module")
def tiny():  # type: ignore[no-untyped-def]
    return generate("tiny", seed=0)


def _run(tl: Timeline, sink: Any, **kw: Any) -> rp.ReplayReport:
    return replay(tl, sink, partitions=P, stream_topic="s", user_topic="u",
                  broker="test-broker:9092", **kw)


def _kafka_exc(code: int) -> KafkaException:
    return KafkaException(KafkaError(code))


class FlakySink(MemorySink):
    """Refuses the ``at``-th produce call, and every retry of it, with ``error`` for
    ``seconds`` (forever when None); counts metadata refreshes."""

    def __init__(self, at: int, error: int, seconds: float | None) -> None:
        super().__init__()
        self.at, self.error, self.seconds = at, error, seconds
        self.calls, self.refused, self.refreshes = 0, 0, 0
        self.since: float | None = None
        self.passed = False

    def produce(self, topic: str, value: bytes | None = None, key: bytes | None = None,
                partition: int = -1, **kw: Any) -> None:
        self.calls += 1
        if self.calls >= self.at and not self.passed:
            if self.since is None:
                self.since = time.monotonic()
            if self.seconds is None or time.monotonic() - self.since < self.seconds:
                self.refused += 1
                raise _kafka_exc(self.error)
            self.passed = True
        super().produce(topic, value, key, partition, **kw)

    def list_topics(self, timeout: float = -1) -> object:
        self.refreshes += 1
        return object()


def _warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    """The replay's own lines at WARNING (its outage lines)."""
    return [r.getMessage() for r in caplog.records
            if r.name == rp.logger.name and r.levelno == logging.WARNING]


def _sent(tl: Timeline) -> list[bytes]:
    sink = MemorySink()
    assert _run(tl, sink, wall_ms=lambda: 1).ok
    return [m.value for m in sink.sent]


# --- without a broker -------------------------------------------------------------------------

def test_stale_metadata_on_produce_is_waited_out_for_the_same_message(
        tiny, caplog: pytest.LogCaptureFixture) -> None:  # type: ignore[no-untyped-def]
    """The error the replay died of: ``produce`` raising _UNKNOWN_PARTITION (a watermark or
    End has an explicit partition, checked against librdkafka's metadata)."""
    tl = build_timeline(tiny, to_step=120)
    sink = FlakySink(at=2000, error=KafkaError._UNKNOWN_PARTITION, seconds=1.2)
    caplog.set_level(logging.INFO, logger=rp.logger.name)
    report = _run(tl, sink, wall_ms=lambda: 1)
    assert report.ok, report.first_error
    assert sink.refused >= 3 and sink.refreshes == sink.refused  # backed off, refreshed
    # Nothing skipped, nothing twice, the order of a run without the error.
    assert [m.value for m in sink.sent] == _sent(tl)
    # One line when it started, one when it ended: not one per retry.
    lines = _warnings(caplog)
    assert len(lines) == 1, lines
    assert lines[0].startswith("broker test-broker:9092 unreachable (produce to s: "
                               "Local: Unknown partition [_UNKNOWN_PARTITION])")
    assert "LIVERANK_OUTAGE_TIMEOUT_S=300" in lines[0]
    assert sum("reachable again" in r.getMessage() for r in caplog.records) == 1


def test_a_fatal_produce_error_stops_at_once_without_a_traceback(tiny) -> None:  # type: ignore[no-untyped-def]
    tl = build_timeline(tiny, to_step=120)
    sink = FlakySink(at=500, error=KafkaError.MSG_SIZE_TOO_LARGE, seconds=None)
    report = _run(tl, sink)
    assert not report.ok and report.outage is None
    assert sink.refused == 1  # not retried
    assert report.first_error_code == "MSG_SIZE_TOO_LARGE"
    assert report.first_error is not None and "too large" in report.first_error
    assert len(sink.sent) == 499 == report.messages  # everything before it, nothing after


def test_an_outage_longer_than_the_limit_stops_with_one_line(
        tiny, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setattr(rp, "OUTAGE_LOG_EVERY_S", 0.5)
    tl = build_timeline(tiny, to_step=120)
    sink = FlakySink(at=700, error=KafkaError._TRANSPORT, seconds=None)
    caplog.set_level(logging.INFO, logger=rp.logger.name)
    t0 = time.monotonic()
    report = _run(tl, sink, outage_timeout_s=1.5)
    took = time.monotonic() - t0
    assert 1.5 < took < 5
    assert not report.ok and report.outage is not None
    assert report.outage.startswith("the Kafka broker at test-broker:9092 was unreachable for "
                                    "longer than LIVERANK_OUTAGE_TIMEOUT_S=1.5 s (last error: "
                                    "produce to ")
    assert "[_TRANSPORT]" in report.outage and "\n" not in report.outage
    assert len(sink.sent) == 699 == report.messages  # it kept its place to the end
    # Retried with a growing backoff, logged every 0.5 s: a few lines, not one per retry.
    assert 2 <= len(_warnings(caplog)) <= 1 + took / 0.5


def test_a_delivery_timed_out_means_the_outage_outlasted_the_limit(tiny) -> None:  # type: ignore[no-untyped-def]
    """message.timeout.ms is the outage limit (`kafka.producer_config`)."""
    tl = build_timeline(tiny, to_step=60)
    timed_out = KafkaError(KafkaError._MSG_TIMED_OUT)
    sink = MemorySink(fail=lambda m: timed_out if m.topic == "u" else None)  # type: ignore[arg-type, return-value]
    report = _run(tl, sink, outage_timeout_s=7)
    assert report.first_error_code == "_MSG_TIMED_OUT"
    assert report.outage is not None
    assert report.outage.startswith("the Kafka broker at test-broker:9092 was unreachable for "
                                    "longer than LIVERANK_OUTAGE_TIMEOUT_S=7 s")


class FlakyMetadata:
    """A producer whose ``list_topics`` fails with ``error`` ``failures`` times."""

    def __init__(self, error: int, failures: float) -> None:
        self.error, self.failures, self.calls = error, failures, 0

    def list_topics(self, timeout: float = -1) -> object:
        self.calls += 1
        if self.calls <= self.failures:
            raise _kafka_exc(self.error)
        return object()


@pytest.mark.parametrize("error, failures, outcome", [
    (KafkaError._TRANSPORT, 3, None),  # a blip right after ensure_topics: waited out
    (KafkaError._TIMED_OUT, float("inf"), "unreachable for longer than "
     "LIVERANK_OUTAGE_TIMEOUT_S=0.5 s (last error: metadata: Local: Timed out [_TIMED_OUT]); "
     "the replay stopped before producing anything"),
    (KafkaError._AUTHENTICATION, float("inf"), "refused the replay's producer"),
])
def test_the_first_metadata_call_waits_out_an_outage_too(
        error: int, failures: float, outcome: str | None) -> None:
    settings = Settings(kafka_bootstrap="test-broker:9092", kafka_timeout_s=0.1,
                        outage_timeout_s=0.5)
    producer = FlakyMetadata(error, failures)
    if outcome is None:
        rp._connect(producer, settings)
        assert producer.calls == 4
    else:
        with pytest.raises(kf.KafkaSetupError, match="the Kafka broker at test-broker:9092") as e:
            rp._connect(producer, settings)
        assert outcome in str(e.value)


def test_repeated_librdkafka_lines_are_held_back() -> None:
    now = [0.0]
    quiet = RepeatFilter(every_s=5, clock=lambda: now[0])

    def record(text: str) -> logging.LogRecord:
        return logging.LogRecord("liverank.librdkafka", logging.ERROR, __file__, 1,
                                 "%s [%s] %s", ("FAIL", "rdkafka#producer-1", text), None)

    refused = "Connect to ipv4#127.0.0.1:9 failed: Connection refused"
    passed = []
    for _ in range(20):  # twice a second for 5 s
        r = record(refused)
        if quiet.filter(r):
            passed.append(r.getMessage())
        now[0] += 0.25
    assert quiet.filter(record("another line"))  # other lines are not held back
    r = record(refused)
    assert quiet.filter(r)  # 5 s on: the line again, saying how many were held back
    passed.append(r.getMessage())
    assert passed == [f"FAIL [rdkafka#producer-1] {refused}",
                      f"FAIL [rdkafka#producer-1] {refused} (19 identical lines held back)"]


# --- on a broker --------------------------------------------------------------------------

class GatedSink(ForwardingSink):
    """The replay's producer with a gate before the ``gate``-th user event: everything
    before it is flushed to the broker, the broker is frozen (SIGSTOP) and a timer thaws it
    (SIGCONT) after ``stop_s``; meanwhile the replay goes on producing, ``pace_s`` per
    message, into the frozen broker."""

    def __init__(self, producer: Any, broker: EmbeddedBroker, user_topic: str, gate: int,
                 stop_s: float, pace_s: float = 0.0003) -> None:
        super().__init__(producer)
        self.broker, self.user_topic, self.gate = broker, user_topic, gate
        self.stop_s, self.pace_s = stop_s, pace_s
        self.users = 0
        self.frozen_at: float | None = None
        self.thawed_at: float | None = None
        self.timer: threading.Timer | None = None

    def produce(self, topic: str, value: Any = None, key: Any = None, partition: int = -1,
                **kwargs: Any) -> None:
        if topic == self.user_topic:
            if self.users == self.gate:
                assert self.producer.flush(30) == 0  # everything before the gate is acked
                os.kill(self.broker.process.pid, signal.SIGSTOP)
                self.frozen_at = time.monotonic()
                self.timer = threading.Timer(self.stop_s, self.thaw)
                self.timer.start()
            self.users += 1
        if self.frozen_at is not None and self.thawed_at is None:
            time.sleep(self.pace_s)
        super().produce(topic, value, key, partition, **kwargs)

    def thaw(self) -> None:
        if self.thawed_at is None:
            self.thawed_at = time.monotonic()
            os.kill(self.broker.process.pid, signal.SIGCONT)

    def close(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
        if self.frozen_at is not None:
            self.thaw()


@pytest.fixture
def gate(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., list[GatedSink]]]:
    """``gate(conf, **GatedSink options)`` makes `replay_to_kafka`'s producer a `GatedSink`
    (``conf`` overrides its librdkafka config) and returns the list of those made; at the end
    each is thawed, whatever happened."""
    made: list[GatedSink] = []
    real = confluent_kafka.Producer

    def install(conf: dict[str, Any] | None = None, **options: Any) -> list[GatedSink]:
        def factory(base: dict[str, Any]) -> GatedSink:
            made.append(GatedSink(real({**base, **(conf or {})}), **options))
            return made[-1]

        monkeypatch.setattr(confluent_kafka, "Producer", factory)
        return made

    try:
        yield install
    finally:
        for sink in made:
            sink.close()


def _user_events(tl: Timeline) -> int:
    return tl.counts()["watch"] + tl.counts()["rec_request"]


def _by_partition(msgs: list[Any]) -> list[Any]:
    return sorted(msgs, key=lambda m: (m.partition(), m.offset()))


@pytest.mark.kafka
@pytest.mark.parametrize("conf", [
    None,
    # Requests in flight time out during the freeze and are sent again after it: the
    # idempotent producer's sequence numbers keep them from being written twice.
    {"request.timeout.ms": 2000, "socket.timeout.ms": 3000},
], ids=["frozen", "frozen-requests-retried"])
def test_replay_waits_out_a_frozen_broker_and_delivers_every_event_once(
        own_broker: EmbeddedBroker, gate: Callable[..., list[GatedSink]], tiny,  # type: ignore[no-untyped-def]
        caplog: pytest.LogCaptureFixture, conf: dict[str, Any] | None) -> None:
    settings = Settings(kafka_bootstrap=own_broker.bootstrap, broker_kind="tansu",
                        partitions=P, store="memory://", kafka_timeout_s=10.0,
                        outage_timeout_s=40.0)
    tl = build_timeline(tiny)
    u_topic, s_topic = settings.topic(kf.USER_EVENTS), settings.topic(kf.STREAM_EVENTS)
    sinks = gate(conf, broker=own_broker, user_topic=u_topic, gate=_user_events(tl) // 3,
                 stop_s=8.0)
    caplog.set_level(logging.INFO)
    t0 = time.monotonic()
    report = replay_to_kafka(tl, settings, block_size=500)
    took = time.monotonic() - t0
    assert report.ok, report.as_dict()
    (sink,) = sinks
    assert sink.frozen_at is not None and sink.thawed_at is not None
    assert 8 <= took < 30  # it waited for the broker, then finished
    # The outage was told once per interval, not per message or retry; librdkafka was quiet.
    told = _warnings(caplog)
    assert 1 <= len(told) <= 8 / rp.OUTAGE_LOG_EVERY_S + 1, told
    assert all(m.startswith(f"no acknowledgement from broker {own_broker.bootstrap}")
               for m in told), told
    assert any("acknowledging again" in r.getMessage() for r in caplog.records)
    librdkafka = Counter(r.getMessage() for r in caplog.records
                         if r.name == kf.librdkafka_logger.name)
    assert sum(librdkafka.values()) <= 20 and max(librdkafka.values(), default=0) <= 2, \
        librdkafka

    # Read back: every event exactly once per topic.
    stream_msgs = kf.read_topic(settings, s_topic, timeout_s=30,
                                until=lambda m: is_end(m.value()))
    user_msgs = kf.read_topic(settings, u_topic, timeout_s=30)
    assert len(user_msgs) == report.topics[u_topic].produced == _user_events(tl)
    assert len(stream_msgs) == report.topics[s_topic].produced
    events = [tl.event(i) for i in range(len(tl)) if tl.kind[i] != WATERMARK]
    want_user = {e.event_id for e in events if isinstance(e, ev.Watch | ev.RecRequest)}
    want_stream = {e.event_id for e in events} - want_user
    user_ids = Counter(ev.decode(m.value()).event_id for m in user_msgs)
    assert set(user_ids) == want_user and set(user_ids.values()) == {1}
    stream = [(m.partition(), ev.decode(m.value())) for m in stream_msgs]
    plain = Counter(e.event_id for _, e in stream if not isinstance(e, ev.Watermark | ev.End))
    assert set(plain) == want_stream and set(plain.values()) == {1}
    marks = Counter((p, e.event_id) for p, e in stream if isinstance(e, ev.Watermark | ev.End))
    assert len(marks) == (tl.counts()["watermark"] + 1) * P and set(marks.values()) == {1}
    # Per key (a user, a stream): in timeline order.
    for msgs in (user_msgs, stream_msgs):
        by_key: dict[bytes, list[int]] = defaultdict(list)
        for m in _by_partition(msgs):
            if m.key() is not None:
                by_key[m.key()].append(ev.decode(m.value()).seq)
        assert by_key and all(seqs == sorted(seqs) for seqs in by_key.values())
    # Per partition: watermarks one step at a time, after their step's stream events; End last.
    per_part: dict[int, list[Any]] = defaultdict(list)
    for m in _by_partition(stream_msgs):
        per_part[m.partition()].append(ev.decode(m.value()))
    assert sorted(per_part) == list(range(P))
    for p, part_events in per_part.items():
        assert isinstance(part_events[-1], ev.End) and part_events[-1].partition == p
        wm = -1
        for e in part_events[:-1]:
            if isinstance(e, ev.Watermark):
                assert e.step == wm + 1
                wm = e.step
            else:
                assert e.step > wm


@pytest.mark.kafka
def test_an_outage_longer_than_the_limit_ends_the_cli_with_one_line(
        own_broker: EmbeddedBroker, gate: Callable[..., list[GatedSink]], tiny,  # type: ignore[no-untyped-def]
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "log.csv"
    write_twitch(tiny, path)
    for name, value in {"LIVERANK_OUTAGE_TIMEOUT_S": "3", "LIVERANK_PARTITIONS": str(P),
                        "LIVERANK_BROKER_KIND": "tansu", "LIVERANK_TOPIC_PREFIX": ""}.items():
        monkeypatch.setenv(name, value)
    tl = build_timeline(tiny)
    # Frozen for longer than the test waits: the replay must give up while it is.
    sinks = gate(broker=own_broker, user_topic="user-events", gate=_user_events(tl) // 3,
                 stop_s=20.0)
    t0 = time.monotonic()
    result = CliRunner().invoke(app, ["replay", str(path), "--bootstrap", own_broker.bootstrap,
                                      "--no-progress"])
    took = time.monotonic() - t0
    (sink,) = sinks
    assert sink.frozen_at is not None and sink.thawed_at is None
    assert result.exit_code == 2, result.output
    assert isinstance(result.exception, SystemExit) and "Traceback" not in result.output
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.output
    assert errors[0].startswith(f"error: the Kafka broker at {own_broker.bootstrap} was "
                                "unreachable for longer than LIVERANK_OUTAGE_TIMEOUT_S=3 s")
    assert errors[0].endswith("messages acknowledged")
    # The limit, librdkafka's message-timeout scan (1 s) and the short last flush.
    assert time.monotonic() - sink.frozen_at < 3 + 1 + rp.STOP_FLUSH_S + 3
    assert took < 20
