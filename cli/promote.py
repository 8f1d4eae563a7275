"""``liverank promote``: compare the live model with the shadow candidate on the same
requests and promote the candidate when it wins (`liverank.client.promote`)."""

from __future__ import annotations

import json
from pathlib import Path

import typer


def promote_command(
    candidate: Path = typer.Option(..., help="The candidate's model directory (what "
                                   "LIVERANK_SHADOW_MODEL_DIR serves in shadow)."),
    model: Path | None = typer.Option(None, help="The live model symlink to flip (default "
                                      "LIVERANK_MODEL_DIR)."),
    metric: str = typer.Option("ndcg", help="ndcg or hr: what the candidate must win on."),
    k: int = typer.Option(10, min=1, help="Cut-off of the metric."),
    min_requests: int = typer.Option(1000, min=1, help="Fewest paired requests to decide."),
    margin: float = typer.Option(0.0, help="The interval's lower end of candidate - live "
                                 "must be above this."),
    confidence: float = typer.Option(0.95, min=0.5, max=0.999, help="Of the paired "
                                     "bootstrap interval."),
    resamples: int = typer.Option(2000, min=100, help="Bootstrap resamples."),
    log: Path = typer.Option(Path("out/promotions.jsonl"), help="Decision log (JSON lines)."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Decide and log, do not flip."),
    timeout: float = typer.Option(30.0, help="Longest wait reading each topic (s)."),
) -> None:
    """Promote the shadow candidate if it beats the live model on the same requests.

    Reads recommendations, recommendations-shadow and user-events; pairs the answers of
    every request its user followed with a watch at the same step; compares HR@k or NDCG@k
    with a paired bootstrap interval; flips the live model symlink to the candidate when
    the interval's lower end is above --margin with at least --min-requests pairs. Every
    decision goes to --log with its numbers. Exit 0 promoted (or would, with --dry-run),
    3 kept, 2 bad input.
    """
    from confluent_kafka import KafkaException

    from liverank.broker.kafka import KafkaSetupError
    from liverank.client.promote import (
        PromotionError,
        compare,
        decide,
        log_decision,
        pair,
        promote,
        read_evidence,
    )
    from liverank.core.settings import Settings

    if metric not in ("ndcg", "hr"):
        typer.echo(f"error: --metric {metric!r}: expected ndcg or hr", err=True)
        raise typer.Exit(2)
    settings = Settings()
    live_link = model or Path(settings.model_dir)
    try:
        evidence = read_evidence(settings, timeout_s=timeout)
    except (KafkaSetupError, KafkaException) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    pairs = pair(evidence.live, evidence.shadow, evidence.targets, k, metric)  # type: ignore[arg-type]
    decision = decide(compare(pairs, metric, k, resamples, confidence),  # type: ignore[arg-type]
                      min_requests, margin)
    before = None
    if decision.promote and not dry_run:
        try:
            before = promote(live_link, candidate)
        except PromotionError as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(2) from exc
    record = log_decision(log, decision, before)
    typer.echo(json.dumps(record, indent=2))
    typer.echo(("promoted: " if decision.promote and not dry_run else
                "would promote: " if decision.promote else "kept the live model: ")
               + decision.reason)
    if not decision.promote:
        raise typer.Exit(3)
