"""What the worker accepts from its input topics: pure functions, no Faust, no broker.

A record read from ``user-events`` or ``stream-events`` becomes either the decoded event or
a `Rejection` whose ``kind`` says why (one of `REJECTION_KINDS`, the metrics label), whose
``reason`` names the field, and which becomes a `DeadLetter` naming where the record was.

    >>> clock = EventClock(future_horizon=1008)
    >>> decode_user(b'{"kind": "rec_request"}', None, None, clock).kind
    'missing_field'
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Literal, TypeAlias, get_args

from liverank.core import events as ev

RefusalKind = Literal["too_large", "negative_step", "beyond_horizon", "wrong_key"]
# An input record larger than this is refused before decoding: no event of the contract
# comes near it (a watch is ~150 bytes), and a window or answer built from a huge field
# could itself exceed the broker's message limit and jam the worker.
MAX_RECORD_BYTES = 64 * 1024
RejectionKind: TypeAlias = ev.ErrorKind | RefusalKind  # the dead-letter metric's ``reason`` label
REJECTION_KINDS: tuple[str, ...] = get_args(ev.ErrorKind) + get_args(RefusalKind)


@dataclass(frozen=True)
class Rejection:
    kind: RejectionKind
    reason: str
    event: ev.Event | None = None  # when the record decoded but was refused


@dataclass(frozen=True)
class Decoded:
    """An accepted user event with its Kafka key and when the replay produced it."""

    key: bytes
    event: ev.UserEvent
    produced_ms: int | None


class EventClock:
    """The newest event step seen; refuses steps below 0 or beyond ``newest + horizon``."""

    def __init__(self, future_horizon: int):
        self.future_horizon = future_horizon
        self.newest: int | None = None

    def check(self, step: int) -> Rejection | None:
        """None when ``step`` is acceptable, else why not (and the step is not recorded)."""
        if step < 0:
            return Rejection("negative_step", f"negative step {step}")
        if self.newest is not None and step > self.newest + self.future_horizon:
            return Rejection("beyond_horizon", f"step {step} is more than "
                             f"{self.future_horizon} steps beyond the newest seen "
                             f"({self.newest})")
        if self.newest is None or step > self.newest:
            self.newest = step
        return None


def decode_user(raw: bytes, key: bytes | None, headers: Any, clock: EventClock
                ) -> Decoded | Rejection:
    """A ``user-events`` record: decoded, keyed by its own user, with a plausible step."""
    if len(raw) > MAX_RECORD_BYTES:
        return _too_large(raw)
    try:
        event = ev.decode_user_event(raw)
    except ev.EventError as exc:
        return Rejection(exc.kind, str(exc))
    want = ev.user_key(event.user)
    if key is not None and key != want:
        return Rejection("wrong_key", f"message key {key!r} is not the user's key {want!r}",
                         event)
    refused = clock.check(event.step)
    if refused is not None:
        return Rejection(refused.kind, refused.reason, event)
    return Decoded(want, event, produced_ms(headers))


def decode_stream(raw: bytes, clock: EventClock) -> ev.StreamEvent | Rejection:
    """A ``stream-events`` record: decoded, with a plausible step."""
    if len(raw) > MAX_RECORD_BYTES:
        return _too_large(raw)
    try:
        event = ev.decode_stream_event(raw)
    except ev.EventError as exc:
        return Rejection(exc.kind, str(exc))
    refused = clock.check(event.step)
    if refused is not None:
        return Rejection(refused.kind, refused.reason, event)
    return event


def _too_large(raw: bytes) -> Rejection:
    return Rejection("too_large", f"record of {len(raw)} bytes is larger than "
                     f"{MAX_RECORD_BYTES} bytes (no liverank event is)")


def dead_letter(topic: str, partition: int | None, offset: int | None, raw: bytes,
                rejection: Rejection) -> ev.DeadLetter:
    """The dead letter of a refused record; its id names where the record was, so a
    re-read (after a restart) is recognisable. It holds at most `ev.DEAD_LETTER_PAYLOAD`
    bytes of the record (with its size and SHA-256), so it always fits the broker."""
    e = rejection.event
    reason = rejection.reason
    if len(reason) > ev.DEAD_LETTER_REASON:
        reason = reason[: ev.DEAD_LETTER_REASON - 3] + "..."
    return ev.DeadLetter(
        event_id=f"dead:{topic}:{partition}:{offset}",
        seq=e.seq if e is not None else -1, step=e.step if e is not None else -1,
        event_time_ms=e.event_time_ms if e is not None else -1,
        original=raw[: ev.DEAD_LETTER_PAYLOAD], topic=topic, reason=reason,
        original_size=len(raw), original_sha256=hashlib.sha256(raw).hexdigest(),
        truncated=len(raw) > ev.DEAD_LETTER_PAYLOAD, partition=partition, offset=offset)


def produced_ms(headers: Any) -> int | None:
    """The replay's ``produced_ms`` header (a dict or (key, value) pairs); None when absent
    or unreadable (latency is then not measured, the record is still answered)."""
    if not headers:
        return None
    pairs: Iterable[tuple[Any, Any]] = headers.items() if isinstance(headers, dict) else headers
    for k, v in pairs:
        if k == ev.PRODUCED_MS_HEADER:
            try:
                return int(v.decode() if isinstance(v, bytes) else v)
            except (ValueError, AttributeError):
                return None
    return None
