"""``liverank pushes``: the pushes on availability change computed offline from a log, and
how often each held the user's next watch, next to the answer the user had before it.

The worker (``LIVERANK_PUSH_ON_LIVE=true``) publishes the same pushes, list for list
(tests/test_service_kafka.py); ``liverank monitor`` reports the same figures online."""

from __future__ import annotations

import json
from pathlib import Path

import typer


def pushes_command(
    data: Path = typer.Option(..., help="Twitch-format CSV (or the sample with --format)."),
    model: Path = typer.Option(..., help="Exported model directory."),
    fmt: str = typer.Option("twitch", "--format", help="twitch or sample."),
    k: int = typer.Option(10, help="Items per answer."),
    requests: str = typer.Option("every-watch", help="The replay's request mode "
                                 "(every-watch, session-start, none): requests put a user "
                                 "on the page too."),
    requests_from: int | None = typer.Option(None, help="The replay's first step with "
                                             "requests."),
    out: Path | None = typer.Option(None, help="Write the report (JSON) here."),
) -> None:
    """Offline pushes on a log with the push settings in force (LIVERANK_PUSH_*), and
    HR@k of each push on the user's next watch vs the answer before it."""
    from liverank.core.settings import Settings
    from liverank.model.data.timeline import REQUEST_MODES, build_timeline
    from liverank.model.data.twitch import DataError, load_interactions
    from liverank.model.pushes import PushRule, offline_report
    from liverank.model.scorer import load_scorer

    settings = Settings()
    try:
        ds = load_interactions(data, fmt=fmt)  # type: ignore[arg-type]
        scorer = load_scorer(model)
    except (DataError, OSError, ValueError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    if requests not in REQUEST_MODES:
        typer.echo(f"error: --requests {requests!r}: expected one of {REQUEST_MODES}",
                   err=True)
        raise typer.Exit(2)
    timeline = build_timeline(ds, requests, requests_from,  # type: ignore[arg-type]
                              epoch_ms=settings.epoch_ms)
    events = [timeline.event(i) for i in range(len(timeline))]
    report, _ = offline_report(events, scorer, k, settings.partitions,
                               PushRule.of(settings), settings.epoch_ms)
    report["rule"] = vars(PushRule.of(settings))
    text = json.dumps(report, indent=2)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text + "\n")
    typer.echo(text)
