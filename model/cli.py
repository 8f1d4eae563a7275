"""``liverank train | evaluate | export``.

Thin wrappers: torch and onnxruntime are imported inside the commands, so ``liverank
--help`` stays fast and torch-free.

    liverank train --data out/data/small.csv --out out/models/liverank --preset quick
    liverank export --checkpoint out/models/liverank --out out/models/liverank-onnx
    liverank evaluate --data out/data/small.csv --model out/models/liverank-onnx \\
        --targets all --availability broadcast --json out/eval/small.json
"""

from __future__ import annotations

import logging
from pathlib import Path

import typer

from .data.cli import FORMAT_HELP, load_or_exit
from .data.split import TEST_OFFSET, VAL_OFFSET

logger = logging.getLogger(__name__)

ARCH_HELP = ("Model: 'liverank' (SASRec + time + repeat, live negatives), 'sasrec' (plain: "
             "no time, no repeat, uniform negatives), 'gru' (GRU4Rec-style), 'mf' (MF-BPR "
             "over the window). --time/--repeat/--negatives override the arch's defaults.")


def train_command(
    data: Path = typer.Option(..., "--data", help="Viewing log (Twitch format or sample)."),
    out: Path = typer.Option(..., "--out", help="Checkpoint directory to write."),
    fmt: str = typer.Option("twitch", "--format", help=FORMAT_HELP),
    arch: str = typer.Option("liverank", "--arch", help=ARCH_HELP),
    preset: str = typer.Option("quick", "--preset",
                               help="quick (8 epochs, patience 2) or full (40, patience 4)."),
    time_features: bool | None = typer.Option(None, "--time/--no-time",
                                              help="Time-of-day, weekday and gap features."),
    repeat: bool | None = typer.Option(None, "--repeat/--no-repeat",
                                       help="Recency/count embedding of window candidates."),
    negatives: str | None = typer.Option(None, "--negatives",
                                         help="'live' (only streamers live at the target's "
                                              "step) or 'uniform'."),
    window_len: int | None = typer.Option(None, "--window-len", help="L (default 16)."),
    epochs: int | None = typer.Option(None, "--epochs", help="Override the preset's epochs."),
    max_minutes: float | None = typer.Option(None, "--max-minutes",
                                             help="Stop after the epoch that passes this."),
    val_offset: int = typer.Option(VAL_OFFSET, "--val-offset",
                                   help="Validation starts at max_step - this."),
    test_offset: int = typer.Option(TEST_OFFSET, "--test-offset",
                                    help="Test starts at max_step - this."),
    seed: int = typer.Option(0, "--seed"),
    threads: int = typer.Option(2, "--threads", help="torch CPU threads."),
) -> None:
    """Train a model on the rows before the validation period; early-stop on validation
    NDCG@10; write weights + config + item index to --out."""
    from .train import configs, train

    ds = load_or_exit(data, fmt)  # type: ignore[arg-type]
    try:
        model_cfg, cfg = configs(arch, preset, time=time_features, repeat=repeat,
                                 negatives=negatives, window_len=window_len, epochs=epochs,
                                 max_minutes=max_minutes, val_offset=val_offset,
                                 test_offset=test_offset, seed=seed, threads=threads)
        result = train(ds, out, model_cfg, cfg)
    except ValueError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    typer.echo(f"checkpoint {result.out}: best epoch {result.best_epoch}, validation "
               f"NDCG@10 {result.best_ndcg10:.4f}, {result.seconds_per_epoch:.1f} s/epoch, "
               f"{result.sequences_per_second:.0f} sequences/s")


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
) -> None:
    """Rank the true streamer among all live streamers (LiveRec protocol) for POP, live
    popularity, REP and every --model; print one table, write JSON + markdown."""
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
                 limit=limit)
    md = write_result(result, json_path)
    typer.echo(markdown_table(result))
    typer.echo(f"wrote {json_path} and {md}")


def register(app: typer.Typer) -> None:
    """Add train, evaluate and export to the root ``liverank`` app."""
    app.command("train")(train_command)
    app.command("evaluate")(evaluate_command)
    app.command("export")(export_command)
