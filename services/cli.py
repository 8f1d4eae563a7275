"""The ``liverank`` command line: one entry point, one subcommand per job.

Each command is a thin wrapper; heavy imports (torch, faust, onnxruntime) happen inside the
command that needs them, so ``liverank --help`` and the data commands stay fast.
"""

from __future__ import annotations

import logging
import os

import typer

from liverank.model.data.cli import app as data_app
from liverank.services.bench import app as bench_app

app = typer.Typer(
    help="liverank: recommend live streams that are on air now.\n\n"
    "Replay Twitch-format viewing logs through Kafka, keep live state and user windows in a "
    "Faust service, score with an availability- and time-aware SASRec exported to ONNX.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
app.add_typer(data_app, name="data")
app.add_typer(bench_app, name="bench")


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
