"""``liverank replay DATA`` and ``liverank broker``: thin wrappers over `replay.producer` and
`broker.embedded`.

    liverank broker &                                   # embedded tansu on 127.0.0.1:9092
    liverank replay out/data/twitch100k.csv --speed max
    liverank replay data.csv --speed 3600 --from-step 2000 --requests session-start
    liverank replay data.csv --to-step 5897 --requests none --no-end   # fill the windows,
    liverank replay data.csv --from-step 5898 --rate 500               # then 500 requests/s
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import typer

logger = logging.getLogger(__name__)

EXIT_FAILED, EXIT_SETUP, EXIT_INTERRUPTED = 1, 2, 130


def replay_command(
    data: Path = typer.Argument(..., help="Twitch-format log (.csv or .csv.gz): "
                                "user,stream,streamer,start,stop per row."),
    fmt: str = typer.Option("twitch", "--format", help="'twitch', or 'sample' for the "
                            "shared 2,000-user sample format."),
    speed: str = typer.Option("max", help="Simulated seconds per wall second (3600: one hour "
                              "per second; one 10-minute step takes 600/N s), or 'max'."),
    rate: float | None = typer.Option(None, help="Requests per second, sent evenly (the "
                                      "other events in proportion), whatever the log's "
                                      "daily cycle: a known load. Not with --speed."),
    from_step: int | None = typer.Option(None, help="First step replayed; streams already "
                                         "live then get their start first."),
    to_step: int | None = typer.Option(None, help="Last step replayed (inclusive)."),
    requests: str = typer.Option("every-watch", help="Recommendation requests: before "
                                 "'every-watch', only at 'session-start', or 'none'."),
    requests_from: int | None = typer.Option(None, help="No requests before this step: "
                                             "earlier watches only fill user windows."),
    session_gap: int = typer.Option(6, help="Steps without a watch that start a new session "
                                    "(for --requests session-start)."),
    skip_bad_rows: bool = typer.Option(False, help="Skip malformed rows (counted and "
                                       "reported) instead of stopping before producing."),
    bootstrap: str | None = typer.Option(None, help="Broker address; default "
                                         "LIVERANK_KAFKA_BOOTSTRAP / KAFKA_BOOTSTRAP_SERVERS "
                                         "/ 127.0.0.1:9092."),
    topic_prefix: str | None = typer.Option(None, help="Prefix of every topic name "
                                            "(default LIVERANK_TOPIC_PREFIX)."),
    progress: bool | None = typer.Option(None, "--progress/--no-progress", help="Progress "
                                         "bar (default: when writing to a terminal)."),
    report_path: Path | None = typer.Option(None, "--report", help="Also write the counts "
                                            "per topic as JSON to this file."),
    end: bool = typer.Option(True, "--end/--no-end", help="Send the End records at the end "
                             "(--no-end: another replay continues these topics, e.g. "
                             "--from-step after --to-step)."),
) -> None:
    """Replay a viewing log into Kafka as a live platform would have emitted it.

    stream-events get stream starts/stops (keyed by stream), a watermark per step on every
    partition and an end record on every partition; user-events get watches and
    recommendation requests (keyed by user). Message timestamps are event times; the
    produced_ms header is the wall-clock produce time. Topics are created first (see
    LIVERANK_PARTITIONS). Prints produced / acknowledged / failed per topic; exits 1 if any
    message was not acknowledged, 2 on bad input or no broker, 130 when interrupted.
    """
    from liverank.broker.kafka import KafkaSetupError
    from liverank.core.settings import Settings
    from liverank.model.data.timeline import REQUEST_MODES, build_timeline
    from liverank.model.data.twitch import DataError, load_interactions
    from liverank.replay.encoder import EncodeError
    from liverank.replay.producer import message_rate, parse_speed, replay_to_kafka

    try:
        pace = parse_speed(speed)
        if rate is not None and pace is not None:
            raise ValueError("--rate sends requests evenly and --speed paces by steps: give "
                             "one of them")
        if rate is not None and not rate > 0:
            raise ValueError(f"--rate must be > 0, got {rate:g}")
        if requests not in REQUEST_MODES:
            raise ValueError(f"--requests must be one of {', '.join(REQUEST_MODES)}, "
                             f"got {requests!r}")
        overrides: dict[str, Any] = {}
        if bootstrap:
            overrides["kafka_bootstrap"] = bootstrap
        if topic_prefix is not None:
            overrides["topic_prefix"] = topic_prefix
        settings = Settings(**overrides)
        ds = load_interactions(data, fmt=fmt, skip_bad_rows=skip_bad_rows)  # type: ignore[arg-type]
        tl = build_timeline(ds, requests=requests, requests_from=requests_from,  # type: ignore[arg-type]
                            session_gap=session_gap, from_step=from_step, to_step=to_step,
                            epoch_ms=settings.epoch_ms)
        if rate is not None:
            message_rate(tl, settings.partitions, rate)  # refuses a range with no request
    except (DataError, ValueError) as exc:
        _fail(str(exc), EXIT_SETUP)
    if ds.bad_rows:
        logger.warning("skipped %d bad rows of %s", len(ds.bad_rows), data)
    show = sys.stderr.isatty() if progress is None else progress
    with _progress_bar(len(tl), settings.epoch_ms, show) as on_block:
        try:
            report = replay_to_kafka(tl, settings, speed=pace, start_step=from_step,
                                     rate=rate, end=end, on_block=on_block)
        except KafkaSetupError as exc:
            _fail(str(exc), EXIT_SETUP)
        except EncodeError as exc:  # before anything was produced
            _fail(str(exc), EXIT_FAILED)
    report.bad_rows = len(ds.bad_rows)
    _summary(report)
    if report_path is not None:
        report_path.parent.mkdir(parents=True, exist_ok=True)
        report_path.write_text(json.dumps(report.as_dict(), indent=2) + "\n")
    if report.interrupted:
        raise typer.Exit(EXIT_INTERRUPTED)
    if not report.ok:
        raise typer.Exit(EXIT_FAILED)


def _fail(message: str, code: int) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


class _progress_bar:  # noqa: N801 - used as a context manager, reads like a function
    """A rich bar with events/s and the simulated clock; a no-op when not shown."""

    def __init__(self, total: int, epoch_ms: int, show: bool) -> None:
        self.total, self.epoch_ms, self.show = total, epoch_ms, show
        self.bar: Any = None

    def __enter__(self) -> Any:
        if not self.show:
            return None
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
        )

        self.bar = Progress(TextColumn("replay"), BarColumn(), MofNCompleteColumn(),
                            TextColumn("{task.fields[rate]} ev/s"),
                            TextColumn("sim {task.fields[clock]}"), TimeElapsedColumn(),
                            refresh_per_second=4, transient=False)
        self.bar.__enter__()
        task = self.bar.add_task("replay", total=self.total, rate="-", clock="-")

        def on_block(done: int, step: int, report: Any) -> None:
            from liverank.core.timebase import event_time_ms

            t = datetime.fromtimestamp(event_time_ms(step, self.epoch_ms) / 1000, tz=UTC)
            speed = self.bar.tasks[0].speed
            self.bar.update(task, completed=done, clock=f"{t:%Y-%m-%d %H:%M} (step {step})",
                            rate=f"{speed:,.0f}" if speed else "-")

        return on_block

    def __exit__(self, *exc: object) -> None:
        if self.bar is not None:
            self.bar.__exit__(*exc)


def _summary(report: Any) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    console.print(f"replay: {report.events:,} events, {report.messages:,} messages in "
                  f"{report.seconds:.1f} s ({report.messages / max(report.seconds, 1e-9):,.0f}"
                  " msg/s)", soft_wrap=True)
    table = Table()
    for col in ("topic", "produced", "acknowledged", "failed"):
        table.add_column(col, justify="left" if col == "topic" else "right")
    for topic, produced, acked, failed in report.table():
        table.add_row(topic, f"{produced:,}", f"{acked:,}", f"{failed:,}")
    console.print(table)
    if report.bad_rows:
        console.print(f"skipped bad rows: {report.bad_rows:,}")
    if report.first_error:
        console.print(f"[red]first delivery error:[/red] {report.first_error}")
    if report.interrupted:
        console.print("[yellow]interrupted[/yellow]: the replay did not finish")
    elif not report.ok:
        lost = sum(c.unacknowledged for c in report.topics.values())
        console.print(f"[red]FAILED[/red]: {lost:,} messages not acknowledged")


def broker_command(
    listen: str = typer.Option("127.0.0.1:9092", help="HOST:PORT to listen on (port 0: any "
                               "free port). tansu listens on IPv4 only."),
    create_topics: bool = typer.Option(False, help="Create the system's topics once the "
                                       "broker is up (LIVERANK_PARTITIONS, "
                                       "LIVERANK_TOPIC_PREFIX)."),
) -> None:
    """Run the embedded Kafka-compatible broker (tansu, in memory) until Ctrl-C or SIGTERM.

    Clients find it with LIVERANK_KAFKA_BOOTSTRAP=HOST:PORT (127.0.0.1:9092 is the default
    they use anyway). Everything is lost when it stops.
    """
    from liverank.broker.embedded import BrokerError, serve_forever

    def ready(broker: Any) -> None:
        if create_topics:
            from liverank.broker.kafka import ensure_topics
            from liverank.core.settings import Settings

            ensure_topics(Settings(kafka_bootstrap=broker.bootstrap, broker_kind="tansu"))
        typer.echo(f"broker ready: LIVERANK_KAFKA_BOOTSTRAP={broker.bootstrap} "
                   f"(pid {broker.process.pid}); Ctrl-C stops it", err=True)

    try:
        code = serve_forever(listen, on_ready=ready)
    except BrokerError as exc:
        _fail(str(exc), EXIT_SETUP)
    raise typer.Exit(code)
