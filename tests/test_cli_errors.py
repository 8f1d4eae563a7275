"""Every user mistake gets one line on stderr and a non-zero exit, never a traceback.

Bad input files (binary garbage, non-UTF-8 text, broken gzip, a directory, an empty file)
through `data check`, `replay`, `train` and `evaluate`; `monitor` with no broker; `export`
of a missing checkpoint (which must not leave the output folder behind).
"""

from __future__ import annotations

import gzip
import logging
import os
import re
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner, Result

from liverank.cli.main import app

runner = CliRunner()


@pytest.fixture(autouse=True, scope="module")
def _root_logger_has_a_handler() -> Iterator[None]:
    """The CLI's ``logging.basicConfig`` would otherwise bind its handler to the first
    CliRunner's captured stderr (pytest's log capture normally prevents that)."""
    handler = logging.NullHandler()
    logging.getLogger().addHandler(handler)
    yield
    logging.getLogger().removeHandler(handler)

GOOD = "1,10,a,0,3\n2,11,b,1,2\n1,10,a,2,4\n3,12,a,8,9\n"
# Not random: fixed bytes that are not UTF-8 from the first byte on.
GARBAGE = bytes(range(0x80, 0x100)) * 8 + b"\x00\x01\x02,\n\xfe\xff"


def one_error_line(result: Result, *needles: str) -> str:
    """The run failed with exit 2 and printed exactly one ``error: ...`` line holding every
    needle, and no traceback."""
    assert result.exception is None or isinstance(result.exception, SystemExit), (
        repr(result.exception))
    out = result.output
    assert result.exit_code == 2, out
    assert "Traceback" not in out
    lines = [line for line in out.splitlines() if line.strip()]
    assert len(lines) == 1, out
    line = lines[0]
    assert line.startswith("error: "), line
    for needle in needles:
        assert needle in line, (needle, line)
    return line


def write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


# --- data check on files that are not a log ---------------------------------------------------

def test_binary_garbage(tmp_path: Path) -> None:
    path = write(tmp_path / "garbage.csv", GARBAGE)
    one_error_line(runner.invoke(app, ["data", "check", str(path)]),
                   str(path), "line 1, byte 1", "not UTF-8")


@pytest.mark.parametrize("skip", [False, True])
def test_non_utf8_text_names_line_and_byte(tmp_path: Path, skip: bool) -> None:
    # Latin-1 "é" on line 3, the 5th byte of that line (offset 22 + 4 = 26 in the file).
    path = write(tmp_path / "latin1.csv", (GOOD[:22] + "1,2,\xe9t\xe9,0,3\n").encode("latin-1"))
    args = ["data", "check", str(path)] + (["--skip-bad-rows"] if skip else [])
    line = one_error_line(runner.invoke(app, args), str(path), "line 3, byte 5", "not UTF-8")
    assert "0xe9" in line and "offset 26 in the file" in line


def test_random_bytes_named_gz(tmp_path: Path) -> None:
    path = write(tmp_path / "x.csv.gz", GARBAGE)
    one_error_line(runner.invoke(app, ["data", "check", str(path)]),
                   str(path), "not valid gzip data")


@pytest.mark.parametrize("skip", [False, True])
def test_valid_gzip_of_binary_garbage(tmp_path: Path, skip: bool) -> None:
    path = write(tmp_path / "g.csv.gz", gzip.compress(GARBAGE))
    args = ["data", "check", str(path)] + (["--skip-bad-rows"] if skip else [])
    one_error_line(runner.invoke(app, args), str(path), "line 1, byte 1", "not UTF-8",
                   "decompressed")


def test_truncated_gzip(tmp_path: Path) -> None:
    path = write(tmp_path / "cut.csv.gz", gzip.compress(GOOD.encode() * 200)[:-40])
    one_error_line(runner.invoke(app, ["data", "check", str(path)]),
                   str(path), "truncated gzip data")


def test_gzip_data_without_gz_suffix_gets_a_hint(tmp_path: Path) -> None:
    path = write(tmp_path / "packed.csv", gzip.compress(GOOD.encode()))
    one_error_line(runner.invoke(app, ["data", "check", str(path)]),
                   str(path), "not UTF-8", "name it .gz")


@pytest.mark.parametrize("fmt", ["twitch", "sample"])
def test_directory(tmp_path: Path, fmt: str) -> None:
    path = tmp_path / "logs.csv"
    path.mkdir()
    one_error_line(runner.invoke(app, ["data", "check", str(path), "--format", fmt]),
                   str(path), "is a directory")


@pytest.mark.parametrize(
    ("name", "data", "fmt", "reason"),
    [
        ("empty.csv", b"", "twitch", "empty file (no rows)"),
        ("empty.csv.gz", gzip.compress(b""), "twitch", "empty file (no rows)"),
        ("header.csv", b"user,stream,streamer,start,stop\n", "twitch", "no rows"),
        ("empty.csv", b"", "sample", "empty file (no rows)"),
        ("header.csv", b",user_id,streamer_name,start_time,community\n", "sample", "no rows"),
    ],
    ids=["empty", "empty-gz", "header-only", "sample-empty", "sample-header-only"],
)
def test_data_check_empty_file(tmp_path: Path, name: str, data: bytes, fmt: str,
                               reason: str) -> None:
    path = write(tmp_path / name, data)
    one_error_line(runner.invoke(app, ["data", "check", str(path), "--format", fmt]),
                   str(path), reason)


def test_out_of_range_values_are_bad_rows(tmp_path: Path) -> None:
    # A step past int32 used to wrap silently; an id past int64 raised OverflowError.
    path = write(tmp_path / "big.csv", (GOOD + "4,13,c,5,3000000000\n").encode())
    one_error_line(runner.invoke(app, ["data", "check", str(path)]),
                   str(path), "line 5, column 'stop'", "too large")
    path = write(tmp_path / "bigid.csv", (GOOD + "99999999999999999999,13,c,5,6\n").encode())
    one_error_line(runner.invoke(app, ["data", "check", str(path)]),
                   str(path), "line 5, column 'user'", "too large")


def test_sample_values_that_are_not_integers(tmp_path: Path) -> None:
    head = ",user_id,streamer_name,start_time,community\n0,1,0,10,3\n"
    path = write(tmp_path / "s.csv", (head + "1,abc,0,11,3\n").encode())
    one_error_line(runner.invoke(app, ["data", "check", str(path), "--format", "sample"]),
                   str(path), "line 3, column 'user_id'", "'abc'")
    path = write(tmp_path / "s2.csv", (head + "1,2,0,,3\n").encode())
    one_error_line(runner.invoke(app, ["data", "check", str(path), "--format", "sample"]),
                   str(path), "line 3, column 'start_time'", "empty field")


def test_real_formats_still_load(tmp_path: Path) -> None:
    for name, data in (("log.csv", GOOD.encode()), ("log.csv.gz", gzip.compress(GOOD.encode())),
                       ("h.csv", b"user,stream,streamer,start,stop\n" + GOOD.encode())):
        result = runner.invoke(app, ["data", "check", str(write(tmp_path / name, data))])
        assert result.exit_code == 0, result.output
        assert "rows                             4" in result.output
    sample = write(tmp_path / "sample.csv",
                   b",user_id,streamer_name,start_time,community\n0,1,0,10,3\n1,2,5,11,3\n")
    result = runner.invoke(app, ["data", "check", str(sample), "--format", "sample"])
    assert result.exit_code == 0, result.output


# --- the other commands that read a log -------------------------------------------------------

def test_replay_non_utf8_names_file_and_line(tmp_path: Path) -> None:
    path = write(tmp_path / "latin1.csv", (GOOD + "5,6,caf\xe9,0,1\n").encode("latin-1"))
    one_error_line(runner.invoke(app, ["replay", str(path), "--bootstrap", "127.0.0.1:1"]),
                   str(path), "line 5, byte 8", "not UTF-8")


@pytest.mark.parametrize(
    "command",
    [
        ["data", "check", "{data}"],
        ["replay", "{data}", "--bootstrap", "127.0.0.1:1"],
        ["train", "--data", "{data}", "--out", "{tmp}/ckpt"],
        ["evaluate", "--data", "{data}", "--json", "{tmp}/eval/result.json"],
    ],
    ids=["data-check", "replay", "train", "evaluate"],
)
def test_empty_file_is_refused_by_every_command(tmp_path: Path, command: list[str]) -> None:
    data = write(tmp_path / "empty.csv", b"")
    args = [a.format(data=data, tmp=tmp_path) for a in command]
    one_error_line(runner.invoke(app, args), f"{data}: empty file (no rows)")
    assert not (tmp_path / "ckpt").exists() and not (tmp_path / "eval").exists()


def test_evaluate_missing_model(tmp_path: Path) -> None:
    data = write(tmp_path / "log.csv", GOOD.encode())
    missing = tmp_path / "no-model"
    one_error_line(runner.invoke(app, ["evaluate", "--data", str(data), "--model", str(missing),
                                       "--json", str(tmp_path / "r.json")]),
                   str(missing), "neither an exported model")


# --- export -----------------------------------------------------------------------------------

def test_export_missing_checkpoint_leaves_no_folder(tmp_path: Path) -> None:
    missing, out = tmp_path / "MISSING", tmp_path / "DIR"
    one_error_line(runner.invoke(app, ["export", "--checkpoint", str(missing), "--out", str(out)]),
                   str(missing), "no such directory")
    assert not out.exists()


def test_export_of_a_folder_that_is_no_checkpoint(tmp_path: Path) -> None:
    ckpt, out = tmp_path / "ckpt", tmp_path / "DIR"
    ckpt.mkdir()
    (ckpt / "checkpoint.json").write_text("{")
    (ckpt / "weights.pt").write_bytes(b"x")
    one_error_line(runner.invoke(app, ["export", "--checkpoint", str(ckpt), "--out", str(out)]),
                   str(ckpt), "not a usable checkpoint")
    assert not out.exists()


# --- in a real process: stderr holds the one line, nothing else --------------------------------

LOG_RECORD = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ [A-Z]+ ")  # basicConfig's format


def run_cli(args: list[str], cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if k != "KAFKA_BOOTSTRAP_SERVERS"}
    environ.update(env)
    return subprocess.run([sys.executable, "-m", "liverank.cli.main", *args], cwd=cwd,
                          env=environ, capture_output=True, text=True, timeout=120)


def test_monitor_without_a_broker(tmp_path: Path) -> None:
    proc = run_cli(["monitor", "--out", str(tmp_path / "mon"), "--timeout", "5"], tmp_path,
                   LIVERANK_KAFKA_BOOTSTRAP="127.0.0.1:1", LIVERANK_KAFKA_TIMEOUT_S="1")
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    # What the command prints itself; log records (librdkafka's connection failures, routed to
    # logging by broker.kafka) are the logging configuration's business.
    lines = [line for line in proc.stderr.splitlines()
             if line.strip() and not LOG_RECORD.match(line)]
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("error: no Kafka broker answered at 127.0.0.1:1 within 1 s")
    assert not (tmp_path / "mon").exists()


def test_data_check_in_a_process(tmp_path: Path) -> None:
    path = write(tmp_path / "garbage.csv", GARBAGE)
    proc = run_cli(["data", "check", str(path)], tmp_path)
    assert proc.returncode == 2 and proc.stdout == ""
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith(f"error: {path}: line 1"), proc.stderr


# --- whatever the bytes, one line or a report -------------------------------------------------

# Pieces of a log and of things that break it, so that rows, bad rows and decoding errors all
# come up, not only undecodable noise.
TOKENS = [b"1", b"42", b"-3", b"99999999999999999999", b"3000000000", b"a", b"user", b",",
          b",", b",", b"\n", b"\n", b"\r\n", b"\r", b'"', b" ", b"\x00", b"\xff", b"\xc3\xa9",
          b"\xe2\x82", b"\x1f\x8b"]
CONTENT = st.one_of(st.binary(max_size=3000),
                    st.lists(st.sampled_from(TOKENS), max_size=400).map(b"".join))


@settings(max_examples=30, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(data=CONTENT, suffix=st.sampled_from([".csv", ".csv.gz"]), compress=st.booleans(),
       skip=st.booleans())
def test_data_check_never_prints_a_traceback(data: bytes, suffix: str, compress: bool,
                                             skip: bool) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"input{suffix}"
        path.write_bytes(gzip.compress(data) if compress and suffix == ".csv.gz" else data)
        args = ["data", "check", str(path), "--json"] + (["--skip-bad-rows"] if skip else [])
        result = runner.invoke(app, args)
    assert result.exception is None or isinstance(result.exception, SystemExit), (
        repr(result.exception))
    assert result.exit_code in (0, 2), result.output
    assert "Traceback" not in result.output
    if result.exit_code == 2:
        lines = [line for line in result.output.splitlines() if line.strip()]
        assert len(lines) == 1 and lines[0].startswith(f"error: {path}"), result.output
