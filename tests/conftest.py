"""Shared fixtures: one Kafka-compatible broker per test session, a unique topic prefix per test.

The broker, in order: ``LIVERANK_KAFKA_BOOTSTRAP`` / ``KAFKA_BOOTSTRAP_SERVERS`` when set; a
testcontainers Kafka when a Docker engine answers; else the embedded tansu on a free port;
else the test is skipped with the reason printed. Broker tests are marked ``kafka`` (any test
using these fixtures gets the mark automatically). Every receive in a test must be bounded by a
timeout: use `liverank.broker.kafka.read_topic(..., timeout_s=...)`.
"""

from __future__ import annotations

import logging
import os
import re
import signal
import socket
import uuid
from collections.abc import Iterator

import pytest

from liverank.core.settings import Settings, bootstrap_configured

logger = logging.getLogger(__name__)

_KAFKA_FIXTURES = {"kafka_bootstrap", "kafka_settings", "kafka_broker_kind"}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if _KAFKA_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.kafka)


def _docker_answers(timeout: float = 0.5) -> bool:
    """A quick check for a Docker engine: its socket (or DOCKER_HOST tcp) accepts a connection."""
    host = os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")
    try:
        if host.startswith("unix://"):
            path = host[len("unix://"):]
            if not os.path.exists(path):
                return False
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
                s.settimeout(timeout)
                s.connect(path)
            return True
        if host.startswith("tcp://"):
            h, _, p = host[len("tcp://"):].partition(":")
            with socket.create_connection((h, int(p or 2375)), timeout=timeout):
                return True
    except (OSError, ValueError):
        return False
    return False


@pytest.fixture(scope="session")
def kafka_broker(request: pytest.FixtureRequest) -> Iterator[tuple[str, str]]:
    """(bootstrap, kind) of the session's broker; kind is "kafka", "tansu" or "auto"."""
    if bootstrap_configured():
        from liverank.broker.kafka import resolve_bootstrap

        yield resolve_bootstrap(), "auto"
        return
    reasons = []
    if _docker_answers():
        try:
            try:
                from testcontainers.community.kafka import KafkaContainer
            except ImportError:
                from testcontainers.kafka import KafkaContainer
            container = KafkaContainer()
            container.start()
        except Exception as exc:  # noqa: BLE001 - any failure here means "try the next broker"
            reasons.append(f"testcontainers Kafka failed: {exc}")
        else:
            try:
                yield container.get_bootstrap_server(), "kafka"
            finally:
                container.stop()
            return
    else:
        reasons.append("no Docker engine answers")
    from liverank.broker.embedded import BrokerError, EmbeddedBroker

    try:
        broker = EmbeddedBroker.start("127.0.0.1:0")
    except BrokerError as exc:
        reasons.append(f"embedded tansu failed: {exc}")
        msg = "no Kafka broker available: " + "; ".join(reasons)
        print(msg)  # noqa: T201 - the skip reason must show even without -rs
        pytest.skip(msg)
    try:
        yield broker.bootstrap, "tansu"
    finally:
        broker.stop()


@pytest.fixture
def own_broker() -> Iterator[object]:
    """An embedded tansu for this test alone (memory storage, a free port), for tests that
    freeze, kill or replace their broker: always thawed (SIGCONT) and stopped afterwards."""
    from liverank.broker.embedded import BrokerError, EmbeddedBroker

    try:
        broker = EmbeddedBroker.start("127.0.0.1:0")
    except BrokerError as exc:
        pytest.skip(f"no embedded tansu for this test: {exc}")
    try:
        yield broker
    finally:
        if broker.alive():
            os.kill(broker.process.pid, signal.SIGCONT)  # a frozen one is woken first
        broker.stop()


@pytest.fixture(scope="session")
def kafka_bootstrap(kafka_broker: tuple[str, str]) -> str:
    return kafka_broker[0]


@pytest.fixture(scope="session")
def kafka_broker_kind(kafka_broker: tuple[str, str]) -> str:
    return kafka_broker[1]


@pytest.fixture
def topic_prefix(request: pytest.FixtureRequest) -> str:
    """Unique per test (legal Kafka topic characters), so tests never see each other's data."""
    name = re.sub(r"[^A-Za-z0-9._-]", "-", request.node.name)[:60]
    return f"t-{name}-{uuid.uuid4().hex[:8]}."


@pytest.fixture
def kafka_settings(kafka_broker: tuple[str, str], topic_prefix: str) -> Settings:
    bootstrap, kind = kafka_broker
    return Settings(kafka_bootstrap=bootstrap, topic_prefix=topic_prefix, store="memory://",
                    broker_kind=kind, kafka_timeout_s=10.0)
