"""`liverank data report`: the timing numbers on a hand-made log, and the files written."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from typer.testing import CliRunner

from liverank.cli.main import app
from liverank.model.data.availability import availability
from liverank.model.data.report import TOP_K, is_live, timing, write_report
from liverank.model.data.synth import generate
from liverank.model.data.twitch import load_interactions, write_twitch

runner = CliRunner()

FIGURES = ("live_per_step.png", "live_share.png", "durations.png", "repeats.png",
           "next_offair.png", "live_popularity.png", "activity_by_hour.png")


def test_next_choice_off_air_and_live_popularity_by_hand(tmp_path: Path) -> None:
    # a is live on [0, 10) (stream 1), b on [2, 4) (stream 2), c on [20, 22) (stream 3).
    path = tmp_path / "log.csv"
    path.write_text("1,1,a,0,2\n1,2,b,2,4\n1,1,a,8,10\n2,1,a,1,3\n2,3,c,20,22\n")
    ds = load_interactions(path)
    live = availability(ds, "broadcast")
    idx = ds.streamer_index()
    assert is_live(live, ds.n_streamers, np.array([idx["a"], idx["b"], idx["c"]]),
                   np.array([9, 4, 21])).tolist() == [True, False, True]
    t = timing(ds, live)
    # Pairs: user 1 a(0)->b: b off at 0; b(2)->a: a live at 2; user 2 a(1)->c: c off at 1.
    assert t.offair_share == 2 / 3
    # Gap 2 falls in "< 1 h" (off); gaps 6 (on) and 19 (off) in "1-6 h".
    assert t.offair_by_gap[0][1:] == (1, 1.0)
    assert t.offair_by_gap[1][1:] == (2, 0.5)
    # Popularity: a has 3 rows, b and c one each. b's row at 2 is not top 1 among live (a is
    # live too); c's row at 20 is (only c is live); a's rows are.
    assert t.hit_live[0] == 4 / 5 and t.hit_live[1] == 1.0
    assert t.hit_global[0] == 3 / 5  # only a's rows are in the global top 1
    assert len(t.hit_global) == len(TOP_K)


def test_report_writes_figures_and_summary(tmp_path: Path) -> None:
    numbers = write_report(generate("tiny", 0), tmp_path / "report", title="tiny")
    for name in FIGURES:
        data = (tmp_path / "report" / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5_000
    summary = (tmp_path / "report" / "summary.md").read_text()
    assert summary.startswith("# Why timing matters: tiny")
    assert all(f"]({name})" in summary for name in FIGURES)
    assert 0.0 < float(numbers["next_offair_share"]) < 1.0  # type: ignore[arg-type]


def test_cli_report(tmp_path: Path) -> None:
    path = tmp_path / "tiny.csv"
    write_twitch(generate("tiny", 1), path)
    result = runner.invoke(app, ["data", "report", str(path), "--out", str(tmp_path / "r")])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "r" / "summary.md").exists()
    bad = runner.invoke(app, ["data", "report", str(tmp_path / "nope.csv"), "--out",
                              str(tmp_path / "r2")])
    assert bad.exit_code == 2 and "no such file" in bad.output
