"""``liverank serve --model DIR``: run one worker of the recommendation service.

    liverank broker &                                   # or LIVERANK_KAFKA_BOOTSTRAP=...
    liverank serve --model out/models/current           # reads user-events + stream-events
    liverank replay out/data/tiny.csv --speed max       # in another shell
    curl localhost:6066/health; curl localhost:6066/metrics

Settings come from the environment (prefix ``LIVERANK_``) or ``.env``, built once here;
``--help`` lists them. Run more workers with the same ``LIVERANK_WORKER_ID`` and another
``LIVERANK_WEB_PORT`` to share the user partitions; each reads all of stream-events.
This module is imported by the CLI, so faust and onnxruntime are imported inside `run`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import typer

from liverank.core.settings import Settings, settings_reference
from liverank.model.scorer import Scorer, load_scorer

ScorerLoader = Callable[[str, int], Scorer]  # (model directory, threads) -> scorer

logger = logging.getLogger(__name__)

SERVING_SETTINGS = ("kafka_bootstrap", "topic_prefix", "partitions", "broker_kind", "store",
                    "model_dir", "model_poll_s", "top_k", "window_slack", "batch_size",
                    "batch_wait_ms", "watermark_wait_ms", "stopped_horizon", "future_horizon",
                    "recommend_on_watch", "web_port", "scorer_threads", "worker_id",
                    "fetch_wait_ms", "kafka_timeout_s", "outage_timeout_s", "data_dir",
                    "progress_timeout_s")


def settings_epilog() -> str:
    """The serving settings as a --help epilog (one line each; typer keeps \\b blocks)."""
    wanted = {"LIVERANK_" + n.upper() for n in SERVING_SETTINGS}
    lines = [f"{env} [{default}]: {desc}" for env, default, desc in settings_reference()
             if env.split(" ")[0] in wanted]
    return "Settings (environment or .env):\n\n\b\n" + "\n".join(lines)


def run(settings: Settings, loglevel: str = "info", *, load: ScorerLoader = load_scorer) -> None:
    """Create the topics if needed, load the model, and run the Faust worker until stopped.

    ``load`` reads a model directory (at start and at every swap); tests and benchmarks hand
    in the fake's loader (`liverank.services.testing`)."""
    import faust

    from liverank.broker import kafka
    from liverank.services.app import Service

    scorer = load(settings.model_dir, settings.scorer_threads)  # a bad model fails first
    kafka.wait_out(settings, lambda: kafka.ensure_topics(settings), "creating the topics")
    Path(settings.data_dir).mkdir(parents=True, exist_ok=True)  # Faust creates one level
    service = Service(settings, scorer, model_dir=settings.model_dir, load=load)
    logger.info("worker app_id=%s model_version=%s bootstrap=%s web_port=%d store=%s",
                service.app.conf.id, scorer.version, settings.kafka_bootstrap,
                settings.web_port, settings.store)
    faust.Worker(service.app, loglevel=loglevel, quiet=True).execute_from_commandline()


def serve_command(
    model: Path | None = typer.Option(
        None, "--model", help="Exported model directory (model.onnx + model.json), or a "
        "symlink to one: flip it to switch versions live. Default LIVERANK_MODEL_DIR."),
    web_port: int | None = typer.Option(None, "--web-port", help="Port of /health and "
                                        "/metrics (default LIVERANK_WEB_PORT)."),
    loglevel: str = typer.Option("info", "--loglevel", help="Worker log level."),
) -> None:
    """Run the Faust recommendation worker: top-k live streams for every request.

    Reads user-events (watches, requests; keyed by user) and all of stream-events (starts,
    stops, watermarks; every worker reads every partition), keeps user windows in a Faust
    table, answers each request once every stream-events partition reached its step, and
    publishes to recommendations; bad records go to dead-letters. Exits 2 when the model
    directory or the broker is unusable.
    """
    from liverank.broker.kafka import KafkaSetupError
    from liverank.model.scorer import ModelDirError

    overrides: dict[str, Any] = {}
    if model is not None:
        overrides["model_dir"] = str(model)
    if web_port is not None:
        overrides["web_port"] = web_port
    try:
        settings = Settings(**overrides)
    except ValueError as exc:  # pydantic names the setting and the problem
        typer.echo(f"error: bad settings: {exc}", err=True)
        raise typer.Exit(2) from exc
    try:
        run(settings, loglevel)
    except (ModelDirError, KafkaSetupError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc


def register(app: typer.Typer) -> None:
    app.command("serve", epilog=settings_epilog())(serve_command)
