"""``liverank bench variants``: what a setting costs the worker, as CPU per request answer.

    liverank bench variants --data out/data/medium.csv --model out/models/medium \\
        --variant push:LIVERANK_PUSH_ON_LIVE=true \\
        --variant shadow:LIVERANK_SHADOW_MODEL_DIR=out/models/other

One worker per run drains the same backlog: a slice of the log from the middle, its first
``--warm-steps`` steps without requests (they fill the user windows), the next ``--steps``
with a request before every watch. Variants alternate (``--repeat`` rounds), each on fresh
topics of one embedded broker. The figure is the worker's CPU seconds (``/proc``, user +
system) from ready to its last request answer, per request answer: on a shared machine
wall times of identical runs varied 2x, CPU per answer by a few percent. The reference is
the variant ``off`` (no extra settings), measured in the same run.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import typer

from liverank.core.settings import Settings


@dataclass(frozen=True)
class Variant:
    name: str
    env: dict[str, str]


def parse_variant(text: str) -> Variant:
    """``name:KEY=VALUE[,KEY=VALUE...]`` (``name:`` alone: no extra settings)."""
    name, sep, rest = text.partition(":")
    if not sep or not name:
        raise ValueError(f"--variant {text!r}: expected NAME:KEY=VALUE[,KEY=VALUE]")
    env: dict[str, str] = {}
    for item in filter(None, rest.split(",")):
        key, eq, value = item.partition("=")
        if not eq or not key.startswith("LIVERANK_"):
            raise ValueError(f"--variant {text!r}: {item!r} is not LIVERANK_KEY=VALUE")
        env[key] = value
    return Variant(name, env)


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` (`bench_soak.read_cpu_s`)."""
    from liverank.cli.bench_soak import read_cpu_s

    got = read_cpu_s(pid)
    if got is None:
        raise RuntimeError(f"cannot read the CPU time of process {pid}")
    return got


def _run(base: Settings, timeline: Any, requests: int, model: Path, work: Path,
         variant: Variant, round_: int) -> dict[str, float]:
    import urllib.request
    import uuid

    from liverank.broker.embedded import free_port
    from liverank.replay.producer import replay_to_kafka

    settings = base.model_copy(update={
        "topic_prefix": f"variants-{variant.name}-{uuid.uuid4().hex[:6]}."})
    report = replay_to_kafka(timeline, settings)
    if not report.ok:
        raise RuntimeError(f"replay failed: {report.first_error}")
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("LIVERANK_")}
    env |= {"LIVERANK_KAFKA_BOOTSTRAP": settings.kafka_bootstrap,
            "LIVERANK_TOPIC_PREFIX": settings.topic_prefix,
            "LIVERANK_BROKER_KIND": settings.broker_kind, "LIVERANK_STORE": "memory://",
            "LIVERANK_WEB_PORT": str(port), "LIVERANK_MODEL_POLL_S": "0",
            "LIVERANK_WORKER_ID": f"variants-{variant.name}", "LIVERANK_MODEL_DIR": str(model),
            **variant.env}
    log = work / f"worker-{variant.name}-{round_}.log"

    def get(path: str) -> str:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2) as r:
                return str(r.read().decode())
        except OSError:
            return ""

    def answers() -> float:
        for line in get("/metrics").splitlines():
            if line.startswith('liverank_answers_total{trigger="request"}'):
                return float(line.rsplit(" ", 1)[1])
        return 0.0

    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-c", "from liverank.cli.main import main; main()", "serve",
             "--loglevel", "warning"], env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 180
        while not _ready(get("/readyz")):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"worker {variant.name} not ready; see {log}")
            time.sleep(0.2)
        c0, t0 = cpu_seconds(proc.pid), time.monotonic()
        deadline = t0 + 1800
        while answers() < requests:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"worker {variant.name}: {answers():.0f} of {requests} "
                                   f"answers; see {log}")
            time.sleep(0.2)
        c1, t1 = cpu_seconds(proc.pid), time.monotonic()
        metrics = get("/metrics")
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
    extra = sum(float(line.rsplit(" ", 1)[1]) for line in metrics.splitlines()
                if line.startswith(("liverank_answers_total{trigger=\"live_change\"}",
                                    "liverank_shadow_answers_total ")))
    return {"cpu_ms_per_answer": (c1 - c0) / requests * 1000, "wall_s": t1 - t0,
            "extra_answers": extra}


def _ready(body: str) -> bool:
    try:
        return bool(json.loads(body).get("ready"))
    except ValueError:
        return False


def run_variants(data: Path, model: Path, variants: list[Variant], steps: int,
                 warm_steps: int, repeat: int, work: Path) -> dict[str, Any]:
    import contextlib

    import numpy as np

    from liverank.broker.embedded import configured_or_embedded
    from liverank.model.data.timeline import REQUEST, build_timeline
    from liverank.model.data.twitch import load_interactions

    work.mkdir(parents=True, exist_ok=True)
    ds = load_interactions(data)
    lo = ds.max_step // 2
    runs: dict[str, list[dict[str, float]]] = {v.name: [] for v in variants}
    with contextlib.ExitStack() as stack:
        base, _ = configured_or_embedded(stack)
        tl = build_timeline(ds, requests_from=lo, from_step=max(0, lo - warm_steps),
                            to_step=lo + steps - 1, epoch_ms=base.epoch_ms)
        requests = int(np.count_nonzero(tl.kind == REQUEST))
        for r in range(repeat):  # alternating: a busy spell hurts every variant alike
            for v in variants:
                got = _run(base, tl, requests, model, work, v, r)
                runs[v.name].append(got)
                typer.echo(f"{v.name} round {r}: {got['cpu_ms_per_answer']:.3f} ms CPU per "
                           f"request answer, {got['wall_s']:.1f} s, "
                           f"{got['extra_answers']:.0f} extra answers")
    ref = min(x["cpu_ms_per_answer"] for x in runs["off"])
    table = {name: {"cpu_ms_per_answer": [round(x["cpu_ms_per_answer"], 4) for x in rs],
                    "best": round(min(x["cpu_ms_per_answer"] for x in rs), 4),
                    "throughput_vs_off": round(ref / min(x["cpu_ms_per_answer"] for x in rs),
                                               3),
                    "extra_answers": rs[0]["extra_answers"]} for name, rs in runs.items()}
    return {"data": str(data), "model": str(model), "steps": steps,
            "warm_steps": warm_steps, "requests": requests, "repeat": repeat,
            "variants": table}


def bench_variants_command(
    data: Path = typer.Option(Path("out/data/medium.csv"), help="Twitch-format log."),
    model: Path = typer.Option(..., help="Exported model directory."),
    variant: list[str] = typer.Option([], "--variant", help="NAME:LIVERANK_KEY=VALUE[,...];"
                                      " repeatable. 'off' (nothing set) is always run."),
    steps: int = typer.Option(400, min=1, help="Steps with requests."),
    warm_steps: int = typer.Option(432, min=0, help="Steps before them, watches only."),
    repeat: int = typer.Option(2, min=1, help="Rounds, variants alternating."),
    out: Path = typer.Option(Path("out/bench_variants.json"), help="Result JSON."),
) -> None:
    """The worker's CPU per request answer with each variant's settings, against 'off'."""
    try:
        variants = [Variant("off", {}), *(parse_variant(v) for v in variant)]
    except ValueError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    if not data.is_file() or not (model / "model.json").is_file():
        typer.echo(f"error: need a log file ({data}) and an exported model ({model})", err=True)
        raise typer.Exit(2)
    result = run_variants(data, model, variants, steps, warm_steps, repeat,
                          out.parent / "bench-variants")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    for name, row in result["variants"].items():
        typer.echo(f"{name:10s} {row['best']:.3f} ms CPU per request answer (runs "
                   f"{row['cpu_ms_per_answer']}), throughput x{row['throughput_vs_off']:.3f}"
                   f" of off, {row['extra_answers']:.0f} extra answers")
    typer.echo(f"wrote {out}")
