"""The ``liverank`` command line: one entry point, one subcommand per job.

Each command is a thin wrapper; heavy imports (torch, faust, onnxruntime) happen inside the
command that needs them, so ``liverank --help`` and the data commands stay fast. The
modules that define the subcommands are imported only when one of their commands runs (or
``--help`` lists them): ``liverank serve`` never imports the data layer's loaders, so
neither pandas nor torch is loaded in a serving process (`LazyGroup`; a test checks it).
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import typer
from typer.core import TyperCommand, TyperGroup

Command = TyperCommand | TyperGroup


def _registered(name: str, register: Callable[[typer.Typer], object]) -> Command:
    """The command ``name`` as ``register`` adds it to a Typer (help, epilog and all)."""
    sub = typer.Typer()
    register(sub)
    return cast(Command, typer.main.get_group(sub).commands[name])


def _group(name: str, sub: typer.Typer) -> Command:
    group = typer.main.get_group(sub)
    group.name = name
    return group


# One loader per module; each imports its module when called, not when this one is imported.
def _data(name: str) -> Command:
    from liverank.model.data.cli import app as data_app

    return _group(name, data_app)


def _bench(name: str) -> Command:
    from liverank.cli.bench import app as bench_app

    return _group(name, bench_app)


def _recs(name: str) -> Command:
    from liverank.cli.recs import app as recs_app

    return _group(name, recs_app)


def _model(name: str) -> Command:
    from liverank.client.history import read_log  # train --from-topics
    from liverank.model.cli import register  # train, evaluate, export

    return _registered(name, functools.partial(register, read_log=read_log))


def _replay(name: str) -> Command:
    from liverank.replay.cli import broker_command, replay_command

    command: Callable[..., None] = replay_command if name == "replay" else broker_command
    return _registered(name, lambda t: t.command(name)(command))


def _serve(name: str) -> Command:
    from liverank.services.serve import register

    return _registered(name, register)


def _schema(name: str) -> Command:
    from liverank.cli.schema import schema_command

    return _registered(name, lambda t: t.command(name)(schema_command))


def _pushes(name: str) -> Command:
    from liverank.cli.pushes import pushes_command

    return _registered(name, lambda t: t.command(name)(pushes_command))


def _promote(name: str) -> Command:
    from liverank.cli.promote import promote_command

    return _registered(name, lambda t: t.command(name)(promote_command))


def _simulate(name: str) -> Command:
    from liverank.cli.simulate import simulate_command

    return _registered(name, lambda t: t.command(name)(simulate_command))


LAZY: dict[str, Callable[[str], Command]] = {
    "data": _data, "bench": _bench, "recs": _recs,
    "train": _model, "evaluate": _model, "export": _model,
    "replay": _replay, "broker": _replay, "serve": _serve, "schema": _schema,
    "pushes": _pushes, "promote": _promote, "simulate": _simulate,
}


@functools.cache
def lazy_command(name: str) -> Command:
    return LAZY[name](name)


class LazyGroup(TyperGroup):
    """The root group: the commands in `LAZY` are built from their modules on first use."""

    def list_commands(self, ctx: Any) -> list[str]:
        return [*LAZY, *(n for n in super().list_commands(ctx) if n not in LAZY)]

    def get_command(self, ctx: Any, cmd_name: str) -> Any:
        if cmd_name in LAZY:
            return lazy_command(cmd_name)
        return super().get_command(ctx, cmd_name)


app = typer.Typer(
    cls=LazyGroup,
    help="liverank: recommend live streams that are on air now.\n\n"
    "Replay Twitch-format viewing logs through Kafka, keep live state and user windows in a "
    "Faust service, score with an availability- and time-aware SASRec exported to ONNX.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)


@app.command()
def demo(
    scale: str = typer.Option("small", help="Synthetic data scale: tiny, small, medium, "
                              "twitch100k (ignored with --data)."),
    data: Path | None = typer.Option(None, help="A real log instead (e.g. 100k_a.csv)."),
    fmt: str = typer.Option("twitch", "--format", help="Format of --data: twitch or sample."),
    seed: int = typer.Option(0, help="Seed of the synthetic data and of training."),
    out: Path = typer.Option(Path("out/demo"), help="Where the report and artifacts go."),
    epochs: int | None = typer.Option(None, help="Override the quick preset's epochs."),
    timeout: float = typer.Option(600.0, help="Longest wait for the answers (s)."),
    rate: float | None = typer.Option(None, min=0.1, help="Requests/s of the test window "
                                      "(default: half the answers/s the service reaches on "
                                      "a calibration backlog, measured in the run)."),
    keep_topics: bool = typer.Option(False, help="Keep the run's topics on a configured "
                                     "tansu broker (deleted by default: tansu keeps every "
                                     "record in memory)."),
) -> None:
    """The replay simulation end to end on the embedded broker (or the configured one).

    Generates data, trains (quick preset), exports ONNX, starts the service, replays every
    watch before the test window at max speed (it fills the user windows; its last steps
    carry a calibration backlog of requests that measures the service's capacity), then the
    test window with its requests sent evenly at half that capacity (or --rate), so the
    latency reported is the service's own. Evaluates the answers online, prints a summary
    with a latency histogram and writes a report (markdown, JSON, PNG) under --out. Every
    process it started is stopped at the end.
    """
    from liverank.cli.demo import DemoError, DemoOptions, run_demo
    from liverank.model.data.twitch import DataError

    try:
        run_demo(DemoOptions(scale=scale, data=data, fmt=fmt, seed=seed, out=out,
                             epochs=epochs, timeout_s=timeout, rate=rate,
                             keep_topics=keep_topics))
    except DataError as exc:  # a bad --data file
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    except DemoError as exc:
        typer.echo(f"demo failed: {exc}", err=True)
        raise typer.Exit(1) from exc
    typer.echo(f"\nreport: {out / 'summary.md'}")


@app.command()
def config(
    markdown: bool = typer.Option(False, "--markdown", help="Print docs/configuration.md."),
) -> None:
    """Show every setting: environment variable, default and the value in force here."""
    from liverank.core.settings import Settings, settings_markdown, settings_reference

    if markdown:
        typer.echo(settings_markdown(), nl=False)
        return
    current = Settings().model_dump()
    for (env, _default, desc), value in zip(settings_reference(), current.values(), strict=True):
        shown = "***" if "PASSWORD" in env and value else repr(value)
        typer.echo(f"{env:45s} {shown:24s} {desc}")


@app.command()
def monitor(
    out: Path = typer.Option(Path("out/monitor"), help="Directory for online.json and figures."),
    k: int = typer.Option(10, help="Cut-off of the answers (the service's top-k)."),
    timeout: float = typer.Option(300.0, help="Longest wait for the replay's end and the "
                                  "answers (s)."),
) -> None:
    """Score the service's answers online against the watches that follow them.

    Reads recommendations, user-events and stream-events (broker and topic prefix from the
    settings); works alongside a replay or afterwards. Prints HR/NDCG (all, new, repeat),
    POP on the same requests, the share of recommended streams live at their step,
    coverage, latency percentiles and throughput, and writes JSON + a figure.
    """
    from confluent_kafka import KafkaException

    from liverank.broker.kafka import KafkaSetupError
    from liverank.client.monitor import collect, format_summary, write_report
    from liverank.core.settings import Settings

    try:
        evaluator = collect(Settings(), timeout_s=timeout, k=k)
    except (KafkaSetupError, KafkaException) as exc:  # no broker, bad client settings
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    except TimeoutError as exc:  # e.g. no replay's End records on stream-events in time
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from exc
    report = evaluator.report()
    paths = write_report(report, out)
    typer.echo(format_summary(report))
    typer.echo("wrote " + ", ".join(str(p) for p in paths))


@app.callback()
def _root(
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Log at DEBUG level."),
) -> None:
    level = logging.DEBUG if verbose else getattr(
        logging, os.environ.get("LIVERANK_LOG_LEVEL", "INFO").upper(), logging.INFO)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s %(message)s")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
