"""``liverank bench service``: one worker's sustained answers/s and latency, with references.

    liverank bench service --out out/bench_service.json   # twitch100k slice, ~5 minutes

One worker, one broker, one data slice, in one run: the service with the exported model,
the same service with the fake scorer (a), onnxruntime alone on the same requests (b), a
Faust app that only consumes (c), then produce-to-publish p50/p99 at half the measured
capacity, with the requests sent at an even rate. Workers are ``liverank serve``
subprocesses; figures are only comparable within one run (a shared machine).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import typer

from liverank.core.settings import Settings

logger = logging.getLogger(__name__)

BENCH_DATA = ("out/data/twitch100k.csv", "out/data/twitch100k.csv.gz")


def bench_service_command(
    data: Path | None = typer.Option(None, help="Twitch-format log. Default: out/data/"
                                     "twitch100k.csv(.gz) if present, else a generated "
                                     "'small' synthetic file (the result says which)."),
    model: Path | None = typer.Option(None, "--model", help="Exported model directory. "
                                      "Default: LIVERANK_MODEL_DIR if it holds one, else a "
                                      "randomly initialised model over the data's streamers "
                                      "(same shape and cost as a trained one)."),
    steps: int = typer.Option(40, help="Steps replayed for the throughput runs."),
    latency_steps: int = typer.Option(20, help="Steps replayed for the latency run."),
    from_step: int | None = typer.Option(None, help="First step (default: the middle)."),
    repeat: int = typer.Option(2, min=1, help="Drains per service variant, alternating; "
                               "the best is reported (the least disturbed by other jobs)."),
    out: Path = typer.Option(Path("out/bench_service.json"), help="Result JSON."),
) -> None:
    """Sustained answers/s of one worker against its references, and p50/p99 latency.

    Replays a slice of steps into fresh topics (a backlog), then times one worker draining
    it: with the model; with the fake scorer (a); onnxruntime alone on the same requests
    (b); a Faust app that only consumes (c). Then replays another slice paced at half the
    measured capacity and reports produce-to-publish p50/p99 from the produced_ms header.
    Uses LIVERANK_KAFKA_BOOTSTRAP if set, else starts an embedded tansu.
    """
    import json

    result = run_bench(data, model, steps, latency_steps, from_step, out.parent / "bench-work",
                       repeat)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    typer.echo(bench_table(result))
    typer.echo(f"wrote {out}")


def bench_table(r: dict[str, Any]) -> str:
    rows = [f"data {r['data']} steps {r['steps']} ({r['requests']} requests, "
            f"{r['live_mean']:.0f} live candidates on average), model {r['model']}",
            "| run | answers/s |", "|---|---|"]
    rows += [f"| {name} | {value:,.0f} |" for name, value in r["answers_per_s"].items()]
    rows.append(f"ratio service / min(fake, onnxruntime) = {r['ratio']:.2f}")
    lat = r["latency"]
    rows.append(f"latency at {lat['rate']:,.0f} requests/s offered ({lat['answers']} answers):"
                f" p50 {lat['p50_ms']:.1f} ms, p99 {lat['p99_ms']:.1f} ms")
    if lat.get("lookups"):
        rows.append(f"lookup GET /users/{{user}}/recommendations ({lat['lookups']} users, "
                    f"{lat['lookup_missed']} missed): p50 {lat['lookup_p50_ms']:.1f} ms, "
                    f"p99 {lat['lookup_p99_ms']:.1f} ms")
    return "\n".join(rows)


def run_bench(data: Path | None, model: Path | None, steps: int, latency_steps: int,
              from_step: int | None, work: Path, repeat: int = 2) -> dict[str, Any]:
    import contextlib

    import numpy as np

    from liverank.broker.embedded import EmbeddedBroker
    from liverank.core.settings import bootstrap_configured
    from liverank.model.data.twitch import load_interactions

    work.mkdir(parents=True, exist_ok=True)
    data = data or _bench_data(work)
    ds = load_interactions(data)
    model = model or _bench_model(ds, work)
    lo = from_step if from_step is not None else ds.max_step // 2
    with contextlib.ExitStack() as stack:
        if bootstrap_configured():
            base = Settings()
        else:
            broker = stack.enter_context(EmbeddedBroker.start("127.0.0.1:0"))
            base = Settings(kafka_bootstrap=broker.bootstrap, broker_kind="tansu")
        tl = _slice(ds, lo, lo + steps - 1, base)
        requests = int(np.count_nonzero(tl.kind == 3))
        fake = _fake_like(model, work)
        drains: dict[str, list[float]] = {"onnx": [], "fake": []}
        for _ in range(repeat):  # alternating, so a busy spell hurts both variants alike
            drains["onnx"].append(_drain(base, tl, model, work, "onnx"))
            drains["fake"].append(_drain(base, tl, fake, work, "fake", fake=True))
        rates = {
            "service (onnxruntime model)": max(drains["onnx"]),
            "(a) service, fake scorer": max(drains["fake"]),
            "(b) onnxruntime alone, same requests": _score_only(tl, model, base),
            "(c) Faust consume-only app (events/s / 2)": _consume_only(base, tl, work) / 2,
        }
        main = rates["service (onnxruntime model)"]
        lat_tl = _slice(ds, lo + steps, lo + steps + latency_steps - 1, base)
        latency = _latency(base, lat_tl, model, work, rate=main / 2)
    ratio = main / min(rates["(a) service, fake scorer"],
                       rates["(b) onnxruntime alone, same requests"])
    live = _live_mean(ds, lo, lo + steps)
    table = [[name, value, "service (onnxruntime model)", main] for name, value in
             rates.items() if not name.startswith("service")]
    table.append(["produce-to-publish p50 ms at half capacity", latency["p50_ms"], "p99 ms",
                  latency["p99_ms"]])
    return {"data": str(data), "model": str(model), "from_step": lo, "steps": steps,
            "requests": requests, "live_mean": live, "answers_per_s": rates, "ratio": ratio,
            "drains": drains,
            "latency": latency, "table": table}


def _bench_data(work: Path) -> Path:
    for p in BENCH_DATA:
        if Path(p).exists():
            return Path(p)
    from liverank.model.data.synth import write

    path = work / "small.csv"
    if not path.exists():
        logger.warning("no out/data/twitch100k.csv: benchmarking on a generated 'small' file")
        write("small", 0, path)
    return path


def _bench_model(ds: Any, work: Path) -> Path:
    configured = Path(Settings().model_dir)
    if (configured / "model.json").exists():
        return configured
    path = work / "random-model"
    if not (path / "model.json").exists():
        _random_model(ds, path)
    return path


def _random_model(ds: Any, out: Path) -> None:
    """A randomly initialised liverank model over the data's streamers (see
    `export_random_model`); runs only when no model was given."""
    import numpy as np

    from liverank.cli.bench_scorer import export_random_model

    names = tuple(str(n) for n in ds.streamer_names[1:])
    counts = np.bincount(ds.streamer, minlength=len(names) + 1)[1:].astype(np.int64)
    export_random_model(names, counts, out)


def _fake_like(model: Path, work: Path) -> Path:
    from liverank.model.scorer import load_scorer
    from liverank.services.testing import write_fake_model

    return write_fake_model(work / "fake-model", "fake-bench", load_scorer(model).window_len)


def _slice(ds: Any, lo: int, hi: int, base: Settings) -> Any:
    from liverank.model.data.timeline import build_timeline

    return build_timeline(ds, from_step=lo, to_step=hi, epoch_ms=base.epoch_ms)


def _live_mean(ds: Any, lo: int, hi: int) -> float:
    from liverank.model.data.availability import availability

    counts = availability(ds).live_counts()[lo:hi]
    return float(counts.mean()) if len(counts) else 0.0


def _fresh(base: Settings, name: str) -> Settings:
    import uuid

    return base.model_copy(update={"topic_prefix": f"bench-{name}-{uuid.uuid4().hex[:6]}."})


def _preload(settings: Settings, tl: Any) -> None:
    from liverank.replay.producer import replay_to_kafka

    report = replay_to_kafka(tl, settings)
    if not report.ok:
        raise RuntimeError(f"bench replay failed: {report.first_error}")


class _BenchWorker:
    """A ``liverank serve`` subprocess for the benchmark."""

    def __init__(self, settings: Settings, model: Path, work: Path, name: str,
                 fake: bool = False):
        import os
        import subprocess
        import sys

        from liverank.broker.embedded import free_port

        self.port = free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("LIVERANK_")}
        env |= {"LIVERANK_KAFKA_BOOTSTRAP": settings.kafka_bootstrap,
                "LIVERANK_TOPIC_PREFIX": settings.topic_prefix,
                "LIVERANK_BROKER_KIND": settings.broker_kind, "LIVERANK_STORE": "memory://",
                "LIVERANK_WEB_PORT": str(self.port), "LIVERANK_WORKER_ID": "bench",
                "LIVERANK_MODEL_POLL_S": "0", "LIVERANK_MODEL_DIR": str(model)}
        # The fake scorer's worker: its loader is handed in by the testing module's entry
        # point (`liverank serve` serves exported models only).
        cmd = ([sys.executable, "-m", "liverank.services.testing", "serve"] if fake else
               [sys.executable, "-c", "from liverank.cli.main import main; main()", "serve"])
        self.log = work / f"worker-{name}.log"
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(
                [*cmd, "--loglevel", "warning"],
                env=env, stdout=log, stderr=subprocess.STDOUT)

    def answers(self) -> float:
        import urllib.request

        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics",
                                        timeout=2) as r:
                text = r.read().decode()
        except OSError:
            return -1.0
        for line in text.splitlines():
            if line.startswith('liverank_answers_total{trigger="request"}'):
                return float(line.split()[-1])
        return 0.0

    def ready(self) -> bool:
        """/health says ready: live index caught up, table recovered, partitions assigned."""
        import json
        import urllib.error
        import urllib.request

        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/health",
                                        timeout=2) as r:
                return bool(json.loads(r.read()).get("ready"))
        except (OSError, ValueError, urllib.error.HTTPError):
            return False

    def wait_answers(self, n: int, timeout: float) -> None:
        import time

        deadline = time.monotonic() + timeout
        while self.answers() < n:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"bench worker: {self.answers():.0f} of {n} answers; "
                                   f"see {self.log}")
            time.sleep(0.5)

    def stop(self) -> None:
        import signal
        import subprocess

        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def _answers(settings: Settings) -> list[Any]:
    from liverank.broker import kafka
    from liverank.core import events as ev

    msgs = kafka.read_topic(settings, settings.topic(kafka.RECOMMENDATIONS), timeout_s=60)
    return [ev.decode(m.value() or b"", ev.Recommendation) for m in msgs]


def _drain(base: Settings, tl: Any, model: Path, work: Path, name: str,
           fake: bool = False) -> float:
    """Answers/s of one worker draining a backlog: from its first to its last answer."""
    import numpy as np

    settings = _fresh(base, name)
    _preload(settings, tl)
    n = int(np.count_nonzero(tl.kind == 3))
    worker = _BenchWorker(settings, model, work, name, fake)
    try:
        worker.wait_answers(n, timeout=900)
    finally:
        worker.stop()
    published = sorted(r.published_ms for r in _answers(settings))
    seconds = max(published[-1] - published[0], 1) / 1000
    logger.info("bench run=%s answers=%d seconds=%.2f", name, len(published), seconds)
    return (len(published) - 1) / seconds


def _score_only(tl: Any, model: Path, base: Settings) -> float:
    """onnxruntime alone (1 thread) on the requests the service builds, in its batches."""
    import time

    from liverank.core import events as ev
    from liverank.model.data.live import LiveStreams
    from liverank.model.scorer import load_scorer
    from liverank.services.state import UserWindows, plan_batch, rank_inputs

    scorer = load_scorer(model, threads=1)
    live = LiveStreams(partitions=1, stopped_horizon=10**6)
    windows = UserWindows({}, scorer.window_len, base.window_slack)
    items = []
    for e in tl:
        if isinstance(e, ev.Watch | ev.RecRequest):
            items.append((ev.user_key(e.user), e, None))
        elif not isinstance(e, ev.End):
            live.apply(e, 0)
    requests, _ = rank_inputs(plan_batch(items, windows), live)
    size = base.batch_size
    t0 = time.perf_counter()
    for i in range(0, len(requests), size):
        scorer.rank(requests[i:i + size], base.top_k)
    return len(requests) / (time.perf_counter() - t0)


def _consume_only(base: Settings, tl: Any, work: Path) -> float:
    """Events/s of a minimal Faust app that only iterates user-events (raw values)."""
    import json
    import os
    import subprocess
    import sys

    import numpy as np

    settings = _fresh(base, "consume")
    _preload(settings, tl)
    n = int(np.count_nonzero(tl.kind >= 3))
    env = {k: v for k, v in os.environ.items() if not k.startswith("LIVERANK_")}
    env |= {"LIVERANK_KAFKA_BOOTSTRAP": settings.kafka_bootstrap,
            "LIVERANK_TOPIC_PREFIX": settings.topic_prefix,
            "LIVERANK_BROKER_KIND": settings.broker_kind}
    result = work / "consume-only.json"
    result.unlink(missing_ok=True)
    subprocess.run([sys.executable, "-c", "from liverank.cli.bench_service import "
                    f"consume_only_main; consume_only_main({n}, {str(result)!r})"], env=env,
                   capture_output=True, timeout=900, check=True)
    return float(json.loads(result.read_text())["events_per_s"])


def consume_only_main(n: int, result: str) -> None:
    """Run a Faust app that counts ``n`` user-events, write events/s as JSON, exit."""
    import json
    import os
    import time

    import faust

    from liverank.broker import kafka
    from liverank.services.faustcompat import faust_app_options

    settings = Settings()
    app = faust.App(f"{settings.topic_prefix}consume-only", **faust_app_options(settings),
                    web_enabled=False, autodiscover=False)
    topic = app.topic(settings.topic(kafka.USER_EVENTS), key_type=bytes, value_type=bytes,
                      key_serializer="raw", value_serializer="raw")
    seen = {"n": 0, "t0": 0.0}

    @app.agent(topic)
    async def count(stream: Any) -> None:
        async for _ in stream:
            if seen["n"] == 0:
                seen["t0"] = time.perf_counter()
            seen["n"] += 1
            if seen["n"] == n:
                rate = (n - 1) / (time.perf_counter() - seen["t0"])
                Path(result).write_text(json.dumps({"events": n, "events_per_s": rate}))
                os._exit(0)  # the measurement is done; skip the orderly shutdown

    faust.Worker(app, loglevel="warning", quiet=True).execute_from_commandline()


def _paced_sink(producer: Any, rate: float) -> Any:
    """A producer that sends at a steady ``rate`` messages/s (the replay's own pacing
    releases a whole step at once: bursts that would measure the burst, not the service),
    stamping ``produced_ms`` when each message is actually handed to librdkafka."""
    import time

    from liverank.replay.producer import ForwardingSink

    class PacedSink(ForwardingSink):
        def __init__(self) -> None:
            super().__init__(producer)
            self._t0, self._n = time.monotonic(), 0

        def produce(self, topic: str, value: Any = None, key: Any = None,
                    partition: int = -1, **kwargs: Any) -> None:
            self._n += 1
            wait = self._t0 + self._n / rate - time.monotonic()
            if wait > 0:
                time.sleep(wait)
            kwargs["headers"] = [("produced_ms", b"%d" % (time.time_ns() // 1_000_000))]
            super().produce(topic, value, key, partition, **kwargs)

    return PacedSink()


def _latency(base: Settings, tl: Any, model: Path, work: Path, rate: float) -> dict[str, Any]:
    """p50/p99 produce-to-publish with the replay sending ``rate`` requests/s, evenly."""
    import time

    import numpy as np
    from confluent_kafka import Producer

    from liverank.broker import kafka
    from liverank.replay.producer import replay

    settings = _fresh(base, "latency")
    counts = kafka.ensure_topics(settings)
    n = int(np.count_nonzero(tl.kind == 3))
    parts = counts[settings.topic(kafka.STREAM_EVENTS)]
    messages = len(tl) + int(np.count_nonzero(tl.kind == 2)) * (parts - 1)
    worker = _BenchWorker(settings, model, work, "latency")
    try:
        deadline = time.monotonic() + 120
        while not worker.ready():  # measure the steady state, not the group join
            if time.monotonic() > deadline or worker.proc.poll() is not None:
                raise RuntimeError(f"bench latency worker not ready; see {worker.log}")
            time.sleep(0.5)
        producer = Producer(kafka.producer_config(settings))
        # Connected, with its idempotent producer id, before the clock starts: otherwise the
        # first ~0.5 s of records wait in librdkafka and count as service latency.
        producer.list_topics(timeout=30)
        sink = _paced_sink(producer, rate * messages / n)
        report = replay(tl, sink, partitions=parts,
                        stream_topic=settings.topic(kafka.STREAM_EVENTS),
                        user_topic=settings.topic(kafka.USER_EVENTS))
        if not report.ok:
            raise RuntimeError(f"bench latency replay failed: {report.first_error}")
        worker.wait_answers(n, timeout=600)
        lookups = _lookups(worker.port, _request_users(tl))
    finally:
        worker.stop()
    recs = [r for r in _answers(settings) if r.produced_ms is not None]
    start = min(r.produced_ms for r in recs)
    # The first 2 s are warm-up (first fetches, first onnxruntime calls): not steady state.
    steady = [r for r in recs if r.produced_ms - start >= 2000] or recs
    lat = np.array([r.published_ms - r.produced_ms for r in steady], dtype=float)
    return {"rate": rate, "messages_per_s": rate * messages / n, "answers": len(recs),
            "steady_answers": len(steady),
            "p50_ms": float(np.percentile(lat, 50)), "p99_ms": float(np.percentile(lat, 99)),
            **lookups}


def _request_users(tl: Any) -> list[int]:
    """The users who sent a request in the slice, in order of their first request."""
    import numpy as np

    rows = tl.ref[tl.kind == 3]  # a request's ref is its row
    users = np.asarray(tl.data.user_ids)[tl.data.user[rows]]
    _, first = np.unique(users, return_index=True)
    return [int(u) for u in users[np.sort(first)]]


def _lookups(port: int, users: list[int], most: int = 300) -> dict[str, Any]:
    """``GET /users/{user}/recommendations`` on the worker for users it has answered, one at
    a time after the replay: the lookup endpoint's latency (p50/p99 ms) and its misses."""
    import time
    import urllib.error
    import urllib.request

    import numpy as np

    lat, missed = [], 0
    for user in users[:most]:
        start = time.perf_counter()
        try:
            with urllib.request.urlopen(
                    f"http://127.0.0.1:{port}/users/{user}/recommendations", timeout=5) as r:
                r.read()
        except urllib.error.HTTPError:
            missed += 1
            continue
        lat.append((time.perf_counter() - start) * 1000)
    if not lat:
        return {"lookups": 0, "lookup_missed": missed}
    arr = np.asarray(lat)
    return {"lookups": len(lat), "lookup_missed": missed,
            "lookup_p50_ms": float(np.percentile(arr, 50)),
            "lookup_p99_ms": float(np.percentile(arr, 99))}
