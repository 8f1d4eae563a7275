"""``liverank demo``: the replay simulation end to end, on the embedded broker by default.

Stages (each is the same command a user would run by hand, started as a child process, so
the demo exercises the real entry points and its output shows their progress):

1. broker   -- the configured one, or tansu on a free port
2. data     -- ``liverank data synth`` (or ``--data PATH``)
3. train    -- ``liverank train --preset quick``
4. export   -- ``liverank export``
5. serve    -- ``liverank serve`` in the background
6. replay   -- ``liverank replay --speed max --requests-from pivot_2``
7. monitor  -- online evaluation (in process), summary table, report under ``out/``

Every child process is stopped on success, failure and Ctrl-C.
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

if TYPE_CHECKING:
    from liverank.client.monitor import OnlineEvaluator

logger = logging.getLogger(__name__)


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


def run_demo(opts: DemoOptions) -> dict[str, Any]:
    """Run every stage; returns the online report plus stage timings (also written to
    ``opts.out``). Raises `DemoError` naming the stage that failed."""
    from liverank.broker.embedded import EmbeddedBroker, free_port
    from liverank.broker.kafka import ensure_topics
    from liverank.client.monitor import collect, format_summary, write_report
    from liverank.core.settings import Settings, bootstrap_configured
    from liverank.model.data.twitch import load_interactions

    out = opts.out
    out.mkdir(parents=True, exist_ok=True)
    stages, children = Stages(), Children()
    broker: EmbeddedBroker | None = None
    previous = signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        with stages.stage("broker"):
            if bootstrap_configured():
                bootstrap = Settings().kafka_bootstrap
                print(f"using the configured broker {bootstrap}")
            else:
                broker = EmbeddedBroker.start()
                bootstrap = broker.bootstrap
                print(f"started the embedded tansu broker on {bootstrap}")
            prefix = f"demo{int(time.time())}-"
            settings = Settings(kafka_bootstrap=bootstrap, topic_prefix=prefix,
                                store="memory://")
            ensure_topics(settings)
        env = {**os.environ, "LIVERANK_KAFKA_BOOTSTRAP": bootstrap,
               "LIVERANK_TOPIC_PREFIX": prefix, "LIVERANK_STORE": "memory://"}
        env.pop("KAFKA_BOOTSTRAP_SERVERS", None)
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
        with stages.stage("replay"):
            run_step(liverank("replay", str(data), "--format", fmt, "--speed", "max",
                              "--requests-from", str(pivot_2), "--no-progress",
                              "--report", str(out / "replay.json")), env)
        with stages.stage("monitor"):
            evaluator = collect(settings, timeout_s=opts.timeout_s)
            report = evaluator.report()
            report["stages_s"] = stages.seconds
            report["pivot_2"] = pivot_2
            write_report(report, out)
            _write_answers(evaluator, out / "answers.jsonl")
            print(format_summary(report))
        with stages.stage("offline evaluate"):
            run_step(liverank("evaluate", "--data", str(data), "--format", fmt, "--model",
                              str(model_dir), "--targets", "all", "--availability",
                              "broadcast", "--json", str(out / "offline.json"), *split), env)
        report["stages_s"] = stages.seconds
        (out / "online.json").write_text(json.dumps(report, indent=2, default=float))
        _write_markdown(report, out, data)
        return report
    finally:
        children.stop_all()
        if broker is not None:
            broker.stop()
        signal.signal(signal.SIGTERM, previous)


def _write_answers(evaluator: OnlineEvaluator, path: Path) -> None:
    """One line per answered request: id, late flag, streamers best first (for checks)."""
    with open(path, "w") as f:
        for rid, a in sorted(evaluator.answers.items()):
            f.write(json.dumps({"request_id": rid, "late": a.late, "trigger": a.trigger,
                                "streamers": [i.streamer for i in a.items],
                                "scores": [i.score for i in a.items]}) + "\n")


def _raise_interrupt(signum: int, _frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


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
        "The replay runs at `--speed max`: it produces every event in seconds and the service "
        "drains the backlog, so the latency figures measure that backlog, not the service "
        "(`liverank bench service` measures latency at a paced rate). MRR here is cut at k.",
        "",
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
