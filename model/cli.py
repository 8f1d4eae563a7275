"""``liverank train | evaluate | export``.

Thin wrappers: torch and onnxruntime are imported inside the commands, so ``liverank
--help`` stays fast and torch-free.

    liverank train --data out/data/small.csv --out out/models/liverank --preset quick
    liverank train --from-topics --until 2019-11-02T00:00Z --warm-start out/models/liverank \\
        --out out/models/liverank-next
    liverank export --checkpoint out/models/liverank --out out/models/liverank-onnx
    liverank evaluate --data out/data/small.csv --model out/models/liverank-onnx \\
        --targets all --availability broadcast --json out/eval/small.json
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import typer

from .data.cli import FORMAT_HELP, load_or_exit
from .data.split import TEST_OFFSET, VAL_OFFSET

if TYPE_CHECKING:
    from .data.eventlog import LogReader
    from .data.twitch import Interactions

logger = logging.getLogger(__name__)

ARCH_HELP = ("Model: 'liverank' (SASRec + time + repeat, live negatives), 'sasrec' (plain: "
             "no time, no repeat, uniform negatives), 'gru' (GRU4Rec-style), 'mf' (MF-BPR "
             "over the window). --time/--repeat/--negatives override the arch's defaults.")


def make_train_command(read_log: LogReader | None = None) -> Callable[..., None]:
    """The ``train`` command; ``read_log`` reads the event topics for ``--from-topics`` (the
    root CLI hands in `liverank.client.history.read_log`: this layer cannot import it)."""

    def train_command(
        out: Path = typer.Option(..., "--out", help="Checkpoint directory to write."),
        data: Path | None = typer.Option(None, "--data",
                                         help="Viewing log (Twitch format or sample)."),
        from_topics: bool = typer.Option(False, "--from-topics",
                                         help="Read the rows from the user-events and "
                                              "stream-events topics (broker and prefix from "
                                              "the LIVERANK_ settings) instead of --data."),
        until: str | None = typer.Option(None, "--until",
                                         help="Use what was known at this event time: "
                                              "ISO-8601 (UTC unless it says otherwise), ms "
                                              "since 1970, or step:N. Rows that started "
                                              "later are left out; broadcasts still on air "
                                              "then count as live until it."),
        since: str | None = typer.Option(None, "--since",
                                         help="Leave out rows that started before this "
                                              "event time (same forms as --until)."),
        warm_start: Path | None = typer.Option(None, "--warm-start",
                                               help="Continue from this checkpoint: its "
                                                    "weights, model config and item ids; new "
                                                    "streamers get new embeddings."),
        grow_init: str = typer.Option("oov", "--grow-init",
                                      help="First embedding of a streamer a warm start "
                                           "adds: 'oov' (a copy of the unknown-streamer "
                                           "one: answers unchanged until trained) or "
                                           "'mean' (the mean of the known ones)."),
        topics_timeout: float = typer.Option(120.0, "--topics-timeout",
                                             help="Longest wait for the topics (s)."),
        fmt: str = typer.Option("twitch", "--format", help=FORMAT_HELP),
        arch: str | None = typer.Option(None, "--arch", help=ARCH_HELP),
        preset: str = typer.Option("quick", "--preset",
                                   help="quick (8 epochs, patience 2) or full (40, "
                                        "patience 4)."),
        time_features: bool | None = typer.Option(None, "--time/--no-time",
                                                  help="Time-of-day, weekday and gap "
                                                       "features."),
        repeat: bool | None = typer.Option(None, "--repeat/--no-repeat",
                                           help="Recency/count embedding of window "
                                                "candidates."),
        negatives: str | None = typer.Option(None, "--negatives",
                                             help="'live' (only streamers live at the "
                                                  "target's step) or 'uniform'."),
        window_len: int | None = typer.Option(None, "--window-len", help="L (default 16)."),
        epochs: int | None = typer.Option(None, "--epochs",
                                          help="Override the preset's epochs."),
        max_minutes: float | None = typer.Option(None, "--max-minutes",
                                                 help="Stop after the epoch that passes "
                                                      "this."),
        val_offset: int = typer.Option(VAL_OFFSET, "--val-offset",
                                       help="Validation starts at max_step - this."),
        test_offset: int = typer.Option(TEST_OFFSET, "--test-offset",
                                        help="Test starts at max_step - this."),
        seed: int = typer.Option(0, "--seed"),
        threads: int = typer.Option(2, "--threads", help="torch CPU threads."),
    ) -> None:
        """Train a model on the rows before the validation period; early-stop on
        validation NDCG@10; write weights + config + item index + lineage to --out.

        The rows come from --data (a file) or --from-topics (the event topics), optionally
        as known at --until. --warm-start continues from a checkpoint and grows its
        vocabulary with the streamers it did not know.
        """
        from .train import configs, retrain, train

        if warm_start is not None and not (warm_start / "checkpoint.json").is_file():
            _fail(f"{warm_start}: not a training checkpoint (no checkpoint.json)")
        ds, period, epoch_ms = _training_log(data, from_topics, until, since, fmt,
                                             topics_timeout, read_log)
        options: dict[str, Any] = {
            "time": time_features, "repeat": repeat, "negatives": negatives,
            "window_len": window_len, "epochs": epochs, "max_minutes": max_minutes,
            "val_offset": val_offset, "test_offset": test_offset, "seed": seed,
            "threads": threads}
        try:
            if warm_start is not None:
                result = retrain(ds, out, warm_start, preset=preset, grow_init=grow_init,
                                 period=period, epoch_ms=epoch_ms, arch=arch, **options)
            else:
                model_cfg, cfg = configs(arch or "liverank", preset, **options)
                result = train(ds, out, model_cfg, cfg, period=period, epoch_ms=epoch_ms)
        except ValueError as exc:
            _fail(str(exc))
        typer.echo(f"checkpoint {result.out}: best epoch {result.best_epoch}, validation "
                   f"NDCG@10 {result.best_ndcg10:.4f}, {result.seconds_per_epoch:.1f} "
                   f"s/epoch, {result.sequences_per_second:.0f} sequences/s")

    return train_command


train_command = make_train_command()


def _fail(message: str) -> NoReturn:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(2)


def _training_log(data: Path | None, from_topics: bool, until: str | None,
                  since: str | None, fmt: str, timeout_s: float,
                  read_log: LogReader | None) -> tuple[Interactions, dict[str, Any], int]:
    """The rows to train on, what the lineage should say about them, and the epoch."""
    from liverank.core.settings import Settings

    from .data.eventlog import as_known_at, step_at

    if (data is None) == (not from_topics):
        _fail("give either --data FILE or --from-topics")
    settings = Settings()
    try:
        until_step = step_at(until, settings.epoch_ms) if until is not None else None
        since_step = step_at(since, settings.epoch_ms) if since is not None else None
    except ValueError as exc:
        _fail(f"--until/--since: {exc}")
    if until_step is not None and since_step is not None and since_step > until_step:
        _fail(f"--since (step {since_step}) is after --until (step {until_step})")
    period: dict[str, Any] = {"until_step": until_step, "since_step": since_step}
    if from_topics:
        if read_log is None:
            _fail("--from-topics needs the topic reader, which the root `liverank` command "
                  "provides")
        try:
            ds = read_log(settings, until_step=until_step, since_step=since_step,
                          timeout_s=timeout_s)
        except (ValueError, TimeoutError, RuntimeError) as exc:  # no broker, no rows
            _fail(str(exc).strip().splitlines()[0] if str(exc).strip() else repr(exc))
        period["topics"] = [settings.topic("stream-events"), settings.topic("user-events")]
        return ds, period, settings.epoch_ms
    assert data is not None
    ds = load_or_exit(data, fmt)  # type: ignore[arg-type]
    if until_step is not None or since_step is not None:
        try:
            ds = as_known_at(ds, until_step if until_step is not None else ds.max_step,
                             since_step)
        except ValueError as exc:
            _fail(str(exc))
    return ds, period, settings.epoch_ms


def export_command(
    checkpoint: Path = typer.Option(..., "--checkpoint", help="Directory from `train`."),
    out: Path = typer.Option(..., "--out", help="Directory for model.onnx + model.json."),
) -> None:
    """Export a checkpoint to ONNX (dynamic batch and candidate axes), check parity with
    torch (<= 1e-4, padding-only windows included) and write model.json with hashes."""
    from .export import ExportError, export

    try:
        info = export(checkpoint, out)
    except ExportError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    typer.echo(f"exported {out}: version {info['version']}, max |onnx - torch| "
               f"{info['metrics']['onnx_max_abs_diff']:.2e}")


def evaluate_command(
    data: Path = typer.Option(..., "--data", help="Viewing log (Twitch format or sample)."),
    model: list[Path] = typer.Option([], "--model",
                                     help="Exported dir (onnxruntime) or checkpoint (torch); "
                                          "repeatable."),
    fmt: str = typer.Option("twitch", "--format", help=FORMAT_HELP),
    targets: str = typer.Option("all", "--targets",
                                help="'all' test watches or each user's 'last' one."),
    definition: str = typer.Option("broadcast", "--availability",
                                   help="Live set: 'broadcast' or 'rows' (LiveRec's)."),
    json_path: Path = typer.Option(Path("out/eval/result.json"), "--json",
                                   help="Result JSON; a .md table is written next to it."),
    val_offset: int = typer.Option(VAL_OFFSET, "--val-offset"),
    test_offset: int = typer.Option(TEST_OFFSET, "--test-offset"),
    limit: int | None = typer.Option(None, "--limit",
                                     help="Evaluate an evenly spaced subset of targets."),
    threads: int = typer.Option(1, "--threads", help="Scorer threads."),
    repeat_window: int = typer.Option(16, "--repeat-window", min=1,
                                      help="'win' columns: a target is a repeat when its "
                                           "streamer is among the user's last N watches "
                                           "(LiveRec's definition; 'log' columns: watched "
                                           "before anywhere)."),
) -> None:
    """Rank the true streamer among all live streamers (LiveRec protocol) for POP, live
    popularity, REP (liverank's: most recent first), REP-count (LiveRec's: count in the
    input window) and every --model; print one table, write JSON + markdown. New/repeat
    columns come under both definitions, labelled (log) and (win)."""
    from .data.split import time_split
    from .evaluate import markdown_table, run, write_result

    if targets not in ("all", "last") or definition not in ("broadcast", "rows"):
        typer.echo("error: --targets must be all|last and --availability broadcast|rows",
                   err=True)
        raise typer.Exit(2)
    for path in model:  # what `open_scorer` accepts, checked before the data is loaded
        if not ((path / "model.json").exists() or (path / "checkpoint.json").exists()):
            typer.echo(f"error: {path}: neither an exported model (model.json) nor a "
                       "training checkpoint (checkpoint.json)", err=True)
            raise typer.Exit(2)
    ds = load_or_exit(data, fmt)  # type: ignore[arg-type]
    split = time_split(ds, val_offset, test_offset)
    result = run(ds, model, split, targets, definition, threads=threads,  # type: ignore[arg-type]
                 limit=limit, repeat_window=repeat_window)
    md = write_result(result, json_path)
    typer.echo(markdown_table(result))
    typer.echo(f"wrote {json_path} and {md}")


def register(app: typer.Typer, read_log: LogReader | None = None) -> None:
    """Add train, evaluate and export to the root ``liverank`` app; ``read_log`` serves
    ``train --from-topics``."""
    app.command("train")(make_train_command(read_log))
    app.command("evaluate")(evaluate_command)
    app.command("export")(export_command)
