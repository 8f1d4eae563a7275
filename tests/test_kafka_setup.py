"""Broker address, client configs, topics, broker detection, reading to the end, the broker."""

from __future__ import annotations

import time

import pytest
from aiokafka.partitioner import DefaultPartitioner
from confluent_kafka import Producer

from liverank.broker import kafka as kf
from liverank.broker import tansu
from liverank.broker.embedded import BrokerError, EmbeddedBroker, free_port, parse_listen
from liverank.core import events as ev
from liverank.core.settings import Settings

# --- no broker needed ---------------------------------------------------------------------


def test_resolve_bootstrap_order(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LIVERANK_KAFKA_BOOTSTRAP", raising=False)
    monkeypatch.delenv("KAFKA_BOOTSTRAP_SERVERS", raising=False)
    assert kf.resolve_bootstrap() == "127.0.0.1:9092"
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "b:2")
    assert kf.resolve_bootstrap() == "b:2"
    monkeypatch.setenv("LIVERANK_KAFKA_BOOTSTRAP", "a:1")
    assert kf.resolve_bootstrap() == "a:1"
    assert Settings().kafka_bootstrap == "a:1"


def test_security_settings_reach_every_client(tmp_path: object) -> None:
    ca = tmp_path / "ca.pem"  # type: ignore[operator]
    ca.write_text("not really a CA")
    s = Settings(kafka_bootstrap="k1:9093,k2:9093", security_protocol="SASL_SSL",
                 sasl_mechanism="SCRAM-SHA-512", sasl_username="u", sasl_password="p",
                 ssl_cafile=str(ca), broker_kind="kafka")
    want = {"bootstrap.servers": "k1:9093,k2:9093", "security.protocol": "SASL_SSL",
            "sasl.mechanism": "SCRAM-SHA-512", "sasl.username": "u", "sasl.password": "p",
            "ssl.ca.location": str(ca)}
    for conf in (kf.producer_config(s), kf.consumer_config(s), kf.consumer_config(s, "g"),
                 kf.client_config(s)):
        assert {k: conf[k] for k in want} == want
    prod = kf.producer_config(s)
    assert prod["enable.idempotence"] is True and prod["acks"] == "all"
    assert prod["partitioner"] == "murmur2_random"
    # Real Kafka: no tansu group overrides.
    assert "session.timeout.ms" not in kf.consumer_config(s, "g")
    # The configs are accepted by librdkafka (no unknown property names).
    Producer({k: v for k, v in prod.items() if not k.startswith(("sasl", "ssl", "security"))})


def test_faust_options_follow_settings() -> None:
    from liverank.services.faustcompat import faust_app_options

    s = Settings(kafka_bootstrap="k1:9093,k2:9093", security_protocol="SASL_PLAINTEXT",
                 sasl_mechanism="PLAIN", sasl_username="u", sasl_password="p",
                 broker_kind="kafka", partitions=3, store="memory://")
    opts = faust_app_options(s)
    assert opts["broker"] == "kafka://k1:9093,kafka://k2:9093"
    assert opts["topic_partitions"] == 3 and opts["store"] == "memory://"
    cred = opts["broker_credentials"]
    assert (cred.username, cred.password) == ("u", "p")
    assert "producer_max_batch_size" not in opts  # Faust defaults on real Kafka
    on_tansu = faust_app_options(Settings(broker_kind="tansu"))
    assert on_tansu["producer_max_batch_size"] == 1
    assert on_tansu["broker_session_timeout"] < 60
    assert on_tansu["table_standby_replicas"] == 0  # no standby reads of growing changelogs
    assert "table_standby_replicas" not in opts
    assert "broker_credentials" not in on_tansu
    import faust

    faust.App("liverank-test-options", **on_tansu)  # every key is a real Faust setting


@pytest.mark.parametrize("kwargs, needle", [
    ({"security_protocol": "SASL_SSL"}, "LIVERANK_SASL_MECHANISM"),
    ({"security_protocol": "SASL_PLAINTEXT", "sasl_mechanism": "PLAIN"}, "SASL_USERNAME"),
    ({"sasl_mechanism": "PLAIN"}, "uses no SASL"),
    ({"ssl_cafile": "/nonexistent/ca.pem", "security_protocol": "SSL"}, "no such file"),
    ({"ssl_cafile": "/nonexistent/ca.pem"}, "uses no TLS"),
])
def test_bad_security_settings_are_named(kwargs: dict[str, str], needle: str) -> None:
    with pytest.raises(kf.KafkaSetupError, match=needle):
        kf.producer_config(Settings(**kwargs))


def test_tansu_recognised_from_what_the_broker_says() -> None:
    assert tansu.looks_like_tansu("tansu_cluster", None)
    assert tansu.looks_like_tansu("abc", 0)  # renamed cluster, still no broker configs
    assert not tansu.looks_like_tansu("Mk3OEYBSD34fcwNTJENDM2Qk", 217)
    assert not tansu.looks_like_tansu("Mk3OEYBSD34fcwNTJENDM2Qk", None)
    assert kf.is_tansu(Settings(broker_kind="tansu"))
    assert not kf.is_tansu(Settings(broker_kind="kafka"))


def test_paced_replays_and_counting_readers_spare_tansus_fetches() -> None:
    """On tansu a fetch lists every batch of its partition (docs/platform-notes.md): a paced
    replay groups its messages in ticks and counting readers fetch rarely; not on Kafka."""
    on_tansu, on_kafka = Settings(broker_kind="tansu"), Settings(broker_kind="kafka")
    assert kf.paced_tick_s(on_tansu) == tansu.PACED_TICK_S > 0
    assert kf.paced_tick_s(on_kafka) == 0.0
    assert kf.reader_fetch_wait_ms(on_tansu) == tansu.READER_FETCH_WAIT_MS
    assert kf.reader_fetch_wait_ms(on_kafka) < tansu.READER_FETCH_WAIT_MS


def test_parse_listen() -> None:
    assert parse_listen("localhost:9092") == ("127.0.0.1", 9092)
    assert parse_listen("0.0.0.0:0") == ("0.0.0.0", 0)
    for bad in ("9092", "host:", "host:x", ":9092", "h:70000"):
        with pytest.raises(BrokerError, match="HOST:PORT"):
            parse_listen(bad)


def test_unreachable_broker_fails_fast_and_clearly() -> None:
    s = Settings(kafka_bootstrap=f"127.0.0.1:{free_port()}", kafka_timeout_s=1.5,
                 broker_kind="auto")
    t0 = time.monotonic()
    with pytest.raises(kf.KafkaSetupError, match="no Kafka broker answered at 127.0.0.1"):
        kf.ensure_topics(s)
    assert time.monotonic() - t0 < 5


# --- with a broker ----------------------------------------------------------------------------


@pytest.mark.kafka
def test_ensure_topics_creates_checks_and_is_idempotent(kafka_settings: Settings) -> None:
    counts = kf.ensure_topics(kafka_settings)
    assert counts == {kafka_settings.topic(t): kafka_settings.partitions for t in kf.TOPICS}
    assert kf.ensure_topics(kafka_settings) == counts  # second run: nothing to do, no error
    other = kafka_settings.model_copy(update={"partitions": 3})
    with pytest.raises(kf.KafkaSetupError, match="LIVERANK_PARTITIONS=3: .*user-events has 8"):
        kf.ensure_topics(other, names=["user-events"])


@pytest.mark.kafka
def test_topics_are_created_with_their_retention_and_compaction(kafka_settings: Settings
                                                                ) -> None:
    """Read back from the broker: the answer log keeps LIVERANK_ANSWERS_RETENTION_MS, the
    latest-answer topic is compacted, the input topics keep everything."""
    from confluent_kafka.admin import ConfigResource, ResourceType

    settings = kafka_settings.model_copy(update={"answers_retention_ms": 3_600_000})
    kf.ensure_topics(settings)
    admin = kf.admin_client(settings)
    want = {kf.RECOMMENDATIONS: {"retention.ms": "3600000"},
            kf.RECOMMENDATIONS_LATEST: {"cleanup.policy": "compact"},
            kf.USER_EVENTS: {"retention.ms": "-1"}, kf.STREAM_EVENTS: {"retention.ms": "-1"},
            kf.DEAD_LETTERS: {"retention.ms": str(kf.DEAD_LETTERS_RETENTION_MS)}}
    for name, configs in want.items():
        assert kf.topic_config(settings, name) == configs
        res = ConfigResource(ResourceType.TOPIC, settings.topic(name))
        described = next(iter(admin.describe_configs([res]).values())).result(timeout=10)
        for key, value in configs.items():
            assert described[key].value == value, (name, key, described[key].value)


@pytest.mark.kafka
def test_keys_land_on_aiokafka_partitions(kafka_settings: Settings) -> None:
    """librdkafka with our config puts every key where Faust (aiokafka murmur2) expects it."""
    topic = kafka_settings.topic(kf.USER_EVENTS)
    kf.ensure_topics(kafka_settings, names=[kf.USER_EVENTS])
    n = kafka_settings.partitions
    keys = [ev.user_key(u) for u in range(0, 3000, 3)] + [ev.stream_key(s) for s in
                                                            range(33842865744, 33842866744, 7)]
    landed: dict[bytes, int] = {}

    def on_delivery(err: object, msg: object) -> None:
        assert err is None, err
        landed[msg.key()] = msg.partition()  # type: ignore[attr-defined]

    producer = Producer(kf.producer_config(kafka_settings))
    for k in keys:
        producer.produce(topic, b"{}", k, on_delivery=on_delivery)
        producer.poll(0)
    assert producer.flush(10) == 0
    parts = list(range(n))
    expected = {k: DefaultPartitioner()(k, parts, parts) for k in keys}
    assert landed == expected
    assert len(set(expected.values())) == n  # the keys really spread


@pytest.mark.kafka
def test_read_topic_reads_to_the_true_end(kafka_settings: Settings) -> None:
    """Multi-message batches (tansu's high watermark is wrong for them) are read in full."""
    topic = kafka_settings.topic("batches")
    kf.ensure_topics(kafka_settings, names=["batches"])
    producer = Producer({**kf.producer_config(kafka_settings), "linger.ms": 50})
    sent = 0
    for rnd in range(5):
        for i in range(400 * (rnd + 1)):
            producer.produce(topic, b"%d" % sent, partition=i % 3)
            sent += 1
        assert producer.flush(10) == 0
    got = kf.read_topic(kafka_settings, topic, timeout_s=20)
    assert len(got) == sent
    by_part: dict[int, list[int]] = {}
    for m in got:
        by_part.setdefault(m.partition(), []).append(m.offset())
    assert all(offs == list(range(len(offs))) for offs in by_part.values())
    assert set(by_part) == {0, 1, 2}  # partitions 3.. stayed empty and still finished (EOF)


@pytest.mark.kafka
def test_read_topic_timeout_names_partitions(kafka_settings: Settings) -> None:
    kf.ensure_topics(kafka_settings, names=["quiet"])
    with pytest.raises(TimeoutError, match=r"partitions \[0, 1"):
        kf.read_topic(kafka_settings, kafka_settings.topic("quiet"), timeout_s=1,
                      until=lambda m: False)


@pytest.mark.kafka
def test_broker_kind_detected(kafka_settings: Settings, kafka_broker_kind: str) -> None:
    if kafka_broker_kind == "auto":
        pytest.skip("configured broker: its kind is not known to the test")
    s = kafka_settings.model_copy(update={"broker_kind": "auto"})
    assert kf.is_tansu(s) == (kafka_broker_kind == "tansu")


def test_embedded_broker_starts_and_stops() -> None:
    try:
        broker = EmbeddedBroker.start("127.0.0.1:0")
    except BrokerError as exc:
        pytest.skip(f"embedded tansu unavailable: {exc}")
    with broker:
        s = Settings(kafka_bootstrap=broker.bootstrap, kafka_timeout_s=5)
        assert kf.wait_for_broker(s).cluster_id == "tansu_cluster"
        with pytest.raises(BrokerError, match="already in use"):
            EmbeddedBroker.start(broker.bootstrap)
    assert not broker.alive()


def test_broker_command_serves_until_sigterm() -> None:
    import signal
    import subprocess
    import sys
    from pathlib import Path

    try:
        from liverank.broker.embedded import broker_binary

        broker_binary()
    except BrokerError as exc:
        pytest.skip(f"embedded tansu unavailable: {exc}")
    exe = Path(sys.executable).with_name("liverank")
    proc = subprocess.Popen([str(exe), "broker", "--listen", "127.0.0.1:0", "--create-topics"],
                            stderr=subprocess.PIPE, text=True)
    try:
        line = ""
        deadline = time.monotonic() + 20
        while "broker ready" not in line and time.monotonic() < deadline:
            line = proc.stderr.readline()  # type: ignore[union-attr]
        assert "LIVERANK_KAFKA_BOOTSTRAP=127.0.0.1:" in line, line
        bootstrap = line.split("LIVERANK_KAFKA_BOOTSTRAP=")[1].split()[0]
        meta = kf.wait_for_broker(Settings(kafka_bootstrap=bootstrap, kafka_timeout_s=5))
        assert {"stream-events", "user-events", "recommendations", "dead-letters"} <= set(
            meta.topics)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0
        with pytest.raises(kf.KafkaSetupError):
            kf.wait_for_broker(Settings(kafka_bootstrap=bootstrap, kafka_timeout_s=1))
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_wait_out_retries_an_unreachable_broker_until_the_outage_limit() -> None:
    settings = Settings(broker_kind="kafka", outage_timeout_s=10)
    now = [0.0]
    slept: list[float] = []

    def sleep(s: float) -> None:
        slept.append(s)
        now[0] += s

    calls = iter([kf.BrokerUnreachableError("down"), kf.BrokerUnreachableError("down"), 42])

    def call() -> int:
        got = next(calls)
        if isinstance(got, Exception):
            raise got
        return got

    assert kf.wait_out(settings, call, "testing", clock=lambda: now[0], sleep=sleep) == 42
    assert slept == [0.5, 1.0]  # backing off

    def never() -> int:
        raise kf.BrokerUnreachableError("still down")

    with pytest.raises(kf.BrokerUnreachableError, match="LIVERANK_OUTAGE_TIMEOUT_S=10"):
        kf.wait_out(settings, never, "testing", clock=lambda: now[0], sleep=sleep)
    assert max(slept) == 5.0

    def refused() -> int:  # a bad setting is not an outage: no retry
        raise kf.KafkaSetupError("SASL needs a user")

    with pytest.raises(kf.KafkaSetupError, match="SASL"):
        kf.wait_out(settings, refused, "testing", clock=lambda: now[0], sleep=sleep)


def test_benchmarks_use_the_configured_broker_or_start_their_own(
        monkeypatch: pytest.MonkeyPatch) -> None:
    import contextlib

    from liverank.broker.embedded import configured_or_embedded

    monkeypatch.delenv("KAFKA_BOOTSTRAP_SERVERS", raising=False)
    monkeypatch.setenv("LIVERANK_KAFKA_BOOTSTRAP", "broker.example:9093")
    with contextlib.ExitStack() as stack:
        settings, broker = configured_or_embedded(stack)
    assert broker is None and settings.kafka_bootstrap == "broker.example:9093"
    monkeypatch.delenv("LIVERANK_KAFKA_BOOTSTRAP")
    with contextlib.ExitStack() as stack:
        settings, broker = configured_or_embedded(stack)
        assert broker is not None and broker.alive()
        assert settings.kafka_bootstrap == broker.bootstrap and settings.broker_kind == "tansu"
        assert settings.partitions == tansu.RUN_PARTITIONS  # its own broker: few partitions
    assert not broker.alive()  # stopped with the stack


def test_a_run_on_its_own_tansu_gets_few_partitions_unless_it_says_otherwise(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Every partition costs tansu work on each fetch and batch (docs/platform-notes.md):
    a run that starts its own broker uses `tansu.RUN_PARTITIONS`, one a worker at least;
    LIVERANK_PARTITIONS always wins; a configured broker keeps the settings' default."""
    from liverank.broker.embedded import own_broker_settings

    monkeypatch.delenv("LIVERANK_PARTITIONS", raising=False)
    assert Settings().partitions == 8 > tansu.RUN_PARTITIONS
    own = own_broker_settings("127.0.0.1:1", topic_prefix="run-")
    assert (own.partitions, own.broker_kind, own.topic_prefix) == (
        tansu.RUN_PARTITIONS, "tansu", "run-")
    assert own_broker_settings("127.0.0.1:1", workers=5).partitions == 5
    monkeypatch.setenv("LIVERANK_PARTITIONS", "3")
    assert own_broker_settings("127.0.0.1:1").partitions == 3
    assert own_broker_settings("127.0.0.1:1", workers=5).partitions == 3  # the user's choice
