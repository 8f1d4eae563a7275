"""``liverank bench ...``: the component benchmarks, each measured against an in-run reference.

Each subcommand lives with the code it measures and is registered here; ``make bench`` runs
them all and collects one table in ``out/bench.json``.
"""

from __future__ import annotations

import typer

from liverank.model.cli import bench_scorer_command
from liverank.replay.bench import bench_replay

app = typer.Typer(help="Benchmarks: each figure is printed next to its in-run reference.",
                  no_args_is_help=True)
app.command("scorer")(bench_scorer_command)
app.command("replay")(bench_replay)
