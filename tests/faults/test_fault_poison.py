"""Poison records mid-replay on both input topics.

Each bad record must become exactly one dead letter (`DeadLetter`: at most 16 KiB of the
record, with its size, SHA-256, partition and offset; small enough for the broker), and
the records behind it must be processed: every request of the replay answered, and
answered right (the independent checker).

* `test_poison_records_of_every_kind_become_one_dead_letter_each`: on user-events and on
  stream-events, undecodable bytes, wrong types, unknown kinds, missing fields, negative
  steps, steps far beyond the horizon, wrong keys, a 900 KB record, a 300-character
  streamer name (and an over-long event id, an empty and a null value), plus ~30
  hypothesis-generated records (mutated valid records, contract-like JSON objects with
  random values, random bytes), all fed into one replay.
* `test_records_that_break_the_decoder_become_dead_letters`: the records that in-process
  fuzzing of `services.records` (hypothesis, a few thousand examples) found to escape the
  contract's error handling (a value followed by junk, a number out of range, an integer
  beyond int64): each stopped the worker before the contract bounded integers and
  classified every decoding failure; now each is one dead letter.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from checker import Log, check
from confluent_kafka import Producer
from helpers import (
    FaultModel,
    GatedReplay,
    K,
    Worker,
    explain,
    now_ms,
    wait_all_answered,
    wait_for,
)
from hypothesis import HealthCheck, Phase, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from liverank.broker import kafka
from liverank.core import events as ev
from liverank.core.settings import Settings

pytestmark = [pytest.mark.kafka, pytest.mark.faults]

BIG = 900 * 1024  # a record near the broker's 1 MB message limit


@dataclass
class Poison:
    name: str
    stream_topic: bool  # else user-events
    value: bytes | None
    key: bytes | None = None
    partition: int = -1  # -1: placed by the key
    dead: bool = True  # must become one dead letter (else: accepted, and harmless)
    kind: str | None = None  # the expected reason label of liverank_dead_letters_total
    at: tuple[int, int] | None = field(default=None, init=False)  # (partition, offset)


def js(obj: object) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


def event(kind: str, event_id: str, step: object = 5, **fields: object) -> dict[str, object]:
    return {"kind": kind, "event_id": event_id, "seq": 1, "step": step,
            "event_time_ms": 1_500_000_000_000, **fields}


def contract_poison(log: Log, gate_step: int) -> list[Poison]:
    """One record of each kind the brief lists, on each input topic."""
    user = next(iter(log.requests.values())).user
    ukey = str(user).encode()
    # A broadcast on air at the gate (neither started nor stopped there): its start, copied
    # under a wrong key, changes nothing (the first start holds).
    stream, (start, _, streamer) = next(
        (s, b) for s, b in sorted(log.broadcasts.items()) if b[0] < gate_step < b[1] - 1)
    big = js({**event("rec_request", "poison:big"), "user": user, "pad": "x" * BIG})
    p: list[Poison] = [
        Poison("user undecodable", False, b"\xff\xfe{not json", b"x", 0, kind="undecodable"),
        Poison("user wrong type", False, js(event("watch", "poison:wt", user=user,
                                                   stream="abc", streamer="a")),
               ukey, kind="wrong_type"),
        Poison("user unknown kind", False, js(event("bogus", "poison:uk", user=user)), b"x", 1,
               kind="unknown_kind"),
        Poison("user stream kind", False, js(event("stream_start", "poison:sk", stream=1,
                                                   streamer="a")), b"x", 2,
               kind="unknown_kind"),
        Poison("user missing field", False, js({"kind": "rec_request",
                                                "event_id": "poison:mf"}), b"x", 3,
               kind="missing_field"),
        Poison("user negative step", False, js(event("rec_request", "poison:neg", -7,
                                                     user=user)), ukey,
               kind="negative_step"),
        Poison("user beyond horizon", False, js(event("rec_request", "poison:far", 10**6,
                                                      user=user)), ukey,
               kind="beyond_horizon"),
        Poison("user wrong key", False, js(event("rec_request", "poison:wk", gate_step,
                                                 user=user)), b"not-" + ukey, 4,
               kind="wrong_key"),
        Poison("user 900 KB", False, big, ukey, kind="too_large"),
        Poison("user 300-char streamer", False,
               js(event("watch", "poison:long", gate_step, user=user, stream=1,
                        streamer="s" * 300)), ukey, kind="wrong_type"),
        Poison("user 600-char event id", False,
               js(event("rec_request", "poison:" + "i" * 600, gate_step, user=user)), ukey,
               kind="wrong_type"),
        Poison("user empty value", False, b"", b"x", 5, kind="undecodable"),
        Poison("user null value", False, None, b"x", 6, kind="undecodable"),
        Poison("stream undecodable", True, b"\xff\xfe{not json", b"x", 0, kind="undecodable"),
        Poison("stream wrong type", True, js(event("stream_start", "poison:s-wt", "x",
                                                   stream=990_000_000_001, streamer="a")),
               b"x", 1, kind="wrong_type"),
        Poison("stream unknown kind", True, js(event("bogus", "poison:s-uk")), b"x", 2,
               kind="unknown_kind"),
        Poison("stream user kind", True, js(event("rec_request", "poison:s-rq", user=user)),
               b"x", 3, kind="unknown_kind"),
        Poison("stream missing field", True, js({"kind": "stream_stop",
                                                 "event_id": "poison:s-mf"}), b"x", 4,
               kind="missing_field"),
        Poison("stream negative step", True,
               js(event("stream_start", "poison:s-neg", -3, stream=990_000_000_002,
                        streamer="poison-neg")), b"990000000002", kind="negative_step"),
        Poison("stream beyond horizon", True,
               js(event("stream_stop", "poison:s-far", 10**6, stream=stream,
                        streamer=streamer)), str(stream).encode(), kind="beyond_horizon"),
        # stream-events has no key contract (the key only spreads streams over partitions;
        # every worker reads every partition): a wrong key is no refusal.
        Poison("stream wrong key (a replayed start)", True,
               js(event("stream_start", f"start:{stream}", start, stream=stream,
                        streamer=streamer)), b"not-the-stream", 5, dead=False),
        Poison("stream 900 KB", True, js({**event("stream_start", "poison:s-big",
                                                  stream=990_000_000_003, streamer="b"),
                                          "pad": "x" * BIG}), b"x", 6, kind="too_large"),
        Poison("stream 300-char streamer", True,
               js(event("stream_start", "poison:s-long", gate_step, stream=990_000_000_004,
                        streamer="s" * 300)), b"990000000004", kind="wrong_type"),
        Poison("stream empty value", True, b"", b"x", 7, kind="undecodable"),
        Poison("stream null value", True, None, b"x", 0, kind="undecodable"),
    ]
    return p


def decoder_breakers(gate_step: int) -> list[Poison]:
    """Records that in-process fuzzing of `services.records` found to escape the
    contract's error handling before it bounded integers to int64 and classified every
    decoding failure."""
    out = []
    for stream_topic in (False, True):
        t = "stream" if stream_topic else "user"
        out += [
            Poison(f"{t} JSON scalar + trailing bytes", stream_topic, b"0\x00", b"x", 0),
            Poison(f"{t} object + trailing bytes", stream_topic,
                   js(event("watch", f"poison:{t}-tr")) + b" junk", b"x", 1),
            Poison(f"{t} number out of range", stream_topic,
                   b'{"kind":"rec_request","event_id":"poison:inf","seq":1,"step":1e999,'
                   b'"event_time_ms":1,"user":1}', b"x", 2),
        ]
    out.append(Poison("stream stream id beyond int64", True,
                      js(event("stream_start", "poison:s-huge", gate_step, stream=2**70,
                               streamer="huge")), b"x", 3))
    return out


# --- generated garbage ---------------------------------------------------------------------------
FIELDS = ("kind", "event_id", "seq", "step", "event_time_ms", "user", "stream", "streamer",
          "partition", "stream_events", "user_events")
KINDS = ("stream_start", "stream_stop", "watermark", "end", "watch", "rec_request",
         "recommendation", "dead_letter")
# A valid record of each kind, per topic: the garbage mutates them (a field dropped, given a
# random value, or one added), so it comes close to the contract.
TEMPLATES = {
    False: [event("watch", "g", user=1, stream=1, streamer="a"), event("rec_request", "g", user=1)],
    True: [event("stream_start", "g", stream=1, streamer="a"),
           event("stream_stop", "g", stream=1, streamer="a"),
           event("watermark", "g", partition=0),
           event("end", "g", stream_events=1, user_events=1)],
}
_scalar = st.one_of(st.none(), st.booleans(), st.integers(), st.text(max_size=12),
                    st.floats(allow_nan=False, allow_infinity=False))
_value = st.recursive(_scalar, lambda c: st.lists(c, max_size=3)
                      | st.dictionaries(st.text(max_size=4), c, max_size=3), max_leaves=5)
_object = st.builds(lambda kind, rest: js({"kind": kind, **rest}),
                    st.sampled_from(KINDS) | st.text(max_size=8),
                    st.dictionaries(st.sampled_from(FIELDS) | st.text(max_size=6), _value,
                                    max_size=8))
_mutation = st.tuples(st.sampled_from(("drop", "set", "add")),
                      st.sampled_from(FIELDS) | st.text(max_size=6), _value)


def _mutate(record: dict[str, object], mutations: list[tuple[str, str, object]]) -> bytes:
    out = dict(record)
    for op, name, value in mutations:
        if op == "drop":
            out.pop(name if name in out else next(iter(out)), None)
        elif op == "set":
            out[name if name in out else "step"] = value
        else:
            out[name] = value
    return js(out)


def _garbage(stream_topic: bool) -> st.SearchStrategy[tuple[bool, bytes]]:
    mutated = st.builds(_mutate, st.sampled_from(TEMPLATES[stream_topic]),
                        st.lists(_mutation, min_size=1, max_size=3))
    return st.tuples(st.just(stream_topic),
                     st.one_of(mutated, _object, st.binary(min_size=1, max_size=48)))


def _is_stream_event(raw: bytes) -> bool:
    try:
        ev.decode_stream_event(raw)
    except Exception:  # noqa: BLE001 - whatever it raises, it is not a stream event
        return False
    return True


def generated_garbage(n: int = 30) -> list[Poison]:
    """About ``n`` hypothesis-generated records (derandomized: the same every run) for
    either topic: mutated valid records, contract-like JSON objects with random values,
    random bytes. A user-events record is keyed ``garbage-<i>`` (never a user's key, so one
    that happens to decode is refused too); a stream-events record that happens to be a
    valid stream event is no garbage and is left out."""
    drawn: list[tuple[bool, bytes]] = []

    @hsettings(max_examples=n, database=None, derandomize=True, deadline=None,
               phases=[Phase.generate], suppress_health_check=list(HealthCheck))
    @given(st.booleans().flatmap(_garbage))
    def draw(item: tuple[bool, bytes]) -> None:
        drawn.append(item)

    draw()
    out: list[Poison] = []
    for stream_topic, raw in drawn:
        if stream_topic and _is_stream_event(raw):
            continue
        i = len(out)
        out.append(Poison(f"garbage {i}", stream_topic, raw, b"garbage-%d" % i, i % 8))
    return out[:n]


# --- the run ---------------------------------------------------------------------------------
def produce(settings: Settings, poison: list[Poison]) -> None:
    p = Producer({**kafka.producer_config(settings), "message.max.bytes": 2 * BIG})
    errors: list[str] = []
    for item in poison:
        topic = settings.topic(kafka.STREAM_EVENTS if item.stream_topic else kafka.USER_EVENTS)

        def delivered(err: object, msg: object, item: Poison = item) -> None:
            if err is not None:
                errors.append(f"{item.name}: {err}")
            else:
                item.at = (msg.partition(), msg.offset())  # type: ignore[attr-defined]

        p.produce(topic, item.value, item.key, item.partition, on_delivery=delivered)
    assert p.flush(30) == 0
    assert not errors, errors


def dead_letters(settings: Settings) -> list[tuple[int, ev.DeadLetter]]:
    msgs = kafka.read_topic(settings, settings.topic(kafka.DEAD_LETTERS), timeout_s=20)
    out = []
    for m in msgs:
        letter = ev.decode(m.value(), ev.DeadLetter)
        assert isinstance(letter, ev.DeadLetter)
        out.append((len(m.value()), letter))
    return out


def dead_letter_metrics(worker: Worker) -> dict[tuple[str, str], float]:
    body = worker._get("/metrics", timeout=2.0) or b""
    out = {}
    for line in body.decode().splitlines():
        if line.startswith("liverank_dead_letters_total{"):
            labels = dict(re.findall(r'(\w+)="([^"]*)"', line))
            out[(labels["topic"], labels["reason"])] = float(line.split()[-1])
    return out


def run_poison(poison: list[Poison], fault: str, fault_model: FaultModel, fault_log: Log,
               settings: Settings, workers: list[Worker], replays: list[GatedReplay],
               tmp_path: Path, record_fault: Callable[..., str],
               make: Callable[[int], list[Poison]]) -> None:
    kafka.ensure_topics(settings)
    worker = Worker(settings, fault_model.model_dir, tmp_path, "w1").start()
    workers.append(worker)
    worker.wait_ready(60)
    replay = GatedReplay(fault_model.csv, settings, [0.5]).start()
    replays.append(replay)
    replay.wait_gate(0)
    poison += make(replay.gate_steps[0])
    produce(settings, poison)  # behind the first half of the log, before the second
    injected = now_ms()
    replay.open(0)
    replay.join(120)

    def tail() -> str:
        return worker.tail() if worker.running else "WORKER EXITED\n" + worker.tail()

    answers = wait_all_answered(settings, fault_log, 90, lambda: worker.running)
    result = check(fault_log, answers, K, [injected])
    record_fault(fault, result, poison=len(poison))
    assert result.ok, explain(result, settings, fault_log, answers, [worker])
    want = [x for x in poison if x.dead]
    letters: list[tuple[int, ev.DeadLetter]] = []

    def all_letters() -> bool:
        letters[:] = dead_letters(settings)
        return len(letters) >= len(want)

    wait_for(all_letters, 30, f"{len(want)} dead letters", tail, every=1.0)
    problems = dead_letter_problems(settings, poison, letters)
    assert not problems, problems
    counts = dead_letter_metrics(worker)
    assert sum(counts.values()) == len(want), counts
    for item in want:
        if item.kind is not None:
            topic = settings.topic(kafka.STREAM_EVENTS if item.stream_topic
                                   else kafka.USER_EVENTS)
            assert counts.get((topic, item.kind), 0) >= 1, (item.name, item.kind, counts)
    assert worker.running and (worker.health() or {}).get("ready"), worker.tail()


def dead_letter_problems(settings: Settings, poison: list[Poison],
                         letters: list[tuple[int, ev.DeadLetter]]) -> list[str]:
    """Exactly one dead letter per poison record that must have one, describing it (first
    16 KiB, size, digest, partition, offset), none for anything else, each small."""
    by_place: dict[tuple[str, int | None, int | None], list[tuple[int, ev.DeadLetter]]] = {}
    for size, letter in letters:
        by_place.setdefault((letter.topic, letter.partition, letter.offset), []).append(
            (size, letter))
    problems = []
    seen = set()
    for item in poison:
        topic = settings.topic(kafka.STREAM_EVENTS if item.stream_topic else kafka.USER_EVENTS)
        assert item.at is not None
        place = (topic, *item.at)
        seen.add(place)
        found = by_place.get(place, [])
        if not item.dead:
            if found:
                problems.append(f"{item.name}: dead-lettered ({found[0][1].reason})")
            continue
        if len(found) != 1:
            problems.append(f"{item.name}: {len(found)} dead letters")
            continue
        size, letter = found[0]
        raw = item.value or b""
        if (letter.original != raw[: ev.DEAD_LETTER_PAYLOAD]
                or letter.original_size != len(raw)
                or letter.original_sha256 != hashlib.sha256(raw).hexdigest()
                or letter.truncated != (len(raw) > ev.DEAD_LETTER_PAYLOAD)
                or not letter.reason or len(letter.reason) > ev.DEAD_LETTER_REASON
                or size > 64 * 1024):
            problems.append(f"{item.name}: dead letter does not describe the record "
                            f"(size {letter.original_size}/{len(raw)}, truncated "
                            f"{letter.truncated}, {size} bytes, reason {letter.reason!r})")
    problems += [f"a dead letter for a record that is no poison: {p} {v[0][1].reason!r}"
                 for p, v in by_place.items() if p not in seen]
    return problems


@pytest.mark.timeout(180)
def test_poison_records_of_every_kind_become_one_dead_letter_each(
        fault_model: FaultModel, fault_log: Log, fault_settings: Settings,
        workers: list[Worker], replays: list[GatedReplay], tmp_path: Path,
        record_fault: Callable[..., str]) -> None:
    run_poison(generated_garbage(30), "poison_records", fault_model, fault_log,
               fault_settings, workers, replays, tmp_path, record_fault,
               lambda gate_step: contract_poison(fault_log, gate_step))




@pytest.mark.timeout(180)
def test_records_that_break_the_decoder_become_dead_letters(
        fault_model: FaultModel, fault_log: Log, fault_settings: Settings,
        workers: list[Worker], replays: list[GatedReplay], tmp_path: Path,
        record_fault: Callable[..., str]) -> None:
    run_poison([], "poison_decoder_breakers", fault_model, fault_log, fault_settings,
               workers, replays, tmp_path, record_fault, decoder_breakers)
