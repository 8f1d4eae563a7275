"""The published contract: docs/schemas matches the code, and the compatibility rules of
docs/events.md hold for the decoder every consumer uses (no broker needed)."""

from __future__ import annotations

import json
import random
from pathlib import Path

import msgspec
import pytest
import schema_check
from test_events import SAMPLES
from typer.testing import CliRunner

from liverank.broker.kafka import TOPICS
from liverank.cli.main import app
from liverank.core import events as ev
from liverank.core.partitioner import murmur2, partition_for

SCHEMAS = Path(__file__).resolve().parents[1] / "docs" / "schemas"
FIX = "run `liverank schema --write docs/schemas` and commit the result"

ANSWER = ev.Recommendation(
    event_id="rec:req:5", seq=5, step=100, event_time_ms=1_569_888_000_000, user=42,
    request_id="req:5", trigger="request", produced_ms=None, published_ms=1_700_000_000_000,
    model_version="m1", fallback=False,
    items=[ev.RecItem(stream=1, streamer="alpha", score=0.9, rank=1),
           ev.RecItem(stream=2, streamer="beta", score=0.5, rank=2)])


def test_schema_files_are_current() -> None:
    want = ev.schema_files()
    have = {p.name: p.read_text() for p in SCHEMAS.glob("*.json")}
    stale = sorted(n for n in want if have.get(n) != want[n])
    extra = sorted(set(have) - set(want))
    assert not stale and not extra, (
        f"docs/schemas drifted from core/events.py (differs: {stale}, no such topic: "
        f"{extra}): {FIX}")


def test_every_topic_has_a_schema_and_the_cli_prints_it() -> None:
    schemas = ev.json_schemas()
    assert set(schemas) == set(TOPICS)
    runner = CliRunner()
    one = runner.invoke(app, ["schema", "recommendations-latest"])
    assert one.exit_code == 0, one.output
    assert json.loads(one.output) == schemas["recommendations-latest"]
    every = runner.invoke(app, ["schema"])
    assert every.exit_code == 0 and json.loads(every.output) == schemas
    bad = runner.invoke(app, ["schema", "nope"])
    assert bad.exit_code == 2 and "no topic 'nope'" in bad.output


def test_schema_write_writes_every_topic_and_names_stale_files(tmp_path: Path) -> None:
    (tmp_path / "gone-topic.json").write_text("{}")
    result = CliRunner().invoke(app, ["schema", "--write", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert {p.name: p.read_text() for p in tmp_path.glob("*.json")} == {
        **ev.schema_files(), "gone-topic.json": "{}"}
    assert "gone-topic.json is no topic's schema" in result.stderr


TOPIC_OF = {ev.StreamStart: "stream-events", ev.StreamStop: "stream-events",
            ev.Watermark: "stream-events", ev.End: "stream-events", ev.Watch: "user-events",
            ev.RecRequest: "user-events", ev.Recommendation: "recommendations",
            ev.DeadLetter: "dead-letters"}


@pytest.mark.parametrize("event", SAMPLES, ids=lambda e: type(e).__name__)
def test_the_schema_files_accept_every_kind_of_record(event: ev.Event) -> None:
    value = json.loads(ev.encode(event))
    assert schema_check.errors(value, schema_check.load(TOPIC_OF[type(event)])) == []
    other = "user-events" if TOPIC_OF[type(event)] != "user-events" else "stream-events"
    assert schema_check.errors(value, schema_check.load(other))  # kinds are per topic
    if isinstance(event, ev.Recommendation):
        latest = schema_check.load("recommendations-latest")
        assert schema_check.errors(value, latest) == schema_check.errors(None, latest) == []
        broken = {**value, "items": [{"stream": "5"}]}
        found = schema_check.errors(broken, schema_check.load("recommendations"))
        assert found and all(e.startswith("$.items[0]") for e in found), found


def test_latest_schema_admits_tombstones_and_the_answer_schema_is_versioned() -> None:
    latest = ev.json_schemas()["recommendations-latest"]
    assert {"type": "null"} in latest["anyOf"]
    answer = latest["$defs"]["Recommendation"]
    assert answer["properties"]["schema_version"]["default"] == ev.SCHEMA_VERSION
    assert "schema_version" not in answer["required"]  # records before it existed decode


def test_consumers_ignore_unknown_fields() -> None:
    """Adding an optional field needs no schema_version bump: today's decoder (the one in
    every deployed consumer) reads tomorrow's record and ignores what it does not know."""
    wire = json.loads(ev.encode(ANSWER))
    wire["explanation"] = {"why": "you watched alpha"}
    wire["items"][0]["thumbnail"] = "https://example.invalid/a.png"
    assert ev.decode(json.dumps(wire), ev.Recommendation) == ANSWER
    # and the published schemas leave validating consumers as tolerant
    assert "additionalProperties" not in json.dumps(ev.json_schemas())


def test_records_without_the_newer_optional_fields_decode_to_their_defaults() -> None:
    wire = json.loads(ev.encode(ANSWER))
    for name in ("late", "stale", "schema_version"):
        del wire[name]
    rec = ev.decode(json.dumps(wire), ev.Recommendation)
    assert isinstance(rec, ev.Recommendation)
    assert (rec.late, rec.stale, rec.schema_version) == (False, False, 1)


def test_a_new_trigger_value_is_not_readable_by_todays_consumers() -> None:
    """Why docs/events.md makes a new trigger value a breaking change (a bump)."""
    wire = json.loads(ev.encode(ANSWER))
    wire["trigger"] = "schedule"
    with pytest.raises(ev.EventError, match="trigger"):
        ev.decode(json.dumps(wire), ev.Recommendation)


def test_murmur2_matches_kafkas_reference_values() -> None:
    # org.apache.kafka.common.utils.UtilsTest#testMurmur2 (Java ints)
    cases = {b"21": -973932308, b"foobar": -790332482, b"a-little-bit-long-string": -985981536,
             b"a-little-bit-longer-string": -1486304829,
             b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8": -58897971,
             b"abc": 479470107}
    for key, java in cases.items():
        assert murmur2(key) == java & 0xFFFFFFFF, key


def test_partition_for_agrees_with_aiokafka() -> None:
    aiokafka = pytest.importorskip("aiokafka.partitioner")
    rnd = random.Random(0)
    keys = [ev.user_key(u) for u in range(2000)] + [
        bytes(rnd.randrange(256) for _ in range(rnd.randrange(40))) for _ in range(2000)]
    for n in (1, 3, 8, 16):
        parts = list(range(n))
        assert all(partition_for(k, n) == aiokafka.DefaultPartitioner()(k, parts, parts)
                   for k in keys), n
    with pytest.raises(ValueError):
        partition_for(b"1", 0)


def test_the_answer_table_row_and_block() -> None:
    from liverank.cli.recs import format_answer, format_row

    row = format_row(msgspec.structs.replace(ANSWER, late=True), top=1)
    assert "42" in row and "request" in row and "alpha 0.900" in row and "(+1)" in row
    assert " L " in row and "beta" not in row
    block = format_answer(ANSWER).splitlines()
    assert block[0].startswith("user 42  trigger request  request req:5")
    assert "1. alpha" in block[1] and "stream 1" in block[1] and len(block) == 3
