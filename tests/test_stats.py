"""`liverank data stats` on a hand-made log whose statistics are worked out by hand."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from liverank.cli.main import app
from liverank.model.data.stats import (
    PUBLISHED,
    file_stats,
    format_table,
    repeat_gaps,
    sample_like_real,
)
from liverank.model.data.synth import generate
from liverank.model.data.twitch import load_interactions

runner = CliRunner()

# user 1 watches a (stream 10), b, then a again a day later (stream 12); user 2 watches a
# (stream 10) and c. Steps: 144 per day, hour = (start mod 144) div 6.
LOG = """1,10,a,0,3
1,11,b,5,6
1,12,a,144,146
2,10,a,1,2
2,13,c,200,203
"""


@pytest.fixture()
def log(tmp_path: Path) -> Path:
    path = tmp_path / "log.csv"
    path.write_text(LOG)
    return path


def test_counts_ratios_and_repeats_by_hand(log: Path) -> None:
    s = file_stats(load_interactions(log))
    assert (s["rows"], s["users"], s["streamers"], s["streams"]) == (5, 2, 3, 4)
    assert s["steps"] == 203 and s["pairs"] == 4
    assert s["rows_per_user"] == 2.5 and s["rows_per_streamer"] == 1.67
    assert s["rows_per_stream"] == 1.25
    assert s["mean_row_steps"] == 2.0  # (3 + 1 + 2 + 1 + 3) / 5
    assert s["repeat_share"] == 0.2  # only user 1's second a
    assert s["repeat_gap_quantiles"] == [144.0] * 5 and s["repeat_within_day"] == 1.0
    # Gaps between a user's rows: 5 and 139 (user 1), 199 (user 2).
    assert s["gap_quantiles"] == list(np.percentile([5, 139, 199], [10, 25, 50, 75, 90]))
    assert s["next_same_streamer"] == 0.0
    assert s["distinct_streamers_per_user_median"] == 2.0
    # Starts 0, 5, 144, 1 are in hour 0; 200 is in hour (56 div 6) = 9.
    assert s["hour_shares"][0] == 0.8 and s["hour_shares"][9] == 0.2
    assert s["hour_share_min"] == 0.0
    # broadcast: stream 10 on [0, 3), 11 [5, 6), 12 [144, 146), 13 [200, 203): 9 cells over
    # 204 steps; rows: a on [0,3) (rows 0-3 and 1-2 overlap), b, a, c: also 9 cells.
    assert s["live_broadcast_mean"] == round(9 / 204, 2)
    assert s["live_rows_mean"] == round(9 / 204, 2)
    assert s["live_broadcast_median"] == 0.0


def test_next_row_same_streamer_and_repeat_gaps(tmp_path: Path) -> None:
    path = tmp_path / "same.csv"
    path.write_text("1,1,a,0,1\n1,1,a,2,3\n1,2,b,10,11\n1,3,a,300,301\n")
    ds = load_interactions(path)
    s = file_stats(ds)
    assert s["next_same_streamer"] == round(1 / 3, 3)  # a->a, a->b, b->a
    repeat, gap = repeat_gaps(ds)
    assert repeat.tolist() == [False, True, False, True]
    assert gap.tolist() == [-1, 2, -1, 298]
    assert s["repeat_within_day"] == 0.5


def test_table_shows_the_file_next_to_the_published_figures(log: Path) -> None:
    table = format_table(file_stats(load_interactions(log)))
    line = next(x for x in table.splitlines() if x.startswith("rows_per_user"))
    assert "2.5" in line and "30.5" in line
    assert "3,051,733" in table and "[1, 8, 52, 134, 267]" in table


def test_cli_stats_json_and_out_file(log: Path, tmp_path: Path) -> None:
    out = tmp_path / "stats" / "log.json"
    result = runner.invoke(app, ["data", "stats", str(log), "--json", "--out", str(out)])
    assert result.exit_code == 0, result.output
    info = json.loads(result.output)
    assert info["repeat_share"] == 0.2 and info["rows"] == 5
    assert json.loads(out.read_text()) == info


def test_cli_stats_table_and_bad_input(log: Path, tmp_path: Path) -> None:
    result = runner.invoke(app, ["data", "stats", str(log)])
    assert result.exit_code == 0 and "100k_a (published)" in result.output
    missing = runner.invoke(app, ["data", "stats", str(tmp_path / "nope.csv")])
    assert missing.exit_code == 2 and "no such file" in missing.output
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    result = runner.invoke(app, ["data", "stats", str(empty)])
    assert result.exit_code == 2 and "no rows" in result.output


def test_sample_like_real_keeps_heavy_users_and_streamers() -> None:
    ds = generate("tiny", 0)
    sub = sample_like_real(ds, users=50, min_streamer_rows=2_000)  # 6 rows at 300 users
    counts = np.bincount(ds.streamer)
    kept = {str(n) for n in sub.streamer_names[1:]}
    assert sub.n_users <= 50 and kept
    assert all(counts[ds.streamer_index()[n]] >= 6 for n in kept)
    # Users are drawn in proportion to their rows: heavier than the average user.
    assert len(ds) / ds.n_users < np.bincount(ds.user)[np.unique(
        ds.user[np.isin(ds.user_ids[ds.user], sub.user_ids[1:])])].mean()


def test_published_figures_are_the_readme_ones() -> None:
    assert PUBLISHED["rows"] / PUBLISHED["users"] == pytest.approx(30.5, abs=0.02)
    assert PUBLISHED["rows"] / PUBLISHED["streamers"] == pytest.approx(18.8, abs=0.05)
    assert 1 - PUBLISHED["pairs"] / PUBLISHED["rows"] == pytest.approx(0.507, abs=0.001)
