"""`RecsClient`: the service's answers, read from Kafka and typed by the event contract.

    from liverank.client import RecsClient
    from liverank.core.settings import Settings

    with RecsClient(Settings(), group="notifier") as client:
        for rec in client.answers(timeout_s=30):    # Recommendation records
            handle(rec)
            client.commit()                         # at least once: commit after handling
        print(client.latest(42))                    # user 42's latest answer, or None

Two ways to read ``recommendations`` (the answer log):

* ``group=None`` (a reader): no consumer group, no commits. The client is positioned at the
  end of every partition when it is made, so `answers` and `wait_for` see every answer
  published from then on (``from_beginning=True`` rewinds to the oldest one retained). On
  tansu, whose high watermark can fall short of the log end (docs/platform-notes.md), a
  few answers from just before may come too.
* ``group="name"``: a member of that consumer group (partitions shared among its members),
  manual commits: `commit` commits what `answers` has handed over. It resumes from the
  group's committed offsets; ``from_beginning`` says where a partition without one starts.

`latest` (a method, and a function of the settings alone) reads the compacted
``recommendations-latest`` (one answer per user): only the user's partition (Kafka's
murmur2 partitioner, `liverank.client.partitioner`), from its start to its end.

Records that do not decode, and answers of a newer ``schema_version`` than this client
knows, are logged and skipped, counted in `RecsClient.skipped`. Unknown fields are ignored
(docs/events.md: compatibility rules).
"""

from __future__ import annotations

import logging
import math
import time
from collections import Counter
from collections.abc import Iterator
from types import TracebackType
from typing import Any

from confluent_kafka import Consumer, KafkaError, Message, TopicPartition

from liverank.broker import kafka
from liverank.core import events as ev
from liverank.core.partitioner import partition_for
from liverank.core.settings import Settings

logger = logging.getLogger(__name__)

POLL_S = 0.5  # longest single poll: a deadline is never overrun by more than this
# "From the beginning" is offset 0, not OFFSET_BEGINNING: that one costs an offset query that
# librdkafka retries after 500 ms when the partition's leader is not known yet (a new
# client). Where retention has deleted offset 0, auto.offset.reset=earliest moves it on.
BEGINNING = 0
JOIN_TIMEOUT_S = 60.0  # longest wait for a group's first assignment before quiet time counts
_LOUD_SKIPS = 10  # the first skipped records are logged at WARNING, then every 1000th


class RecsClient:
    """Reads the service's answers (see the module docstring). Use it as a context manager,
    or call `close`. Raises `liverank.broker.kafka.KafkaSetupError` when the broker does not
    answer (within ``settings.kafka_timeout_s``) or the answer topic does not exist.
    """

    def __init__(self, settings: Settings, *, group: str | None = None) -> None:
        self.settings = settings
        self.group = group
        self.topic = settings.topic(kafka.RECOMMENDATIONS)
        self.latest_topic = settings.topic(kafka.RECOMMENDATIONS_LATEST)
        # Why records were skipped: "undecodable", "newer_schema".
        self.skipped: Counter[str] = Counter()
        self._partitions = kafka.partition_count(settings, self.topic)
        self._consumer: Consumer | None = None
        self._from_beginning: bool | None = None  # how the group member was started
        self._handled: dict[int, int] = {}  # group: partition -> offset to commit
        self._joined = group is None  # a group member: once it got its first assignment
        self._closed = False
        if group is None:
            self._consumer = self._reader()

    # --- the answer log ---------------------------------------------------------------------

    def answers(self, from_beginning: bool = False, user: int | None = None,
                timeout_s: float | None = None) -> Iterator[ev.Recommendation]:
        """Decoded answers as they arrive, in each partition's order.

        ``user``: only that user's answers. ``timeout_s``: the iteration ends once that long
        has passed without an answer (None: follows the topic until the caller stops); in a
        group, that quiet time starts when the member has joined (seconds: the broker waits
        for other members), waiting at most `JOIN_TIMEOUT_S` for that. Iterating again
        continues where the last iteration stopped.
        """
        self._answer_consumer(from_beginning)
        key = None if user is None else ev.user_key(user)
        idle = math.inf if timeout_s is None else timeout_s

        def follow() -> Iterator[ev.Recommendation]:
            while (rec := self._next(key, user, idle, wait_for_join=True)) is not None:
                yield rec

        return follow()

    def wait_for(self, request_id: str, timeout_s: float, *,
                 user: int | None = None) -> ev.Recommendation:
        """The answer to ``request_id`` (a `RecRequest`'s ``event_id``), read from the
        client's position on; answers to other requests read meanwhile are dropped (pass
        ``user`` to read only that user's). Make the client before sending the request.
        Raises `TimeoutError` when none arrives within ``timeout_s``."""
        self._answer_consumer(False)
        key = None if user is None else ev.user_key(user)
        deadline = time.monotonic() + timeout_s
        while (left := deadline - time.monotonic()) > 0:
            rec = self._next(key, user, left)
            if rec is not None and rec.request_id == request_id:
                return rec
        raise TimeoutError(f"no answer to request {request_id!r} on {self.topic} "
                           f"within {timeout_s:g} s")

    def commit(self) -> None:
        """Commit (synchronously) every answer handed over so far, and the records skipped
        before them, for the group. Raises `ValueError` without a group."""
        if self.group is None:
            raise ValueError("commit() needs a consumer group: RecsClient(settings, group=...)")
        if self._consumer is None or not self._handled:
            return
        assigned = {tp.partition for tp in self._consumer.assignment()}
        offsets = [TopicPartition(self.topic, p, o) for p, o in self._handled.items()
                   if p in assigned]  # a partition that moved away is the new owner's
        self._handled.clear()
        if offsets:
            self._consumer.commit(offsets=offsets, asynchronous=False)

    # --- the latest answer per user -----------------------------------------------------------

    def latest(self, user: int, timeout_s: float | None = None) -> ev.Recommendation | None:
        """``user``'s latest answer from the compacted ``recommendations-latest``: see
        `latest` (skipped records are counted here too)."""
        return latest(self.settings, user, timeout_s, skipped=self.skipped)

    # --- lifecycle ------------------------------------------------------------------------------

    def close(self) -> None:
        """Leave the group (if any) at once and release the client; idempotent."""
        if not self._closed and self._consumer is not None:
            self._consumer.close()
        self._closed = True

    def __enter__(self) -> RecsClient:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    # --- internals ------------------------------------------------------------------------------

    def _reader(self) -> Consumer:
        """A group-less consumer assigned to the end of every partition, as of now."""
        consumer = Consumer(kafka.consumer_config(self.settings))
        try:
            ends = [TopicPartition(self.topic, p, consumer.get_watermark_offsets(
                TopicPartition(self.topic, p), timeout=self.settings.kafka_timeout_s)[1])
                for p in range(self._partitions)]
        except Exception:
            consumer.close()
            raise
        consumer.assign(ends)
        return consumer

    def _answer_consumer(self, from_beginning: bool) -> Consumer:
        if self._closed:
            raise RuntimeError("the RecsClient is closed")
        if self.group is None:
            assert self._consumer is not None
            if from_beginning:
                self._consumer.assign([TopicPartition(self.topic, p, BEGINNING)
                                       for p in range(self._partitions)])
            return self._consumer
        if self._consumer is None:
            conf: dict[str, Any] = {
                **kafka.consumer_config(self.settings, self.group),
                "enable.auto.commit": False,
                "auto.offset.reset": "earliest" if from_beginning else "latest",
            }
            self._consumer = Consumer(conf)
            self._consumer.subscribe([self.topic], on_assign=self._on_assign,
                                     on_revoke=self._on_revoke)
            self._from_beginning = from_beginning
        elif from_beginning and not self._from_beginning:
            raise ValueError(f"group {self.group!r} is already reading from its committed "
                             "offsets; from_beginning applies when a client first joins")
        return self._consumer

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self._joined = True  # confluent-kafka then assigns ``partitions`` itself

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        for tp in partitions:
            self._handled.pop(tp.partition, None)

    def _next(self, key: bytes | None, user: int | None, timeout: float, *,
              wait_for_join: bool = False) -> ev.Recommendation | None:
        """The next answer (of ``key``/``user`` when given) within ``timeout``, else None;
        ``wait_for_join``: ``timeout`` counts from the group's first assignment (waiting
        `JOIN_TIMEOUT_S` at most)."""
        consumer = self._consumer
        assert consumer is not None
        start = time.monotonic()
        deadline = start + timeout
        while (left := deadline - (now := time.monotonic())) > 0 or (
                wait_for_join and not self._joined and now < start + JOIN_TIMEOUT_S):
            if wait_for_join and not self._joined:
                deadline = max(deadline, now + timeout)
                left = deadline - now
            msg = consumer.poll(min(left, POLL_S))
            if msg is None:
                continue
            err = msg.error()
            if err is not None:
                if err.code() == KafkaError._PARTITION_EOF:
                    continue
                raise kafka.KafkaSetupError(f"reading {self.topic}: {err.str()}")
            partition, offset = msg.partition(), msg.offset()
            if self.group is not None and partition is not None and offset is not None:
                self._handled[partition] = offset + 1
            if key is not None and msg.key() != key:
                continue
            rec = self._decode(msg)
            if rec is not None and (user is None or rec.user == user):
                return rec
        return None

    def _decode(self, msg: Message) -> ev.Recommendation | None:
        return _decode(msg, self.skipped)


def latest(settings: Settings, user: int, timeout_s: float | None = None, *,
           skipped: Counter[str] | None = None) -> ev.Recommendation | None:
    """``user``'s latest answer from the compacted ``recommendations-latest``, or None (never
    answered, a tombstone, or its latest record does not decode: logged, counted in
    ``skipped``). Reads only the user's partition (murmur2, as the service writes it), from
    its start to its end: compaction is eventual, so a key may still have older records.
    `TimeoutError` if that takes longer than ``timeout_s`` (default
    ``settings.kafka_timeout_s``); `KafkaSetupError` without a broker or the topic."""
    timeout = settings.kafka_timeout_s if timeout_s is None else timeout_s
    topic = settings.topic(kafka.RECOMMENDATIONS_LATEST)
    key = ev.user_key(user)
    partition = partition_for(key, kafka.partition_count(settings, topic))
    # A one-shot read: the end of the partition is known from a fetch that finds nothing
    # more, which the broker holds back up to fetch.wait.max.ms (500 ms by default).
    consumer = Consumer({**kafka.consumer_config(settings), "fetch.wait.max.ms": 50})
    consumer.assign([TopicPartition(topic, partition, BEGINNING)])
    found: Message | None = None
    at_end = False
    deadline = time.monotonic() + timeout
    try:
        while not at_end:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"{topic} partition {partition} not read to its end "
                                   f"within {timeout:g} s")
            for msg in consumer.consume(num_messages=10_000, timeout=min(left, 0.05)):
                err = msg.error()
                if err is None:
                    if msg.key() == key:
                        found = msg  # later records of a key replace earlier ones
                elif err.code() == KafkaError._PARTITION_EOF:
                    at_end = True
                    break
                else:
                    raise kafka.KafkaSetupError(f"reading {topic}: {err.str()}")
    finally:
        consumer.close()
    if found is None or found.value() is None:  # never answered, or a tombstone: deleted
        return None
    return _decode(found, Counter() if skipped is None else skipped)


def _decode(msg: Message, skipped: Counter[str]) -> ev.Recommendation | None:
    """The answer in ``msg``, or None (logged, counted in ``skipped``) when it does not
    decode or has a newer schema_version than this client knows."""
    value = msg.value()
    try:
        if value is None:
            raise ev.EventError("a null value (tombstone)", "undecodable")
        rec = ev.decode(value, ev.Recommendation)
    except ev.EventError as exc:
        _skip(skipped, "undecodable", msg, str(exc))
        return None
    assert isinstance(rec, ev.Recommendation)
    if rec.schema_version > ev.SCHEMA_VERSION:
        _skip(skipped, "newer_schema", msg, f"schema_version {rec.schema_version} is newer "
              f"than this client's {ev.SCHEMA_VERSION}: upgrade liverank")
        return None
    return rec


def _skip(skipped: Counter[str], reason: str, msg: Message, detail: str) -> None:
    skipped[reason] += 1
    n = skipped[reason]
    level = logging.WARNING if n <= _LOUD_SKIPS or n % 1000 == 0 else logging.DEBUG
    logger.log(level, "skipped record %s[%s]@%s (%s #%d): %s", msg.topic(), msg.partition(),
               msg.offset(), reason, n, detail)
