"""The Twitch loader: good files, every kind of bad row, gzip, header, indexing."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest

from liverank.model.data.twitch import (
    DataError,
    convert_sample,
    load_interactions,
    write_twitch,
)

GOOD = """1,33842865744,mithrain,154,156
2,33846768288,alptv,166,169
1,33886469056,mithrain,587,588
3,33887624992,wtcn,589,591
2,33890145056,jrokezftw,589,591
3,33903958784,berkriptepe,600,600
"""


def write(tmp_path: Path, text: str, name: str = "log.csv") -> Path:
    p = tmp_path / name
    if name.endswith(".gz"):
        with gzip.open(p, "wt") as f:
            f.write(text)
    else:
        p.write_text(text)
    return p


def test_good_file_columns_and_indexes(tmp_path: Path) -> None:
    ds = load_interactions(write(tmp_path, GOOD))
    assert len(ds) == 6
    assert ds.n_users == 3 and ds.n_streamers == 5
    # Users and streamers indexed from 1 in order of first appearance, 0 is padding.
    assert ds.user.tolist() == [1, 2, 1, 3, 2, 3]
    assert ds.streamer.tolist() == [1, 2, 1, 3, 4, 5]
    assert ds.user_ids[ds.user].tolist() == [1, 2, 1, 3, 2, 3]
    assert ds.streamer_names[1] == "mithrain" and ds.streamer_names[0] == ""
    assert ds.stream.dtype == np.int64 and ds.stream[0] == 33842865744
    assert ds.max_step == 600
    # stop == start is kept, counted, and lasts one step.
    assert ds.zero_length_rows == 1
    assert ds.end[-1] == 601


def test_gzip_and_header_read_the_same(tmp_path: Path) -> None:
    plain = load_interactions(write(tmp_path, GOOD))
    gz = load_interactions(write(tmp_path, GOOD, "log.csv.gz"))
    header = load_interactions(write(tmp_path, "user,stream,streamer,start,stop\n" + GOOD, "h.csv"))
    for other in (gz, header):
        assert other.to_frame().equals(plain.to_frame())


def test_round_trip_through_writer(tmp_path: Path) -> None:
    ds = load_interactions(write(tmp_path, GOOD))
    out = tmp_path / "again.csv.gz"
    write_twitch(ds, out)
    assert load_interactions(out).to_frame().equals(ds.to_frame())


@pytest.mark.parametrize(
    ("row", "column", "reason"),
    [
        ("4,1,x,10,abc", "stop", "not an integer"),
        ("4,1,x,-1,3", "start", "negative step"),
        ("4,1,x,10,9", "stop", "stop 9 < start 10"),
        ("4,1,x,10", None, "expected 5 columns, got 4"),
        ("4,1,x,10,11,12", None, "expected 5 columns, got 6"),
        ("4,1,,10,11", "streamer", "empty field"),
        ("4,,x,10,11", "stream", "empty field"),
        ("4.5,1,x,10,11", "user", "not an integer"),
    ],
)
def test_bad_row_names_file_line_column_reason(
    tmp_path: Path, row: str, column: str | None, reason: str
) -> None:
    path = write(tmp_path, GOOD + row + "\n")
    with pytest.raises(DataError) as info:
        load_interactions(path)
    msg = str(info.value)
    assert str(path) in msg
    assert "line 7" in msg
    if column:
        assert f"column {column!r}" in msg
    assert reason in msg


def test_bad_row_line_counts_the_header(tmp_path: Path) -> None:
    path = write(tmp_path, "user,stream,streamer,start,stop\n1,2,x,5,4\n" + GOOD)
    with pytest.raises(DataError, match="line 2"):
        load_interactions(path)


def test_skip_bad_rows_counts_and_keeps_the_rest(tmp_path: Path) -> None:
    text = GOOD + "4,1,x,10,9\nnot,a,row\n" + "5,77,late,700,702\n"
    ds = load_interactions(write(tmp_path, text), skip_bad_rows=True)
    assert len(ds) == 7
    assert [b.line for b in ds.bad_rows] == [7, 8]
    assert ds.streamer_names[ds.streamer[-1]] == "late"


def test_missing_file_and_unknown_format(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no such file"):
        load_interactions(tmp_path / "nope.csv")
    with pytest.raises(DataError, match="unknown format"):
        load_interactions(write(tmp_path, GOOD), fmt="parquet")  # type: ignore[arg-type]


def test_sample_convention(tmp_path: Path) -> None:
    # Two rows of streamer 0 less than 6 steps apart -> one broadcast; a third far later.
    text = (",user_id,streamer_name,start_time,community\n"
            "0,1,0,10,3\n1,2,0,15,3\n2,1,0,40,3\n3,2,1,12,4\n")
    ds = convert_sample(write(tmp_path, text, "sample.csv"))
    assert ds.stop.tolist() == [13, 18, 43, 15]
    assert ds.stream[0] == ds.stream[1] != ds.stream[2]
    assert ds.stream[3] not in (ds.stream[0], ds.stream[2])
    assert ds.streamer_names[ds.streamer[0]] == "s0"
    with pytest.raises(DataError, match="missing columns"):
        convert_sample(write(tmp_path, GOOD, "not_sample.csv"))
