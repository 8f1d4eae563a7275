"""The replay into a real broker, read back by a plain consumer (assign(), bounded reads)."""

from __future__ import annotations

import time
from collections import Counter, defaultdict
from pathlib import Path

import pytest
from aiokafka.partitioner import DefaultPartitioner
from confluent_kafka import TIMESTAMP_CREATE_TIME
from typer.testing import CliRunner

from liverank.broker import kafka as kf
from liverank.cli.main import app
from liverank.core import events as ev
from liverank.core.settings import Settings
from liverank.model.data.synth import generate
from liverank.model.data.timeline import WATERMARK, build_timeline
from liverank.model.data.twitch import write_twitch
from liverank.replay.producer import PRODUCED_MS_HEADER, is_end, replay_to_kafka

pytestmark = pytest.mark.kafka


@pytest.fixture(scope="module")
def tiny():  # type: ignore[no-untyped-def]
    return generate("tiny", seed=0)


def test_replay_reads_back_exactly(kafka_settings: Settings, tiny) -> None:  # type: ignore[no-untyped-def]
    tl = build_timeline(tiny)
    before = time.time_ns() // 1_000_000
    report = replay_to_kafka(tl, kafka_settings)
    after = time.time_ns() // 1_000_000
    assert report.ok, report
    n = kafka_settings.partitions
    s_topic = kafka_settings.topic(kf.STREAM_EVENTS)
    u_topic = kafka_settings.topic(kf.USER_EVENTS)
    stream_msgs = kf.read_topic(kafka_settings, s_topic, timeout_s=30,
                                until=lambda m: is_end(m.value()))
    user_msgs = kf.read_topic(kafka_settings, u_topic, timeout_s=30)
    assert len(stream_msgs) == report.topics[s_topic].produced
    assert len(user_msgs) == report.topics[u_topic].produced

    # Counts per type, and the payloads are exactly the timeline's events.
    got = [(m, ev.decode(m.value())) for m in stream_msgs + user_msgs]
    kinds = Counter(type(e).__name__ for _, e in got)
    counts = tl.counts()
    assert kinds == {"StreamStart": counts["stream_start"], "StreamStop": counts["stream_stop"],
                     "Watermark": counts["watermark"] * n, "End": n,
                     "RecRequest": counts["rec_request"], "Watch": counts["watch"]}
    want = {tl.event(i).event_id: tl.event(i) for i in range(len(tl))
            if tl.kind[i] != WATERMARK}
    plain = {e.event_id: e for _, e in got if not isinstance(e, ev.Watermark | ev.End)}
    assert plain == want  # same ids, same payloads, nothing extra, nothing missing

    parts = list(range(n))
    for m, e in got:
        ts_type, ts = m.timestamp()
        assert ts_type == TIMESTAMP_CREATE_TIME and ts == e.event_time_ms
        (name, value), = m.headers()
        assert name == PRODUCED_MS_HEADER and before <= int(value) <= after
        if isinstance(e, ev.Watermark | ev.End):
            assert m.partition() == e.partition and m.key() is None
        else:  # keyed: where Faust/aiokafka would look for that key
            assert m.partition() == DefaultPartitioner()(m.key(), parts, parts)

    # Per-key order: each user's events in timeline order (request right before its watch).
    by_user: dict[bytes, list[int]] = defaultdict(list)
    for m in sorted(user_msgs, key=lambda m: (m.partition(), m.offset())):
        by_user[m.key()].append(ev.decode(m.value()).seq)
    assert all(seqs == sorted(seqs) for seqs in by_user.values())

    # On every partition: a stream event of step s comes before that partition's watermark s,
    # watermarks climb one step at a time, End is last.
    per_part: dict[int, list[ev.Event]] = defaultdict(list)
    for m in sorted(stream_msgs, key=lambda m: (m.partition(), m.offset())):
        per_part[m.partition()].append(ev.decode(m.value()))
    for p, events in per_part.items():
        assert isinstance(events[-1], ev.End) and events[-1].partition == p
        assert events[-1].stream_events == report.topics[s_topic].produced - n
        assert events[-1].user_events == report.topics[u_topic].produced
        wm_seen = -1
        for e in events[:-1]:
            if isinstance(e, ev.Watermark):
                assert e.step == wm_seen + 1
                wm_seen = e.step
            else:
                assert e.step > wm_seen, e


def test_cli_skip_bad_rows_reports_and_replays(kafka_settings: Settings, tiny,  # type: ignore[no-untyped-def]
                                               tmp_path: Path) -> None:
    path = tmp_path / "log.csv"
    write_twitch(tiny, path)
    lines = path.read_text().splitlines()
    lines.insert(3, "1,2,three")
    path.write_text("\n".join(lines) + "\n")
    result = CliRunner().invoke(app, [
        "replay", str(path), "--bootstrap", kafka_settings.kafka_bootstrap, "--topic-prefix",
        kafka_settings.topic_prefix, "--skip-bad-rows", "--to-step", "100", "--no-progress"])
    assert result.exit_code == 0, result.output
    assert "skipped bad rows: 1" in result.output
    tl = build_timeline(tiny, to_step=100)
    u_topic = kafka_settings.topic(kf.USER_EVENTS)
    n_user = tl.counts()["watch"] + tl.counts()["rec_request"]
    assert f"{n_user:,}" in result.output
    assert len(kf.read_topic(kafka_settings, u_topic, timeout_s=20)) == n_user


def test_bench_replay_runs_and_reports(tiny, tmp_path: Path,  # type: ignore[no-untyped-def]
                                       kafka_broker_kind: str) -> None:
    """The benchmark command end to end on a tiny file (its own embedded brokers)."""
    import json

    if kafka_broker_kind != "tansu":
        pytest.skip("the replay bench runs against the embedded tansu only")
    path = tmp_path / "log.csv"
    write_twitch(tiny, path)
    out = tmp_path / "bench.json"
    result = CliRunner().invoke(app, ["bench", "replay", "--data", str(path), "--partitions",
                                      "3", "--out", str(out)])
    assert result.exit_code == 0, result.output
    figures = json.loads(out.read_text())
    tl = build_timeline(tiny)
    assert figures["events"] == len(tl)
    assert figures["messages"] == len(tl) + tl.counts()["watermark"] * 2 + 3  # 3 partitions
    assert figures["ratio"] > 0 and "ratio replay/raw" in result.output


def test_a_max_speed_replay_fills_its_batches_and_a_paced_one_does_not_linger(
        kafka_settings: Settings, tiny, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    """At max speed the whole timeline is a backlog: the producer waits for full batches
    (`kf.backlog_producer_config`); a replay at an even rate keeps the short linger, since
    each of its messages is stamped with produced_ms when handed over."""
    import confluent_kafka

    real = confluent_kafka.Producer
    configs: list[dict] = []  # type: ignore[type-arg]

    def recording(conf: dict) -> confluent_kafka.Producer:  # type: ignore[type-arg]
        configs.append(conf)
        return real(conf)

    monkeypatch.setattr(confluent_kafka, "Producer", recording)
    tl = build_timeline(tiny, to_step=40)
    assert replay_to_kafka(tl, kafka_settings).ok
    assert configs[-1]["linger.ms"] == kf.BACKLOG_LINGER_MS > kf.producer_config(
        kafka_settings)["linger.ms"]
    assert configs[-1]["batch.num.messages"] >= 100_000
    paced = kafka_settings.model_copy(update={"topic_prefix": kafka_settings.topic_prefix
                                              + "paced."})
    assert replay_to_kafka(tl, paced, rate=50_000.0).ok
    assert configs[-1]["linger.ms"] == kf.producer_config(paced)["linger.ms"]
    assert "batch.num.messages" not in configs[-1]


def test_the_producer_id_watch_reads_librdkafkas_statistics() -> None:
    watch = kf.ProducerIdWatch()
    watch('{"name": "p", "eos": {"idemp_state": "WaitPID", "producer_id": -1}}')
    assert watch.state == "WaitPID"
    watch('{"eos": {"idemp_state": "Assigned", "producer_id": 7}}')
    assert watch.state == "Assigned"
    watch("not json: read no more once assigned")
    assert watch.state == "Assigned"
    assert watch.config()["stats_cb"] is watch


def test_a_producer_that_never_gets_its_id_is_a_setup_error() -> None:
    class Silent:  # a producer whose statistics never come
        polls = 0

        def poll(self, timeout: float) -> int:
            Silent.polls += 1
            return 0

    watch = kf.ProducerIdWatch()
    with pytest.raises(kf.KafkaSetupError, match="no idempotent producer id after 0 s "
                       r"\(librdkafka's state: no statistics yet\)"):
        watch.wait(Silent(), timeout_s=0.05)
    assert Silent.polls > 0


def test_a_fresh_producer_holds_its_id_after_the_wait(kafka_settings: Settings) -> None:
    from confluent_kafka import Producer

    watch = kf.ProducerIdWatch()
    producer = Producer({**kf.producer_config(kafka_settings), **watch.config()})
    producer.list_topics(timeout=30)
    watch.wait(producer, timeout_s=30)
    assert watch.state == "Assigned"
    producer.flush(5)


def test_the_replay_waits_for_its_producer_id_before_the_first_record(
        kafka_settings: Settings, tiny, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    """Every record's produced_ms is stamped after the producer got its id, so no record's
    latency holds librdkafka's wait for it."""
    waited: list[float] = []
    wait = kf.ProducerIdWatch.wait

    def timed_wait(self: kf.ProducerIdWatch, producer: object, timeout_s: float) -> None:
        wait(self, producer, timeout_s)
        assert self.state == "Assigned"
        waited.append(time.time_ns() // 1_000_000)

    monkeypatch.setattr(kf.ProducerIdWatch, "wait", timed_wait)
    tl = build_timeline(tiny)
    report = replay_to_kafka(tl, kafka_settings, rate=2_000.0)
    assert report.ok, report
    assert len(waited) == 1
    msgs = kf.read_topic(kafka_settings, kafka_settings.topic(kf.USER_EVENTS), timeout_s=30)
    stamps = [int(v) for m in msgs for k, v in (m.headers() or []) if k == PRODUCED_MS_HEADER]
    assert stamps and min(stamps) >= waited[0]
