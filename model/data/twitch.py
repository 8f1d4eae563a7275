"""Twitch viewing logs: the `100k_a.csv` / `full_a.csv.gz` format, loaded into typed columns.

One row is one stretch of viewing: ``user,stream,streamer,start,stop`` with no header, e.g.
``1,33842865744,mithrain,154,156``; ``start``/``stop`` are 10-minute steps. The loader keeps
file order (the timeline replays user events in file order), indexes users and streamers
from 1 in order of first appearance (0 is padding) and keeps the mappings back to raw ids.

Fast path: pandas' C parser with integer dtypes, then vectorised checks. Only when that
finds a problem does the loader re-read the file line by line to name every bad row.

    >>> ds = load_interactions("100k_a.csv")            # doctest: +SKIP
    >>> ds = load_interactions("sample.csv", fmt="sample")  # the real sample (docs/data.md)
"""

from __future__ import annotations

import csv
import gzip
import io
import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd

logger = logging.getLogger(__name__)

COLUMNS = ("user", "stream", "streamer", "start", "stop")
Format = Literal["twitch", "sample"]

# Conventions of the public 2,000-user sample (docs/platform-notes.md#the-real-twitch-sample):
# stream and stop were dropped, so a row lasts SAMPLE_ROW_STEPS and a streamer's rows form one
# broadcast until a row starts more than SAMPLE_BROADCAST_GAP steps after the latest stop so
# far.
SAMPLE_ROW_STEPS = 3
SAMPLE_BROADCAST_GAP = 6


class DataError(ValueError):
    """A bad input file: the message names the file, the line, the column and the reason."""


@dataclass(frozen=True)
class BadRow:
    line: int  # 1-based line number in the file (a header counts as line 1)
    column: str | None
    reason: str

    def describe(self, path: str) -> str:
        col = f", column {self.column!r}" if self.column else ""
        return f"{path}: line {self.line}{col}: {self.reason}"


@dataclass(frozen=True)
class Interactions:
    """A loaded log, one entry per kept row, in file order.

    ``user``/``streamer`` are 1-based indexes (0 = padding); ``user_ids[i]`` and
    ``streamer_names[i]`` map index ``i`` back to the raw value (index 0 holds a placeholder).
    ``stop`` is the raw value; ``end`` is the exclusive end of the row (``max(stop, start+1)``:
    a row with ``stop == start`` lasts one step).
    """

    user: np.ndarray  # (N,) int32
    stream: np.ndarray  # (N,) int64 raw stream id
    streamer: np.ndarray  # (N,) int32
    start: np.ndarray  # (N,) int32
    stop: np.ndarray  # (N,) int32
    user_ids: np.ndarray  # (n_users + 1,) int64
    streamer_names: np.ndarray  # (n_streamers + 1,) object (str)
    source: str = ""
    bad_rows: tuple[BadRow, ...] = field(default=())

    def __len__(self) -> int:
        return int(self.user.shape[0])

    @property
    def end(self) -> np.ndarray:
        return np.maximum(self.stop, self.start + 1)

    @property
    def n_users(self) -> int:
        return int(self.user_ids.shape[0] - 1)

    @property
    def n_streamers(self) -> int:
        return int(self.streamer_names.shape[0] - 1)

    @property
    def n_streams(self) -> int:
        return int(np.unique(self.stream).shape[0])

    @property
    def max_step(self) -> int:
        """``max(max start, max stop)``, as in LiveRec."""
        if len(self) == 0:
            return 0
        return int(max(self.start.max(), self.stop.max()))

    @property
    def zero_length_rows(self) -> int:
        return int(np.count_nonzero(self.stop == self.start))

    def streamer_index(self) -> dict[str, int]:
        return {str(n): i for i, n in enumerate(self.streamer_names) if i > 0}

    def to_frame(self) -> pd.DataFrame:
        """The rows with raw ids, in the Twitch column order."""
        return pd.DataFrame(
            {
                "user": self.user_ids[self.user],
                "stream": self.stream,
                "streamer": self.streamer_names[self.streamer],
                "start": self.start,
                "stop": self.stop,
            }
        )


def from_frame(
    frame: pd.DataFrame, source: str = "", bad_rows: tuple[BadRow, ...] = ()
) -> Interactions:
    """Index a validated frame with the Twitch columns (raw ids) into `Interactions`."""
    user_codes, user_uniques = pd.factorize(frame["user"].to_numpy(np.int64), sort=False)
    streamer_codes, streamer_uniques = pd.factorize(frame["streamer"].astype(str), sort=False)
    return Interactions(
        user=(user_codes + 1).astype(np.int32),
        stream=frame["stream"].to_numpy(np.int64),
        streamer=(streamer_codes + 1).astype(np.int32),
        start=frame["start"].to_numpy(np.int32),
        stop=frame["stop"].to_numpy(np.int32),
        user_ids=np.concatenate([[-1], np.asarray(user_uniques, dtype=np.int64)]),
        streamer_names=np.concatenate([[""], np.asarray(user_str(streamer_uniques), dtype=object)]),
        source=source,
        bad_rows=bad_rows,
    )


def user_str(values: object) -> list[str]:
    return [str(v) for v in values]  # type: ignore[attr-defined]


def load_interactions(
    path: str | Path, fmt: Format = "twitch", skip_bad_rows: bool = False
) -> Interactions:
    """Load a Twitch-format file (``.csv`` or ``.csv.gz``, header optional).

    Raises `DataError` naming file, line, column and reason at the first bad row, unless
    ``skip_bad_rows``: then bad rows are dropped and listed in ``bad_rows``.
    ``fmt="sample"`` reads the real 2,000-user sample and converts it (see `convert_sample`).
    """
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: no such file")
    if fmt == "sample":
        return convert_sample(path)
    if fmt != "twitch":
        raise DataError(f"{path}: unknown format {fmt!r} (expected 'twitch' or 'sample')")
    header = _has_header(path)
    frame = _read_fast(path, header)
    if frame is not None and not _frame_problems(frame):
        logger.info("loaded path=%s rows=%d", path, len(frame))
        return from_frame(frame, source=str(path))
    # Slow path: something is off; walk the file and name each bad line.
    good, bad = _read_checked(path, header)
    if bad and not skip_bad_rows:
        raise DataError(bad[0].describe(str(path)) + _more(bad))
    for b in bad[:20]:
        logger.warning("skipped bad row: %s", b.describe(str(path)))
    return from_frame(good, source=str(path), bad_rows=tuple(bad))


def _more(bad: list[BadRow]) -> str:
    extra = len(bad) - 1
    return f" (and {extra} more bad rows; --skip-bad-rows skips them)" if extra else ""


def _open_text(path: Path) -> io.TextIOBase:
    if path.suffix == ".gz":
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8", newline="")
    return open(path, encoding="utf-8", newline="")  # noqa: SIM115


def _has_header(path: Path) -> bool:
    with _open_text(path) as f:
        first = f.readline().strip()
    if not first:
        return False
    head = first.split(",")[0].strip().strip('"')
    try:
        int(head)
    except ValueError:
        return True
    return False


def _read_fast(path: Path, header: bool) -> pd.DataFrame | None:
    try:
        frame = pd.read_csv(
            path,
            header=None,
            names=list(COLUMNS),
            skiprows=1 if header else 0,
            dtype={"user": np.int64, "stream": np.int64, "streamer": str,
                   "start": np.int64, "stop": np.int64},
            engine="c",
            keep_default_na=False,
            na_filter=False,
            compression="infer",
        )
    except (ValueError, pd.errors.ParserError, OverflowError):
        return None
    return frame


def _frame_problems(frame: pd.DataFrame) -> bool:
    if len(frame) == 0:
        return False
    start = frame["start"].to_numpy()
    stop = frame["stop"].to_numpy()
    names = frame["streamer"].to_numpy(dtype=object)
    return bool(
        (start < 0).any()
        or (stop < 0).any()
        or (stop < start).any()
        or (frame["user"].to_numpy() < 0).any()
        or (frame["stream"].to_numpy() < 0).any()
        or (pd.Series(names).str.strip() == "").any()
    )


def _read_checked(path: Path, header: bool) -> tuple[pd.DataFrame, list[BadRow]]:
    rows: list[tuple[int, int, str, int, int]] = []
    bad: list[BadRow] = []
    for line_no, fields in _lines(path, header):
        parsed = check_row(fields)
        if isinstance(parsed, BadRow):
            bad.append(BadRow(line_no, parsed.column, parsed.reason))
        else:
            rows.append(parsed)
    frame = pd.DataFrame(rows, columns=list(COLUMNS))
    if not rows:
        frame = frame.astype({"user": np.int64, "stream": np.int64, "streamer": str,
                              "start": np.int64, "stop": np.int64})
    return frame, bad


def _lines(path: Path, header: bool) -> Iterator[tuple[int, list[str]]]:
    with _open_text(path) as f:
        for line_no, fields in enumerate(csv.reader(f), start=1):
            if header and line_no == 1:
                continue
            if not fields:  # blank line
                continue
            yield line_no, fields


def check_row(fields: list[str]) -> tuple[int, int, str, int, int] | BadRow:
    """Validate one split row; a `BadRow` (line 0, to be filled in) names what is wrong."""
    if len(fields) != len(COLUMNS):
        return BadRow(0, None, f"expected {len(COLUMNS)} columns, got {len(fields)}")
    values: dict[str, int] = {}
    for name, raw in zip(COLUMNS, fields, strict=True):
        text = raw.strip()
        if text == "":
            return BadRow(0, name, "empty field")
        if name == "streamer":
            continue
        try:
            values[name] = int(text)
        except ValueError:
            return BadRow(0, name, f"not an integer: {text!r}")
        if values[name] < 0:
            kind = "negative step" if name in ("start", "stop") else "negative id"
            return BadRow(0, name, f"{kind}: {values[name]}")
    if values["stop"] < values["start"]:
        return BadRow(0, "stop", f"stop {values['stop']} < start {values['start']}")
    return (values["user"], values["stream"], fields[2].strip(), values["start"], values["stop"])


def convert_sample(path: str | Path) -> Interactions:
    """Read the real 2,000-user sample (``,user_id,streamer_name,start_time,community``).

    Applies the sample's published convention: ``stop = start + 3``; a streamer's rows,
    sorted by start, form one broadcast (one synthetic stream id) until a row starts more
    than 6 steps after the latest stop so far. Streamer codes become names ``s<code>``.
    """
    path = Path(path)
    try:
        raw = pd.read_csv(path)
    except (ValueError, pd.errors.ParserError) as exc:
        raise DataError(f"{path}: cannot read as the sample format: {exc}") from exc
    needed = {"user_id", "streamer_name", "start_time"}
    missing = needed - set(raw.columns)
    if missing:
        raise DataError(f"{path}: not the sample format, missing columns {sorted(missing)}")
    frame = pd.DataFrame(
        {
            "user": raw["user_id"].to_numpy(np.int64),
            "streamer": "s" + raw["streamer_name"].astype(str),
            "start": raw["start_time"].to_numpy(np.int64),
        }
    )
    frame["stop"] = frame["start"] + SAMPLE_ROW_STEPS
    frame["stream"] = _sample_stream_ids(frame)
    return from_frame(frame[list(COLUMNS)], source=f"{path} (sample convention)")


def _sample_stream_ids(frame: pd.DataFrame) -> np.ndarray:
    order = np.lexsort((frame["start"].to_numpy(), frame["streamer"].to_numpy()))
    streamer = frame["streamer"].to_numpy()[order]
    start = frame["start"].to_numpy()[order]
    stop = frame["stop"].to_numpy()[order]
    ids = np.empty(len(order), dtype=np.int64)
    current, latest_stop, prev = 0, -1, None
    for i in range(len(order)):
        if streamer[i] != prev or start[i] > latest_stop + SAMPLE_BROADCAST_GAP:
            current += 1
            latest_stop = -1
        latest_stop = max(latest_stop, int(stop[i]))
        prev = streamer[i]
        ids[i] = current
    out = np.empty_like(ids)
    out[order] = ids
    return out


def write_twitch(ds: Interactions, path: str | Path) -> None:
    """Write rows in the Twitch format (no header); ``.gz`` compresses."""
    ds.to_frame().to_csv(path, header=False, index=False, compression="infer")
