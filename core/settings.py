"""One settings object per process, built once at the entry point.

Values come from the environment (prefix ``LIVERANK_``) or a ``.env`` file; code below the
entry point takes plain arguments. Unknown ``LIVERANK_*`` options are errors. The broker
address has one source: ``LIVERANK_KAFKA_BOOTSTRAP``, else ``KAFKA_BOOTSTRAP_SERVERS``, else
``127.0.0.1:9092``.
"""

from __future__ import annotations

import os
from typing import Literal

from pydantic import AliasChoices, Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from liverank.core.timebase import DEFAULT_EPOCH_MS, STEPS_PER_DAY

DEFAULT_BOOTSTRAP = "127.0.0.1:9092"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="LIVERANK_", env_file=".env", extra="forbid", frozen=True,
        populate_by_name=True,  # Settings(kafka_bootstrap=...) as well as the env aliases
    )

    # --- Kafka -------------------------------------------------------------------------
    kafka_bootstrap: str = Field(
        DEFAULT_BOOTSTRAP,
        validation_alias=AliasChoices("LIVERANK_KAFKA_BOOTSTRAP", "KAFKA_BOOTSTRAP_SERVERS"),
        description="Broker address (host:port[,host:port]).",
    )
    topic_prefix: str = Field("", description="Prefix for every topic name (tests, tenants).")
    partitions: int = Field(8, ge=1, description=(
        "Partitions of every topic created: a worker per partition at most, so set it for "
        "the largest group planned. A run that starts its own embedded tansu (the demo, the "
        "benchmarks) uses 2, or one per worker, unless this is set: every partition costs "
        "tansu work on each fetch and each batch (docs/platform-notes.md)."))
    replication_factor: int = Field(1, ge=1, description="Replication of created topics.")
    create_topics: bool = Field(
        True, description="Create missing topics at start (the system's topics, Faust's "
        "changelog and leader topics). false where topics are managed outside liverank "
        "(Strimzi KafkaTopic resources, docs/deploy.md): then a missing topic is an error."
    )
    answers_retention_ms: int = Field(
        7 * 24 * 3600 * 1000, ge=-1, description="Retention of the answer log "
        "(recommendations); -1 keeps it forever (a simulation to analyse). The latest answer "
        "of every user stays in the compacted recommendations-latest topic."
    )
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = Field(
        "PLAINTEXT", description="Kafka security protocol."
    )
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = Field(
        None, description="SASL mechanism when the protocol is SASL_*."
    )
    sasl_username: str | None = Field(None, description="SASL user name.")
    sasl_password: SecretStr | None = Field(
        None, description="SASL password (hidden in repr, logs and `liverank config`).")
    ssl_cafile: str | None = Field(None, description="CA file to verify the brokers.")
    broker_kind: Literal["auto", "kafka", "tansu"] = Field(
        "auto",
        description="Which broker this is; 'auto' asks it. tansu turns on its workarounds.",
    )
    kafka_timeout_s: float = Field(
        10.0, gt=0, description="Longest wait for one broker request (a metadata call, a "
        "read-back) before it counts as failed and is retried."
    )
    outage_timeout_s: float = Field(
        300.0, gt=0, description="Longest broker outage the worker and the replay wait out "
        "(backing off, keeping their state) before stopping with an error; also how long a "
        "produced message may wait for its acknowledgement."
    )

    # --- time ----------------------------------------------------------------------------
    epoch_ms: int = Field(DEFAULT_EPOCH_MS, description="Event time of step 0 (ms since 1970).")

    # --- serving -------------------------------------------------------------------------
    model_dir: str = Field("out/model", description="Exported model directory to serve.")
    shadow_model_dir: str = Field(
        "", description="A candidate model directory scored next to the live one on every "
        "request; its answers go to recommendations-shadow only (empty: no shadow)."
    )
    top_k: int = Field(10, ge=1, description="Items per recommendation.")
    window_slack: int = Field(
        128, ge=0, description="Most watches a user window keeps beyond its length when "
        "the committed floor does not let them go (unknown at start, stuck while the broker "
        "is away); past it a restart may repeat an answer that differs from the first."
    )
    window_cache: int = Field(
        16384, ge=0, description="Decoded user windows a worker keeps in memory, least "
        "recently used dropped first (~6 KB each at 24 entries, ~100 MB at the default; 0: "
        "read every window from the table store)."
    )
    batch_size: int = Field(256, ge=1, description="Largest micro-batch of requests scored.")
    batch_wait_ms: float = Field(
        1.0, ge=0, description="Longest wait to fill a micro-batch after its first record "
        "arrived (records come a fetch response at a time: a longer wait mostly delays answers)."
    )
    backlog_wait_ms: float = Field(
        5.0, ge=0, description="Right after a full micro-batch (a backlog), longest wait for "
        "the next one to fill, counted from when it is asked for."
    )
    gc_backlog_threshold: int = Field(
        10000, ge=0, description="In a backlog (four full micro-batches in a row), collect "
        "Python's young generation every this many allocations instead of every 700: fewer, "
        "longer collections, less of a worker's CPU in a drain; at a steady load the default "
        "keeps every pause short (docs/service.md, Garbage collection in a backlog). "
        "0: always 700."
    )
    watermark_wait_ms: float = Field(
        2000.0, ge=0, description="Longest wait for stream watermarks before answering late."
    )
    stopped_horizon: int = Field(
        STEPS_PER_DAY, ge=0,
        description="Steps a stopped stream's interval is kept in the live index.",
    )
    future_horizon: int = Field(
        1008, ge=0, description="Steps beyond the newest seen after which an event is refused."
    )
    recommend_on_watch: bool = Field(False, description="Also answer after every watch.")
    push_on_live: bool = Field(
        False, description="Push a refreshed answer (trigger live_change) to a user on the "
        "page when a streamer in their input window goes live (docs/consuming.md)."
    )
    push_on_page_steps: int = Field(
        3, ge=0, description="A user is on the page for this many steps after their last "
        "request or watch (pushes)."
    )
    push_recent_steps: int = Field(
        7 * STEPS_PER_DAY, ge=0,
        description="A streamer going live triggers a push only if the user watched them "
        "at most this many steps before (and within their input window).",
    )
    push_min_gap_steps: int = Field(
        6, ge=0, description="Fewest steps between two pushes to one user (rate limit)."
    )
    store: str = Field("rocksdb://", description="Faust table store (memory:// in tests).")
    data_dir: str = Field(
        "out/service-data", description="Directory of the worker's local state (the table "
        "store): a cache of the changelog, rebuilt from it when missing or inconsistent."
    )
    web_port: int = Field(6066, ge=0, description="Port of /health and /metrics.")
    scorer_threads: int = Field(
        1, ge=1, description="onnxruntime intra-op threads. 2 on a 2-core machine, the broker "
        "beside the worker, made the tail worse: p99 172 and 191 ms against 72 and 60 at "
        "3,000 requests/s (docs/results.md, session 26)."
    )
    worker_id: str = Field("liverank-service", description="Faust app id / consumer group.")
    fetch_wait_ms: float = Field(
        20.0, ge=0, description="Longest a worker's fetch (user-events, stream-events) waits "
        "at the broker for new data (Faust's own default is 1500 ms). tansu answers a fetch "
        "only when it expires, so on tansu the wait lies under every answer's latency, and "
        "every fetch lists its partitions' batches: 5 ms lowered a short run's latency and "
        "collapsed a long paced run (docs/results.md, session 22)."
    )
    user_reader: Literal["librdkafka", "faust"] = Field(
        "faust", description="What reads user-events in a worker: Faust's aiokafka fetcher, "
        "or (opt-in) the worker's own librdkafka reader: 17% more answers/s per worker in a "
        "drain, none over a whole log (docs/service.md, Reading user-events)."
    )
    progress_timeout_s: float = Field(
        60.0, gt=0, description="A worker with lag that finishes no batch for this long is "
        "not ready; one whose queued events wait this long with nothing in flight is not live."
    )
    model_poll_s: float = Field(
        2.0, ge=0, description="How often the worker checks the model directory for a new "
        "version (rename or symlink flip); 0 turns the check off."
    )

    @field_validator("kafka_bootstrap")
    @classmethod
    def _nonempty(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("kafka_bootstrap must not be empty")
        return v.strip()

    def model_post_init(self, _context: object) -> None:
        unknown = unknown_environment()
        if unknown:
            raise ValueError(
                f"unknown liverank settings in the environment: {', '.join(unknown)} "
                f"(known: {', '.join(sorted(_env_names()))})")

    def topic(self, name: str) -> str:
        return f"{self.topic_prefix}{name}"


def _env_names() -> set[str]:
    return {"LIVERANK_" + name.upper() for name in Settings.model_fields} | {
        "LIVERANK_LOG_LEVEL"}  # read by the CLI before any Settings exists


def unknown_environment() -> list[str]:
    """``LIVERANK_*`` variables that name no setting (a typo must not pass silently)."""
    return sorted(k for k in os.environ if k.startswith("LIVERANK_") and k not in _env_names())


def bootstrap_configured() -> bool:
    """True when the environment names a broker (tests and the demo otherwise start tansu)."""
    return bool(os.environ.get("LIVERANK_KAFKA_BOOTSTRAP") or
                os.environ.get("KAFKA_BOOTSTRAP_SERVERS"))


def settings_reference() -> list[tuple[str, str, str]]:
    """(environment variable, default, description) for every setting: for docs and --help."""
    rows = []
    for name, f in Settings.model_fields.items():
        env = "LIVERANK_" + name.upper()
        if name == "kafka_bootstrap":
            env += " (or KAFKA_BOOTSTRAP_SERVERS)"
        rows.append((env, repr(f.default), f.description or ""))
    return rows


def settings_markdown() -> str:
    """docs/configuration.md, generated from the fields above (a test keeps it current)."""
    lines = [
        "# Configuration reference",
        "",
        "Generated from `core/settings.py` by `liverank config --markdown`; do not edit.",
        "Every process builds one `Settings` at its entry point from the environment or a",
        "`.env` file. A `LIVERANK_*` variable that names no setting is an error.",
        "",
        "| variable | default | meaning |",
        "|---|---|---|",
    ]
    lines += [f"| `{env}` | `{default}` | {desc} |" for env, default, desc in settings_reference()]
    lines += ["| `LIVERANK_LOG_LEVEL` | `'INFO'` | Log level of the CLI (read before settings). |",
              ""]
    return "\n".join(lines)
