"""``liverank bench ...``: the component benchmarks, each measured against an in-run reference.

Each subcommand lives with the code it measures and is registered here; ``liverank bench
all`` (what ``make bench`` runs) runs them one after the other as separate processes and
collects one table in ``out/bench.json``. Figures from different runs are not comparable on
a shared machine: read each one against the reference measured in the same run.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import typer

from liverank.cli.bench_e2e import bench_e2e_command
from liverank.cli.bench_replay import bench_replay
from liverank.cli.bench_scorer import bench_scorer_command
from liverank.cli.bench_service import CONSUME_ONLY as CONSUME
from liverank.cli.bench_service import bench_service_command
from liverank.cli.bench_soak import bench_soak_command
from liverank.cli.bench_variants import bench_variants_command

app = typer.Typer(help="Benchmarks: each figure is printed next to its in-run reference.",
                  no_args_is_help=True)
app.command("scorer")(bench_scorer_command)
app.command("replay")(bench_replay)
app.command("service")(bench_service_command)
app.command("soak")(bench_soak_command)
app.command("e2e")(bench_e2e_command)
app.command("variants")(bench_variants_command)

Row = tuple[str, str, float, str, float]  # component, figure, value, reference, ref value


def _scorer_rows(r: dict[str, Any]) -> list[Row]:
    return [("scorer", f"onnxruntime users/s, batch {c['batch']}, {c['candidates']} cand.",
             c["onnxruntime"]["users_per_s"], "torch eager users/s",
             c["torch"]["users_per_s"]) for c in r["cases"]]


def _replay_rows(r: dict[str, Any]) -> list[Row]:
    return [("replay", "liverank replay msgs/s (twitch100k, --speed max)",
             r["replay_msgs_per_s"], "raw confluent-kafka loop msgs/s", r["raw_msgs_per_s"])]


def _service_rows(r: dict[str, Any]) -> list[Row]:
    """The fallback share (answers from the popularity prior, no model call) goes with every
    figure: a cold slice's answers are mostly fallbacks and look fast."""
    a, fb = r["answers_per_s"], r.get("fallback_share", {})
    main = "service (onnxruntime model)"

    def share(name: str) -> str:
        v = fb.get(name)
        return "" if v is None else f", fallback {v:.1%}"

    warm = f", {r.get('warm_steps', 0)} warm-up steps"
    if "partitions" in r:  # what the broker does per fetch and batch grows with them
        warm += f", {r['partitions']} partitions ({r.get('broker_kind', '?')})"
    rows: list[Row] = [("service", f"answers/s, one worker, onnxruntime model{share(main)}"
                        f"{warm}", a[main], f"{ref}{share(ref)}", value)
                       for ref, value in a.items() if ref != main]
    cpu = r.get("cpu_ms_per_answer")
    if cpu:  # CPU per answer: the per-worker cost, steadier than rates on a shared machine
        rows.append(("service", "worker CPU ms per answer, onnxruntime model", cpu[main],
                     "Faust consume-only CPU ms per two events", cpu[CONSUME]))
    lat = r["latency"]
    lat_fb = lat.get("fallback_share")
    rows.append(("service", f"produce-to-publish p50 ms at {lat['rate']:.0f} req/s "
                 f"(half capacity{'' if lat_fb is None else f', fallback {lat_fb:.1%}'})",
                 lat["p50_ms"], "p99 ms", lat["p99_ms"]))
    paced = lat.get("paced_load")
    if paced:  # how busy the one event loop was: what the tail follows at half capacity
        rows.append(("service", "event loop's share of a core while paced at half capacity",
                     paced["loop_share"], "whole worker's share", paced["worker_share"]))
    windows = lat.get("p99_ms_windows")
    if windows:  # a steady tail or one stall: the spread of p99 over the run's windows
        rows.append(("service", f"p99 ms, best {lat['window_s']:.0f}-s window of "
                     f"{len(windows)} ({lat['steady_s']:.0f} s steady)", min(windows),
                     "worst window", max(windows)))
    floor = lat.get("broker_floor")
    if floor:  # what the broker alone takes at the same message rate: no worker goes below it
        rows.append(("service", "broker floor p99 ms (bare librdkafka produce -> consume, "
                     f"{floor['messages_per_s']:,.0f} messages/s)", floor["p99_ms"],
                     "service p99 ms", lat["p99_ms"]))
    if lat.get("lookups"):
        rows.append(("service", "lookup GET /users/{user}/recommendations p50 ms",
                     lat["lookup_p50_ms"], "p99 ms", lat["lookup_p99_ms"]))
    return rows


def _e2e_rows(r: dict[str, Any]) -> list[Row]:
    """The demo (small): the test window's requests sent evenly at half the answers/s the
    service reached on a calibration backlog in the same run, so its latency is the
    service's own; answered/s next to the offered rate says whether it kept up."""
    nan = float("nan")
    lat, pacing = r.get("latency_ms", {}), r.get("pacing", {})
    rate = pacing.get("rate", nan)
    return [
        ("end to end", "demo small: answers/s in the paced test window",
         r.get("answers_per_s", nan), "offered requests/s (half the calibrated capacity)",
         rate),
        ("end to end", f"demo small: produce-to-publish p50 ms at {rate:,.0f} requests/s",
         lat.get("p50", nan), "p99 ms", lat.get("p99", nan)),
    ]


BENCHES: dict[str, tuple[list[str], str, Callable[[dict[str, Any]], list[Row]]]] = {
    "scorer": (["bench", "scorer", "--threads", "2", "--out", "{dir}/scorer.json"],
               "scorer.json", _scorer_rows),
    "replay": (["bench", "replay", "--out", "{dir}/replay.json"], "replay.json", _replay_rows),
    "service": (["bench", "service", "--out", "{dir}/service.json"], "service.json",
                _service_rows),
    "e2e": (["demo", "--scale", "small", "--out", "{dir}/e2e"], "e2e/online.json", _e2e_rows),
}


@app.command("all")
def bench_all(
    out: Path = typer.Option(Path("out/bench.json"), help="Where the combined table goes."),
    only: list[str] = typer.Option([], help=f"Run only these ({', '.join(BENCHES)})."),
) -> None:
    """Run every benchmark (scorer, replay, service, end to end) and print one table."""
    work = out.parent / "bench"
    work.mkdir(parents=True, exist_ok=True)
    rows: list[Row] = []
    seconds: dict[str, float] = {}
    failed: list[str] = []
    for name, (args, result, to_rows) in BENCHES.items():
        if only and name not in only:
            continue
        cmd = [sys.executable, "-m", "liverank.cli.main",
               *[a.format(dir=work) for a in args]]
        typer.echo(f"\n=== bench {name}: {' '.join(cmd[2:])}")
        t0 = time.perf_counter()
        code = subprocess.run(cmd, check=False).returncode
        seconds[name] = round(time.perf_counter() - t0, 1)
        if code != 0:
            failed.append(name)
            typer.echo(f"bench {name} failed with exit {code}", err=True)
            continue
        rows += to_rows(json.loads((work / result).read_text()))
    if only and out.exists():  # keep the other components' rows from the last full run
        kept = json.loads(out.read_text())["rows"]
        done = {r[0] for r in rows}
        rows = [tuple(k.values()) for k in kept if k["component"] not in done] + rows  # type: ignore[misc]
    table = format_table(rows)
    typer.echo("\n" + table)
    out.write_text(json.dumps({"rows": [dict(zip(("component", "figure", "value", "reference",
                                                   "reference_value"), r, strict=True))
                                        for r in rows],
                               "seconds": seconds, "failed": failed}, indent=2))
    typer.echo(f"wrote {out}")
    if failed:
        raise typer.Exit(1)


def _value(v: float) -> str:
    """One decimal from 10 up; three significant digits below, where one decimal printed a
    CPU of 0.225 ms an answer as 0.2 and a loop 63% busy as 0.6."""
    return f"{v:,.1f}" if abs(v) >= 10 else f"{v:.3g}"


def format_table(rows: list[Row]) -> str:
    lines = ["| component | figure | value | in-run reference | value | ratio |",
             "|---|---|---|---|---|---|"]
    for comp, fig, value, ref, ref_value in rows:
        ratio = value / ref_value if ref_value else float("nan")
        lines.append(f"| {comp} | {fig} | {_value(value)} | {ref} | {_value(ref_value)} | "
                     f"{ratio:.2f} |")
    return "\n".join(lines)
