"""``liverank data ...``: load, check and convert viewing logs."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import typer

from .availability import DEFINITIONS, availability, broadcasts
from .twitch import DataError, Format, Interactions, load_interactions, write_twitch

app = typer.Typer(help="Load, check, convert, generate and describe viewing logs.",
                  no_args_is_help=True)

FORMAT_HELP = ("Input format: 'twitch' (user,stream,streamer,start,stop; header optional; "
               ".csv or .csv.gz) or 'sample' (the shared real sample, converted by its "
               "README's convention).")


def load_or_exit(path: Path, fmt: Format = "twitch", skip_bad_rows: bool = False
                 ) -> Interactions:
    """Load for a command: a bad file prints the loader's message and exits with code 2."""
    try:
        return load_interactions(path, fmt=fmt, skip_bad_rows=skip_bad_rows)
    except DataError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc


def describe(ds: Interactions) -> dict[str, object]:
    """What a loaded file holds, including live streamers per step under both definitions."""
    out: dict[str, object] = {
        "source": ds.source,
        "rows": len(ds),
        "users": ds.n_users,
        "streamers": ds.n_streamers,
        "streams": ds.n_streams,
        "steps": ds.max_step + 1,
        "max_step": ds.max_step,
        "zero_length_rows": ds.zero_length_rows,
        "bad_rows": len(ds.bad_rows),
        "streams_with_several_streamers": broadcasts(ds).multi_streamer,
    }
    for definition in DEFINITIONS:
        live = availability(ds, definition)
        counts = live.live_counts()
        out[f"live_{definition}"] = {
            "mean": round(float(counts.mean()), 2) if counts.size else 0.0,
            "median": float(np.median(counts)) if counts.size else 0.0,
            "max": int(counts.max()) if counts.size else 0,
            "overlapping_stream_cells": live.overlaps,
        }
    return out


@app.command()
def check(
    file: Path = typer.Argument(..., help="Log to load (.csv or .csv.gz)."),
    fmt: str = typer.Option("twitch", "--format", help=FORMAT_HELP),
    skip_bad_rows: bool = typer.Option(
        False, "--skip-bad-rows", help="Skip, count and report bad rows instead of stopping."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
) -> None:
    """Load FILE, validate every row and print what it holds.

    Bad rows stop the load with an error naming file, line, column and reason, unless
    --skip-bad-rows. Live streamers per step are shown under both availability definitions
    (broadcast: a stream is live from its first start to its last stop; rows: LiveRec's,
    live only while a row of the log covers the step).
    """
    t0 = time.perf_counter()
    ds = load_or_exit(file, fmt, skip_bad_rows)  # type: ignore[arg-type]
    load_s = time.perf_counter() - t0
    info = describe(ds)
    info["load_seconds"] = round(load_s, 3)
    if as_json:
        typer.echo(json.dumps(info, indent=2))
        return
    for key, value in info.items():
        typer.echo(f"{key:32s} {value}")
    for bad in ds.bad_rows[:10]:
        typer.echo(f"  skipped: {bad.describe(ds.source)}")
    if len(ds.bad_rows) > 10:
        typer.echo(f"  ... and {len(ds.bad_rows) - 10} more skipped rows")


@app.command()
def convert(
    file: Path = typer.Argument(..., help="Input file."),
    out: Path = typer.Option(..., "--out", help="Output in the Twitch format (.csv/.csv.gz)."),
    fmt: str = typer.Option("sample", "--format", help=FORMAT_HELP),
) -> None:
    """Convert a log (by default the shared real sample) to the Twitch format."""
    ds = load_or_exit(file, fmt)  # type: ignore[arg-type]
    out.parent.mkdir(parents=True, exist_ok=True)
    write_twitch(ds, out)
    typer.echo(f"wrote {len(ds)} rows ({ds.n_users} users, {ds.n_streamers} streamers, "
               f"{ds.n_streams} streams) to {out}")


@app.command()
def synth(
    scale: str = typer.Option("small", "--scale",
                              help="tiny (300 users, 3 days, for unit tests), small (2,000 "
                                   "users), medium (20,000) or twitch100k (100,000 users, "
                                   "~3.05M rows); all but tiny span 6,148 steps."),
    seed: int = typer.Option(0, "--seed", help="Random seed; the same seed gives the same file."),
    out: Path = typer.Option(..., "--out", help="Output in the Twitch format (.csv or .csv.gz)."),
) -> None:
    """Generate a synthetic Twitch log with the shape and signals of 100k_a.csv.

    Streamers broadcast on daily schedules, users log in at habitual hours, come back to
    favourites and move within communities of related streamers. Deterministic per seed.
    """
    from .synth import SCALES, write

    if scale not in SCALES:
        typer.echo(f"error: unknown scale {scale!r}: choose one of {', '.join(SCALES)}",
                   err=True)
        raise typer.Exit(2)
    t0 = time.perf_counter()
    ds = write(scale, seed, out)
    typer.echo(f"wrote {len(ds)} rows ({ds.n_users} users, {ds.n_streamers} streamers, "
               f"{ds.n_streams} streams, steps 0..{ds.max_step}) to {out} "
               f"in {time.perf_counter() - t0:.1f}s")


@app.command()
def stats(
    file: Path = typer.Argument(..., help="Log to describe (.csv or .csv.gz)."),
    fmt: str = typer.Option("twitch", "--format", help=FORMAT_HELP),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
    out: Path | None = typer.Option(None, "--out", help="Also write the JSON to this file."),
    like_sample: bool = typer.Option(
        False, "--like-sample",
        help="First draw a subset the way the shared real sample was drawn (2,000 users in "
             "proportion to their rows, streamers with >= 100 rows per 100k users), to "
             "compare a synthetic file's timing with the real sample like for like."),
) -> None:
    """Statistics of FILE next to the published figures of 100k_a.csv and the real sample.

    Counts and per-entity ratios (rows per user, per streamer, per stream id, repeat share,
    row length), live streamers per step under both availability definitions, and the
    temporal statistics of the real sample's README: gaps between a user's rows, repeat gaps,
    next-row-same-streamer share, activity by hour and weekday, distinct streamers per user.
    """
    from .stats import file_stats, format_table, sample_like_real

    ds = load_or_exit(file, fmt)  # type: ignore[arg-type]
    if like_sample:
        ds = sample_like_real(ds)
    try:
        info = file_stats(ds)
    except ValueError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    text = json.dumps(info, indent=2)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text + "\n")
    typer.echo(text if as_json else format_table(info))


@app.command()
def report(
    file: Path = typer.Argument(..., help="Log to illustrate (.csv or .csv.gz)."),
    out: Path = typer.Option(..., "--out", help="Folder for the PNG figures and summary.md."),
    fmt: str = typer.Option("twitch", "--format", help=FORMAT_HELP),
) -> None:
    """The case for timing: PNG figures and a markdown summary for FILE.

    Live streamers per step over the days, the live set as a share of the catalogue, row and
    broadcast durations, time between repeats, how often a user's next streamer was off air
    at their previous row, popularity among live streamers vs global popularity, activity
    by hour.
    """
    from .report import write_report

    ds = load_or_exit(file, fmt)  # type: ignore[arg-type]
    if len(ds) == 0:
        typer.echo(f"error: {file}: no rows to report on", err=True)
        raise typer.Exit(2)
    numbers = write_report(ds, out)
    typer.echo(f"wrote {out / 'summary.md'} and figures for {numbers['rows']:,} rows")
