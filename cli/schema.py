"""``liverank schema``: the JSON Schema of every topic, generated from the event contract."""

from __future__ import annotations

import json
from pathlib import Path

import typer


def schema_command(
    topic: str | None = typer.Argument(None, help="One topic (stream-events, user-events, "
                                       "recommendations, recommendations-latest, "
                                       "recommendations-shadow, dead-letters); all when omitted."),
    write: Path | None = typer.Option(None, "--write", help="Write <topic>.json files into "
                                      "this folder instead (e.g. docs/schemas)."),
) -> None:
    """Print the JSON Schema of the topics' message values (or write them as files).

    The schemas are generated from the msgspec records in core/events.py; docs/schemas holds
    the published copy (`liverank schema --write docs/schemas` after changing a record;
    docs/events.md says when to bump schema_version).
    """
    from liverank.core.events import (
        json_schemas,
        schema_files,
        stale_schema_files,
        write_schema_files,
    )

    if write is not None:
        if topic is not None:
            typer.echo("error: --write writes every topic; drop the TOPIC argument", err=True)
            raise typer.Exit(2)
        paths = write_schema_files(write)
        typer.echo(f"wrote {len(paths)} schemas to {write}: "
                   + ", ".join(p.name for p in paths))
        for stale in stale_schema_files(write):
            typer.echo(f"warning: {stale} is no topic's schema (delete it if that topic is "
                       "gone)", err=True)
        return
    if topic is None:
        typer.echo(json.dumps(json_schemas(), indent=2, sort_keys=True))
        return
    files = schema_files()
    name = f"{topic}.json"
    if name not in files:
        typer.echo(f"error: no topic {topic!r}; topics: {', '.join(json_schemas())}", err=True)
        raise typer.Exit(2)
    typer.echo(files[name], nl=False)
