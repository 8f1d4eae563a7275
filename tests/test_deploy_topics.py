"""Topics as code agree with the app: every topic the settings name (the system's and the
ones Faust declares) has a KafkaTopic with the partitions, replication and configs the app
itself would create it with; the worker count never passes the partition count; the
KafkaUsers may do what the workers and the replay do. deploy/topics.py writes the
KafkaTopics; the first test checks the committed file is what it writes.
"""

from __future__ import annotations

import importlib.util
import sys
from typing import Any

import pytest
from deploy_tools import DEPLOY, K8S, of_kind, one, rendered, rendered_settings

from liverank.broker import kafka


def topics_module() -> Any:
    spec = importlib.util.spec_from_file_location("deploy_topics", DEPLOY / "topics.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_the_kafkatopics_file_is_what_deploy_topics_py_writes() -> None:
    path = K8S / "overlays" / "prod" / "topics.yaml"
    expected = topics_module().render(K8S / "overlays" / "prod")
    assert path.read_text() == expected, (
        f"run: .venv/bin/python deploy/topics.py deploy/k8s/overlays/prod > {path}")


def expected_topics(settings: Any) -> dict[str, dict[str, Any]]:
    """Every topic the app uses, as the app creates it (LIVERANK_CREATE_TOPICS=true)."""
    specs = {}
    for name in kafka.TOPICS:  # ensure_topics
        specs[settings.topic(name)] = {"partitions": settings.partitions,
                                       "replicas": settings.replication_factor,
                                       "config": kafka.topic_config(settings, name)}
    for spec in topics_module().faust_topics(settings):  # the Faust app's own
        specs.setdefault(spec.name, {"partitions": spec.partitions, "replicas": spec.replicas,
                                     "config": spec.config})
    return specs


def test_the_faust_topics_are_the_windows_changelog_and_the_leader_topic(
        monkeypatch: pytest.MonkeyPatch) -> None:
    settings = rendered_settings("prod", monkeypatch)
    faust = {t.name: t for t in topics_module().faust_topics(settings)}
    app_id = settings.topic_prefix + settings.worker_id
    assert f"{app_id}-windows-changelog" in faust
    assert faust[f"{app_id}-windows-changelog"].config == {"cleanup.policy": "compact"}
    assert faust[f"{app_id}-__assignor-__leader"].partitions == 1
    # the `latest` table's changelog is the compacted answers topic itself
    latest = faust[settings.topic(kafka.RECOMMENDATIONS_LATEST)]
    assert latest.config == kafka.topic_config(settings, kafka.RECOMMENDATIONS_LATEST)


def test_the_generator_covers_every_topic_a_running_service_declares(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """deploy/topics.py reads `declare_app`; a whole `Service` (agent, timers, pages) must
    declare nothing more, or a cluster with topic creation off would lack a topic."""
    from liverank.model.data.live import LiveStreams
    from liverank.services.app import Service
    from liverank.services.testing import FakeScorer, MemoryPublisher

    settings = topics_module().offline(rendered_settings("prod", monkeypatch))
    service = Service(settings, FakeScorer(window_len=4), publisher=MemoryPublisher(),
                      live=LiveStreams(partitions=1), web=False, guard_consumer=False)
    app = service.app
    declared = {t.changelog_topic.get_topic_name() for t in app.tables.values()}
    declared.add(app._leader_assignor._leader_topic.get_topic_name())  # noqa: SLF001
    declared |= {name for agent in app.agents.values() for name in agent.channel.topics}
    generated = {t.name for t in topics_module().all_topics(settings)}
    assert declared - generated == set()
    assert len(app.tables) == 2  # windows and latest, both in `declare_app`


def test_every_topic_has_a_kafkatopic_as_the_app_would_create_it(
        monkeypatch: pytest.MonkeyPatch) -> None:
    docs = rendered("prod")
    settings = rendered_settings("prod", monkeypatch)
    assert settings.create_topics is False  # the KafkaTopics are the only source
    kafka_cr = one(docs, "Kafka")
    assert kafka_cr["spec"]["kafka"]["config"]["auto.create.topics.enable"] is False
    found = {}
    for t in of_kind(docs, "KafkaTopic"):
        assert t["metadata"]["labels"]["strimzi.io/cluster"] == kafka_cr["metadata"]["name"]
        found[t["spec"]["topicName"]] = {"partitions": t["spec"]["partitions"],
                                         "replicas": t["spec"]["replicas"],
                                         "config": t["spec"].get("config", {})}
    expected = expected_topics(settings)
    assert set(found) == set(expected)
    for name, spec in expected.items():
        got = found[name]
        assert got["partitions"] == spec["partitions"], name
        assert got["replicas"] == spec["replicas"], name
        for key in ("cleanup.policy", "retention.ms"):  # compacted or not, how long kept
            assert str(got["config"].get(key)) == str(spec["config"].get(key)), (name, key)
        assert {k: str(v) for k, v in got["config"].items()} == spec["config"], name
    assert found[settings.topic(kafka.RECOMMENDATIONS_LATEST)]["config"][
        "cleanup.policy"] == "compact"
    # replication the brokers can give, with a write acknowledged by more than one
    brokers = sum(p["spec"]["replicas"] for p in of_kind(docs, "KafkaNodePool")
                  if "broker" in p["spec"]["roles"])
    min_isr = kafka_cr["spec"]["kafka"]["config"]["min.insync.replicas"]
    assert 1 < min_isr < settings.replication_factor <= brokers


@pytest.mark.parametrize("overlay", ["dev", "prod"])
def test_the_worker_count_never_passes_the_partition_count(
        overlay: str, monkeypatch: pytest.MonkeyPatch) -> None:
    docs = rendered(overlay)
    partitions = rendered_settings(overlay, monkeypatch).partitions
    sts = one(docs, "StatefulSet", "liverank-service")
    assert sts["spec"].get("replicas", 1) <= partitions
    for scaled in of_kind(docs, "ScaledObject"):
        assert scaled["spec"]["scaleTargetRef"] == {
            "apiVersion": "apps/v1", "kind": "StatefulSet", "name": "liverank-service"}
        assert 1 <= scaled["spec"]["minReplicaCount"] <= scaled["spec"]["maxReplicaCount"]
        assert scaled["spec"]["maxReplicaCount"] <= partitions
        # KEDA scales on this group's lag on this topic, and never counts idle consumers
        [trigger] = [t for t in scaled["spec"]["triggers"] if t["type"] == "kafka"]
        settings = rendered_settings(overlay, monkeypatch)
        assert trigger["metadata"]["consumerGroup"] == settings.topic_prefix + settings.worker_id
        assert trigger["metadata"]["topic"] == settings.topic(kafka.USER_EVENTS)
        assert trigger["metadata"]["bootstrapServers"] == settings.kafka_bootstrap
        assert trigger["metadata"]["allowIdleConsumers"] == "false"
        keda_sasl = {"SCRAM-SHA-512": "scram_sha512", "SCRAM-SHA-256": "scram_sha256",
                     "PLAIN": "plaintext", None: "none"}
        assert trigger["metadata"].get("sasl", "none") == keda_sasl[settings.sasl_mechanism]
        assert trigger["metadata"].get("tls", "disable") == (
            "enable" if settings.security_protocol.endswith("SSL") else "disable")
        # KEDA logs in as the worker: the user name from the worker container's env
        auth = one(docs, "TriggerAuthentication", trigger["authenticationRef"]["name"])
        env = {e["parameter"]: e for e in auth["spec"]["env"]}
        worker = next(c for c in sts["spec"]["template"]["spec"]["containers"]
                      if c["name"] == env["username"]["containerName"])
        assert env["username"]["name"] in {e["name"] for e in worker["env"]}
    if overlay == "prod":
        assert "replicas" not in sts["spec"]  # KEDA's to set
        assert of_kind(docs, "ScaledObject")


def _allowed(user: dict[str, Any], resource: str, name: str, operation: str) -> bool:
    for acl in user["spec"]["authorization"]["acls"]:
        r = acl["resource"]
        match = (r["name"] == name if r.get("patternType", "literal") == "literal"
                 else name.startswith(r["name"]))
        if r["type"] == resource and match and operation in acl["operations"]:
            return True
    return False


def test_the_kafka_users_may_do_what_the_workers_and_the_replay_do(
        monkeypatch: pytest.MonkeyPatch) -> None:
    docs = rendered("prod")
    settings = rendered_settings("prod", monkeypatch)
    users = {u["metadata"]["name"]: u for u in of_kind(docs, "KafkaUser")}
    service, replay = users["liverank-service"], users["liverank-replay"]
    group = settings.topic_prefix + settings.worker_id
    t = settings.topic
    for name in kafka.TOPICS:  # both check every topic exists (ensure_topics)
        assert _allowed(service, "topic", t(name), "Describe"), name
        assert _allowed(replay, "topic", t(name), "Describe"), name
    for name in (kafka.USER_EVENTS, kafka.STREAM_EVENTS):
        assert _allowed(service, "topic", t(name), "Read"), name
        assert _allowed(replay, "topic", t(name), "Write"), name
    for name in set(kafka.TOPICS) - {kafka.USER_EVENTS, kafka.STREAM_EVENTS}:  # outputs
        assert _allowed(service, "topic", t(name), "Write"), name
    for spec in topics_module().faust_topics(settings):
        for op in ("Read", "Write", "Describe"):
            assert _allowed(service, "topic", spec.name, op), (spec.name, op)
    assert _allowed(service, "group", group, "Read")
    assert _allowed(service, "group", kafka.READER_GROUP, "Describe")
    assert not _allowed(replay, "topic", t(kafka.RECOMMENDATIONS), "Read")
    assert not any(_allowed(u, "topic", t(n), "Create") for u in users.values()
                   for n in kafka.TOPICS)


def test_with_create_topics_off_nothing_is_created_and_a_missing_topic_is_an_error(
        kafka_settings: Any) -> None:
    from liverank.services import faustcompat

    managed = kafka_settings.model_copy(update={"create_topics": False})
    assert faustcompat.faust_app_options(managed)["topic_allow_declare"] is False
    assert faustcompat.faust_app_options(kafka_settings)["topic_allow_declare"] is True
    with pytest.raises(kafka.KafkaSetupError, match="LIVERANK_CREATE_TOPICS=false"):
        kafka.ensure_topics(managed)
    with pytest.raises(kafka.KafkaSetupError, match="does not exist"):
        kafka.partition_count(kafka_settings, kafka_settings.topic(kafka.USER_EVENTS))
    created = kafka.ensure_topics(kafka_settings)  # as the KafkaTopics would
    assert kafka.ensure_topics(managed) == created  # then: checked, nothing to do
