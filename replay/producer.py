"""The replay producer: a timeline put on Kafka as a live platform would have emitted it.

* ``stream-events``: starts and stops keyed by `events.stream_key`; after each step's stops
  and starts, that step's `Watermark` on *every* partition (``partition`` set); at the end an
  `End` on every partition whose totals count the messages written to each topic before it.
* ``user-events``: requests and watches keyed by `events.user_key`, so a request and the
  watch after it stay in order on one partition.

Message timestamp = event time; header ``produced_ms`` = wall-clock produce time (for
latency); value = the JSON of `liverank.core.events`. Keys are placed by librdkafka's
``murmur2_random`` partitioner, which agrees with Faust/aiokafka.

Speed: `liverank.replay.encoder` formats the JSON from the timeline's columns (in a forked
child at ``--speed max`` on large files), so this process mostly just calls ``produce``.
Pacing maps step ``s`` to wall time ``t0 + (s - s0) * 600 / speed``; clock and sleep are
injectable for tests. ``rate`` instead sends the requests at an even rate (`EvenRateSink`):
a known load on the service, whatever the log's daily cycle (the demo's test window).

Broker outages (`OutageWatch`): a broker that is away is waited out, not an error. librdkafka
keeps produced messages queued and retries them itself for ``message.timeout.ms``, which
`kafka.producer_config` sets to ``settings.outage_timeout_s``; a transient error raised by
``produce`` itself (`is_transient`: e.g. ``_UNKNOWN_PARTITION`` while metadata is stale) is
retried for the same message, backing off, so nothing is skipped or reordered. The replay
logs an outage once per `OUTAGE_LOG_EVERY_S` and stops only when it outlasts the limit: a
message timed out (``_MSG_TIMED_OUT``) or ``produce`` kept failing that long. Then
`ReplayReport.outage` holds one line naming the broker and ``LIVERANK_OUTAGE_TIMEOUT_S``, and
`replay_to_kafka` raises it as a `KafkaSetupError`. Any other error stops the replay at once.

    >>> report = replay_to_kafka(build_timeline(ds), Settings(), speed=None)  # doctest: +SKIP
"""

from __future__ import annotations

import heapq
import logging
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, NoReturn, Protocol

import msgspec
import numpy as np

from liverank.core import events as ev
from liverank.core.partitioner import partition_for
from liverank.core.settings import Settings
from liverank.core.timebase import STEP_MS
from liverank.model.data.timeline import REQUEST, WATERMARK, Timeline
from liverank.replay.encoder import (
    BLOCK_EVENTS,
    RATE_BLOCK_EVENTS,
    Batch,
    EncodeError,
    Encoder,
    ForkedEncoder,
    encode_blocks,
)

logger = logging.getLogger(__name__)

STEP_SECONDS = STEP_MS / 1000
PRODUCED_MS_HEADER = ev.PRODUCED_MS_HEADER  # the contract's header name
HEADER_EVERY = 64  # messages sharing one produced_ms header


class Sink(Protocol):
    """What the replay needs of a producer (confluent_kafka.Producer has it; tests fake it)."""

    def produce(self, topic: str, value: Any = ..., key: Any = ..., partition: int = ..., *,
                on_delivery: Any = ..., timestamp: int = ..., headers: Any = ...) -> None: ...

    def poll(self, timeout: float = ...) -> int: ...

    def flush(self, timeout: float = ...) -> int: ...

    def __len__(self) -> int: ...


class ForwardingSink:
    """A `Sink` that hands everything to ``producer``; subclasses change `produce` (the
    benchmark's steady pacing, the broker tests' gate)."""

    def __init__(self, producer: Any):
        self.producer = producer

    def produce(self, topic: str, value: Any = None, key: Any = None, partition: int = -1,
                **kwargs: Any) -> None:
        self.producer.produce(topic, value, key, partition, **kwargs)

    def poll(self, timeout: float = 0) -> int:
        return int(self.producer.poll(timeout))

    def flush(self, timeout: float = 60) -> int:
        return int(self.producer.flush(timeout))

    def __len__(self) -> int:
        return len(self.producer)

    def list_topics(self, *args: Any, **kwargs: Any) -> Any:
        """Metadata (and a metadata refresh) from the producer; the replay asks for one while
        ``produce`` reports stale metadata (`STALE_METADATA_ERRORS`)."""
        return self.producer.list_topics(*args, **kwargs)


# --- results --------------------------------------------------------------------------------

@dataclass
class TopicCounts:
    produced: int = 0
    acknowledged: int = 0
    failed: int = 0

    @property
    def unacknowledged(self) -> int:
        return self.produced - self.acknowledged


@dataclass
class ReplayReport:
    topics: dict[str, TopicCounts]
    events: int = 0  # timeline entries replayed (a watermark counts once)
    seconds: float = 0.0
    first_error: str | None = None
    interrupted: bool = False
    bad_rows: int = 0
    first_error_code: str | None = None  # librdkafka's name of it, e.g. "_MSG_TIMED_OUT"
    outage: str | None = None  # one line when the replay stopped for a broker outage

    @property
    def messages(self) -> int:
        return sum(c.produced for c in self.topics.values())

    @property
    def ok(self) -> bool:
        return (not self.interrupted and self.first_error is None
                and all(c.acknowledged == c.produced for c in self.topics.values()))

    def as_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "events": self.events, "messages": self.messages,
                "seconds": round(self.seconds, 3), "first_error": self.first_error,
                "outage": self.outage, "interrupted": self.interrupted,
                "bad_rows": self.bad_rows,
                "topics": {t: {"produced": c.produced, "acknowledged": c.acknowledged,
                               "failed": c.failed} for t, c in self.topics.items()}}

    def table(self) -> list[tuple[str, int, int, int]]:
        return [(t, c.produced, c.acknowledged, c.failed) for t, c in self.topics.items()]


def _delivery_callback(counts: TopicCounts, report: ReplayReport) -> Callable[[Any, Any], None]:
    """Delivery callback of one topic: counts acks and failures, keeps the first error.

    A closure, not a class with ``__call__``: it runs once per message, and the closure is
    ~3x cheaper to call.
    """
    def on_delivery(err: Any, msg: Any) -> None:
        if err is None:
            counts.acknowledged += 1
            return
        counts.failed += 1
        if report.first_error is None:
            report.first_error = f"{msg.topic()}: {err}"
            report.first_error_code = _error_name(err)
            logger.error("delivery failed topic=%s error=%s", msg.topic(), err)

    return on_delivery


# --- broker outages -------------------------------------------------------------------------

OUTAGE_SETTING = "LIVERANK_OUTAGE_TIMEOUT_S"
# librdkafka errors (by name) that ``produce`` or a metadata call raises while the broker is
# away or its metadata is catching up: the replay retries the same message, backing off, for
# up to the outage limit. Anything else (bad config, refused login, message too large, the
# idempotent producer's fatal errors) stops the replay at once.
TRANSIENT_ERRORS = frozenset({
    "_TRANSPORT", "_ALL_BROKERS_DOWN", "_RESOLVE", "_TIMED_OUT", "_TIMED_OUT_QUEUE",
    "_WAIT_CACHE", "_NODE_UPDATE", "_UNKNOWN_PARTITION", "_UNKNOWN_TOPIC",
    "UNKNOWN_TOPIC_OR_PART", "REQUEST_TIMED_OUT", "NOT_LEADER_FOR_PARTITION",
    "LEADER_NOT_AVAILABLE", "BROKER_NOT_AVAILABLE", "NETWORK_EXCEPTION",
    "NOT_ENOUGH_REPLICAS", "NOT_ENOUGH_REPLICAS_AFTER_APPEND", "KAFKA_STORAGE_ERROR",
    "FENCED_LEADER_EPOCH", "UNKNOWN_LEADER_EPOCH",
})
# Of those, the ones a metadata refresh cures: the replay asks for one while it backs off
# (librdkafka itself refreshes only every topic.metadata.refresh.interval.ms, 5 min).
STALE_METADATA_ERRORS = frozenset({
    "_UNKNOWN_PARTITION", "_UNKNOWN_TOPIC", "UNKNOWN_TOPIC_OR_PART", "LEADER_NOT_AVAILABLE",
    "NOT_LEADER_FOR_PARTITION",
})
# The delivery error of a message not acknowledged within message.timeout.ms, which
# `kafka.producer_config` sets to the outage limit: the outage outlasted it.
TIMED_OUT = "_MSG_TIMED_OUT"
OUTAGE_LOG_EVERY_S = 5.0  # one log line per interval while the broker is away
BACKOFF_S = (0.05, 1.0)  # first and longest wait between two tries of one message
STOP_FLUSH_S = 2.0  # the final flush after stopping for an outage (the broker is away)
FLUSH_MARGIN_S = 5.0  # the final flush outwaits message.timeout.ms by this much


def kafka_error(exc: BaseException) -> Any | None:
    """The `confluent_kafka.KafkaError` a ``KafkaException`` carries, else None (duck-typed:
    this module runs without confluent_kafka)."""
    err = exc.args[0] if exc.args else None
    return err if callable(getattr(err, "name", None)) else None


def _error_name(err: Any) -> str | None:
    name = getattr(err, "name", None)
    return str(name()) if callable(name) else None


def _error_text(err: Any) -> str:
    text = getattr(err, "str", None)
    return f"{text()} [{err.name()}]" if callable(text) else str(err)


def is_transient(err: Any) -> bool:
    """True for a librdkafka error that a broker coming back cures (`TRANSIENT_ERRORS`, or
    flagged retriable by librdkafka), never for a fatal one."""
    if err is None:
        return False
    fatal = getattr(err, "fatal", None)
    if callable(fatal) and fatal():
        return False
    if _error_name(err) in TRANSIENT_ERRORS:
        return True
    retriable = getattr(err, "retriable", None)
    return bool(retriable()) if callable(retriable) else False


class _StopError(Exception):
    """Internal: the replay must stop producing; its report already says why."""


@dataclass
class OutageWatch:
    """What one replay knows about its broker: it waits out outages, logs them at most once
    per ``log_every_s``, and says when to stop.

    * `transient`: ``produce`` (or a metadata call) failed with a transient error. The first
      one starts the outage clock; once it has run past ``limit_s`` the replay stops.
    * `idle`: called while the replay waits (pacing, a full queue, the final flush); logs
      when messages are waiting but no acknowledgement has come for ``log_every_s`` (a stopped
      broker says nothing else for a while: connections stay open).
    * `fatal`: a non-transient error; the replay stops at once.

    ``outage`` is set (the reason) once the outage outlasted the limit.
    """

    report: ReplayReport
    broker: str = "the broker"
    limit_s: float = 300.0
    outstanding: Callable[[], int] = lambda: 0
    clock: Callable[[], float] = time.monotonic
    log_every_s: float | None = None  # None: OUTAGE_LOG_EVERY_S
    since: float | None = field(default=None, init=False)  # produce/metadata failing since
    outage: str | None = field(default=None, init=False)
    backoff: float = field(default=BACKOFF_S[0], init=False)
    # The last outage line (one per interval, whatever it said); whether this outage's first
    # line was logged (then its end is too); acknowledgements seen and when they last moved;
    # whether a "no acknowledgement" line was logged.
    _logged: float = field(default=-math.inf, init=False)
    _told: bool = field(default=False, init=False)
    _acks: int = field(default=-1, init=False)
    _acks_at: float = field(default=0.0, init=False)
    _stalled: bool = field(default=False, init=False)

    def __post_init__(self) -> None:
        if self.log_every_s is None:
            self.log_every_s = OUTAGE_LOG_EVERY_S

    def _may_log(self, now: float) -> bool:
        assert self.log_every_s is not None
        if now - self._logged < self.log_every_s:
            return False
        self._logged = now
        return True

    def transient(self, what: str, err: Any) -> float:
        """Count one transient failure of ``what``; returns how long to back off. Raises
        `_StopError` once the outage has lasted longer than the limit."""
        now = self.clock()
        if self.since is None:
            self.since = now
            self._told = self._may_log(now)
            if self._told:
                logger.warning("broker %s unreachable (%s: %s): backing off and retrying from "
                               "the same message, for up to %s=%g s", self.broker, what,
                               _error_text(err), OUTAGE_SETTING, self.limit_s)
        elif now - self.since > self.limit_s:
            self.exceeded(f"{what}: {_error_text(err)}")
        elif self._may_log(now):
            logger.warning("broker %s still unreachable after %.0f s of %s=%g s (%s: %s)",
                           self.broker, now - self.since, OUTAGE_SETTING, self.limit_s, what,
                           _error_text(err))
        wait, self.backoff = self.backoff, min(self.backoff * 2, BACKOFF_S[1])
        return wait

    def recovered(self) -> None:
        """The call that failed went through: the outage (if any) is over."""
        self.backoff = BACKOFF_S[0]
        if self.since is not None and self._told:
            logger.info("broker %s reachable again after %.1f s; the replay resumes where it "
                        "was", self.broker, self.clock() - self.since)
        self.since, self._told = None, False

    def idle(self) -> None:
        """Log (at most once per interval) while messages wait without any acknowledgement."""
        now = self.clock()
        done = sum(c.acknowledged for c in self.report.topics.values())
        waiting = self.outstanding()
        if done != self._acks or not waiting:
            if self._stalled:
                logger.info("broker %s acknowledging again after %.1f s without an "
                            "acknowledgement", self.broker, now - self._acks_at)
                self._stalled = False
            self._acks, self._acks_at = done, now
            return
        silent = now - self._acks_at
        assert self.log_every_s is not None
        if silent >= self.log_every_s and self._may_log(now):
            self._stalled = True
            logger.warning("no acknowledgement from broker %s for %.0f s; %d messages wait "
                           "(kept for up to %s=%g s each)", self.broker, silent, waiting,
                           OUTAGE_SETTING, self.limit_s)

    def timed_out(self) -> bool:
        """True once the replay must stop for an outage: also when a message was not
        acknowledged within message.timeout.ms (= the outage limit, see
        `kafka.producer_config`)."""
        if self.outage is None and self.report.first_error_code == TIMED_OUT:
            self.outage = f"messages not acknowledged in time [{TIMED_OUT}]"
        return self.outage is not None

    def exceeded(self, reason: str) -> NoReturn:
        """Stop the replay: the outage outlasted the limit."""
        self.outage = reason
        if self.report.first_error is None:
            self.report.first_error = reason
        raise _StopError

    def fatal(self, topic: str, err: Any) -> NoReturn:
        """Stop the replay at once: ``produce`` failed for good."""
        if self.report.first_error is None:
            self.report.first_error = f"{topic}: {err}"
            self.report.first_error_code = _error_name(err)
        raise _StopError

    def outage_line(self, outcome: str | None = None) -> str:
        """The one-line error of a replay stopped by an outage; ``outcome`` (default: the
        counts) ends it."""
        if outcome is None:
            done = sum(c.acknowledged for c in self.report.topics.values())
            outcome = (f"the replay stopped with {done:,} of {self.report.messages:,} "
                       "messages acknowledged")
        return (f"the Kafka broker at {self.broker} was unreachable for longer than "
                f"{OUTAGE_SETTING}={self.limit_s:g} s (last error: {self.outage}); {outcome}")


# --- pacing ---------------------------------------------------------------------------------

@dataclass
class Pacer:
    """Holds events back until their simulated time: ``speed`` simulated seconds per wall
    second, ``None`` for as fast as possible. Steps before ``start_step`` are due at once.
    """

    speed: float | None
    clock: Callable[[], float] = time.monotonic
    start_step: int | None = None
    _t0: float | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        if self.speed is not None and not self.speed > 0:
            raise ValueError(f"speed must be > 0 or 'max', got {self.speed}")

    def delay(self, step: int) -> float:
        """Seconds to wait before sending the events of ``step`` (0 when due or late)."""
        if self.speed is None:
            return 0.0
        now = self.clock()
        if self._t0 is None:
            self._t0 = now
            if self.start_step is None:
                self.start_step = step
        assert self.start_step is not None
        due = self._t0 + max(step - self.start_step, 0) * STEP_SECONDS / self.speed
        return max(due - now, 0.0)

    def wait(self, step: int, sleep: Callable[[float], object]) -> None:
        while (d := self.delay(step)) > 0:
            sleep(min(d, 0.25))


def parse_speed(text: str) -> float | None:
    """``"max"`` -> None; ``"60"`` -> 60.0 (simulated seconds per wall second)."""
    if text.strip().lower() == "max":
        return None
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"--speed must be a positive number or 'max', got {text!r}") from None
    if not value > 0:
        raise ValueError(f"--speed must be a positive number or 'max', got {text!r}")
    return value


class EvenRateSink(ForwardingSink):
    """A `Sink` that hands messages to ``producer`` at a steady ``per_s`` messages/s, the
    first at once, stamping ``produced_ms`` when each one is actually handed over (waiting
    is not counted as service latency). Pacing by steps (``speed``) releases a whole step at
    once and follows the log's daily cycle; this one measures a service at a known load.
    The clock starts at the first message; a sink that falls behind does not catch up.

    ``tick_s`` > 0 hands messages over in ticks: the messages due within a tick go together
    at its end (each still stamped when handed over), so the producer sends a batch per
    partition and tick rather than one per message. On tansu a fetch costs in proportion
    to the batches a partition holds (`liverank.broker.tansu.PACED_TICK_S`). While it waits
    for the next hand-over it flushes the one before: librdkafka then sends it at once
    rather than each partition's share when its ``linger.ms`` runs out, a few ms apart, so
    a consumer's fetch does not cut it in two (docs/results.md, session 13).

    ``spread=(topic, partitions)`` spreads that topic's partitions over the tick: partition
    ``p``'s share of a tick goes ``p % partitions / partitions`` of a tick after the tick's
    end (still one batch per partition and tick), so a consumer of the topic meets an even
    load rather than a burst every tick (docs/results.md, session 15). The replay spreads
    ``user-events``; ``stream-events`` keeps the tick's end, so a step's watermark never
    goes after its requests. The sink holds a spread message until its time (`__len__`
    counts it, `flush` hands it over); a message the producer refuses stays held and the
    error is raised from the next `produce`, whose own message is then not taken: the
    caller's retry of it hands the held one over first.
    """

    flush_ticks = True  # class attributes: the A/Bs of docs/results.md turn them off
    spread_ticks = True

    def __init__(self, producer: Any, per_s: float,
                 clock: Callable[[], float] = time.monotonic,
                 wall_ms: Callable[[], int] | None = None, tick_s: float = 0.0,
                 spread: tuple[str, int] | None = None) -> None:
        super().__init__(producer)
        if not per_s > 0:
            raise ValueError(f"messages per second must be > 0, got {per_s}")
        if tick_s < 0:
            raise ValueError(f"tick must be >= 0 s, got {tick_s}")
        if spread is not None and spread[1] < 1:
            raise ValueError(f"spread over >= 1 partition, got {spread[1]}")
        self.per_s, self.clock, self.tick_s = per_s, clock, tick_s
        self.wall_ms = wall_ms or (lambda: time.time_ns() // 1_000_000)
        self.spread = spread if tick_s and self.spread_ticks else None
        self._t0: float | None = None
        self._sent = 0
        self._unflushed = 0  # handed over since the last flush (tick mode)
        self._held: list[tuple[float, int, str, Any, Any, int, dict[str, Any]]] = []
        self._order = 0  # keeps held messages of one release time in produce order

    def produce(self, topic: str, value: Any = None, key: Any = None, partition: int = -1,
                **kwargs: Any) -> None:
        now = self.clock()
        if self._t0 is None:
            self._t0 = now
        due = self._t0 + self._sent / self.per_s
        if due < now - 1.0:  # more than a second behind: pace from here, no burst
            self._t0, self._sent = now, 0
            due = now
        if self.tick_s:  # the end of the tick the message is due in
            due = self._t0 + math.ceil((due - self._t0) / self.tick_s - 1e-9) * self.tick_s
        self._wait_until(due)  # hands held messages over on time; may raise (see the class)
        at = due + self._offset(topic, key, partition)
        if at > due:
            heapq.heappush(self._held, (at, self._order, topic, value, key, partition, kwargs))
            self._order += 1
        else:
            self._hand_over(topic, value, key, partition, kwargs)
        self._sent += 1  # only once taken: a refused message is retried at its slot

    def _offset(self, topic: str, key: Any, partition: int) -> float:
        if self.spread is None or topic != self.spread[0]:
            return 0.0
        n = self.spread[1]
        if partition < 0:  # placed by its key: where the producer's partitioner puts it
            if key is None:
                return 0.0
            partition = partition_for(key, n)  # ~2 us; a paced sink sends a few k/s
        return self.tick_s * (partition % n) / n

    def _hand_over(self, topic: str, value: Any, key: Any, partition: int,
                   kwargs: dict[str, Any]) -> None:
        kwargs["headers"] = [(PRODUCED_MS_HEADER, b"%d" % self.wall_ms())]
        self.producer.produce(topic, value, key, partition, **kwargs)
        self._unflushed += 1

    def _release(self, until: float) -> None:
        """Hand over the held messages due by ``until``, in time order; one the producer
        refuses stays held and the error goes up."""
        held = self._held
        while held and held[0][0] <= until:
            _, _, topic, value, key, partition, kwargs = held[0]
            self._hand_over(topic, value, key, partition, kwargs)
            heapq.heappop(held)

    def _wait_until(self, due: float) -> None:
        """Wait for ``due``, handing the held messages over at their times and flushing
        what was handed over before each wait (tick mode)."""
        while True:
            self._release(self.clock())
            now = self.clock()
            if due <= now:
                return
            nxt = min(due, self._held[0][0]) if self._held else due
            if self.tick_s and self._unflushed and self.flush_ticks:
                # What was handed over goes now (delivery callbacks served).
                self._unflushed = 0
                self.producer.flush(max(0.0, nxt - now))
            else:
                self.producer.poll(max(0.0, min(nxt - now, 0.05)))  # serves callbacks

    def poll(self, timeout: float = 0) -> int:
        try:
            self._release(self.clock())
        except Exception:  # noqa: BLE001 - still held: the next produce or flush raises it
            logger.debug("a held message was refused; retried by the next produce")
        return int(self.producer.poll(timeout))

    def flush(self, timeout: float = 60) -> int:
        """Hand the held messages over at their times (at once those due after
        ``timeout``), then flush the producer; returns what is left, held ones included."""
        deadline = self.clock() + timeout
        try:
            if self._held:  # on time while ``timeout`` lasts, then at once
                self._wait_until(min(max(h[0] for h in self._held), deadline))
            self._release(math.inf)
        except BufferError:
            pass  # the producer's queue is full: flushing it below makes room
        except Exception as exc:  # noqa: BLE001 - counted as left; the caller reports it
            logger.error("a held message was refused at the flush: %s", exc)
        self._unflushed = 0
        left = int(self.producer.flush(max(0.0, deadline - self.clock())))
        return left + len(self._held)

    def __len__(self) -> int:
        return len(self.producer) + len(self._held)


def paced_sink(producer: Any, per_s: float, settings: Settings,
               partitions: int) -> EvenRateSink:
    """The sink a replay paced at ``per_s`` messages/s sends through, for the broker of
    ``settings``: ticks on tansu (`kafka.paced_tick_s`), the ``partitions`` of user-events
    spread over each tick; one message at a time elsewhere."""
    from liverank.broker import kafka as kf

    return EvenRateSink(producer, per_s, tick_s=kf.paced_tick_s(settings),
                        spread=(settings.topic(kf.USER_EVENTS), partitions))


def block_events(at_rate: bool) -> int:
    """Timeline entries to encode at a time: `RATE_BLOCK_EVENTS` for a replay paced at a rate
    (`EvenRateSink`), whose hand-overs an encoding holds up; `BLOCK_EVENTS` otherwise."""
    return RATE_BLOCK_EVENTS if at_rate else BLOCK_EVENTS


def message_rate(tl: Timeline, partitions: int, requests_per_s: float) -> float:
    """Messages/s that send ``tl``'s requests at ``requests_per_s`` on average (a watermark
    is one message per partition); `ValueError` when ``tl`` holds no request."""
    requests = int(np.count_nonzero(tl.kind == REQUEST))
    if not requests:
        raise ValueError("--rate needs requests in the replayed steps (see --requests, "
                         "--requests-from)")
    if not requests_per_s > 0:
        raise ValueError(f"--rate must be > 0, got {requests_per_s}")
    messages = len(tl) + int(np.count_nonzero(tl.kind == WATERMARK)) * (partitions - 1)
    return requests_per_s * messages / requests


# --- the replay -----------------------------------------------------------------------------

def replay(
    tl: Timeline,
    sink: Sink,
    *,
    partitions: int,
    stream_topic: str,
    user_topic: str,
    speed: float | None = None,
    start_step: int | None = None,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], object] | None = None,
    wall_ms: Callable[[], int] | None = None,
    on_block: Callable[[int, int, ReplayReport], None] | None = None,
    flush_timeout: float | None = None,
    block_size: int | None = None,
    batches: Iterable[Batch] | None = None,
    broker: str = "the broker",
    outage_timeout_s: float = 300.0,
    end: bool = True,
) -> ReplayReport:
    """Send ``tl`` through ``sink``; returns the per-topic counts after a final flush.

    Stops producing at the first failed delivery (the rest could not be trusted: the
    report says which error). A broker that is away is waited out (`OutageWatch`) for up to
    ``outage_timeout_s``; past it the replay stops and `ReplayReport.outage` says so in one
    line naming ``broker``. ``flush_timeout``: the final flush's longest wait (default: the
    outage limit and `FLUSH_MARGIN_S`, so librdkafka's own message timeout comes first).
    ``sleep`` defaults to polling the sink, so delivery callbacks run while pacing waits.
    ``on_block(events_done, step, report)`` drives a progress bar. ``batches``: the encoded
    timeline (`encode_blocks`), by default encoded here in-process, in blocks of
    ``block_size`` entries (default `block_events`). ``end=False`` sends no `End` records:
    another replay continues these topics (and sends them).
    """
    report = ReplayReport({stream_topic: TopicCounts(), user_topic: TopicCounts()})
    if batches is None:
        if block_size is None:
            block_size = block_events(isinstance(sink, EvenRateSink))
        batches = encode_blocks(Encoder(tl, partitions, stream_topic, user_topic),
                                paced=speed is not None, block_size=block_size, parallel=False)
    callbacks = np.array([_delivery_callback(report.topics[stream_topic], report),
                          _delivery_callback(report.topics[user_topic], report)], dtype=object)
    watch = OutageWatch(report, broker, outage_timeout_s, outstanding=sink.__len__)
    pacer = Pacer(speed, clock, start_step)
    pause = sleep or (lambda s: sink.poll(s))  # noqa: PLW0108 - poll returns a count

    def nap(seconds: float) -> None:
        pause(seconds)
        watch.idle()
        if report.first_error is not None:  # a delivery failed while pacing
            raise _StopError

    now_ms = wall_ms or (lambda: time.time_ns() // 1_000_000)
    cu, cs = report.topics[user_topic], report.topics[stream_topic]
    t0 = time.perf_counter()
    try:
        for batch in batches:
            pacer.wait(batch.first_step, nap)
            sent = _send(sink, batch, callbacks, now_ms, watch)
            n_user = int(np.count_nonzero(batch.user[:sent]))
            cu.produced += n_user
            cs.produced += sent - n_user
            if sent < len(batch.value):
                break  # stopped inside the batch: the report says why
            report.events = batch.hi
            if on_block is not None:
                on_block(batch.hi, batch.last_step, report)
            watch.idle()
            if report.first_error is not None:
                break
        else:
            if end:
                _send_end(tl, sink, report, partitions, stream_topic, callbacks[0], now_ms,
                          watch)
    except _StopError:
        pass
    except KeyboardInterrupt:
        report.interrupted = True
        logger.warning("interrupted: flushing what was produced")
    except EncodeError as exc:  # the forked encoder died: keep what was sent, say why
        report.first_error = str(exc)
    finally:
        close = getattr(batches, "close", None)
        if close is not None:
            close()
    if report.first_error is not None and not watch.timed_out():
        logger.error("stopping the replay: %s", report.first_error)
    if flush_timeout is None:
        flush_timeout = outage_timeout_s + FLUSH_MARGIN_S
    left, waited = _drain(sink, watch, flush_timeout)
    if left:
        logger.error("%d messages still unacknowledged after %.0f s", left, waited)
        if watch.outage is None and not report.interrupted:
            watch.outage = f"{left:,} messages not acknowledged after {waited:.0f} s"
            report.first_error = report.first_error or watch.outage
    if watch.outage is not None:
        report.outage = watch.outage_line()
        logger.error("%s", report.outage)
    report.seconds = time.perf_counter() - t0
    return report


def _drain(sink: Sink, watch: OutageWatch, timeout: float) -> tuple[int, float]:
    """Flush for up to ``timeout`` s in slices, logging a silent broker once per interval;
    only `STOP_FLUSH_S` more once the outage outlasted the limit (the broker is away).
    Returns (messages still unacknowledged, seconds waited)."""
    t0 = time.monotonic()
    deadline = t0 + (min(timeout, STOP_FLUSH_S) if watch.timed_out() else timeout)
    while True:
        left = int(sink.flush(max(0.0, min(1.0, deadline - time.monotonic()))))
        watch.idle()
        now = time.monotonic()
        if not left or now >= deadline:
            return left, now - t0
        if watch.timed_out():
            deadline = min(deadline, now + STOP_FLUSH_S)


def _send(sink: Sink, b: Batch, callbacks: np.ndarray, now_ms: Callable[[], int],
          watch: OutageWatch | None = None) -> int:
    """Produce batch ``b`` in order; returns how many of its messages were produced: all, or
    fewer when the replay must stop (a delivery failed, a fatal error, an outage too long)."""
    produce, poll = sink.produce, sink.poll
    report = watch.report if watch is not None else None
    cbs = callbacks[b.user.view(np.uint8)].tolist()
    n = len(b.value)
    for lo in range(0, n, HEADER_EVERY):
        if report is not None and report.first_error is not None:
            return lo
        # One produced_ms header per HEADER_EVERY messages (well under a millisecond's worth
        # at full speed), not a clock read per message.
        headers = [(PRODUCED_MS_HEADER, b"%d" % now_ms())]
        hi = min(lo + HEADER_EVERY, n)
        for i, (topic, value, key, part, ts, on_delivery) in enumerate(zip(
                b.topic[lo:hi], b.value[lo:hi], b.key[lo:hi], b.partition[lo:hi],
                b.timestamp[lo:hi], cbs[lo:hi], strict=True), lo):
            try:
                produce(topic, value, key, part, on_delivery=on_delivery, timestamp=ts,
                        headers=headers)
            except Exception as exc:  # noqa: BLE001 - a full queue or a broker error: sorted there
                try:
                    headers = _produce_when_room(sink, topic, value, key, part, on_delivery,
                                                 ts, headers, now_ms, watch=watch, error=exc)
                except _StopError:
                    return i
            poll(0)
    return n


def _produce_when_room(sink: Sink, topic: str, value: bytes, key: bytes | None, part: int,
                       on_delivery: Any, ts: int, headers: Any,
                       now_ms: Callable[[], int] | None = None, *,
                       watch: OutageWatch | None = None,
                       error: BaseException | None = None) -> Any:
    """Produce one message that ``produce`` just refused with ``error`` (default
    `BufferError`); returns the headers used, restamped after the wait when ``now_ms`` is
    given (produced_ms must not predate it).

    A full local queue (`BufferError`): poll, serving deliveries, until there is room. With a
    ``watch``, a transient broker error (`is_transient`): back off (polling), refresh the
    metadata when it is stale, and try the same message again, for up to the outage limit;
    any other Kafka error stops the replay. Raises `_StopError` when the replay must stop; without
    a ``watch`` a broker error is raised as it came.
    """
    while True:
        if error is None or isinstance(error, BufferError):
            sink.poll(0.05)
            if watch is not None:
                watch.idle()
                if watch.report.first_error is not None:
                    raise _StopError  # a delivery failed meanwhile (an outage too long?)
        else:
            err = kafka_error(error)
            if watch is None or err is None:
                raise error
            if not is_transient(err):
                watch.fatal(topic, err)
            sink.poll(watch.transient(f"produce to {topic}", err))
            if _error_name(err) in STALE_METADATA_ERRORS:
                _refresh_metadata(sink, watch)
        if now_ms is not None:
            headers = [(PRODUCED_MS_HEADER, b"%d" % now_ms())]
        try:
            sink.produce(topic, value, key, part, on_delivery=on_delivery, timestamp=ts,
                         headers=headers)
        except Exception as exc:  # noqa: BLE001 - sorted out at the top of the loop
            error = exc
            continue
        if watch is not None:
            watch.recovered()
        return headers


def _refresh_metadata(sink: Sink, watch: OutageWatch) -> None:
    """Ask for fresh metadata (librdkafka updates its topics from any answer); a failure
    here is part of the outage the next ``produce`` reports."""
    list_topics = getattr(sink, "list_topics", None)
    if list_topics is None:
        return
    try:
        list_topics(timeout=BACKOFF_S[1])
    except Exception as exc:  # noqa: BLE001 - only a Kafka error is expected here
        if kafka_error(exc) is None:
            raise
        logger.debug("metadata refresh from %s failed: %s", watch.broker, exc)


def end_records(tl: Timeline, partitions: int, stream_events: int,
                user_events: int) -> list[tuple[int, int, bytes]]:
    """(partition, timestamp, value) of the `End` on every partition; the totals count the
    messages written to each topic before it."""
    end = tl.end_event()
    return [(p, end.event_time_ms, ev.encode(msgspec.structs.replace(
        end, partition=p, stream_events=stream_events, user_events=user_events)))
        for p in range(partitions)]


def _send_end(tl: Timeline, sink: Sink, report: ReplayReport, partitions: int, topic: str,
              on_delivery: Callable[[Any, Any], None], now_ms: Callable[[], int],
              watch: OutageWatch | None = None) -> None:
    user_topic = next(t for t in report.topics if t != topic)
    # Messages a paced sink still holds (`EvenRateSink` spreads a tick) go before the End
    # that counts them; a plain producer just starts sending what it queued.
    sink.flush(0)
    headers = [(PRODUCED_MS_HEADER, b"%d" % now_ms())]
    for p, ts, value in end_records(tl, partitions, report.topics[topic].produced,
                                    report.topics[user_topic].produced):
        try:
            sink.produce(topic, value, None, p, on_delivery=on_delivery, timestamp=ts,
                         headers=headers)
        except Exception as exc:  # noqa: BLE001 - sorted out by _produce_when_room
            headers = _produce_when_room(sink, topic, value, None, p, on_delivery, ts, headers,
                                         now_ms, watch=watch, error=exc)
        report.topics[topic].produced += 1
    sink.poll(0)


def is_end(value: bytes) -> bool:
    """True for the replay's `End` record (cheap test for `kafka.read_topic(until=...)`)."""
    return value.startswith(b'{"kind":"end"')


def replay_to_kafka(tl: Timeline, settings: Settings, *, speed: float | None = None,
                    start_step: int | None = None, parallel: bool | None = None,
                    rate: float | None = None, **kwargs: Any) -> ReplayReport:
    """`replay` into the broker of ``settings``: topics ensured first, then an idempotent
    producer. Raises `KafkaSetupError` within ``settings.kafka_timeout_s`` when no broker
    answers, before anything is produced; and, naming the broker and
    ``LIVERANK_OUTAGE_TIMEOUT_S``, when the broker went away for longer than
    ``settings.outage_timeout_s`` (shorter outages are waited out). ``rate``: requests/s,
    sent evenly (`EvenRateSink`; not with ``speed``)."""
    from confluent_kafka import Producer

    from liverank.broker import kafka as kf

    if rate is not None and speed is not None:
        raise ValueError("--rate paces the requests evenly: use it with --speed max")
    per_s = None if rate is None else message_rate(tl, settings.partitions, rate)
    stream_topic = settings.topic(kf.STREAM_EVENTS)
    user_topic = settings.topic(kf.USER_EVENTS)
    # The encoder (maybe a forked child) starts before any Kafka client thread exists here.
    # ensure_topics refuses topics whose partition count differs from settings.partitions.
    encoder = Encoder(tl, settings.partitions, stream_topic, user_topic)
    block_size = kwargs.pop("block_size", None)
    if block_size is None:
        block_size = block_events(per_s is not None)
    batches = encode_blocks(encoder, paced=speed is not None, parallel=parallel,
                            block_size=block_size)
    try:
        kf.ensure_topics(settings)
        # At max speed (no pace, no rate) the whole timeline is a backlog: full batches.
        backlog = speed is None and per_s is None
        producer_id = kf.ProducerIdWatch()
        producer = Producer({**(kf.backlog_producer_config(settings) if backlog
                                else kf.producer_config(settings)), **producer_id.config()})
        # Connected, and holding its idempotent producer id, before the first record is
        # stamped with produced_ms: otherwise the wait counts as service latency (~0.5 s
        # when a record goes before the id, `ProducerIdWatch`).
        _connect(producer, settings)
        producer_id.wait(producer, settings.kafka_timeout_s)
    except BaseException:
        close = getattr(batches, "close", None)
        if close is not None:
            close()
        raise
    logger.info("replay events=%d bootstrap=%s partitions=%d speed=%s rate=%s encoder=%s",
                len(tl), settings.kafka_bootstrap, settings.partitions, speed or "max",
                rate or "-", "forked" if isinstance(batches, ForkedEncoder) else "inline")
    sink = producer if per_s is None else paced_sink(producer, per_s, settings,
                                                     settings.partitions)
    report = replay(tl, sink, partitions=settings.partitions,
                    stream_topic=stream_topic, user_topic=user_topic, speed=speed,
                    start_step=start_step, batches=batches,
                    broker=settings.kafka_bootstrap,
                    outage_timeout_s=settings.outage_timeout_s, **kwargs)
    if report.outage is not None:
        raise kf.KafkaSetupError(report.outage)
    return report


def _connect(producer: Any, settings: Settings) -> None:
    """``list_topics`` until the producer has metadata. The broker answered `ensure_topics`
    a moment ago, so a transient failure is an outage: waited out like one."""
    from liverank.broker.kafka import KafkaSetupError

    watch = OutageWatch(ReplayReport({}), settings.kafka_bootstrap, settings.outage_timeout_s)
    while True:
        try:
            producer.list_topics(timeout=settings.kafka_timeout_s)
        except Exception as exc:  # noqa: BLE001 - sorted below; anything else is raised
            err = kafka_error(exc)
            if err is None:
                raise
            if not is_transient(err):
                raise KafkaSetupError(f"the Kafka broker at {settings.kafka_bootstrap} refused "
                                      f"the replay's producer: {_error_text(err)}") from None
            try:
                time.sleep(watch.transient("metadata", err))
            except _StopError:
                raise KafkaSetupError(watch.outage_line(
                    "the replay stopped before producing anything")) from None
            continue
        watch.recovered()
        return


@dataclass
class Sent:
    topic: str
    key: bytes | None
    value: bytes
    partition: int  # -1: placed by the key (the broker's partitioner)
    timestamp: int
    headers: list[tuple[str, bytes]]


class MemorySink:
    """An in-memory `Sink`: keeps every message in send order and acknowledges it on the next
    ``poll``/``flush``. For tests and for feeding a consumer without a broker."""

    def __init__(self, fail: Callable[[Sent], str | None] | None = None) -> None:
        self.sent: list[Sent] = []
        self._pending: list[tuple[Sent, Any]] = []
        self.fail = fail  # returns an error text to fail that message's delivery

    def produce(self, topic: str, value: bytes | None = None, key: bytes | None = None,
                partition: int = -1, *, on_delivery: Any = None, timestamp: int = 0,
                headers: Any = None) -> None:
        msg = Sent(topic, key, value or b"", partition, timestamp, list(headers or []))
        self.sent.append(msg)
        self._pending.append((msg, on_delivery))

    def poll(self, timeout: float = 0) -> int:
        pending, self._pending = self._pending, []
        for msg, cb in pending:
            if cb is not None:
                err = self.fail(msg) if self.fail else None
                cb(err, _SentView(msg))
        return len(pending)

    def flush(self, timeout: float = 0) -> int:
        self.poll()
        return 0

    def __len__(self) -> int:
        return len(self._pending)


@dataclass
class _SentView:
    """The few `confluent_kafka.Message` accessors the delivery callback uses."""

    msg: Sent

    def topic(self) -> str:
        return self.msg.topic

    def partition(self) -> int:
        return self.msg.partition
