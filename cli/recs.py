"""``liverank recs``: read the service's answers (``tail``) and a user's latest one (``get``).

Both read through `liverank.client` (the contract's types); broker and topic prefix come from
the settings (``LIVERANK_KAFKA_BOOTSTRAP``, ``LIVERANK_TOPIC_PREFIX``, security settings). A
broker or endpoint that does not answer, or no answer for the user, prints one line and exits
with status 2.
"""

from __future__ import annotations

import sys
from datetime import datetime
from typing import TYPE_CHECKING

import typer

if TYPE_CHECKING:
    from liverank.core.events import Recommendation

app = typer.Typer(help="Read the service's answers: follow them, or look one user's up.",
                  no_args_is_help=True)

HEADER = f"{'time':12}  {'user':>10}  {'trigger':11}  {'model':16}  {'flags':5}  top items (score)"


def _clock(ms: int, date: bool = False) -> str:
    fmt = "%Y-%m-%d %H:%M:%S.%f" if date else "%H:%M:%S.%f"
    return datetime.fromtimestamp(ms / 1000).strftime(fmt)[:-3]


def _flags(rec: Recommendation) -> str:
    """L: late, S: stale, F: fallback (docs/events.md); "-" for none."""
    return "".join(c for c, on in (("L", rec.late), ("S", rec.stale), ("F", rec.fallback))
                   if on) or "-"


def format_row(rec: Recommendation, top: int = 3) -> str:
    """One table line: published time, user, trigger, model, flags, the top items."""
    items = "  ".join(f"{i.streamer} {i.score:.3f}" for i in rec.items[:top])
    more = len(rec.items) - top
    if more > 0:
        items += f"  (+{more})"
    model = rec.model_version if len(rec.model_version) <= 16 else rec.model_version[:15] + "…"
    return (f"{_clock(rec.published_ms):12}  {rec.user:>10}  {rec.trigger:11}  {model:16}  "
            f"{_flags(rec):5}  {items or '(no live stream)'}")


def format_answer(rec: Recommendation) -> str:
    """A user's answer in full: what produced it, then every item."""
    marks = [name for name, on in (("late", rec.late), ("stale", rec.stale),
                                   ("fallback", rec.fallback)) if on]
    lines = [f"user {rec.user}  trigger {rec.trigger}  request {rec.request_id}  "
             f"step {rec.step}  model {rec.model_version}  "
             f"published {_clock(rec.published_ms, date=True)}"
             + "".join(f"  [{m}]" for m in marks)]
    width = max((len(i.streamer) for i in rec.items), default=0)
    lines += [f"{i.rank:>4}. {i.streamer:{width}}  {i.score:9.4f}  stream {i.stream}"
              for i in rec.items] or ["  (no live stream)"]
    return "\n".join(lines)


def _fail(message: object) -> typer.Exit:
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(2)


@app.command()
def tail(
    user: int | None = typer.Option(None, "--user", help="Only this user's answers."),
    from_beginning: bool = typer.Option(False, "--from-beginning",
                                        help="Start at the oldest answer retained, not now."),
    json_lines: bool = typer.Option(False, "--json", help="One JSON record per line (as on "
                                    "the wire) instead of the table."),
    timeout: float | None = typer.Option(None, "--timeout", help="Stop after this many "
                                         "seconds without a new answer (default: follow "
                                         "until Ctrl-C)."),
    top: int = typer.Option(3, "--top", min=1, help="Items shown per answer in the table."),
) -> None:
    """Follow the answers on the recommendations topic, as a table or JSON lines.

    Table columns: published time, user, trigger, model version, flags (L late, S stale,
    F fallback) and the top items with their scores.
    """
    from confluent_kafka import KafkaException

    from liverank.broker.kafka import KafkaSetupError
    from liverank.client.consumer import RecsClient
    from liverank.core.events import encode
    from liverank.core.settings import Settings

    try:
        client = RecsClient(Settings())
    except (KafkaSetupError, KafkaException) as exc:
        raise _fail(exc) from None
    with client:
        if not json_lines:
            typer.echo(HEADER)
        try:
            for rec in client.answers(from_beginning=from_beginning, user=user,
                                      timeout_s=timeout):
                typer.echo(encode(rec).decode() if json_lines else format_row(rec, top))
                sys.stdout.flush()
        except KeyboardInterrupt:
            pass
        except (KafkaSetupError, KafkaException) as exc:
            raise _fail(exc) from None
        if client.skipped:
            typer.echo("skipped " + ", ".join(f"{n} {why}" for why, n in
                                              sorted(client.skipped.items())), err=True)


@app.command()
def get(
    user: int = typer.Argument(..., help="The user id."),
    now: bool = typer.Option(False, "--now", help="Rank now for the user's current window "
                             "(asks the service; implies --via http)."),
    via: str | None = typer.Option(None, "--via", help="kafka (the compacted "
                                   "recommendations-latest topic) or http (the service's "
                                   "lookup endpoint). Default: kafka, http with --now/--url."),
    url: str | None = typer.Option(None, "--url", help="A worker's web address (default "
                                   "http://127.0.0.1:LIVERANK_WEB_PORT)."),
    json_out: bool = typer.Option(False, "--json", help="The record as JSON (as on the wire)."),
    timeout: float | None = typer.Option(None, "--timeout", help="Longest wait in seconds "
                                         "(default LIVERANK_KAFKA_TIMEOUT_S)."),
) -> None:
    """A user's latest answer, from Kafka or from the service's lookup endpoint."""
    from confluent_kafka import KafkaException

    from liverank.broker.kafka import KafkaSetupError
    from liverank.client.consumer import latest
    from liverank.client.endpoint import LookupUnavailableError, lookup
    from liverank.core.events import encode
    from liverank.core.settings import Settings

    mode = via or ("http" if now or url else "kafka")
    if mode not in ("kafka", "http"):
        raise _fail(f"--via {mode}: use kafka or http")
    if mode == "kafka" and (now or url):
        raise _fail("--now and --url ask the service: use --via http")
    settings = Settings()
    wait = settings.kafka_timeout_s if timeout is None else timeout
    try:
        if mode == "http":
            where = url or f"http://127.0.0.1:{settings.web_port}"
            rec = lookup(where, user, now=now, timeout_s=wait)
        else:
            where = settings.topic("recommendations-latest")
            rec = latest(settings, user, timeout_s=wait)
    except (KafkaSetupError, KafkaException, LookupUnavailableError, TimeoutError) as exc:
        raise _fail(exc) from None
    if rec is None:
        raise _fail(f"no recommendations for user {user} ({where})")
    typer.echo(encode(rec).decode() if json_out else format_answer(rec))
