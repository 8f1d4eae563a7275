"""``liverank demo``: the replay simulation end to end, on the embedded broker by default.

Stages (each is the same command a user would run by hand, started as a child process, so
the demo exercises the real entry points and its output shows their progress):

1. broker   -- the configured one, or tansu on a free port
2. data     -- ``liverank data synth`` (or ``--data PATH``)
3. train    -- ``liverank train --preset quick``
4. export   -- ``liverank export``
5. serve    -- ``liverank serve`` in the background
6. fill     -- ``liverank replay --to-step pivot_2-1 --no-end`` at max speed: every watch
               before the test window fills the user windows; the last steps before it
               carry requests (a backlog of about `CALIBRATION_REQUESTS`)
7. calibrate -- waits for every answer of that backlog, so the test window starts on a
               service that has read the whole fill, and measures the service's capacity:
               answers/s draining it (`drain_rate`; reported, not used, with ``--rate``)
8. replay   -- ``liverank replay --from-step pivot_2 --rate R``: the test window with its
               requests sent evenly at R = `RATE_SHARE` of the capacity (or ``--rate``), a
               load the service holds, so produce-to-publish latency is the service's own
9. monitor  -- online evaluation (in process) of the test window's requests (the
               calibration requests are answered, not scored), summary table with a
               latency histogram, whether the service held the rate (`held_load`: if
               not, the latency includes a queue and the summary says so), report under
               ``out/``

Every child process is stopped on success, failure and Ctrl-C. On a broker the demo did
not start, its topics are deleted at the end when that broker is tansu (which keeps every
record in memory; `liverank.broker.tansu.release_topics`) unless ``keep_topics``.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from liverank.client.monitor import OnlineEvaluator
    from liverank.core.settings import Settings

logger = logging.getLogger(__name__)

RATE_SHARE = 0.5  # the test window is paced at this share of the calibrated capacity
# Requests in the calibration backlog (fewer on short logs). Why 10,000: with 3,000 the
# drain lasted 0.5-1.2 s and two demos in a row measured 6,042 and 2,434 answers/s; paced
# at half of the first, the test window queued (p50 286 ms; docs/results.md, session 29).
CALIBRATION_REQUESTS = 10_000
# The first answers of the drain are left out of its rate: the service prepares batches
# ahead of the first answer (decode, windows) while it waits for the stream watermark, and
# the drain's first model runs warm up.
CALIBRATION_SKIP = 0.1
# A paced test window the service holds: answered at the offered rate (this factor either
# way: slower is a queue growing, faster a queue draining), the median answer within
# `HELD_P50_MS` (two of the embedded broker's 50-ms paced ticks; held demos measured p50
# 15-16 ms), and the second half's median no more than `HELD_GROWTH` times the first's.
HELD_RATE_FACTOR = 1.25
HELD_P50_MS = 100.0
HELD_GROWTH = 1.5


class DemoError(RuntimeError):
    pass


@dataclass
class Stages:
    """Wall time of each stage, in order."""

    seconds: dict[str, float] = field(default_factory=dict)

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        print(f"\n=== {name} ===", flush=True)
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = round(time.perf_counter() - t0, 1)
            print(f"=== {name}: {self.seconds[name]:.1f} s ===", flush=True)


@dataclass
class Children:
    """Background processes the demo started; all are stopped at exit."""

    procs: list[tuple[str, subprocess.Popen[bytes]]] = field(default_factory=list)

    def start(self, name: str, args: list[str], env: dict[str, str], log: Path
              ) -> subprocess.Popen[bytes]:
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "wb") as out:
            proc = subprocess.Popen(args, env=env, stdout=out, stderr=subprocess.STDOUT,
                                    start_new_session=True)
        self.procs.append((name, proc))
        return proc

    def stop_all(self) -> None:
        for name, proc in reversed(self.procs):
            if proc.poll() is None:
                logger.info("stopping %s pid=%d", name, proc.pid)
                try:
                    os.killpg(proc.pid, signal.SIGTERM)
                    proc.wait(timeout=15)
                except (ProcessLookupError, subprocess.TimeoutExpired):
                    with suppress(ProcessLookupError):
                        os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait(timeout=5)
        self.procs.clear()


def run_step(args: list[str], env: dict[str, str]) -> None:
    """Run one CLI stage in the foreground; its output streams to the terminal."""
    print("$ " + " ".join(args[2:] if args[:2] == [sys.executable, "-m"] else args),
          flush=True)
    result = subprocess.run(args, env=env, check=False)
    if result.returncode != 0:
        raise DemoError(f"stage failed (exit {result.returncode}): {' '.join(args)}")


def liverank(*args: str) -> list[str]:
    return [sys.executable, "-m", "liverank.cli.main", *args]


def _split_offsets(max_step: int) -> tuple[int, int]:
    """LiveRec's 500/250 on real-length logs; proportionally smaller on short ones (tiny
    data spans 3 days, less than the 500-step validation offset)."""
    if max_step >= 2000:
        return 500, 250
    return max(max_step // 5, 2), max(max_step // 10, 1)


def _wait_healthy(port: int, proc: subprocess.Popen[bytes], log: Path, timeout_s: float
                  ) -> None:
    import urllib.error
    import urllib.request

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise DemoError(f"the service exited with {proc.returncode}; its log:\n"
                            + _tail(log))
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
                if r.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.5)
    raise DemoError(f"the service was not healthy after {timeout_s:.0f} s; its log:\n"
                    + _tail(log))


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


@dataclass(frozen=True)
class DemoOptions:
    scale: str = "small"
    data: Path | None = None
    fmt: str = "twitch"
    seed: int = 0
    out: Path = Path("out/demo")
    epochs: int | None = None
    timeout_s: float = 600.0
    rate: float | None = None  # requests/s of the test window; None: calibrated
    keep_topics: bool = False  # keep the run's topics on a tansu the demo did not start


def _child_env(settings: Settings) -> dict[str, str]:
    """The environment of the demo's ``liverank`` steps: this run's broker, topics, store
    and partition count (an embedded broker's own, `own_broker_settings`), so that every
    step works on the topics the demo created."""
    env = {**os.environ, "LIVERANK_KAFKA_BOOTSTRAP": settings.kafka_bootstrap,
           "LIVERANK_TOPIC_PREFIX": settings.topic_prefix, "LIVERANK_STORE": settings.store,
           "LIVERANK_PARTITIONS": str(settings.partitions)}
    env.pop("KAFKA_BOOTSTRAP_SERVERS", None)
    return env


def run_demo(opts: DemoOptions) -> dict[str, Any]:
    """Run every stage; returns the online report plus stage timings (also written to
    ``opts.out``). Raises `DemoError` naming the stage that failed."""
    from liverank.broker.embedded import EmbeddedBroker, free_port, own_broker_settings
    from liverank.broker.kafka import ensure_topics
    from liverank.client.monitor import collect, format_summary, write_report
    from liverank.core.settings import Settings, bootstrap_configured
    from liverank.model.data.twitch import load_interactions

    out = opts.out
    out.mkdir(parents=True, exist_ok=True)
    stages, children = Stages(), Children()
    broker: EmbeddedBroker | None = None
    settings: Settings | None = None
    previous = signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        with stages.stage("broker"):
            prefix = f"demo{int(time.time())}-"
            if bootstrap_configured():
                bootstrap = Settings().kafka_bootstrap
                print(f"using the configured broker {bootstrap}")
                settings = Settings(kafka_bootstrap=bootstrap, topic_prefix=prefix,
                                    store="memory://")
            else:
                broker = EmbeddedBroker.start()
                bootstrap = broker.bootstrap
                print(f"started the embedded tansu broker on {bootstrap}")
                settings = own_broker_settings(bootstrap, topic_prefix=prefix,
                                               store="memory://")
            ensure_topics(settings)
        env = _child_env(settings)
        with stages.stage("data"):
            if opts.data is None:
                data = out / f"{opts.scale}.csv"
                run_step(liverank("data", "synth", "--scale", opts.scale, "--seed",
                                  str(opts.seed), "--out", str(data)), env)
                fmt = "twitch"
            else:
                data, fmt = opts.data, opts.fmt
            ds = load_interactions(data, fmt=fmt)  # type: ignore[arg-type]
            val_offset, test_offset = _split_offsets(ds.max_step)
            pivot_2 = ds.max_step - test_offset
            print(f"{len(ds)} rows, {ds.n_users} users, {ds.n_streamers} streamers, "
                  f"steps 0..{ds.max_step}; requests from step {pivot_2}")
        split = ["--val-offset", str(val_offset), "--test-offset", str(test_offset)]
        ckpt, model_dir = out / "checkpoint", out / "model"
        with stages.stage("train"):
            extra = ["--epochs", str(opts.epochs)] if opts.epochs else []
            run_step(liverank("train", "--data", str(data), "--format", fmt, "--out",
                              str(ckpt), "--preset", "quick", "--seed", str(opts.seed),
                              *split, *extra), env)
        with stages.stage("export"):
            run_step(liverank("export", "--checkpoint", str(ckpt), "--out", str(model_dir)),
                     env)
        with stages.stage("serve"):
            port = free_port()
            log = out / "service.log"
            proc = children.start("service", liverank(
                "serve", "--model", str(model_dir), "--web-port", str(port)), env, log)
            _wait_healthy(port, proc, log, timeout_s=120)
            print(f"service healthy on :{port} (log: {log})")
        # A calibration backlog with --rate too: waiting for its answers is what makes the
        # test window start on a service that has read the whole fill (without it a --rate
        # demo's requests queued behind the fill: p50 1.9-2.6 s at 3,000/s, session 29).
        cal_from = calibration_start(ds.start, pivot_2)
        calibration = int(np.count_nonzero((ds.start >= cal_from) & (ds.start < pivot_2)))
        with stages.stage("fill"):
            requests = (["--requests-from", str(cal_from)] if calibration else
                        ["--requests", "none"])
            run_step(liverank("replay", str(data), "--format", fmt, "--speed", "max",
                              "--to-step", str(pivot_2 - 1), *requests, "--no-end",
                              "--no-progress", "--report", str(out / "replay-fill.json")), env)
        with stages.stage("calibrate"):
            pacing = _pacing(settings, opts, calibration, cal_from, pivot_2)
            print(pacing["line"])
        with stages.stage("replay"):
            run_step(liverank("replay", str(data), "--format", fmt, "--from-step",
                              str(pivot_2), "--requests-from", str(pivot_2), "--rate",
                              f"{pacing['rate']:.1f}", "--no-progress",
                              "--report", str(out / "replay.json")), env)
        with stages.stage("monitor"):
            evaluator = collect(settings, timeout_s=opts.timeout_s, from_step=pivot_2)
            report = evaluator.report()
            paced = [a for a in evaluator.answers.values()  # the test window's answers
                     if a.step >= pivot_2 and a.produced_ms is not None]
            pacing["held"] = held_load([a.produced_ms for a in paced],  # type: ignore[misc]
                                       [a.published_ms for a in paced], pacing["rate"])
            report["stages_s"] = stages.seconds
            report["pivot_2"] = pivot_2
            report["pacing"] = {k: v for k, v in pacing.items() if k != "line"}
            report["user_events_expected"] = _user_events_produced(
                out / "replay-fill.json", out / "replay.json")
            write_report(report, out)
            _write_answers(evaluator, out / "answers.jsonl")
            print(pacing["line"])
            print(format_summary(report))
            if not pacing["held"]["held"]:
                print(f"WARNING: {pacing['held']['why']}", file=sys.stderr)
        with stages.stage("offline evaluate"):
            run_step(liverank("evaluate", "--data", str(data), "--format", fmt, "--model",
                              str(model_dir), "--targets", "all", "--availability",
                              "broadcast", "--json", str(out / "offline.json"), *split), env)
        report["stages_s"] = stages.seconds
        report["topic_prefix"] = prefix
        (out / "online.json").write_text(json.dumps(report, indent=2, default=float))
        _write_markdown(report, out, data)
        return report
    finally:
        children.stop_all()
        if broker is not None:
            broker.stop()
        elif settings is not None and not opts.keep_topics:
            _release(settings)
        signal.signal(signal.SIGTERM, previous)


def calibration_start(starts: np.ndarray, pivot: int, want: int = CALIBRATION_REQUESTS,
                      most_steps: int | None = None) -> int:
    """The first step of the calibration backlog: the latest steps before ``pivot`` holding
    at least ``want`` requests (one per row starting there), at most ``most_steps`` steps
    (default a quarter of the steps before the pivot)."""
    most = max(1, pivot // 4) if most_steps is None else most_steps
    per_step = np.bincount(starts[starts < pivot], minlength=pivot)[::-1]  # pivot-1 first
    steps = int(np.searchsorted(np.cumsum(per_step), want)) + 1
    return max(pivot - min(steps, most), 0)


def drain_rate(published_ms: list[int], skip: float = CALIBRATION_SKIP) -> float:
    """Answers/s of a drained backlog, from the answer at the ``skip`` share on: the answers
    after it over the span from it to the last."""
    if len(published_ms) < 2:
        raise DemoError(f"calibration: {len(published_ms)} answer(s), too few to time")
    from liverank.client.monitor import answer_rate

    ordered = sorted(published_ms)
    timed = ordered[min(int(len(ordered) * skip), len(ordered) - 2):]
    return answer_rate(timed, min_span_ms=1.0)


def held_load(produced_ms: list[int], published_ms: list[int], offered_per_s: float
              ) -> dict[str, Any]:
    """Whether the service held a paced load: its answers came at the offered rate (within
    `HELD_RATE_FACTOR`), the median answer within `HELD_P50_MS`, and the second half's
    median (by produce time) at most `HELD_GROWTH` times the first's. ``why`` says which
    failed; a latency that fails is a queue's, not the service's own."""
    if len(produced_ms) < 2:
        return {"held": False, "why": f"{len(produced_ms)} answer(s): nothing to judge"}
    produced = np.asarray(produced_ms, dtype=np.int64)
    published = np.asarray(published_ms, dtype=np.int64)
    from liverank.client.monitor import answer_rate

    lat = (published - produced)[np.argsort(produced, kind="stable")]
    half = len(lat) // 2
    answered = answer_rate(published, min_span_ms=1.0)
    p50, first, second = (float(np.percentile(v, 50)) for v in (lat, lat[:half], lat[half:]))
    out: dict[str, Any] = {"answered_per_s": answered, "offered_per_s": offered_per_s,
                           "p50_ms": p50, "p50_ms_halves": [first, second]}
    ratio = answered / offered_per_s
    if not 1 / HELD_RATE_FACTOR <= ratio <= HELD_RATE_FACTOR:
        why = (f"answered {answered:,.0f}/s against {offered_per_s:,.0f}/s offered: "
               + ("a queue draining" if ratio > 1 else "a queue growing"))
    elif p50 > HELD_P50_MS:
        why = f"median latency {p50:.0f} ms, above {HELD_P50_MS:.0f} ms: requests queued"
    elif second > HELD_GROWTH * first:
        why = (f"the median latency grew from {first:.0f} to {second:.0f} ms over the "
               "window: a queue growing")
    else:
        return {**out, "held": True, "why": ""}
    return {**out, "held": False, "why": f"the service did not hold the paced rate ({why}); "
            "this latency includes that queue, not only the service's own time. Pace lower "
            "with --rate."}


def _pacing(settings: Settings, opts: DemoOptions, calibration: int, cal_from: int,
            pivot: int) -> dict[str, Any]:
    """The test window's request rate: ``opts.rate``, else `RATE_SHARE` of the answers/s the
    service reached draining the calibration backlog (waits for all its answers)."""
    if opts.rate and calibration < 2:  # a log with nothing before the test window to wait for
        return {"rate": opts.rate, "source": "--rate", "calibration_requests": calibration,
                "line": f"test window paced at {opts.rate:,.1f} requests/s (--rate)"}
    published = _calibration_answers(settings, calibration, cal_from, pivot,
                                     timeout_s=opts.timeout_s)
    measured = drain_rate(published)
    drained = (f"calibration: {calibration} requests (steps {cal_from}..{pivot - 1}) drained "
               f"at {measured:,.0f} answers/s")
    common = {"calibration_requests": calibration, "calibration_steps": [cal_from, pivot - 1],
              "calibration_answers_per_s": measured}
    if opts.rate:
        return {"rate": opts.rate, "source": "--rate", **common,
                "line": f"{drained}; test window paced at {opts.rate:,.1f} requests/s "
                        f"(--rate, {opts.rate / measured:.0%} of that)"}
    rate = RATE_SHARE * measured
    return {"rate": rate, "source": "calibrated", "rate_share": RATE_SHARE, **common,
            "line": f"{drained}; test window paced at {rate:,.1f} requests/s "
                    f"({RATE_SHARE:.0%} of that)"}


def _calibration_answers(settings: Settings, n: int, lo: int, hi: int, timeout_s: float
                         ) -> list[int]:
    """published_ms of the answers to the ``n`` requests at steps ``lo..hi-1``, once all of
    them are on the recommendations topic (`DemoError` after ``timeout_s``)."""
    from liverank.broker.kafka import RECOMMENDATIONS, read_topic
    from liverank.core import events as ev

    deadline = time.monotonic() + timeout_s
    while True:
        published: dict[str, int] = {}
        for m in read_topic(settings, settings.topic(RECOMMENDATIONS), timeout_s=timeout_s):
            rec = ev.decode(m.value() or b"", ev.Recommendation)
            if (isinstance(rec, ev.Recommendation) and rec.trigger == "request"
                    and lo <= rec.step < hi):
                published.setdefault(rec.request_id, rec.published_ms)
        if len(published) >= n:
            return list(published.values())
        if time.monotonic() > deadline:
            raise DemoError(f"calibration: {len(published)} of {n} requests answered after "
                            f"{timeout_s:.0f} s")
        time.sleep(0.5)


def _user_events_produced(*reports: Path) -> int | None:
    """user-events produced by the replays (their --report files); None if one is missing."""
    total = 0
    for path in reports:
        try:
            topics = json.loads(path.read_text())["topics"]
        except (OSError, ValueError, KeyError):
            return None
        total += sum(t["produced"] for name, t in topics.items() if name.endswith("user-events"))
    return total


def _release(settings: Settings) -> None:
    """Delete the run's topics on a tansu the demo did not start (it keeps every record in
    memory until then); nothing on Kafka, where retention bounds them."""
    from liverank.broker.embedded import release_run_topics

    try:
        names = release_run_topics(settings)
    except Exception as exc:  # noqa: BLE001 - the results are written; say so and go on
        logger.warning("could not delete the demo's topics prefix=%s error=%s",
                       settings.topic_prefix, exc)
        return
    if names:
        print(f"deleted the demo's {len(names)} topics ({settings.topic_prefix}*) from the "
              "tansu broker: it keeps every record in memory (--keep-topics keeps them)")


def _write_answers(evaluator: OnlineEvaluator, path: Path) -> None:
    """One line per answered request: id, late flag, streamers best first (for checks)."""
    with open(path, "w") as f:
        for rid, a in sorted(evaluator.answers.items()):
            f.write(json.dumps({"request_id": rid, "late": a.late, "trigger": a.trigger,
                                "streamers": [i.streamer for i in a.items],
                                "scores": [i.score for i in a.items]}) + "\n")


def _raise_interrupt(signum: int, _frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def _pacing_text(report: dict[str, Any]) -> str:
    p = report.get("pacing") or {}
    lat = report.get("latency_ms") or {}
    head = ("Every watch before the test window is replayed at full speed (it fills the user "
            "windows); the test window's requests are then sent evenly at "
            f"{p.get('rate', float('nan')):,.1f} requests/s")
    if p.get("source") == "calibrated":
        head += (f", {p['rate_share']:.0%} of the {p['calibration_answers_per_s']:,.0f} "
                 f"answers/s the service reached draining a backlog of "
                 f"{p['calibration_requests']} requests just before the test window (steps "
                 f"{p['calibration_steps'][0]}..{p['calibration_steps'][1]}; answered, not "
                 "scored)")
    elif "calibration_answers_per_s" in p:
        head += (f" (--rate; the service drained a backlog of {p['calibration_requests']} "
                 f"requests just before the test window at "
                 f"{p['calibration_answers_per_s']:,.0f} answers/s)")
    else:
        head += " (--rate)"
    text = (head + f". At that load the service answered {report['answers_per_s']:,.1f}/s "
            f"with produce-to-publish p50 {lat.get('p50', float('nan')):.1f} ms and p99 "
            f"{lat.get('p99', float('nan')):.1f} ms")
    held = p.get("held") or {}
    if held.get("held"):
        return text + ": its own latency, not a backlog's. MRR here is cut at k."
    return (text + f". **Not the service's own latency:** {held.get('why', 'not judged')} "
            "MRR here is cut at k.")


def _write_markdown(report: dict[str, Any], out: Path, data: Path) -> None:
    from liverank.client.monitor import format_summary

    offline = {}
    with suppress(OSError, ValueError):
        offline = json.loads((out / "offline.json").read_text())
    lines = [
        "# liverank demo", "",
        f"Data: `{data}`. Online figures from the replay through the running service; "
        "POP ranks the same requests by watches seen so far among the live streamers.", "",
        "```", format_summary(report), "```", "",
        _pacing_text(report), "",
        "![latency histogram](latency.png)", "",
        "## Stage timings (s)", "",
        "| stage | seconds |", "|---|---|",
        *[f"| {k} | {v} |" for k, v in report["stages_s"].items()],
        "",
        "![online accuracy by day](online_by_day.png)", "",
    ]
    if offline:
        lines += ["## Offline evaluation of the same model (`--targets all`)", "",
                  "```json", json.dumps(offline, indent=1, default=float)[:4000], "```"]
    (out / "summary.md").write_text("\n".join(lines))
