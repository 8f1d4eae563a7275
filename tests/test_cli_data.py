"""`liverank data check/convert` as a user runs them."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from liverank.cli.main import app

runner = CliRunner()

LOG = "1,10,a,0,3\n2,11,b,1,2\n1,10,a,2,4\n3,12,a,8,9\n"


def test_check_prints_what_the_file_holds(tmp_path: Path) -> None:
    path = tmp_path / "log.csv"
    path.write_text(LOG)
    result = runner.invoke(app, ["data", "check", str(path), "--json"])
    assert result.exit_code == 0, result.output
    info = json.loads(result.output)
    assert info["rows"] == 4 and info["users"] == 3 and info["streamers"] == 2
    assert info["streams"] == 3 and info["max_step"] == 9 and info["bad_rows"] == 0
    # broadcast: 10 on [0,4), 11 on [1,2), 12 on [8,9) -> streamer-steps 4 + 1 + 1 over 10 steps
    assert info["live_broadcast"]["mean"] == 0.6
    assert info["live_rows"]["mean"] == 0.6


def test_check_bad_row_exits_2_with_the_reason(tmp_path: Path) -> None:
    path = tmp_path / "bad.csv"
    path.write_text(LOG + "4,13,c,5,x\n")
    result = runner.invoke(app, ["data", "check", str(path)])
    assert result.exit_code == 2
    assert "line 5" in result.output and "'stop'" in result.output
    ok = runner.invoke(app, ["data", "check", str(path), "--skip-bad-rows"])
    assert ok.exit_code == 0 and "bad_rows                         1" in ok.output
    assert "skipped:" in ok.output


def test_convert_sample_then_check(tmp_path: Path) -> None:
    sample = tmp_path / "sample.csv"
    sample.write_text(",user_id,streamer_name,start_time,community\n0,1,0,10,3\n1,2,5,11,3\n")
    out = tmp_path / "converted.csv"
    result = runner.invoke(app, ["data", "convert", str(sample), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert out.read_text().splitlines() == ["1,1,s0,10,13", "2,2,s5,11,14"]


def test_every_help_is_useful() -> None:
    for args in (["--help"], ["data", "--help"], ["data", "check", "--help"]):
        result = runner.invoke(app, args)
        assert result.exit_code == 0 and "Usage" in result.output
