"""Consuming the answers (docs/consuming.md): `RecsClient`, `liverank recs`, the HTTP lookup
and the guide's example, against a broker where the test produces the answers itself (no
worker). Every wait is bounded."""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from confluent_kafka import Producer
from typer.testing import CliRunner

from liverank.broker import kafka
from liverank.broker.embedded import free_port
from liverank.cli.main import app
from liverank.client import RecsClient, latest, lookup, partition_for
from liverank.client.endpoint import LookupUnavailableError
from liverank.core import events as ev
from liverank.core.settings import Settings

GUIDE = Path(__file__).resolve().parents[1] / "docs" / "consuming.md"
SEAL_KEY = b"\x00seal"  # what the service writes to seal recommendations-latest partitions
runner = CliRunner()


def answer(user: int, n: int, *, streamer: str = "alpha", version: int = ev.SCHEMA_VERSION,
           trigger: ev.Trigger = "request") -> ev.Recommendation:
    return ev.Recommendation(
        event_id=f"rec:req:{n}", seq=n, step=100 + n, event_time_ms=1_569_888_000_000 + n,
        user=user, request_id=f"req:{n}", trigger=trigger, produced_ms=None,
        published_ms=int(time.time() * 1000), model_version="m-test", fallback=False,
        items=[ev.RecItem(stream=10 + n, streamer=streamer, score=0.75, rank=1),
               ev.RecItem(stream=99, streamer="zeta", score=0.25, rank=2)],
        schema_version=version)


class Sender:
    """Produces to the test's topics like the service does (murmur2 keys), one flush each,
    so every record is its own batch (tansu's high watermark stays exact)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.producer = Producer(kafka.producer_config(settings))
        self.landed: dict[bytes, int] = {}

    def send(self, topic: str, key: bytes | None, value: bytes | None,
             partition: int | None = None) -> None:
        def delivered(err: object, msg: object) -> None:
            assert err is None, err
            self.landed[msg.key()] = msg.partition()  # type: ignore[attr-defined]

        extra = {} if partition is None else {"partition": partition}
        self.producer.produce(self.settings.topic(topic), value, key, on_delivery=delivered,
                              **extra)
        assert self.producer.flush(10) == 0

    def answer(self, rec: ev.Recommendation, topic: str = kafka.RECOMMENDATIONS) -> None:
        self.send(topic, ev.user_key(rec.user), ev.encode(rec))


@pytest.fixture
def sender(kafka_settings: Settings) -> Sender:
    kafka.ensure_topics(kafka_settings)
    return Sender(kafka_settings)


@pytest.fixture
def cli_env(kafka_settings: Settings, monkeypatch: pytest.MonkeyPatch) -> Settings:
    """`Settings()` inside the CLI sees the test's broker and topics."""
    monkeypatch.delenv("KAFKA_BOOTSTRAP_SERVERS", raising=False)
    monkeypatch.setenv("LIVERANK_KAFKA_BOOTSTRAP", kafka_settings.kafka_bootstrap)
    monkeypatch.setenv("LIVERANK_TOPIC_PREFIX", kafka_settings.topic_prefix)
    monkeypatch.setenv("LIVERANK_BROKER_KIND", kafka_settings.broker_kind)
    monkeypatch.setenv("LIVERANK_KAFKA_TIMEOUT_S", "10")
    return kafka_settings


def test_keys_land_where_partition_for_says(kafka_settings: Settings, sender: Sender) -> None:
    """The client's murmur2 against a real produce with the service's partitioner."""
    n = kafka_settings.partitions
    for user in range(0, 400, 7):
        sender.producer.produce(kafka_settings.topic(kafka.RECOMMENDATIONS_LATEST), b"{}",
                                ev.user_key(user), on_delivery=lambda e, m: sender.landed.
                                __setitem__(m.key(), m.partition()))
    assert sender.producer.flush(10) == 0
    assert sender.landed == {ev.user_key(u): partition_for(ev.user_key(u), n)
                             for u in range(0, 400, 7)}
    assert len(set(sender.landed.values())) == n


def test_answers_from_now_from_the_beginning_per_user_and_skips(
        kafka_settings: Settings, sender: Sender) -> None:
    for n in range(3):
        sender.answer(answer(1, n))
    with RecsClient(kafka_settings) as client:
        sender.answer(answer(1, 3))
        sender.send(kafka.RECOMMENDATIONS, b"1", b"not json")
        sender.send(kafka.RECOMMENDATIONS, b"1", b'{"kind": "recommendation"}')
        sender.answer(answer(1, 4, version=ev.SCHEMA_VERSION + 1))
        sender.answer(answer(2, 5))
        sender.answer(answer(1, 6))
        t0 = time.monotonic()
        got = [r.request_id for r in client.answers(timeout_s=2)]
        assert time.monotonic() - t0 < 10
        assert sorted(got) == ["req:3", "req:5", "req:6"]
        assert client.skipped == {"undecodable": 2, "newer_schema": 1}
        # again from the oldest record, one user only: per-partition order is kept
        mine = [r.request_id for r in client.answers(from_beginning=True, user=1, timeout_s=1)]
        assert mine == ["req:0", "req:1", "req:2", "req:3", "req:6"]
        assert all(isinstance(r, ev.Recommendation) for r in [answer(1, 0)])
        with pytest.raises(ValueError, match="consumer group"):
            client.commit()


def test_wait_for_returns_the_answer_or_times_out(kafka_settings: Settings,
                                                  sender: Sender) -> None:
    with RecsClient(kafka_settings) as client:
        for n in range(5):
            sender.answer(answer(n, n))
        rec = client.wait_for("req:3", timeout_s=10)
        assert (rec.user, rec.items[0].stream) == (3, 13)
        sender.answer(answer(7, 7))
        assert client.wait_for("req:7", timeout_s=10, user=7).user == 7
        t0 = time.monotonic()
        with pytest.raises(TimeoutError, match="req:404"):
            client.wait_for("req:404", timeout_s=1)
        assert time.monotonic() - t0 < 3


def test_latest_reads_the_users_partition_and_skips_tombstones_and_other_keys(
        kafka_settings: Settings, sender: Sender) -> None:
    latest_topic = kafka.RECOMMENDATIONS_LATEST
    for p in range(kafka_settings.partitions):  # the service's seals: tombstones, no user
        sender.send(latest_topic, SEAL_KEY, None, partition=p)
    sender.answer(answer(7, 1, streamer="old"), latest_topic)
    sender.answer(answer(8, 2), latest_topic)
    sender.answer(answer(7, 3, streamer="new"), latest_topic)
    sender.send(latest_topic, ev.user_key(8), None)  # user 8 deleted
    sender.send(latest_topic, ev.user_key(9), b"\x00garbage")
    sender.send(latest_topic, b"not-a-user", b"{}")
    with RecsClient(kafka_settings) as client:
        got = client.latest(7, timeout_s=10)
        assert got is not None and got.items[0].streamer == "new" and got.request_id == "req:3"
        assert client.latest(8, timeout_s=10) is None
        assert client.latest(9, timeout_s=10) is None
        assert client.skipped == {"undecodable": 1}
        assert client.latest(123456, timeout_s=10) is None
    assert latest(kafka_settings, 7, timeout_s=10) == got


def test_a_group_resumes_from_its_manual_commits(kafka_settings: Settings,
                                                 sender: Sender) -> None:
    for n in range(4):
        sender.answer(answer(5, n))  # one user: one partition, in order
    with RecsClient(kafka_settings, group="downstream") as client:
        stream = client.answers(from_beginning=True, timeout_s=20)
        assert [next(stream).request_id for _ in range(2)] == ["req:0", "req:1"]
        client.commit()
    with RecsClient(kafka_settings, group="downstream") as client:
        rest = [r.request_id for r in client.answers(timeout_s=2)]  # after joining
        with pytest.raises(ValueError, match="from_beginning"):
            client.answers(from_beginning=True)  # a joined member cannot rewind
    assert rest == ["req:2", "req:3"]


def test_cli_tail_json_and_table(cli_env: Settings, sender: Sender) -> None:
    sender.answer(answer(1, 1))
    sender.answer(answer(2, 2, trigger="live_change"))
    sender.send(kafka.RECOMMENDATIONS, b"2", b"junk")
    result = runner.invoke(app, ["recs", "tail", "--from-beginning", "--json",
                                 "--timeout", "1"])
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert sorted(r["request_id"] for r in lines) == ["req:1", "req:2"]
    assert all(ev.decode(json.dumps(r), ev.Recommendation) for r in lines)
    assert "skipped 1 undecodable" in result.stderr
    table = runner.invoke(app, ["recs", "tail", "--from-beginning", "--user", "2",
                                "--timeout", "1", "--top", "1"])
    assert table.exit_code == 0, table.output
    head, *rows = table.stdout.splitlines()
    assert head.split()[:5] == ["time", "user", "trigger", "model", "flags"]
    assert len(rows) == 1 and "live_change" in rows[0] and "alpha 0.750" in rows[0]
    assert "(+1)" in rows[0] and "m-test" in rows[0]


def test_cli_get_via_kafka(cli_env: Settings, sender: Sender) -> None:
    sender.answer(answer(7, 1), kafka.RECOMMENDATIONS_LATEST)
    shown = runner.invoke(app, ["recs", "get", "7"])
    assert shown.exit_code == 0, shown.output
    assert shown.stdout.startswith("user 7  trigger request  request req:1")
    as_json = runner.invoke(app, ["recs", "get", "7", "--json"])
    assert json.loads(as_json.stdout)["items"][0]["streamer"] == "alpha"
    none = runner.invoke(app, ["recs", "get", "8"])
    assert none.exit_code == 2
    assert none.stderr.strip().startswith("error: no recommendations for user 8")
    assert len(none.stderr.strip().splitlines()) == 1
    wrong = runner.invoke(app, ["recs", "get", "7", "--via", "kafka", "--now"])
    assert wrong.exit_code == 2 and "--via http" in wrong.stderr


def test_cli_get_and_tail_without_a_broker_exit_2(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KAFKA_BOOTSTRAP_SERVERS", raising=False)
    monkeypatch.setenv("LIVERANK_KAFKA_BOOTSTRAP", f"127.0.0.1:{free_port()}")
    monkeypatch.setenv("LIVERANK_KAFKA_TIMEOUT_S", "1")
    monkeypatch.setenv("LIVERANK_BROKER_KIND", "kafka")
    for args in (["recs", "get", "7"], ["recs", "tail", "--timeout", "1"]):
        t0 = time.monotonic()
        result = runner.invoke(app, args)
        assert result.exit_code == 2, (args, result.output)
        assert re.match(r"error: no Kafka broker answered at 127\.0\.0\.1:\d+", result.stderr)
        assert len(result.stderr.strip().splitlines()) == 1
        assert time.monotonic() - t0 < 10


# --- the lookup endpoint, served by a stand-in that answers like the worker ------------------

class _Lookup(BaseHTTPRequestHandler):
    seen: list[str] = []

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        type(self).seen.append(self.path)
        user = self.path.split("/")[2]
        if user == "7":
            status, body = 200, ev.encode(answer(7, 1, trigger="lookup" if "now=1" in self.path
                                                 else "request"))
        elif user == "9":
            status, body = 503, b'{"error": "recovering"}'
        else:
            status, body = 404, json.dumps({"error": f"no recommendations for user {user}"}
                                           ).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def endpoint() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Lookup)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_lookup_over_http(endpoint: str) -> None:
    rec = lookup(endpoint, 7, timeout_s=5)
    assert rec is not None and rec.trigger == "request"
    now = lookup(endpoint + "/", 7, now=True, timeout_s=5)
    assert now is not None and now.trigger == "lookup"
    assert _Lookup.seen[-1] == "/users/7/recommendations?now=1"
    assert lookup(endpoint, 8, timeout_s=5) is None
    with pytest.raises(LookupUnavailableError, match="recovering"):
        lookup(endpoint, 9, timeout_s=5)
    with pytest.raises(LookupUnavailableError, match="cannot reach"):
        lookup(f"http://127.0.0.1:{free_port()}", 7, timeout_s=5)


def test_cli_get_via_http(endpoint: str) -> None:
    shown = runner.invoke(app, ["recs", "get", "7", "--url", endpoint, "--now"])
    assert shown.exit_code == 0, shown.output
    assert shown.stdout.startswith("user 7  trigger lookup")
    for user, says in (("8", "no recommendations for user 8"), ("9", "recovering")):
        result = runner.invoke(app, ["recs", "get", user, "--via", "http", "--url", endpoint])
        assert result.exit_code == 2 and says in result.stderr, result.output
        assert len(result.stderr.strip().splitlines()) == 1
    gone = runner.invoke(app, ["recs", "get", "7", "--url", f"http://127.0.0.1:{free_port()}"])
    assert gone.exit_code == 2 and "cannot reach" in gone.stderr


# --- the guide's example ---------------------------------------------------------------------

def _guide_example() -> str:
    """The first ```python block of docs/consuming.md (the one a team copies)."""
    match = re.search(r"```python\n(.*?)```", GUIDE.read_text(), re.S)
    assert match, "docs/consuming.md lost its example"
    return match.group(1)


def test_the_guides_example_runs(kafka_settings: Settings, sender: Sender,
                                 capsys: pytest.CaptureFixture[str]) -> None:
    for n, user in enumerate((42, 43, 42)):
        sender.answer(answer(user, n))
    sender.answer(answer(44, 3), kafka.RECOMMENDATIONS_LATEST)
    sender.answer(answer(42, 2, streamer="newest"), kafka.RECOMMENDATIONS_LATEST)
    namespace: dict[str, object] = {"__name__": "guide_example"}
    exec(compile(_guide_example(), str(GUIDE), "exec"), namespace)  # noqa: S102
    handled = namespace["run"](kafka_settings, idle_s=3)  # type: ignore[operator]
    assert handled == 3
    out = capsys.readouterr().out
    assert "42 request alpha 0.750" in out
    assert "latest for 42: req:2 ['newest', 'zeta']" in out
