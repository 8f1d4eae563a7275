"""`GapGuard`: every user-events record reaches the worker, whatever Faust's fetcher did.

A Faust workaround with its own module because it is liverank logic (offset bookkeeping,
read-back through librdkafka) around two Faust internals, reached through
`liverank.services.faustcompat`. The evidence is in docs/service.md ("Skipped offsets").
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException
from confluent_kafka import TopicPartition as KafkaPartition
from faust.types import TP

from liverank.broker import kafka
from liverank.broker.clients import GroupReader, consume_now
from liverank.core.settings import Settings
from liverank.services import faustcompat

logger = logging.getLogger(__name__)


@dataclass
class Record:
    """A user-events record read back by `GapGuard` (what `Service.handle` reads of one)."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes]]

    @property
    def tp(self) -> TP:
        return TP(self.topic, self.partition)


class Refetched:
    """An event read back by `GapGuard`; it is acked through `GapGuard.delivered`."""

    def __init__(self, message: Record, gap: Gap):
        self.message, self.gap = message, gap


@dataclass
class Gap:
    tp: TP
    first: int  # first offset to read back (the committed offset: may re-read a few)
    last: int | None  # last offset skipped; None: to the end of the partition (a stall)
    left: int = 0  # records read back, not yet delivered


class GapGuard:
    """Every user-events record reaches the agent, in offset order, exactly once per
    assignment, whatever Faust's fetcher did.

    Faust (0.15) drops fetched records of a partition it has paused (during recovery after
    a (re)assignment, or while a stream's buffer is full). When it notices (the next record
    of that partition is not the next offset) it marks the skipped offsets as acked
    (``Consumer._add_gap``, meant for compacted topics), so they are committed unprocessed;
    when it does not notice (no record read yet since the assignment, or a commit at offset
    0) they are simply never delivered: requests lost for good (faust-streaming #216, #606;
    both seen here on restarts, the first also during a model swap).

    So the guard checks offsets itself: per partition it expects the committed offset
    first (Faust has sought there before it delivers anything; no commit: the start of the
    partition) and then each next offset. A record past the expected offset reveals a gap:
    the agent reads the missing records back with librdkafka and processes them before it;
    the gap is acked to Faust once their answers are delivered. Faust's own gap acking is
    switched off for user-events, where a gap is never legitimate.

    A gap at the end of a partition shows no later record: the worker's broker timer asks
    `stalled` whether a partition has records beyond what was delivered while the worker
    sits idle, and then the tail is read back the same way (seen: after a rebalance a
    partition's last 224 records were never delivered, the owner idle with lag).
    """

    def __init__(self, consumer: Any, topic: str, settings: Settings, group: str):
        self.consumer, self.topic, self.settings = consumer, topic, settings
        self.group = group  # the worker's consumer group: its committed offsets bound a gap
        self._original = faustcompat.replace_add_gap(consumer, self._add_gap)
        self.expected: dict[TP, int] = {}  # next offset the agent should get, per partition
        self.last_seen: dict[TP, float] = {}  # when a record of the partition last came
        self.since: dict[TP, float] = {}  # when the partition was (re)assigned
        self.last_any: float | None = None  # when any record of the topic last came
        self.refetched = 0

    async def _add_gap(self, tp: TP, offset_from: int, offset_to: int) -> None:
        if tp.topic != self.topic:  # other topics (changelogs): Faust's behaviour
            await self._original(tp, offset_from, offset_to)

    def forget(self, tps: Iterable[TP]) -> None:
        """After a revocation or an assignment Faust starts from the committed offset again."""
        now = time.monotonic()
        for tp in tps:
            self.expected.pop(tp, None)
            self.last_seen.pop(tp, None)
            self.since[tp] = now

    def starts_at(self, tp: TP, offset: int | None) -> None:
        """The next record of ``tp`` comes from ``offset`` (the worker's own reader starts
        there; None: the start of the partition, or Faust's committed offset)."""
        if offset is None:
            self.expected.pop(tp, None)
        else:
            self.expected[tp] = offset
        self.since[tp] = time.monotonic()

    def check(self, event: Any) -> Gap | None:
        """The records missing before ``event`` (to read back and process first), if any."""
        msg = event.message
        tp, offset = msg.tp, msg.offset
        expected = self.expected.get(tp)
        self.expected[tp] = offset + 1
        self.last_seen[tp] = self.last_any = time.monotonic()
        if expected is None:
            # Faust keeps the committed offset (next to read) here; None: no commit, or 0,
            # or a lookup that came back empty (seen after a takeover: Faust said None while
            # its fetcher started at the group's committed 483). `read_back` starts a gap at
            # the group's committed offset, so a wrong 0 here reads nothing twice.
            expected = faustcompat.committed_offset(self.consumer, tp) or 0
        if offset <= expected:  # in order (or a re-delivery after a seek back)
            return None
        logger.warning("fetcher skipped offsets topic=%s partition=%d first=%d last=%d: "
                       "reading them back", tp.topic, tp.partition, expected, offset - 1)
        return Gap(tp, expected, offset - 1)

    def stalled(self, tp: TP, committed: int, high: int, idle_s: float,
                now: float | None = None) -> Gap | None:
        """A gap at the end of ``tp``: the partition holds records up to ``high`` (its high
        watermark; on tansu it can read low, so the read-back goes to the partition's end)
        beyond the next offset expected, and no record of the topic, of any partition, was
        delivered for ``idle_s``. Call it only while the worker is idle. Why both: under a
        backlog Faust's fetcher can leave one partition undelivered for many seconds while it
        serves the others; reading that partition's tail back then made every record of it
        arrive twice (measured: 10% of a medium run's requests answered twice with one worker,
        31% with two). A partition whose tail Faust dropped shows lag while nothing at all
        arrives."""
        now = time.monotonic() if now is None else now
        if self.last_any is not None and now - self.last_any < idle_s:
            return None  # records still arrive: Faust is working through its partitions
        expected = self.expected.get(tp)
        if expected is None:
            expected = max(committed, 0)
        if high <= expected:
            return None
        if now - self.last_seen.get(tp, self.since.get(tp, now)) < idle_s:
            return None
        logger.warning("partition stalled topic=%s partition=%d next=%d high_watermark=%d: "
                       "reading its tail back", tp.topic, tp.partition, expected, high)
        self.last_seen[tp] = now
        return Gap(tp, expected, None)

    def read_back(self, gap: Gap, timeout_s: float | None = None) -> list[Refetched]:
        """Blocking (run it in a thread): the records of ``gap`` from the broker (fewer when
        retention already deleted the first ones). `KafkaException` when they cannot be read
        within ``timeout_s`` (default: three broker timeouts): the worker stops rather than
        answer later requests without them.

        The gap starts no earlier than the group's committed offset, read from the broker
        now: a record before it was answered and committed (by this worker or the one that
        had the partition before), and answering it again after the live index moved on
        would give an answer that differs from the first (marked stale, empty)."""
        wait = self.settings.kafka_timeout_s * 3 if timeout_s is None else timeout_s
        deadline = time.monotonic() + wait
        committed = self._group_committed(gap)
        if committed > gap.first:
            logger.info("gap starts at the group's committed offset topic=%s partition=%d "
                        "first=%d committed=%d", gap.tp.topic, gap.tp.partition, gap.first,
                        committed)
            gap.first = committed
        if gap.last is not None and gap.first > gap.last:
            gap.left = 0  # all of it committed: nothing to read, nothing to ack
            return []
        consumer = Consumer(kafka.consumer_config(self.settings))
        consumer.assign([KafkaPartition(gap.tp.topic, gap.tp.partition, gap.first)])
        out: list[Refetched] = []
        try:
            done = False
            while not done:
                if time.monotonic() > deadline:
                    raise KafkaException(f"could not read back {gap}")
                for m in consume_now(consumer, 1000, 0.5):
                    err = m.error()
                    if err is not None:
                        if gap.last is None and err.code() == KafkaError._PARTITION_EOF:
                            done = True
                            break
                        continue
                    offset = int(m.offset() or 0)  # a delivered record has all three
                    if gap.last is not None and offset > gap.last:
                        done = True
                        break
                    rec = Record(str(m.topic()), int(m.partition() or 0), offset, m.key(),
                                 m.value(), list(m.headers() or []))  # type: ignore[arg-type]
                    out.append(Refetched(rec, gap))
                    done = offset == gap.last
        finally:
            consumer.close()
        gap.left = len(out)
        if gap.last is None:  # a tail: it ends where the partition ended
            gap.last = out[-1].message.offset if out else gap.first - 1
        self.refetched += len(out)
        return out

    def _group_committed(self, gap: Gap) -> int:
        """Blocking: the group's committed offset of the gap's partition (-1: none)."""
        reader = GroupReader(self.settings, self.group)
        try:
            return reader.committed(gap.tp.topic, [gap.tp.partition])[gap.tp.partition]
        except (KafkaException, TimeoutError) as exc:
            raise KafkaException(f"could not read back {gap}: the group's committed offset "
                                 f"is unknown ({exc})") from exc
        finally:
            reader.close()

    async def delivered(self, event: Refetched) -> None:
        """Ack the gap once every record read back was delivered."""
        gap = event.gap
        gap.left -= 1
        if gap.left == 0 and gap.last is not None:
            await self._original(gap.tp, gap.first, gap.last)

    async def settle_empty(self, gap: Gap) -> None:
        """A gap with nothing left to read back (deleted by retention): ack it now."""
        if gap.last is not None and gap.last >= gap.first:
            await self._original(gap.tp, gap.first, gap.last)

    def took(self, back: list[Refetched]) -> None:
        """Records read back for a tail are the partition's next ones: expect what follows."""
        if back:
            last = back[-1].message
            self.expected[last.tp] = max(self.expected.get(last.tp, 0), last.offset + 1)
