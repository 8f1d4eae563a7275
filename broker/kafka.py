"""Kafka plumbing shared by every client: broker address, client configs, topics, reading.

One resolver for the broker address (`resolve_bootstrap`), one place that turns `Settings`
into confluent-kafka configs (security included) and Faust options, `ensure_topics` before
any client starts, and `read_topic`, which knows when a topic has been read to its end even
on tansu (whose high watermarks are wrong; see `liverank.broker.tansu`).

    >>> s = Settings()                                         # doctest: +SKIP
    >>> ensure_topics(s)                                       # doctest: +SKIP
    >>> Producer(producer_config(s)).produce(s.topic("user-events"), b"{}")  # doctest: +SKIP

This module imports neither faust nor torch (the Faust app's options are built in
`liverank.services.faustcompat`).
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable
from functools import lru_cache
from typing import Any, Literal, TypeVar

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, TopicPartition
from confluent_kafka.admin import AdminClient, ConfigResource, NewTopic, ResourceType

from liverank.broker import tansu
from liverank.core.settings import DEFAULT_BOOTSTRAP, Settings

logger = logging.getLogger(__name__)
# librdkafka's own log lines go through Python logging instead of raw stderr.
librdkafka_logger = logging.getLogger("liverank.librdkafka")


class RedactSaslExchange(logging.Filter):
    """Hides SASL exchanges in aiokafka's request log (the Faust worker's client).

    aiokafka logs every request and response at DEBUG (``aiokafka.conn``: "Request to
    HOST:PORT N: SaslAuthenticateRequest_v1(sasl_auth_bytes=b'\\x00user\\x00password')"),
    so ``liverank serve -v`` with SASL PLAIN would write the password in clear (and a SCRAM
    proof). This filter replaces such arguments by their type name; everything else passes.
    Installed on that logger when this module is imported (before any Faust app exists).
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple) and any(map(_is_sasl_exchange, record.args)):
            record.args = tuple(f"{type(a).__name__}(<redacted>)" if _is_sasl_exchange(a)
                                else a for a in record.args)
        return True


def _is_sasl_exchange(arg: object) -> bool:
    return type(arg).__name__.startswith("SaslAuthenticate")


AIOKAFKA_CONN_LOGGER = "aiokafka.conn"
if not any(isinstance(f, RedactSaslExchange)
           for f in logging.getLogger(AIOKAFKA_CONN_LOGGER).filters):
    logging.getLogger(AIOKAFKA_CONN_LOGGER).addFilter(RedactSaslExchange())

STREAM_EVENTS = "stream-events"
USER_EVENTS = "user-events"
RECOMMENDATIONS = "recommendations"
RECOMMENDATIONS_LATEST = "recommendations-latest"
RECOMMENDATIONS_SHADOW = "recommendations-shadow"
DEAD_LETTERS = "dead-letters"
TOPICS = (STREAM_EVENTS, USER_EVENTS, RECOMMENDATIONS, RECOMMENDATIONS_LATEST,
          RECOMMENDATIONS_SHADOW, DEAD_LETTERS)
DEAD_LETTERS_RETENTION_MS = 30 * 24 * 3600 * 1000


def topic_config(settings: Settings, name: str) -> dict[str, str]:
    """The config of each of the system's topics: the one place it is defined (topics the
    app creates, and the deployment's topic manifests, agree with it).

    * the input topics keep everything: their message timestamps are historical event
      times, which a time-based retention would delete as soon as they arrive;
    * ``recommendations``, the answer log (wall-clock timestamps), keeps
      ``LIVERANK_ANSWERS_RETENTION_MS`` (-1: forever, for a simulation to analyse);
    * ``recommendations-latest`` is compacted: the latest answer of every user;
    * ``dead-letters`` keeps 30 days.
    """
    if name in (RECOMMENDATIONS, RECOMMENDATIONS_SHADOW):
        return {"retention.ms": str(settings.answers_retention_ms)}
    if name == RECOMMENDATIONS_LATEST:
        return {"cleanup.policy": "compact"}
    if name == DEAD_LETTERS:
        return {"retention.ms": str(DEAD_LETTERS_RETENTION_MS)}
    return {"retention.ms": "-1"}
READER_GROUP = "liverank-reader"  # librdkafka needs a group.id even for assign()-only readers


class KafkaSetupError(RuntimeError):
    """The broker cannot be reached, a topic is wrong or the client settings are unusable."""


class BrokerUnreachableError(KafkaSetupError):
    """No broker answered: a transient condition, waited out by `wait_out` up to
    ``LIVERANK_OUTAGE_TIMEOUT_S`` (a refused login or a bad setting is not one)."""


class RateLimitedLog:
    """Log a repeated condition (a broker away, a failing read) at most once per interval,
    with how many times it happened since the last line: an outage gives a line every
    ``every_s`` seconds, not dozens a second."""

    def __init__(self, log: logging.Logger, every_s: float):
        self.log, self.every_s = log, every_s
        self._last = -float("inf")
        self._suppressed = 0

    def warning(self, msg: str, *args: object) -> None:
        now = time.monotonic()
        if now - self._last < self.every_s:
            self._suppressed += 1
            return
        if self._suppressed:
            msg += " (repeated %d times)"
            args = (*args, self._suppressed)
        self._last, self._suppressed = now, 0
        self.log.warning(msg, *args)


class RepeatFilter(logging.Filter):
    """Lets the first of identical log lines (same level, same text) through, then at most one
    per ``every_s``, saying how many it held back. For librdkafka's logger: a broker that
    refuses connections gets "Connect to ... failed: Connection refused" twice a second.

    ``max_keys`` bounds the memory: the oldest lines are forgotten first.
    """

    def __init__(self, every_s: float = 5.0, max_keys: int = 256,
                 clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self.every_s, self.max_keys, self.clock = every_s, max_keys, clock
        self._seen: dict[tuple[int, str], list[float]] = {}  # -> [passed at, held back]
        self._lock = threading.Lock()

    def filter(self, record: logging.LogRecord) -> bool:
        text = record.getMessage()
        key, now = (record.levelno, text), self.clock()
        with self._lock:
            seen = self._seen.get(key)
            if seen is None:
                if len(self._seen) >= self.max_keys:
                    del self._seen[next(iter(self._seen))]
                self._seen[key] = [now, 0]
                return True
            if now - seen[0] < self.every_s:
                seen[1] += 1
                return False
            held, seen[0], seen[1] = int(seen[1]), now, 0
        if held:
            record.msg, record.args = f"{text} ({held} identical lines held back)", None
        return True


# librdkafka repeats itself while a broker is away ("Connect to ... failed: Connection
# refused" twice a second, for every client): one line per 5 s, with a count, in every
# process that talks to Kafka.
if not any(isinstance(f, RepeatFilter) for f in librdkafka_logger.filters):
    librdkafka_logger.addFilter(RepeatFilter())

T = TypeVar("T")


def wait_out(settings: Settings, call: Callable[[], T], what: str, *,
             clock: Callable[[], float] = time.monotonic,
             sleep: Callable[[float], None] = time.sleep) -> T:
    """``call()``, retried with backoff (0.5 s doubling to 5 s, logged once per 10 s) while
    the broker is unreachable; `BrokerUnreachableError` naming ``what`` and the setting once that
    has lasted longer than ``settings.outage_timeout_s``. Other errors pass through."""
    start, delay = clock(), 0.5
    log = RateLimitedLog(logger, 10.0)
    while True:
        try:
            return call()
        except (BrokerUnreachableError, KafkaException) as exc:
            waited = clock() - start
            if waited > settings.outage_timeout_s:
                raise BrokerUnreachableError(
                    f"{what}: no broker answered at {settings.kafka_bootstrap} for "
                    f"{waited:.0f} s, longer than LIVERANK_OUTAGE_TIMEOUT_S="
                    f"{settings.outage_timeout_s:g} ({exc})") from exc
            log.warning("%s: broker unreachable, retrying in %.1f s error=%s", what, delay, exc)
            sleep(delay)
            delay = min(delay * 2, 5.0)


def resolve_bootstrap() -> str:
    """``LIVERANK_KAFKA_BOOTSTRAP``, else ``KAFKA_BOOTSTRAP_SERVERS``, else 127.0.0.1:9092."""
    for var in ("LIVERANK_KAFKA_BOOTSTRAP", "KAFKA_BOOTSTRAP_SERVERS"):
        value = os.environ.get(var, "").strip()
        if value:
            return value
    return DEFAULT_BOOTSTRAP


# --- client configs -------------------------------------------------------------------------

def security_config(settings: Settings) -> dict[str, Any]:
    """librdkafka security properties from the settings; errors name the missing setting."""
    conf: dict[str, Any] = {"security.protocol": settings.security_protocol}
    if settings.security_protocol.startswith("SASL"):
        if not settings.sasl_mechanism:
            raise KafkaSetupError(f"security_protocol={settings.security_protocol} needs "
                                  "LIVERANK_SASL_MECHANISM (PLAIN, SCRAM-SHA-256 or -512)")
        if not settings.sasl_username or settings.sasl_password is None:
            raise KafkaSetupError(f"SASL ({settings.sasl_mechanism}) needs "
                                  "LIVERANK_SASL_USERNAME and LIVERANK_SASL_PASSWORD")
        conf.update({"sasl.mechanism": settings.sasl_mechanism,
                     "sasl.username": settings.sasl_username,
                     "sasl.password": _reveal(settings.sasl_password)})
    elif settings.sasl_mechanism:
        raise KafkaSetupError(f"LIVERANK_SASL_MECHANISM={settings.sasl_mechanism} is set but "
                              f"security_protocol={settings.security_protocol} uses no SASL")
    if settings.ssl_cafile:
        if not settings.security_protocol.endswith("SSL"):
            raise KafkaSetupError(f"LIVERANK_SSL_CAFILE is set but security_protocol="
                                  f"{settings.security_protocol} uses no TLS")
        if not os.path.isfile(settings.ssl_cafile):
            raise KafkaSetupError(f"LIVERANK_SSL_CAFILE={settings.ssl_cafile}: no such file")
        conf["ssl.ca.location"] = settings.ssl_cafile
    return conf


def _reveal(secret: Any) -> Any:
    """The plain value of a setting that may be a pydantic ``SecretStr`` (or a plain str)."""
    reveal = getattr(secret, "get_secret_value", None)
    return reveal() if callable(reveal) else secret


def client_config(settings: Settings) -> dict[str, Any]:
    """What every librdkafka client needs: the address, security and a bounded socket wait.

    Never ``debug``: librdkafka's debug output is verbose protocol tracing (it redacts
    ``sasl.password`` in its config dump, but nothing here needs it on).
    """
    timeout_ms = int(settings.kafka_timeout_s * 1000)
    return {
        "bootstrap.servers": settings.kafka_bootstrap,
        **security_config(settings),
        "socket.connection.setup.timeout.ms": timeout_ms,
        "logger": librdkafka_logger,
    }


def producer_config(settings: Settings) -> dict[str, Any]:
    """An idempotent producer whose keyed partitions match Faust/aiokafka (murmur2).

    librdkafka's default partitioner (CRC32) disagrees with aiokafka's murmur2 for most keys
    (873 of 1,000 measured); ``murmur2_random`` agrees on all.
    """
    return {
        **client_config(settings),
        "enable.idempotence": True,
        "acks": "all",
        "partitioner": "murmur2_random",
        "linger.ms": 5,
        # A larger local queue absorbs bursts at --speed max (fewer BufferError waits).
        "queue.buffering.max.messages": 1_000_000,
        "message.timeout.ms": int(settings.outage_timeout_s * 1000),
    }


# librdkafka's statistics come this often to a producer that waits for its producer id.
PRODUCER_ID_STATS_MS = 50


class ProducerIdWatch:
    """An idempotent producer's id, from librdkafka's statistics (its ``stats_cb``): give
    `config` to the producer, then `wait` before the first record that carries a clock.

    Why: ``list_topics`` can return before the producer holds its id (in ~1 ms, answered on
    the bootstrap connection), and a record produced then waited ~500 ms in librdkafka (2 of
    8 fresh producers on the embedded broker). A paced replay stamps ``produced_ms`` when it
    produces: a demo's whole test window, under a second at 3,000 requests/s, read as a
    queue (docs/results.md, session 29). With the wait: 8-60 ms for the id, then ~6 ms to
    the first delivery."""

    ASSIGNED = "Assigned"

    def __init__(self) -> None:
        self.state: str | None = None

    def __call__(self, stats: str) -> None:
        if self.state != self.ASSIGNED:
            self.state = json.loads(stats).get("eos", {}).get("idemp_state")

    def config(self) -> dict[str, Any]:
        return {"statistics.interval.ms": PRODUCER_ID_STATS_MS, "stats_cb": self}

    def wait(self, producer: Any, timeout_s: float) -> None:
        """Poll ``producer`` until its id is assigned; `KafkaSetupError` after
        ``timeout_s``, naming the state it was left in."""
        deadline = time.monotonic() + timeout_s
        while self.state != self.ASSIGNED:
            if time.monotonic() > deadline:
                raise KafkaSetupError(
                    f"the producer holds no idempotent producer id after {timeout_s:.0f} s "
                    f"(librdkafka's state: {self.state or 'no statistics yet'})")
            producer.poll(0.005)


# A backlog's producer waits this long for a batch to fill (librdkafka's default is 5 ms).
BACKLOG_LINGER_MS = 200


def backlog_producer_config(settings: Settings) -> dict[str, Any]:
    """`producer_config` for a producer that sends a backlog as fast as it can (a replay at
    ``--speed max``), where no message waits for its own delivery: a long linger, so each
    partition's batch fills. With 5 ms a replay producing ~24k messages/s over 8
    partitions sent batches of ~15 messages, thousands per partition; on tansu every fetch
    lists all of a partition's batches (`liverank.broker.tansu`), so a worker's fetches
    kept paying for them long after the replay ended (docs/results.md, session 10: the
    broker's CPU while a worker reads a 540k-watch preload 64-84% -> 23-43%). On Kafka:
    fewer, larger produce requests, the usual throughput setting."""
    return {**producer_config(settings), "linger.ms": BACKLOG_LINGER_MS,
            "batch.num.messages": 100_000}


def consumer_config(settings: Settings, group_id: str | None = None) -> dict[str, Any]:
    """A consumer; without ``group_id`` it is meant for ``assign()`` (no group join, no commits).

    ``enable.partition.eof`` is on: on tansu the fetch EOF is the reliable "caught up" signal.
    """
    conf: dict[str, Any] = {
        **client_config(settings),
        "group.id": group_id or READER_GROUP,
        "auto.offset.reset": "earliest",
        "enable.auto.commit": group_id is not None,
        "enable.partition.eof": True,
    }
    if group_id is not None and is_tansu(settings):
        conf.update(tansu.consumer_overrides())
    return conf


def admin_client(settings: Settings) -> AdminClient:
    return AdminClient(client_config(settings))


# --- the broker -----------------------------------------------------------------------------

# librdkafka errors no retry cures: a refused SASL login, an untrusted broker certificate.
# They reach only ``error_cb``; a metadata request just times out ("Broker transport failure").
_REFUSALS = (KafkaError._AUTHENTICATION, KafkaError._SSL)


class _RefusedError(Exception):
    """Internal: the broker refused this client (`_REFUSALS`); ``error`` says how."""

    def __init__(self, error: KafkaError) -> None:
        super().__init__(error.str())
        self.error = error


def _metadata(conf: dict[str, Any], timeout: float) -> tuple[AdminClient, Any]:
    """(admin, cluster metadata) within ``timeout``; `_RefusedError` as soon as the broker
    refuses the login or its certificate does not verify (within ~0.5 s, not after the
    timeout); else the last `KafkaException`, its message naming the client's last error."""
    errors: list[KafkaError] = []
    full: dict[str, Any] = {**conf, "error_cb": errors.append}
    admin = AdminClient(full)
    deadline = time.monotonic() + timeout
    while True:
        try:
            return admin, admin.list_topics(
                timeout=max(0.01, min(0.5, deadline - time.monotonic())))
        except KafkaException as exc:
            admin.poll(0)  # serves error_cb
            refused = [e for e in errors if e.code() in _REFUSALS]
            if refused:
                raise _RefusedError(refused[-1]) from None
            if time.monotonic() >= deadline:
                told = [e.str() for e in errors if e.code() != KafkaError._ALL_BROKERS_DOWN]
                if told:
                    raise KafkaException(f"{exc.args[0]}; last error: {told[-1]}") from exc
                raise


def _refusal(settings: Settings, bootstrap: str, error: KafkaError) -> KafkaSetupError:
    """A clear message for a refused client; it names the settings to check, never a secret."""
    if error.code() == KafkaError._AUTHENTICATION:
        return KafkaSetupError(
            f"the Kafka broker at {bootstrap} refused the SASL login "
            f"(security_protocol={settings.security_protocol}, "
            f"mechanism={settings.sasl_mechanism}, user={settings.sasl_username!r}): "
            f"{error.str()}. Check LIVERANK_SASL_USERNAME, LIVERANK_SASL_PASSWORD and "
            "LIVERANK_SASL_MECHANISM")
    return KafkaSetupError(
        f"TLS with the Kafka broker at {bootstrap} failed: {error.str()}. Check "
        "LIVERANK_SSL_CAFILE (the CA that signed the broker's certificate) and "
        "LIVERANK_SECURITY_PROTOCOL")


def wait_for_broker(settings: Settings, timeout_s: float | None = None) -> Any:
    """Metadata of the cluster, or `KafkaSetupError` within ``timeout_s`` naming the address.

    A refused login or an untrusted certificate fails at once with its own message.
    """
    timeout = settings.kafka_timeout_s if timeout_s is None else timeout_s
    try:
        return _metadata(client_config(settings), timeout)[1]
    except _RefusedError as exc:
        raise _refusal(settings, settings.kafka_bootstrap, exc.error) from None
    except KafkaException as exc:
        raise BrokerUnreachableError(
            f"no Kafka broker answered at {settings.kafka_bootstrap} within {timeout:.0f} s "
            f"({exc.args[0]}). Start one with `liverank broker` or set "
            "LIVERANK_KAFKA_BOOTSTRAP") from exc


def paced_tick_s(settings: Settings) -> float:
    """How a paced replay groups its messages (`EvenRateSink`): in ticks on tansu, whose
    fetches cost in proportion to a partition's batches (`tansu.PACED_TICK_S`); one by one
    elsewhere."""
    return tansu.PACED_TICK_S if is_tansu(settings) else 0.0


def reader_fetch_wait_ms(settings: Settings) -> int:
    """``fetch.wait.max.ms`` for a reader that is not latency-bound (one that counts answers
    and reads their latency from their own timestamps): rare fetches on tansu
    (`tansu.READER_FETCH_WAIT_MS`), librdkafka's default elsewhere."""
    return tansu.READER_FETCH_WAIT_MS if is_tansu(settings) else 500


def follow_from_start(settings: Settings, topic: str) -> Consumer:
    """A consumer assigned every partition of ``topic`` from offset 0, no group, fetching
    as a counting reader does (`reader_fetch_wait_ms`): how the benchmarks read answers."""
    consumer = Consumer({**consumer_config(settings),
                         "fetch.wait.max.ms": reader_fetch_wait_ms(settings)})
    parts = partition_count(settings, topic)
    consumer.assign([TopicPartition(topic, p, 0) for p in range(parts)])
    return consumer


def is_tansu(settings: Settings) -> bool:
    """True when the broker is tansu: `Settings.broker_kind`, else ask it (once per address)."""
    if settings.broker_kind != "auto":
        return settings.broker_kind == "tansu"
    return detect_broker_kind(settings.kafka_bootstrap, settings) == "tansu"


@lru_cache(maxsize=16)
def _detect(bootstrap: str, security: tuple[tuple[str, str], ...],
            timeout: float) -> Literal["kafka", "tansu"]:
    conf: dict[str, Any] = {"bootstrap.servers": bootstrap, **dict(security),
                            "logger": librdkafka_logger}
    try:
        admin, meta = _metadata(conf, timeout)
    except KafkaException as exc:
        raise KafkaSetupError(f"cannot tell the broker kind: no broker answered at {bootstrap} "
                              f"within {timeout:.0f} s ({exc.args[0]})") from exc
    count: int | None = None
    if meta.brokers:
        node = str(next(iter(meta.brokers)))
        try:
            futures = admin.describe_configs([ConfigResource(ResourceType.BROKER, node)])
            count = len(next(iter(futures.values())).result(timeout=timeout))
        except (KafkaException, TimeoutError, ValueError) as exc:  # e.g. no DescribeConfigs ACL
            logger.debug("broker configs unavailable: %s", exc)
    kind: Literal["kafka", "tansu"] = (
        "tansu" if tansu.looks_like_tansu(meta.cluster_id, count) else "kafka")
    logger.info("broker kind=%s bootstrap=%s cluster_id=%s", kind, bootstrap, meta.cluster_id)
    return kind


def detect_broker_kind(bootstrap: str, settings: Settings) -> Literal["kafka", "tansu"]:
    sec = tuple(sorted((k, str(v)) for k, v in security_config(settings).items()))
    try:
        return _detect(bootstrap, sec, settings.kafka_timeout_s)
    except _RefusedError as exc:
        raise _refusal(settings, bootstrap, exc.error) from None


# --- topics ---------------------------------------------------------------------------------

def ensure_topics(settings: Settings, names: Iterable[str] | None = None) -> dict[str, int]:
    """Create the system's topics (``settings.topic(name)``) unless they exist; check them.

    Every topic gets ``settings.partitions`` partitions and `topic_config`; with
    ``settings.create_topics`` off, nothing is created and a missing topic is an error. An
    existing topic with another partition count is an error: keys would land on other partitions
    than the service's state expects. Returns {full topic name: partitions}.
    """
    wanted = [settings.topic(n) for n in (TOPICS if names is None else names)]
    admin = admin_client(settings)
    meta = wait_for_broker(settings)
    missing = [t for t in wanted if t not in meta.topics]
    if missing and not settings.create_topics:
        raise KafkaSetupError(
            f"topics missing at {settings.kafka_bootstrap}: {', '.join(missing)}. "
            "LIVERANK_CREATE_TOPICS=false: they are created outside liverank (the "
            "deployment's KafkaTopic resources, docs/deploy.md)")
    if missing:
        names_of = {settings.topic(n): n for n in TOPICS}
        new = [NewTopic(t, num_partitions=settings.partitions,
                        replication_factor=settings.replication_factor,
                        config=topic_config(settings, names_of.get(t, t))) for t in missing]
        for topic, future in admin.create_topics(new, request_timeout=settings.kafka_timeout_s
                                                 ).items():
            try:
                future.result(timeout=settings.kafka_timeout_s)
                logger.info("created topic=%s partitions=%d", topic, settings.partitions)
            except KafkaException as exc:
                if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:  # a concurrent creator
                    raise KafkaSetupError(f"cannot create topic {topic}: {exc.args[0]}") from exc
    counts = _wait_for_topics(settings, admin, wanted)
    wrong = {t: n for t, n in counts.items() if n != settings.partitions}
    if wrong:
        listing = ", ".join(f"{t} has {n}" for t, n in wrong.items())
        raise KafkaSetupError(
            f"existing topics have another partition count than LIVERANK_PARTITIONS="
            f"{settings.partitions}: {listing}. Delete them, or set LIVERANK_PARTITIONS to "
            "match, or use another LIVERANK_TOPIC_PREFIX")
    return counts


def _wait_for_topics(settings: Settings, admin: AdminClient, topics: list[str]) -> dict[str, int]:
    """Creation is asynchronous on some brokers: wait until metadata shows every topic."""
    deadline = time.monotonic() + settings.kafka_timeout_s
    while True:
        meta = admin.list_topics(timeout=settings.kafka_timeout_s)
        found = {t: len(meta.topics[t].partitions) for t in topics
                 if t in meta.topics and meta.topics[t].error is None}
        if len(found) == len(topics):
            return found
        if time.monotonic() > deadline:
            raise KafkaSetupError(f"topics not visible after creation: "
                                  f"{sorted(set(topics) - set(found))}")
        time.sleep(0.1)


def partition_count(settings: Settings, topic: str) -> int:
    meta = wait_for_broker(settings)
    if topic not in meta.topics or meta.topics[topic].error is not None:
        raise KafkaSetupError(f"topic {topic} does not exist at {settings.kafka_bootstrap} "
                              "(run ensure_topics / `liverank replay` creates it)")
    return len(meta.topics[topic].partitions)


# --- reading to the end ---------------------------------------------------------------------

def read_topic(
    settings: Settings,
    topic: str,
    *,
    timeout_s: float = 30.0,
    until: Callable[[Message], bool] | None = None,
    partitions: Iterable[int] | None = None,
) -> list[Message]:
    """Every message of ``topic`` from the beginning, in per-partition order.

    Without ``until``: stops when every partition has reported end-of-partition from a fetch
    (correct on tansu, unlike ``get_watermark_offsets``). With ``until``: stops once every
    partition has delivered a message for which ``until(msg)`` is true (an end marker, e.g.
    the replay's ``End`` on each partition of stream-events) — use that while a writer may
    still be producing. Raises `TimeoutError` naming the unfinished partitions after
    ``timeout_s``. Uses ``assign()``, so no consumer-group join (slow on tansu).
    """
    parts = list(partitions) if partitions is not None else list(
        range(partition_count(settings, topic)))
    consumer = Consumer(consumer_config(settings))
    consumer.assign([TopicPartition(topic, p, 0) for p in parts])  # offset 0 = the beginning
    pending, out = set(parts), []  # type: tuple[set[int], list[Message]]
    deadline = time.monotonic() + timeout_s
    try:
        while pending:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"read_topic {topic}: partitions {sorted(pending)} not "
                                   f"finished after {timeout_s:.0f} s ({len(out)} read)")
            for msg in consumer.consume(num_messages=10_000, timeout=min(left, 0.5)):
                err = msg.error()
                if err is None:
                    out.append(msg)
                    if until is not None and until(msg):
                        pending.discard(msg.partition())
                elif err.code() == KafkaError._PARTITION_EOF:
                    if until is None:
                        pending.discard(msg.partition())
                else:
                    raise KafkaSetupError(f"reading {topic}: {err}")
    finally:
        consumer.close()
    return out
