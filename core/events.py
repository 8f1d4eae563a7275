"""The event contract: every record on every liverank topic, shared by producer and consumer.

Topics and their records (JSON on the wire, one object per message, ``kind`` tags the type):

* ``stream-events`` (key: stream id; watermarks and ``end`` go to every partition):
  `StreamStart`, `StreamStop`, `Watermark`, `End`
* ``user-events`` (key: user id): `Watch`, `RecRequest`
* ``recommendations`` (key: user id): `Recommendation`
* ``recommendations-latest`` (compacted, key: user id): each user's latest `Recommendation`;
  null values (tombstones) under non-user keys
* ``recommendations-shadow`` (key: user id): the candidate model's `Recommendation` for the
  same requests (``shadow`` true), when a shadow model is loaded
* ``dead-letters`` (key: none): `DeadLetter`

`json_schemas` turns these into one JSON Schema per topic (docs/schemas/, the published
contract; docs/events.md says what may change without bumping `SCHEMA_VERSION`).

Every record carries ``event_id`` (deterministic, stable across replays of one file),
``seq`` (its position on the file's timeline, also stable), ``step`` (10-minute step) and
``event_time_ms`` (``epoch_ms + step * 600_000``; the Kafka message timestamp too). A watch
never carries its future: no stop time.

Decoding validates types and raises `EventError` naming the bad field, e.g.
``Expected `int`, got `str` - at `$.step```. This module imports neither faust nor torch.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated, Any, Literal

import msgspec

# Kafka header the replay sets on user events: when the record was produced (ms since 1970),
# so a consumer can measure produce-to-answer latency.
PRODUCED_MS_HEADER = "produced_ms"

# A dead letter carries at most this much of the refused record (and a reason at most
# `DEAD_LETTER_REASON` characters): far below any broker's message limit (1 MB by default).
DEAD_LETTER_PAYLOAD = 16 * 1024
DEAD_LETTER_REASON = 1024

# Kinds, as written in the ``kind`` field.
STREAM_START = "stream_start"
STREAM_STOP = "stream_stop"
WATERMARK = "watermark"
END = "end"
WATCH = "watch"
REC_REQUEST = "rec_request"
RECOMMENDATION = "recommendation"
DEAD_LETTER = "dead_letter"


ErrorKind = Literal["undecodable", "unknown_kind", "missing_field", "wrong_type"]


class EventError(ValueError):
    """A record that does not decode: the message names the field and what was wrong;
    ``kind`` says which of a few ways it failed (for metrics and dead-letter routing)."""

    def __init__(self, message: str, kind: ErrorKind):
        super().__init__(message)
        self.kind: ErrorKind = kind


# Bounded strings: a record that decodes is small, and so is every window and answer built
# from it (a huge streamer name would otherwise make a window record the broker refuses).
Name = Annotated[str, msgspec.Meta(max_length=256)]  # Twitch names have at most 25
Id = Annotated[str, msgspec.Meta(max_length=512)]
# Every integer fits a signed 64-bit (what Kafka, numpy and the live index hold): a larger one
# is refused at decoding, not an OverflowError deep in the worker.
Int64 = Annotated[int, msgspec.Meta(ge=-(2**63), le=2**63 - 1)]


# Version of the answer schema (`Recommendation`); see docs/events.md for what may change
# without a new version.
SCHEMA_VERSION = 1
# What produced an answer: a request, a watch (LIVERANK_RECOMMEND_ON_WATCH), a favourite
# streamer going live (a push), or a lookup of the service's HTTP endpoint (not published).
Trigger = Literal["request", "watch", "live_change", "lookup"]


class _Event(msgspec.Struct, frozen=True, kw_only=True, tag_field="kind"):
    event_id: Id
    seq: Int64
    step: Int64
    event_time_ms: Int64


class StreamStart(_Event, frozen=True, kw_only=True, tag=STREAM_START):
    """A broadcast goes on air at ``step`` (its first start in the log)."""

    stream: Int64
    streamer: Name


class StreamStop(_Event, frozen=True, kw_only=True, tag=STREAM_STOP):
    """A broadcast is off air from ``step`` on (its last stop in the log)."""

    stream: Int64
    streamer: Name


class Watermark(_Event, frozen=True, kw_only=True, tag=WATERMARK):
    """Every stream event up to and including ``step`` has been sent (to this partition)."""

    partition: Int64 | None = None


class End(_Event, frozen=True, kw_only=True, tag=END):
    """The replay is over; totals let a consumer tell when it has read everything."""

    stream_events: Int64 = 0
    user_events: Int64 = 0
    partition: Int64 | None = None


class Watch(_Event, frozen=True, kw_only=True, tag=WATCH):
    """A user starts watching ``stream`` of ``streamer`` at ``step``."""

    user: Int64
    stream: Int64
    streamer: Name


class RecRequest(_Event, frozen=True, kw_only=True, tag=REC_REQUEST):
    """A user opens the page at ``step`` and asks what to watch now."""

    user: Int64


class RecItem(msgspec.Struct, frozen=True):
    stream: Int64
    streamer: Name
    score: float
    rank: Int64


class Recommendation(_Event, frozen=True, kw_only=True, tag=RECOMMENDATION):
    """Top-k live streams for one request (``trigger`` "request") or watch ("watch").

    ``event_id`` is ``rec:<request_id>``; ``seq`` is the triggering event's.
    ``late``: answered before every stream-events partition reached the request's step
    (streams that started at that step may be missing). ``stale``: the request's step is
    behind what the service's live index still holds (broadcasts that stopped before it
    may have been forgotten), so ``items`` may miss streams that were live then: do not
    take such an answer for the live set of its step.
    """

    user: Int64
    request_id: Id
    trigger: Trigger
    produced_ms: Int64 | None
    published_ms: Int64
    model_version: str
    fallback: bool
    items: list[RecItem]
    late: bool = False
    stale: bool = False
    schema_version: Int64 = SCHEMA_VERSION
    shadow: bool = False  # a candidate model's answer (recommendations-shadow), never served


class DeadLetter(_Event, frozen=True, kw_only=True, tag=DEAD_LETTER):
    """A record the service could not use. ``seq``/``step`` are -1 when unknown.

    ``original`` holds the record's first bytes only (at most `DEAD_LETTER_PAYLOAD`), so a
    dead letter always fits the broker's message limit whatever the record's size;
    ``original_size`` and ``original_sha256`` identify the whole record, ``partition`` and
    ``offset`` say where to read it again.
    """

    original: bytes  # base64 in JSON
    topic: str
    reason: str
    original_size: Int64 = -1
    original_sha256: str = ""
    truncated: bool = False
    partition: Int64 | None = None
    offset: Int64 | None = None


StreamEvent = StreamStart | StreamStop | Watermark | End
UserEvent = Watch | RecRequest
Event = StreamEvent | UserEvent | Recommendation | DeadLetter

_encoder = msgspec.json.Encoder()
_decoders: dict[object, msgspec.json.Decoder] = {
    t: msgspec.json.Decoder(t)  # type: ignore[arg-type]
    for t in (Event, StreamEvent, UserEvent, Recommendation, DeadLetter)
}


def encode(event: Event) -> bytes:
    return _encoder.encode(event)


def decode(data: bytes | str, type_: object = Event) -> Event:
    """Decode one record; ``type_`` narrows what is accepted (e.g. `UserEvent`)."""
    try:
        return _decoders[type_].decode(data)  # type: ignore[no-any-return]
    except msgspec.ValidationError as exc:
        raise EventError(str(exc), _invalid_kind(data, type_)) from exc
    except msgspec.DecodeError as exc:
        raise EventError(f"not a JSON record: {exc}", "undecodable") from exc


def _tags(type_: object) -> dict[str, type[msgspec.Struct]]:
    members: tuple[Any, ...] = getattr(type_, "__args__", (type_,))  # a union, or one record
    return {m.__struct_config__.tag: m for m in members}


def _invalid_kind(data: bytes | str, type_: object) -> ErrorKind:
    """Why valid JSON failed validation, from the record's structure (only on the error
    path: the decode above stays one typed pass)."""
    try:
        obj = msgspec.json.decode(data)
    except msgspec.DecodeError:  # e.g. a typed value followed by junk, a number out of range
        return "undecodable"
    if not isinstance(obj, dict):
        return "wrong_type"
    if "kind" not in obj:
        return "missing_field"
    record = _tags(type_).get(obj["kind"]) if isinstance(obj["kind"], str) else None
    if record is None:
        return "unknown_kind"
    # msgspec reports a present field of the wrong type before missing fields (it checks
    # those at the end of the object): classify in the same order, so kind and message agree.
    missing = False
    for f in msgspec.structs.fields(record):
        if f.encode_name not in obj:
            missing = missing or f.required
            continue
        try:
            msgspec.json.decode(msgspec.json.encode(obj[f.encode_name]), type=f.type)
        except msgspec.ValidationError:
            return "wrong_type"
    return "missing_field" if missing else "wrong_type"


def decode_stream_event(data: bytes | str) -> StreamEvent:
    return decode(data, StreamEvent)  # type: ignore[return-value]


def decode_user_event(data: bytes | str) -> UserEvent:
    return decode(data, UserEvent)  # type: ignore[return-value]


def user_key(user: int) -> bytes:
    """The Kafka key of everything a user owns, on every topic and in the window table."""
    return str(user).encode()


def stream_key(stream: int) -> bytes:
    return str(stream).encode()


# --- the published contract: one JSON Schema per topic (docs/schemas/<topic>.json) ----------

JSON_SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"
# What each topic's message values are, and what its keys are (the key is not in the value).
TOPIC_VALUES: dict[str, tuple[object, str]] = {
    "stream-events": (StreamEvent, "key: the stream id in decimal (watermark and end: none)"),
    "user-events": (UserEvent, "key: the user id in decimal"),
    "recommendations": (Recommendation, "key: the user id in decimal"),
    "recommendations-latest": (
        Recommendation | None,
        "compacted; key: the user id in decimal, value: that user's latest answer. Also "
        "holds tombstones (null values) under keys that are not user ids (b\"\\x00seal\"): "
        "skip null values and keys that are not decimal digits"),
    "recommendations-shadow": (
        Recommendation, "key: the user id in decimal; a candidate model's answers to the "
        "same requests, shadow true, never served"),
    "dead-letters": (DeadLetter, "key: none"),
}


def json_schemas() -> dict[str, dict[str, Any]]:
    """JSON Schema (2020-12) of every topic's message values, from the msgspec types.

    Generated, never edited: ``liverank schema --write docs/schemas`` writes them and a test
    fails when the files drift from this module. ``title`` is the topic, ``description``
    says what its keys are and the answer schema version.
    """
    out: dict[str, dict[str, Any]] = {}
    for topic, (type_, keys) in TOPIC_VALUES.items():
        schema = msgspec.json.schema(type_)
        out[topic] = {
            "$schema": JSON_SCHEMA_DIALECT,
            "title": topic,
            "description": f"Values of the {topic} topic ({keys}). Answer schema_version "
                           f"{SCHEMA_VERSION}; compatibility rules: docs/events.md.",
            **schema,
        }
    return out


def schema_files() -> dict[str, str]:
    """``{"<topic>.json": text}``: the files of docs/schemas, byte for byte."""
    return {f"{topic}.json": json.dumps(schema, indent=2, sort_keys=True) + "\n"
            for topic, schema in json_schemas().items()}


def write_schema_files(directory: str | os.PathLike[str]) -> list[Path]:
    """Write `schema_files` into ``directory`` (created); returns the written paths. Other
    files there are left alone (`stale_schema_files` names them)."""
    folder = Path(directory)
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for name, text in schema_files().items():
        path = folder / name
        path.write_text(text)
        written.append(path)
    return written


def stale_schema_files(directory: str | os.PathLike[str]) -> list[Path]:
    """``*.json`` files in ``directory`` that are no topic's schema (a topic that is gone)."""
    names = schema_files()
    return sorted(p for p in Path(directory).glob("*.json") if p.name not in names)
