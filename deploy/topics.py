"""Strimzi ``KafkaTopic`` resources for every topic liverank uses, from an overlay's settings.

    .venv/bin/python deploy/topics.py deploy/k8s/overlays/prod \\
        > deploy/k8s/overlays/prod/topics.yaml

Nothing is typed in twice: names, partitions, replication and configs come from where the
app itself takes them when it creates topics (``LIVERANK_CREATE_TOPICS=true``):

* `Settings` built from the overlay's settings files (``base/settings.env``, then the
  overlay's ``settings.env``, as kustomize merges them into the ``liverank-settings``
  ConfigMap): ``LIVERANK_PARTITIONS``, ``LIVERANK_REPLICATION_FACTOR``,
  ``LIVERANK_TOPIC_PREFIX``, ``LIVERANK_ANSWERS_RETENTION_MS``, ``LIVERANK_WORKER_ID``;
* `liverank.broker.kafka.TOPICS` and `topic_config` for the system's topics;
* the Faust app the service runs (`liverank.services.app.declare_app`) for the topics Faust
  declares: each table's changelog (``<app id>-<table>-changelog``, compacted) and the
  leader-election topic (``<app id>-__assignor-__leader``, one partition).

``tests/test_deploy_topics.py`` checks that the committed file is what this prints, and,
independently, that the rendered manifests agree with the settings they carry.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

DEPLOY = Path(__file__).resolve().parent
BASE = DEPLOY / "k8s" / "base"
CLUSTER = "liverank"  # the Strimzi Kafka resource's name (overlays/prod/kafka.yaml)


@dataclass(frozen=True)
class TopicSpec:
    name: str
    partitions: int
    replicas: int
    config: dict[str, str] = field(default_factory=dict)
    owner: str = "liverank"  # who uses it: liverank (broker.kafka.TOPICS) or faust

    def resource(self, cluster: str = CLUSTER) -> dict[str, Any]:
        spec: dict[str, Any] = {"topicName": self.name, "partitions": self.partitions,
                                "replicas": self.replicas}
        if self.config:
            spec["config"] = dict(sorted(self.config.items()))
        return {"apiVersion": "kafka.strimzi.io/v1", "kind": "KafkaTopic",
                "metadata": {"name": resource_name(self.name),
                             "labels": {"strimzi.io/cluster": cluster}},
                "spec": spec}


def resource_name(topic: str) -> str:
    """A Kubernetes name for a topic (``spec.topicName`` keeps the real one)."""
    return re.sub(r"-+", "-", re.sub(r"[^a-z0-9-]", "-", topic.lower())).strip("-")


def read_env_file(path: Path) -> dict[str, str]:
    """``KEY=VALUE`` lines as kustomize's configMapGenerator ``envs`` reads them."""
    values = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, _, value = line.partition("=")
            values[key.strip()] = value
    return values


def overlay_environment(overlay: Path) -> dict[str, str]:
    """The ``liverank-settings`` ConfigMap of an overlay: the base's settings, then its own."""
    env = read_env_file(BASE / "settings.env")
    own = overlay / "settings.env"
    if own.is_file():
        env |= read_env_file(own)
    return env


@contextmanager
def only_environment(env: dict[str, str]) -> Iterator[None]:
    """Run with exactly these ``LIVERANK_*`` variables (the caller's own are set aside)."""
    saved = {k: v for k, v in os.environ.items()
             if k.startswith("LIVERANK_") or k == "KAFKA_BOOTSTRAP_SERVERS"}
    for k in saved:
        del os.environ[k]
    os.environ.update(env)
    try:
        yield
    finally:
        for k in env:
            os.environ.pop(k, None)
        os.environ.update(saved)


def settings_from(env: dict[str, str]) -> Any:
    """`Settings` as a process given ``env`` (and nothing else) builds it."""
    from liverank.core.settings import Settings

    with only_environment(env):
        return Settings(_env_file=None)  # type: ignore[call-arg]


def system_topics(settings: Any) -> list[TopicSpec]:
    from liverank.broker import kafka

    return [TopicSpec(settings.topic(n), settings.partitions, settings.replication_factor,
                      kafka.topic_config(settings, n)) for n in kafka.TOPICS]


def offline(settings: Any) -> Any:
    """The settings with a memory store and no security: topic names depend on neither, and
    an app built with them opens no file and needs no credentials."""
    return settings.model_copy(update={
        "store": "memory://", "security_protocol": "PLAINTEXT", "sasl_mechanism": None,
        "sasl_username": None, "sasl_password": None, "ssl_cafile": None})


def faust_topics(settings: Any) -> list[TopicSpec]:
    """The topics the service's Faust app declares itself, read off the app as the service
    declares it (`declare_app`: no scorer, publisher or broker; nothing is started)."""
    from liverank.services.app import declare_app

    app = declare_app(offline(settings), web=False).app
    specs = []
    for table in app.tables.values():
        topic = table.changelog_topic
        config: dict[str, str] = {}
        policies = [p for p, on in (("compact", topic.compacting), ("delete", topic.deleting))
                    if on]
        if policies:
            config["cleanup.policy"] = ",".join(policies)
        if topic.retention is not None:
            config["retention.ms"] = str(int(topic.retention * 1000))
        config |= {k: str(v) for k, v in (topic.config or {}).items()}
        specs.append(TopicSpec(topic.get_topic_name(), table.partitions or settings.partitions,
                               settings.replication_factor, config, owner="faust"))
    if not app.conf.topic_disable_leader:
        leader = app._leader_assignor._leader_topic  # noqa: SLF001 (Faust names it there)
        specs.append(TopicSpec(leader.get_topic_name(), leader.partitions or 1,
                               settings.replication_factor, owner="faust"))
    return specs


def all_topics(settings: Any) -> list[TopicSpec]:
    """Every topic, once: the system's topics win where Faust declares one of them too
    (``recommendations-latest`` is the ``latest`` table's changelog)."""
    specs = {t.name: t for t in faust_topics(settings)}
    specs |= {t.name: t for t in system_topics(settings)}
    return [specs[n] for n in sorted(specs)]


def render(overlay: Path, cluster: str = CLUSTER) -> str:
    settings = settings_from(overlay_environment(overlay))
    docs = [t.resource(cluster) for t in all_topics(settings)]
    head = (f"# Generated by deploy/topics.py from the settings of {overlay.name}; do not edit\n"
            f"# (tests/test_deploy_topics.py checks it). docs/deploy.md: topics as code.\n")
    return head + "---\n".join(yaml.safe_dump(d, sort_keys=False) for d in docs)


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print(__doc__, file=sys.stderr)
        return 2
    import logging

    logging.disable(logging.WARNING)  # Faust's start-up chatter
    sys.stdout.write(render(Path(argv[0])))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
