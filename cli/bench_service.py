"""``liverank bench service``: one worker's sustained answers/s and latency, with references.

    liverank bench service --out out/bench_service.json   # twitch100k slice, ~10 minutes

One worker, one broker, one data slice, in one run: the service with the exported model,
the same service with the fake scorer (a), onnxruntime alone on the same requests (b), a
Faust app that only consumes (c) (the service, (a) and (c) alternating, the best of each
taken), then produce-to-publish p50/p99 at half the measured capacity, with the requests
sent at an even rate. Workers are ``liverank serve`` subprocesses; figures are only
comparable within one run (a shared machine).

What a full run does, not a toy: the data is ``out/data/twitch100k.csv``, generated when
missing (about a minute). Before every measured slice each worker first reads the
``--warm-steps`` steps before it without requests (`WARM_STEPS`, 7 days), so the users'
windows hold what they hold in a whole-log run: a cold slice answers most requests from the
popularity fallback (an empty window, no model call; 69% of a cold 40-step slice of
twitch100k, 3.6% after 7 days of warm-up, 3.3% over a whole run). The share of fallback
answers is reported next to every figure. Each part's topics are deleted when it is done
on tansu, which keeps every record in memory (`liverank.broker.tansu`); a run that starts
its own tansu gives its topics `tansu.RUN_PARTITIONS` partitions (LIVERANK_PARTITIONS
overrides) and starts a fresh one for the latency part (capacity drains, paced run, broker
floor), since tansu keeps state of every earlier part that it never frees.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import typer

from liverank.core.settings import Settings

logger = logging.getLogger(__name__)

BENCH_DATA = ("out/data/twitch100k.csv", "out/data/twitch100k.csv.gz")
FLOOR_S = 10.0  # the broker floor's length (`_broker_floor`)
WARM_STEPS = 1_008  # 7 days: the slice's fallback share near a whole run's (3.6% vs 3.3%)
WARM_TIMEOUT_S = 900.0


@dataclass
class Part:
    """A measured slice and the warm-up before it: one timeline split at the slice's first
    step (the warm-up: its watches and stream events, no request; starts of streams still
    live at its first step come first)."""

    warm: Any  # Timeline
    measured: Any  # Timeline

    @property
    def warm_watches(self) -> int:
        import numpy as np

        from liverank.model.data.timeline import WATCH

        return int(np.count_nonzero(self.warm.kind == WATCH))

    @property
    def requests(self) -> int:
        import numpy as np

        from liverank.model.data.timeline import REQUEST

        return int(np.count_nonzero(self.measured.kind == REQUEST))


def bench_service_command(
    data: Path | None = typer.Option(None, help="Twitch-format log. Default: out/data/"
                                     "twitch100k.csv(.gz), generated when missing (about a "
                                     "minute)."),
    model: Path | None = typer.Option(None, "--model", help="Exported model directory. "
                                      "Default: LIVERANK_MODEL_DIR if it holds one, else a "
                                      "randomly initialised model over the data's streamers "
                                      "(same shape and cost as a trained one)."),
    steps: int = typer.Option(40, help="Steps replayed for the throughput runs."),
    latency_steps: int = typer.Option(60, help="Steps replayed for the latency run (after "
                                      "the throughput slice; drained --repeat times for "
                                      "its own capacity, then paced at half the best)."),
    from_step: int | None = typer.Option(None, help="First step (default: the middle)."),
    repeat: int = typer.Option(2, min=1, help="Runs of the service, (a) and (c), "
                               "alternating; the best of each is reported (the least "
                               "disturbed by other jobs)."),
    warm_steps: int = typer.Option(WARM_STEPS, min=0, help="Steps before each measured "
                                   "slice a worker reads first, without requests, to fill "
                                   "the users' windows (0: a cold slice)."),
    out: Path = typer.Option(Path("out/bench_service.json"), help="Result JSON."),
    profile: bool = typer.Option(False, help="Record each model drain's worker with py-spy "
                                 "(raw stacks, all threads) while it drains, next to --out: "
                                 "where the worker's time goes."),
) -> None:
    """Sustained answers/s of one worker against its references, and p50/p99 latency.

    Each worker first reads --warm-steps steps without requests (the windows of a whole
    run), then drains a slice of steps as a backlog: with the model; with the fake scorer
    (a); onnxruntime alone on the same requests (b); a Faust app that only consumes (c).
    The service, (a) and (c) alternate --repeat times; the best of each is reported. Then
    the next --latency-steps: drained --repeat times for their own capacity, then paced at
    half the best: produce-to-publish p50/p99 from the produced_ms header, over
    the whole steady run and per 5-s window. The share of answers from the popularity
    fallback is given with every figure. Uses LIVERANK_KAFKA_BOOTSTRAP if set, else starts
    an embedded tansu.
    """
    import json

    if data is not None and not data.exists():
        typer.echo(f"error: --data {data}: no such file", err=True)
        raise typer.Exit(2)
    from liverank.model.data.twitch import DataError

    try:
        result = run_bench(data, model, steps, latency_steps, from_step,
                           out.parent / "bench-work", repeat, warm_steps,
                           profile_to=out.parent if profile else None)
    except DataError as exc:  # a malformed --data file
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    typer.echo(bench_table(result))
    typer.echo(f"wrote {out}")


def bench_table(r: dict[str, Any]) -> str:
    fb = r.get("fallback_share", {})
    rows = [f"data {r['data']} steps {r['steps']} ({r['requests']} requests, "
            f"{r['live_mean']:.0f} live candidates on average, after {r.get('warm_steps', 0)}"
            f" warm-up steps holding {r.get('warm_watches', 0):,} watches), model "
            f"{r['model']}",
            "| run | answers/s | fallback share |", "|---|---|---|"]
    rows += [f"| {name} | {value:,.0f} | {_share(fb.get(name))} |"
             for name, value in r["answers_per_s"].items()]
    rows.append(f"ratio service / min(fake, onnxruntime) = {r['ratio']:.2f}")
    if "consume_ratio" in r:
        cpu = r["cpu_ms_per_answer"]
        rows.append(f"ratio service / consume-only = {r['consume_ratio']:.2f} (answers/s); "
                    f"CPU ms per answer: service {cpu[SERVICE]:.3f}, fake scorer "
                    f"{cpu[FAKE]:.3f}, consume-only (two events) {cpu[CONSUME_ONLY]:.3f}: "
                    f"consume-only / service = {r['consume_cpu_ratio']:.2f}")
    lat = r["latency"]
    half = (f", half of {lat['capacity']:,.0f} answers/s drained on the same steps"
            if "capacity" in lat else "")
    steady = (f", {lat['steady_s']:.0f} s steady" if "steady_s" in lat else "")
    rows.append(f"latency at {lat['rate']:,.0f} requests/s offered{half} ({lat['answers']} "
                f"answers{steady}, fallback share {_share(lat.get('fallback_share'))}): p50 "
                f"{lat['p50_ms']:.1f} ms, p99 {lat['p99_ms']:.1f} ms")
    if "paced_load" in lat:
        pl = lat["paced_load"]
        rows.append(f"while paced: the worker's event loop {pl['loop_share']:.0%} of a core "
                    f"({pl['loop_us_per_answer']:.0f} us of its CPU an answer), the whole "
                    f"worker {pl['worker_share']:.0%}")
    if lat.get("p99_ms_windows"):
        w = lat["p99_ms_windows"]
        rows.append(f"p99 per {lat['window_s']:.0f}-s window ({len(w)} windows): "
                    f"{min(w):.1f}-{max(w):.1f} ms, median {sorted(w)[len(w) // 2]:.1f} ms")
    if "broker_floor" in lat:
        fl = lat["broker_floor"]
        rows.append(f"broker floor (librdkafka produce -> consume, same broker, "
                    f"{fl['messages_per_s']:,.0f} messages/s): p50 {fl['p50_ms']:.1f} ms, "
                    f"p99 {fl['p99_ms']:.1f} ms; the worker adds p50 "
                    f"{lat['p50_ms'] - fl['p50_ms']:.1f} ms, p99 "
                    f"{lat['p99_ms'] - fl['p99_ms']:.1f} ms")
    if lat.get("lookups"):
        rows.append(f"lookup GET /users/{{user}}/recommendations ({lat['lookups']} users, "
                    f"{lat['lookup_missed']} missed): p50 {lat['lookup_p50_ms']:.1f} ms, "
                    f"p99 {lat['lookup_p99_ms']:.1f} ms")
    return "\n".join(rows)


def _share(v: float | None) -> str:
    return "-" if v is None else f"{v:.1%}"


SERVICE, FAKE = "service (onnxruntime model)", "(a) service, fake scorer"
SCORE_ONLY = "(b) onnxruntime alone, same requests"
CONSUME_ONLY = "(c) Faust consume-only app (events/s / 2)"


def run_bench(data: Path | None, model: Path | None, steps: int, latency_steps: int,
              from_step: int | None, work: Path, repeat: int = 2,
              warm_steps: int = WARM_STEPS, profile_to: Path | None = None) -> dict[str, Any]:
    import contextlib

    from liverank.broker.embedded import configured_or_embedded
    from liverank.model.data.twitch import load_interactions

    work.mkdir(parents=True, exist_ok=True)
    data = data or _bench_data()
    ds = load_interactions(data)
    model = model or _bench_model(ds, work)
    lo = from_step if from_step is not None else ds.max_step // 2
    with contextlib.ExitStack() as stack:
        base, broker = configured_or_embedded(stack)
        part = _part(ds, lo, lo + steps - 1, warm_steps, base)
        fake = _fake_like(model, work)
        drains: dict[str, list[float]] = {"onnx": [], "fake": [], "consume": []}
        cpu: dict[str, list[float]] = {"onnx": [], "fake": [], "consume": []}
        shares: dict[str, float | None] = {}
        # Alternating, the reference (c) included, so a busy spell of the machine or a
        # broker slowing down over the run (tansu does, docs/platform-notes.md) hurts every
        # variant alike: the ratio compares figures taken side by side, each the best of
        # ``repeat``.
        for i in range(repeat):
            profile = profile_to / f"profile-drain-{i + 1}.txt" if profile_to else None
            rate, shares[SERVICE], ms = _drain(base, part, model, work, "onnx",
                                               profile=profile)
            drains["onnx"].append(rate)
            cpu["onnx"].append(ms)
            rate, shares[FAKE], ms = _drain(base, part, fake, work, "fake", fake=True)
            drains["fake"].append(rate)
            cpu["fake"].append(ms)
            rate, ms = _consume_only(base, part.measured, work)
            drains["consume"].append(rate / 2)  # answers/s: two events an answer
            cpu["consume"].append(ms * 2)
        score_rate, shares[SCORE_ONLY] = _score_only(part, model, base)
        rates = {SERVICE: max(drains["onnx"]), FAKE: max(drains["fake"]),
                 SCORE_ONLY: score_rate, CONSUME_ONLY: max(drains["consume"])}
        shares[CONSUME_ONLY] = None  # no answers: the same records as the service's
        # CPU time per answer (two input events each): what a worker costs, far less
        # disturbed by other jobs on the machine than a rate.
        cpu_ms = {SERVICE: min(cpu["onnx"]), FAKE: min(cpu["fake"]),
                  CONSUME_ONLY: min(cpu["consume"])}
        main = rates[SERVICE]
        fresh = broker is not None
        if broker is not None:
            # A tansu of its own for the latency part: the parts before it leave state the
            # broker never frees (its CPU per answer rose 0.58 -> 0.97 ms over a dozen runs
            # on one broker, docs/results.md, session 23), which no Kafka broker carries.
            broker.stop()
            base, broker = configured_or_embedded(stack)
        # Half of the capacity on the steps it is paced on: a slice's cost per request
        # follows the daily cycle of live candidates (session 9: the next 60 steps drained
        # at 5.9-6.5k answers/s where the 40 before drained 7.0-7.6k), so half of another
        # slice's figure is another load.
        lat_part = _part(ds, lo + steps, lo + steps + latency_steps - 1, warm_steps, base)
        capacity = max(_drain(base, lat_part, model, work, "onnx-latency-slice")[0]
                       for _ in range(repeat))  # the best, as for the throughput slice
        latency = _latency(base, lat_part, model, work, rate=capacity / 2)
        latency["capacity"] = capacity
        latency["broker_floor"] = _broker_floor(base, latency["messages_per_s"])
    ratio = main / min(rates[FAKE], rates[SCORE_ONLY])
    live = _live_mean(ds, lo, lo + steps)
    table = [[name, value, SERVICE, main] for name, value in rates.items()
             if not name.startswith("service")]
    table.append(["produce-to-publish p50 ms at half capacity", latency["p50_ms"], "p99 ms",
                  latency["p99_ms"]])
    return {"data": str(data), "model": str(model), "partitions": base.partitions,
            "broker_kind": base.broker_kind, "latency_on_a_fresh_broker": fresh,
            "from_step": lo, "steps": steps,
            "warm_steps": warm_steps, "warm_watches": part.warm_watches,
            "requests": part.requests, "live_mean": live, "answers_per_s": rates,
            "fallback_share": shares, "ratio": ratio, "drains": drains, "latency": latency,
            "cpu_ms_per_answer": cpu_ms, "cpu_drains": cpu,
            "consume_ratio": main / rates[CONSUME_ONLY],
            "consume_cpu_ratio": cpu_ms[CONSUME_ONLY] / cpu_ms[SERVICE], "table": table}


def _bench_data() -> Path:
    """out/data/twitch100k.csv(.gz); generated when missing (the file `liverank data synth
    --scale twitch100k --seed 0` writes, about a minute), never a smaller stand-in."""
    for p in BENCH_DATA:
        if Path(p).exists():
            return Path(p)
    from liverank.model.data.synth import write

    path = Path(BENCH_DATA[0])
    typer.echo(f"no {path}: generating it (scale twitch100k, seed 0; about a minute)")
    path.parent.mkdir(parents=True, exist_ok=True)
    write("twitch100k", 0, path)
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


def _part(ds: Any, lo: int, hi: int, warm_steps: int, base: Settings) -> Part:
    """Steps ``lo..hi`` with a request before every watch, and the ``warm_steps`` before."""
    from liverank.model.data.timeline import build_timeline

    tl = build_timeline(ds, from_step=max(lo - warm_steps, 0), to_step=hi, requests_from=lo,
                        epoch_ms=base.epoch_ms)
    early = tl.step < lo
    return Part(tl.select(early), tl.select(~early))


def _live_mean(ds: Any, lo: int, hi: int) -> float:
    from liverank.model.data.availability import availability

    counts = availability(ds).live_counts()[lo:hi]
    return float(counts.mean()) if len(counts) else 0.0


def _fresh(base: Settings, name: str) -> Settings:
    import uuid

    return base.model_copy(update={"topic_prefix": f"bench-{name}-{uuid.uuid4().hex[:6]}."})


def _preload(settings: Settings, tl: Any, end: bool = True) -> None:
    from liverank.replay.producer import replay_to_kafka

    if not len(tl):
        return
    report = replay_to_kafka(tl, settings, end=end)
    if not report.ok:
        raise RuntimeError(f"bench replay failed: {report.first_error}")


def _release(settings: Settings) -> None:
    """Delete a finished part's topics when the broker is tansu (memory; see the module
    docstring)."""
    from liverank.broker.embedded import release_run_topics

    release_run_topics(settings)


def _warm_up(settings: Settings, part: Part, worker: _BenchWorker) -> None:
    """Send ``part``'s warm-up and wait until ``worker`` has read every watch of it."""
    import time

    _preload(settings, part.warm, end=False)
    n = part.warm_watches
    deadline = time.monotonic() + WARM_TIMEOUT_S
    while worker.watches_read() < n:
        if worker.proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"bench worker: {worker.watches_read():.0f} of {n} warm-up "
                               f"watches read; see {worker.log}")
        time.sleep(0.5)


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
                "LIVERANK_PARTITIONS": str(settings.partitions),
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

    def _metrics_text(self) -> str | None:
        import urllib.request

        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics",
                                        timeout=2) as r:
                return str(r.read().decode())
        except OSError:
            return None

    def answers(self) -> float:
        text = self._metrics_text()
        if text is None:
            return -1.0
        for line in text.splitlines():
            if line.startswith('liverank_answers_total{trigger="request"}'):
                return float(line.split()[-1])
        return 0.0

    def watches_read(self) -> float:
        """Watches the worker has read from user-events (its events-in counter)."""
        text = self._metrics_text() or ""
        return sum(float(line.split()[-1]) for line in text.splitlines()
                   if line.startswith("liverank_events_in_total{") and 'kind="watch"' in line
                   and 'user-events"' in line)

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


def _drain(base: Settings, part: Part, model: Path, work: Path, name: str,
           fake: bool = False, profile: Path | None = None) -> tuple[float, float, float]:
    """(answers/s, fallback share, worker CPU ms per answer) of one worker draining a
    backlog after its warm-up: from its first to its last answer; CPU from the slice's
    replay to its last answer. With ``profile``, py-spy records the worker's stacks while
    it drains (not while it warms up) into that file."""
    settings = _fresh(base, name)
    worker = _BenchWorker(settings, model, work, name, fake)
    spy = None
    try:
        _warm_up(settings, part, worker)
        if profile is not None:
            spy = _py_spy(worker.proc.pid, profile)
        cpu0 = _cpu_s(worker.proc.pid)
        _preload(settings, part.measured)  # produced far faster than read: a backlog
        worker.wait_answers(part.requests, timeout=900)
        cpu_ms = (_cpu_s(worker.proc.pid) - cpu0) * 1000 / part.requests
    finally:
        if spy is not None:
            _stop_py_spy(spy, profile)
        worker.stop()
    answers = _answers(settings)
    _release(settings)
    from liverank.client.monitor import answer_rate

    published = [r.published_ms for r in answers]
    rate = answer_rate(published, min_span_ms=1.0)
    share = sum(r.fallback for r in answers) / len(answers)
    logger.info("bench run=%s answers=%d answers_per_s=%.1f fallback_share=%.3f", name,
                len(published), rate, share)
    return rate, share, cpu_ms


def _loop_cpu_s(pid: int) -> float:
    """User + system CPU seconds of a running worker's main thread, its event loop (the
    thread whose id is the process id; `bench_soak.read_cpu_s`)."""
    from liverank.cli.bench_soak import read_cpu_s

    got = read_cpu_s(pid, thread=pid)
    if got is None:
        raise RuntimeError(f"cannot read the CPU time of the bench worker's event loop "
                           f"(pid {pid})")
    return got


def _cpu_s(pid: int) -> float:
    """User + system CPU seconds of a running worker (`bench_soak.read_cpu_s`)."""
    from liverank.cli.bench_soak import read_cpu_s

    got = read_cpu_s(pid)
    if got is None:
        raise RuntimeError(f"cannot read the CPU time of the bench worker (pid {pid})")
    return got


def _py_spy(pid: int, out: Path) -> Any:
    """``py-spy record`` of ``pid`` (raw collapsed stacks, every thread, 100 Hz) until
    `_stop_py_spy`; a missing py-spy is an error, not a silent run without a profile."""
    import shutil
    import subprocess
    import sys

    exe = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(exe).exists():
        raise RuntimeError("--profile needs py-spy (pip install py-spy; it is in the dev lock)")
    return subprocess.Popen([exe, "record", "-p", str(pid), "-o", str(out), "-f", "raw",
                             "-r", "100", "--threads"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def _stop_py_spy(spy: Any, out: Path | None) -> None:
    import signal

    spy.send_signal(signal.SIGINT)  # py-spy writes its file on SIGINT
    _, err = spy.communicate(timeout=60)
    if out is None or not out.exists():
        raise RuntimeError(f"py-spy wrote no profile: {err.decode(errors='replace')[-500:]}")
    logger.info("bench profile=%s", out)


def _score_only(part: Part, model: Path, base: Settings) -> tuple[float, float]:
    """(users/s, fallback share) of onnxruntime alone (1 thread) on the requests the service
    builds after the same warm-up, in its batches."""
    import time

    from liverank.core import events as ev
    from liverank.model.data.live import LiveStreams
    from liverank.model.scorer import load_scorer
    from liverank.services.state import UserWindows, plan_batch, rank_inputs

    scorer = load_scorer(model, threads=1)
    live = LiveStreams(partitions=1, stopped_horizon=10**6)
    windows = UserWindows({}, scorer.window_len, base.window_slack)
    items = []
    for tl in (part.warm, part.measured):
        for e in tl:
            if isinstance(e, ev.Watch | ev.RecRequest):
                items.append((ev.user_key(e.user), e, None))
            elif not isinstance(e, ev.End):
                live.apply(e, 0)
    requests, _ = rank_inputs(plan_batch(items, windows), live)
    size = base.batch_size
    fallback = 0
    t0 = time.perf_counter()
    for i in range(0, len(requests), size):
        fallback += sum(r.fallback for r in scorer.rank(requests[i:i + size], base.top_k))
    return len(requests) / (time.perf_counter() - t0), fallback / max(len(requests), 1)


def _consume_only(base: Settings, tl: Any, work: Path) -> tuple[float, float]:
    """(events/s, CPU ms per event) of a minimal Faust app that only iterates user-events
    (raw values)."""
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
    try:
        subprocess.run([sys.executable, "-c", "from liverank.cli.bench_service import "
                        f"consume_only_main; consume_only_main({n}, {str(result)!r})"],
                       env=env, capture_output=True, timeout=900, check=True)
    finally:
        _release(settings)
    got = json.loads(result.read_text())
    return float(got["events_per_s"]), float(got["cpu_ms_per_event"])


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
    seen = {"n": 0, "t0": 0.0, "cpu0": 0.0}

    @app.agent(topic)
    async def count(stream: Any) -> None:
        async for _ in stream:
            if seen["n"] == 0:
                seen["t0"] = time.perf_counter()
                seen["cpu0"] = time.process_time()  # every thread of the process
            seen["n"] += 1
            if seen["n"] == n:
                rate = (n - 1) / (time.perf_counter() - seen["t0"])
                cpu_ms = (time.process_time() - seen["cpu0"]) * 1000 / max(n - 1, 1)
                Path(result).write_text(json.dumps({"events": n, "events_per_s": rate,
                                                    "cpu_ms_per_event": cpu_ms}))
                os._exit(0)  # the measurement is done; skip the orderly shutdown

    faust.Worker(app, loglevel="warning", quiet=True).execute_from_commandline()


def _latency(base: Settings, part: Part, model: Path, work: Path, rate: float
             ) -> dict[str, Any]:
    """p50/p99 produce-to-publish with the replay sending ``rate`` requests/s, evenly, after
    the worker has read its warm-up."""
    import time

    import numpy as np
    from confluent_kafka import Producer

    from liverank.broker import kafka
    from liverank.replay.producer import message_rate, paced_sink, replay

    settings = _fresh(base, "latency")
    counts = kafka.ensure_topics(settings)
    tl, n = part.measured, part.requests
    parts = counts[settings.topic(kafka.STREAM_EVENTS)]
    per_s = message_rate(tl, parts, rate)
    worker = _BenchWorker(settings, model, work, "latency")
    try:
        deadline = time.monotonic() + 120
        while not worker.ready():  # measure the steady state, not the group join
            if time.monotonic() > deadline or worker.proc.poll() is not None:
                raise RuntimeError(f"bench latency worker not ready; see {worker.log}")
            time.sleep(0.5)
        _warm_up(settings, part, worker)
        producer_id = kafka.ProducerIdWatch()
        producer = Producer({**kafka.producer_config(settings), **producer_id.config()})
        # Connected, with its idempotent producer id, before the clock starts: otherwise the
        # first ~0.5 s of records wait in librdkafka and count as service latency.
        producer.list_topics(timeout=30)
        producer_id.wait(producer, 30)
        sink = paced_sink(producer, per_s, settings, parts)
        pid, started = worker.proc.pid, time.monotonic()
        loop_before, cpu_before = _loop_cpu_s(pid), _cpu_s(pid)
        report = replay(tl, sink, partitions=parts,
                        stream_topic=settings.topic(kafka.STREAM_EVENTS),
                        user_topic=settings.topic(kafka.USER_EVENTS))
        if not report.ok:
            raise RuntimeError(f"bench latency replay failed: {report.first_error}")
        worker.wait_answers(n, timeout=600)
        paced = paced_load(_loop_cpu_s(pid) - loop_before, _cpu_s(pid) - cpu_before,
                           time.monotonic() - started, n)
        lookups = _lookups(worker.port, _request_users(tl))
    finally:
        worker.stop()
    answers = _answers(settings)
    _release(settings)
    recs = [r for r in answers if r.produced_ms is not None]
    produced = np.array([r.produced_ms for r in recs], dtype=np.int64)
    published = np.array([r.published_ms for r in recs], dtype=np.int64)
    return {"rate": rate, "messages_per_s": per_s, "answers": len(recs),
            "fallback_share": sum(r.fallback for r in answers) / max(len(answers), 1),
            "late": sum(r.late for r in answers), "paced_load": paced,
            **latency_figures(produced, published), **lookups}


def paced_load(loop_s: float, worker_s: float, wall_s: float, answers: int
               ) -> dict[str, float]:
    """The worker's CPU while paced: its event loop's share of a core, the whole worker's,
    and the loop's CPU an answer. Why next to p99: at half capacity the tail follows how
    busy the one event loop is (~62-67% in the runs that met 50 ms, ~80% in one that did
    not, the same code: docs/results.md, session 29), and the cores of a shared VM move
    that by a fifth from one run to the next."""
    if wall_s <= 0 or answers <= 0:
        raise ValueError(f"paced load over {wall_s:.3f} s and {answers} answers: nothing "
                         "was measured")
    return {"loop_share": loop_s / wall_s, "worker_share": worker_s / wall_s,
            "loop_us_per_answer": loop_s * 1e6 / answers, "wall_s": wall_s}


LATENCY_WARM_MS = 2_000  # first fetches, first onnxruntime calls: not the steady state
LATENCY_WINDOW_S = 5.0


def latency_figures(produced_ms: Any, published_ms: Any, warm_ms: int = LATENCY_WARM_MS,
                    window_s: float = LATENCY_WINDOW_S) -> dict[str, Any]:
    """p50/p99 produce-to-publish of the answers produced after the first ``warm_ms``, and
    p99 per ``window_s`` window of produce time: one figure over a whole run hides whether
    a tail is steady or one stall (a 1.6-s steady window gave p99 59-722 ms for the same
    code, docs/results.md)."""
    import numpy as np

    produced = np.asarray(produced_ms, dtype=np.int64)
    if not len(produced):
        raise ValueError("no answer carries a produced_ms: no latency to report")
    lat = np.asarray(published_ms, dtype=np.int64) - produced
    since = produced - produced.min()
    steady = since >= warm_ms
    if not steady.any():
        steady = np.ones(len(lat), dtype=bool)  # a run shorter than the warm-up: all of it
    order = np.argsort(produced[steady], kind="stable")
    lat, since = lat[steady][order].astype(float), since[steady][order]
    half = len(lat) // 2
    width = int(window_s * 1000)
    bins = ((since - since[0]) // width).astype(np.int64)
    whole = int(since[-1] - since[0]) // width  # a run's last, partial window is left out
    in_window = (lat[bins == b] for b in range(whole))
    # a window's p99 needs its samples
    windows = [float(np.percentile(w, 99)) for w in in_window if len(w) >= 100]
    return {"steady_answers": len(lat),
            "steady_s": float(since[-1] - since[0]) / 1000,
            # a load the service holds: the second half no slower than the first
            "p50_ms_halves": [float(np.percentile(lat[:half], 50)) if half else None,
                              float(np.percentile(lat[half:], 50))],
            "p50_ms": float(np.percentile(lat, 50)), "p99_ms": float(np.percentile(lat, 99)),
            "p99_ms_windows": windows, "window_s": window_s}


def _broker_floor(base: Settings, per_s: float, seconds: float = FLOOR_S,
                  wait_s: float = 30.0) -> dict[str, Any]:
    """p50/p99 of a bare librdkafka produce -> consume through the same broker at the latency
    run's message rate, paced by the latency run's sink (`EvenRateSink`: ticks on tansu,
    spread over the partitions), the consumer polling one record at a time with the
    worker's fetch wait: the part of produce-to-publish no worker can remove. The first
    second is not counted (connections, first fetches)."""
    import threading
    import time

    import numpy as np
    from confluent_kafka import Consumer, KafkaError, Producer
    from confluent_kafka import TopicPartition as KafkaPartition

    from liverank.broker import kafka
    from liverank.core.events import PRODUCED_MS_HEADER
    from liverank.replay.producer import paced_sink

    settings = _fresh(base, "floor")
    counts = kafka.ensure_topics(settings)
    topic = settings.topic(kafka.USER_EVENTS)
    parts = counts[topic]
    consumer = Consumer(kafka.consumer_config(settings)
                        | {"fetch.wait.max.ms": int(settings.fetch_wait_ms)})
    consumer.assign([KafkaPartition(topic, p, 0) for p in range(parts)])
    lat: list[float] = []
    stop = threading.Event()
    errors: list[str] = []

    def consume() -> None:
        while not stop.is_set():
            m = consumer.poll(0.1)
            if m is None:
                continue
            err = m.error()
            if err is not None:
                if err.code() != KafkaError._PARTITION_EOF:  # EOF: caught up
                    errors.append(str(err))
                continue
            sent = dict(m.headers() or []).get(PRODUCED_MS_HEADER)
            if sent is None:
                errors.append(f"a record without {PRODUCED_MS_HEADER}")
                continue
            lat.append(time.time() * 1000 - int(sent))

    reader = threading.Thread(target=consume, name="floor-reader", daemon=True)
    reader.start()
    producer = Producer(kafka.producer_config(settings))
    producer.list_topics(timeout=30)
    sink = paced_sink(producer, per_s, settings, parts)
    n = int(per_s * seconds)
    pad = b"x" * 150  # about a user event's size
    try:
        for i in range(n):
            sink.produce(topic, pad, str(i % 997).encode(), i % parts)
            sink.poll(0)
        left = sink.flush(30)
        if left:
            raise RuntimeError(f"broker floor: {left} of {n} records not acknowledged")
        deadline = time.monotonic() + wait_s
        while len(lat) < n and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        stop.set()
        reader.join(5)
        consumer.close()
        _release(settings)
    if len(lat) < n or errors:
        raise RuntimeError(f"broker floor: read {len(lat)} of {n} records; errors {errors[:3]}")
    steady = np.array(lat[int(per_s):], dtype=float)  # after the first second
    return {"messages_per_s": per_s, "records": n, "p50_ms": float(np.percentile(steady, 50)),
            "p99_ms": float(np.percentile(steady, 99))}


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
