"""``liverank simulate --retrain daily`` on the tiny synthetic log (3 days: the once model
learns day 0, days 1 and 2 are simulated): a row per day for every arm, day 1 served by the
once model, a candidate that wins serves the next day and one that cannot win never does,
every decision logged with the numbers the rows show, targets outside the live model's
vocabulary counted, bad input refused in one line."""

from __future__ import annotations

import csv
import json
import logging
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from typer.testing import CliRunner

from liverank.cli.main import app
from liverank.cli.simulate import ARMS, SimOptions, gains, simulate, unknown_count
from liverank.core.timebase import STEPS_PER_DAY
from liverank.model.data.synth import write
from liverank.model.data.twitch import Interactions

QUICK = ["--days", "2", "--preset", "tiny", "--epochs", "1", "--retrain-epochs", "1",
         "--val-steps", "36", "--min-requests", "50", "--threads", "1"]


@pytest.fixture(autouse=True, scope="module")
def _root_logger_has_a_handler() -> Iterator[None]:
    """The CLI's ``logging.basicConfig`` would otherwise bind its handler to the first
    CliRunner's captured stderr."""
    handler = logging.NullHandler()
    logging.getLogger().addHandler(handler)
    yield
    logging.getLogger().removeHandler(handler)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Interactions]:
    path = tmp_path_factory.mktemp("simulate") / "tiny.csv"
    return path, write("tiny", 0, path)


@pytest.fixture(scope="module")
def always(tiny: tuple[Path, Interactions], tmp_path_factory: pytest.TempPathFactory
           ) -> tuple[Path, dict[str, Any]]:
    """Through the root CLI; margin -1: every candidate with enough requests wins."""
    out = tmp_path_factory.mktemp("always")
    r = CliRunner().invoke(app, ["simulate", "--retrain", "daily", "--data", str(tiny[0]),
                                 "--out", str(out), "--margin", "-1", *QUICK])
    assert r.exit_code == 0, r.output
    return out, json.loads((out / "simulate.json").read_text())


@pytest.fixture(scope="module")
def never(tiny: tuple[Path, Interactions], always: tuple[Path, dict[str, Any]],
          tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    """The same once model; margin 1: no NDCG@10 difference can be above it."""
    out = tmp_path_factory.mktemp("never")
    report = simulate(SimOptions(data=tiny[0], out=out, days=2, once=always[0] / "models" /
                                 "once" / "ckpt", retrain_epochs=1, val_steps=36,
                                 min_requests=50, margin=1.0), echo=lambda _: None)
    return out, report


def _day_rows(ds: Interactions, day: int) -> np.ndarray:
    return (ds.start >= day * STEPS_PER_DAY) & (ds.start < (day + 1) * STEPS_PER_DAY)


def _decisions(out: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (out / "promotions.jsonl").read_text().splitlines()]


def test_gains_and_unknown_count_by_their_definitions() -> None:
    hr, ndcg = gains([1, 3, None, 10, 11], 10)
    assert hr.tolist() == [1, 1, 0, 1, 0]
    assert ndcg.tolist() == pytest.approx([1, 0.5, 0, 1 / math.log2(11), 0])
    assert unknown_count(["a", "b", "c", "a", "d"], ["a", "d"]) == 2


def test_every_simulated_day_has_a_row_for_every_arm(
        tiny: tuple[Path, Interactions], always: tuple[Path, dict[str, Any]]) -> None:
    out, report = always
    rows = report["rows"]
    assert [r["calendar_day"] for r in rows] == [1, 2] and [r["day"] for r in rows] == [1, 2]
    for r in rows:  # a request before every watch of the day
        assert r["requests"] == int(_day_rows(tiny[1], r["calendar_day"]).sum()) > 0
        for arm in ARMS:
            for m in ("hr", "ndcg"):
                assert 0 <= r[f"{arm}_{m}"] <= 1, (arm, m, r)
            assert r[f"{arm}_ndcg"] <= r[f"{arm}_hr"]
    with (out / "simulate.csv").open() as f:
        table = list(csv.DictReader(f))
    assert len(table) == 2
    assert float(table[1]["REP_ndcg"]) == pytest.approx(rows[1]["REP_ndcg"])
    assert (out / "simulate.png").stat().st_size > 10_000


def test_day_one_is_served_by_the_once_model(always: tuple[Path, dict[str, Any]],
                                             never: tuple[Path, dict[str, Any]]) -> None:
    for _, report in (always, never):
        first = report["rows"][0]
        assert first["live_version"] == report["once"]["version"]
        assert (first["retrained_hr"], first["retrained_ndcg"]) == (first["once_hr"],
                                                                     first["once_ndcg"])
    # once_plus is the day-1 candidate, frozen: on day 2 it is what a promotion serves
    first, second = always[1]["rows"]
    assert (first["once_plus_hr"], first["once_plus_ndcg"]) == (first["candidate_hr"],
                                                                 first["candidate_ndcg"])
    assert always[1]["once_plus"]["version"] == first["candidate_version"]
    assert (second["once_plus_hr"], second["once_plus_ndcg"]) == (second["retrained_hr"],
                                                                   second["retrained_ndcg"])
    # the same once model and day-0 data in both runs: the same once figures
    assert never[1]["rows"][1]["once_ndcg"] == always[1]["rows"][1]["once_ndcg"]


def test_a_winning_candidate_serves_from_the_next_day(always: tuple[Path, dict[str, Any]]
                                                      ) -> None:
    out, report = always
    rows, logged = report["rows"], _decisions(out)
    assert [d["promote"] for d in logged] == [True, True]
    assert rows[1]["live_version"] == rows[0]["candidate_version"]
    assert (out / "live").resolve() == (out / "models" / "day002" / "onnx").resolve()
    assert logged[0]["previous_dir"] == str((out / "models" / "once" / "onnx").resolve())
    assert logged[1]["previous_dir"] == str((out / "models" / "day001" / "onnx").resolve())
    for r, d in zip(rows, logged, strict=True):  # the decision rests on the row's numbers
        assert d["n"] == r["requests"] and d["metric"] == "ndcg" and d["k"] == 10
        assert d["live"] == pytest.approx(r["retrained_ndcg"])
        assert d["candidate"] == pytest.approx(r["candidate_ndcg"])
        assert d["diff"] == pytest.approx(r["candidate_ndcg"] - r["retrained_ndcg"])
        assert d["ci_low"] <= d["diff"] <= d["ci_high"] and d["ci_low"] > -1
        assert d["live_version"] == r["live_version"]
        assert d["candidate_version"] == r["candidate_version"]
    lineage = json.loads((out / "models" / "day002" / "onnx" / "model.json").read_text()
                         )["lineage"]
    assert lineage["data"]["until_step"] == 2 * STEPS_PER_DAY - 1
    assert lineage["parent"] == json.loads((out / "models" / "day001" / "onnx" /
                                            "model.json").read_text())["training"][
                                                "checkpoint_version"]


def test_a_candidate_that_cannot_win_is_never_promoted(never: tuple[Path, dict[str, Any]]
                                                       ) -> None:
    out, report = never
    logged = _decisions(out)
    assert [d["promote"] for d in logged] == [False, False]
    assert all("not above the margin +1.0000" in d["reason"] for d in logged)
    assert all(d["previous_dir"] is None and math.isfinite(d["diff"]) for d in logged)
    assert (out / "live").resolve() == (out / "models" / "once" / "onnx").resolve()
    for r in report["rows"]:
        assert r["live_version"] == report["once"]["version"] and not r["promoted"]
        assert (r["retrained_hr"], r["retrained_ndcg"]) == (r["once_hr"], r["once_ndcg"])
    assert report["summary"]["promotions"] == 0


def test_unknown_share_counts_targets_outside_the_live_vocabulary(
        tiny: tuple[Path, Interactions], always: tuple[Path, dict[str, Any]],
        never: tuple[Path, dict[str, Any]]) -> None:
    ds = tiny[1]
    names = ds.streamer_names.astype(str)
    seen_unknown = 0
    for out, report in (always, never):
        live_dirs = {1: out / "models" / "once" / "onnx",
                     2: (out / "models" / "day001" / "onnx") if report["rows"][0]["promoted"]
                     else out / "models" / "once" / "onnx"}
        for r in report["rows"]:
            day = r["calendar_day"]
            items = set(json.loads((live_dirs[day] / "model.json").read_text())["items"])
            truths = names[ds.streamer[_day_rows(ds, day)]]
            expected = int(sum(t not in items for t in truths))
            assert r["unknown_live"] == expected
            assert r["unknown_live_share"] == pytest.approx(expected / len(truths))
            seen_unknown += expected
    assert seen_unknown > 0  # the check above was not vacuous


@pytest.mark.parametrize(("args", "message"), [
    (["--retrain", "weekly"], "--retrain 'weekly': expected one of daily"),
    (["--days", "3"], "at most 2 can be simulated"),
    (["--days", "0"], "--days 0: must be at least 1"),
    (["--metric", "mrr"], "--metric 'mrr': expected ndcg or hr"),
    (["--once", "{tmp}/none"], "not a training checkpoint"),
    (["--once", "{always}/models/day002/ckpt"], "inside the period"),
    (["--data", "{tmp}/missing.csv"], "no such file"),
])
def test_bad_input_is_refused_in_one_line(tiny: tuple[Path, Interactions],
                                          always: tuple[Path, dict[str, Any]], tmp_path: Path,
                                          args: list[str], message: str) -> None:
    argv = ["simulate", "--data", str(tiny[0]), "--out", str(tmp_path / "out"), "--days", "2",
            *[a.format(tmp=tmp_path, always=always[0]) for a in args]]
    r = CliRunner().invoke(app, argv)
    assert r.exit_code == 2, r.output
    lines = [line for line in r.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], r.output
