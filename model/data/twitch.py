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

import codecs
import csv
import gzip
import io
import logging
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
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

# Largest values the typed columns hold: steps are int32, ids int64.
STEP_MAX = 2**31 - 1
ID_MAX = 2**63 - 1

GZIP_MAGIC = b"\x1f\x8b"
# What a broken gzip stream raises while it is read (bad magic, truncated, corrupt deflate).
_GZIP_ERRORS = (gzip.BadGzipFile, EOFError, zlib.error)


class DataError(ValueError):
    """A bad input file: the message names the file (and, for a row or a decoding error, the
    line and column or byte) and the reason, on one line."""


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


def in_event_order(ds: Interactions) -> Interactions:
    """``ds`` with its rows in event order -- by start step, file order within a step (the
    order of the watches on the replay timeline) -- and users and streamers re-indexed by
    first appearance in that order. A log read back from the event topics comes in this
    order, so anything that depends on row order or indexes (training's sampling) gives the
    same result whether the rows came from a CSV or from the topics. Returns ``ds`` itself
    when it is already in that order."""
    start = ds.start
    if len(ds) < 2 or bool(np.all(start[1:] >= start[:-1])):
        return ds
    order = np.argsort(start, kind="stable")
    # What from_frame(ds.to_frame().iloc[order]) gives, without going through raw ids and
    # names again: indexes map one to one to raw ids and names, so factorising the indexes
    # in the new order gives the same first-appearance indexes.
    user_codes, user_first = pd.factorize(ds.user[order], sort=False)
    streamer_codes, streamer_first = pd.factorize(ds.streamer[order], sort=False)
    return Interactions(
        user=(user_codes + 1).astype(np.int32),
        stream=ds.stream[order].astype(np.int64, copy=False),
        streamer=(streamer_codes + 1).astype(np.int32),
        start=ds.start[order].astype(np.int32, copy=False),
        stop=ds.stop[order].astype(np.int32, copy=False),
        user_ids=np.concatenate([[-1], ds.user_ids[user_first]]).astype(np.int64, copy=False),
        streamer_names=np.concatenate([np.array([""], dtype=object),
                                       ds.streamer_names[streamer_first]]),
        source=ds.source,
        bad_rows=ds.bad_rows,
    )


def user_str(values: object) -> list[str]:
    return [str(v) for v in values]  # type: ignore[attr-defined]


def load_interactions(
    path: str | Path, fmt: Format = "twitch", skip_bad_rows: bool = False
) -> Interactions:
    """Load a Twitch-format file (``.csv`` or ``.csv.gz``, header optional).

    Raises `DataError` naming file, line, column and reason at the first bad row, unless
    ``skip_bad_rows``: then bad rows are dropped and listed in ``bad_rows``. A file that
    cannot be read (a directory, not UTF-8, broken gzip data) or holds no rows also raises
    `DataError`, in every mode.
    ``fmt="sample"`` reads the real 2,000-user sample and converts it (see `convert_sample`).
    """
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: no such file")
    if path.is_dir():
        raise DataError(f"{path}: is a directory, not a file")
    if fmt == "sample":
        return convert_sample(path)
    if fmt != "twitch":
        raise DataError(f"{path}: unknown format {fmt!r} (expected 'twitch' or 'sample')")
    with _read_errors(path):
        return _load_twitch(path, skip_bad_rows)


def _load_twitch(path: Path, skip_bad_rows: bool) -> Interactions:
    header = _has_header(path)
    frame = _read_fast(path, header)
    if frame is not None and not _frame_problems(frame):
        if len(frame) == 0:
            raise DataError(_no_rows(path, header))
        logger.info("loaded path=%s rows=%d", path, len(frame))
        return from_frame(frame, source=str(path))
    # Slow path: something is off; walk the file and name each bad line.
    good, bad = _read_checked(path, header)
    if bad and not skip_bad_rows:
        raise DataError(bad[0].describe(str(path)) + _more(bad))
    if not bad and len(good) == 0:
        raise DataError(_no_rows(path, header))
    for b in bad[:20]:
        logger.warning("skipped bad row: %s", b.describe(str(path)))
    return from_frame(good, source=str(path), bad_rows=tuple(bad))


def _more(bad: list[BadRow]) -> str:
    extra = len(bad) - 1
    return f" (and {extra} more bad rows; --skip-bad-rows skips them)" if extra else ""


def _no_rows(path: Path, header: bool) -> str:
    if header:
        return f"{path}: no rows (only line 1, read as a header)"
    return f"{path}: empty file (no rows)"


@contextmanager
def _read_errors(path: Path) -> Iterator[None]:
    """Turn what reading an unreadable file raises into a one-line `DataError`."""
    try:
        yield
    except UnicodeDecodeError as exc:
        raise DataError(_decode_error(path)) from exc
    except EOFError as exc:
        raise DataError(f"{path}: truncated gzip data: {exc}") from exc
    except (gzip.BadGzipFile, zlib.error) as exc:
        raise DataError(f"{path}: not valid gzip data: {exc}") from exc
    except OSError as exc:
        raise DataError(f"{path}: cannot read: {exc.strerror or exc}") from exc


def _open_binary(path: Path) -> io.BufferedIOBase:
    if path.suffix == ".gz":
        return gzip.open(path, "rb")  # type: ignore[return-value]
    return open(path, "rb")  # noqa: SIM115


def _decode_error(path: Path) -> str:
    """Where ``path`` (decompressed, for ``.gz``) stops being UTF-8: line, byte in the line
    (1-based) and offset (0-based) in the file or the decompressed data."""
    compressed = path.suffix == ".gz"
    within = "the decompressed data" if compressed else "the file"
    decoder = codecs.getincrementaldecoder("utf-8")()
    line, line_start, pos, first = 1, 0, 0, b""
    try:
        with _open_binary(path) as f:
            while chunk := f.read(1 << 20):
                first = first or chunk[:2]
                pending = len(decoder.getstate()[0])
                try:
                    decoder.decode(chunk)
                except UnicodeDecodeError as exc:
                    cut = max(exc.start - pending, 0)  # the bad sequence may begin earlier
                    line += chunk.count(b"\n", 0, cut)
                    newline = chunk.rfind(b"\n", 0, cut)
                    if newline >= 0:
                        line_start = pos + newline + 1
                    offset = pos + exc.start - pending
                    hint = ""
                    if not compressed and first == GZIP_MAGIC:
                        hint = "; it looks gzip-compressed: name it .gz"
                    return (f"{path}: line {line}, byte {offset - line_start + 1}: not UTF-8 "
                            f"text (0x{exc.object[exc.start]:02x}: {exc.reason}; offset "
                            f"{offset} in {within}){hint}")
                line += chunk.count(b"\n")
                newline = chunk.rfind(b"\n")
                if newline >= 0:
                    line_start = pos + newline + 1
                pos += len(chunk)
            pending = len(decoder.getstate()[0])
            decoder.decode(b"", final=True)
    except UnicodeDecodeError as exc:  # the data ends inside a multi-byte character
        return (f"{path}: line {line}, byte {pos - pending - line_start + 1}: not UTF-8 "
                f"text (the data ends mid-character: {exc.reason})")
    except (*_GZIP_ERRORS, OSError):
        pass
    return f"{path}: not UTF-8 text"


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
    """The rows, or None when the C parser cannot type them (the slow path then names the
    bad lines). Decoding and gzip errors propagate."""
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
    except UnicodeDecodeError:
        raise
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
        or (start > STEP_MAX).any()
        or (stop > STEP_MAX).any()
        or (frame["user"].to_numpy() < 0).any()
        or (frame["stream"].to_numpy() < 0).any()
        or (pd.Series(names).str.strip() == "").any()
    )


def _read_checked(path: Path, header: bool) -> tuple[pd.DataFrame, list[BadRow]]:
    rows: list[tuple[int, int, str, int, int]] = []
    bad: list[BadRow] = []
    for line_no, fields in _lines(path, header):
        parsed = fields if isinstance(fields, BadRow) else check_row(fields)
        if isinstance(parsed, BadRow):
            bad.append(BadRow(line_no, parsed.column, parsed.reason))
        else:
            rows.append(parsed)
    frame = pd.DataFrame(rows, columns=list(COLUMNS))
    if not rows:
        frame = frame.astype({"user": np.int64, "stream": np.int64, "streamer": str,
                              "start": np.int64, "stop": np.int64})
    return frame, bad


def _lines(path: Path, header: bool) -> Iterator[tuple[int, list[str] | BadRow]]:
    """(line, fields) per CSV record; a record the csv module rejects (e.g. a field over its
    size limit) comes as a `BadRow` (line 0, to be filled in)."""
    with _open_text(path) as f:
        reader = csv.reader(f)
        line_no = 0
        while True:
            line_no += 1
            try:
                fields = next(reader)
            except StopIteration:
                return
            except csv.Error as exc:
                yield line_no, BadRow(0, None, f"unreadable CSV: {exc}")
                continue
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
        is_step = name in ("start", "stop")
        if values[name] < 0:
            kind = "negative step" if is_step else "negative id"
            return BadRow(0, name, f"{kind}: {values[name]}")
        limit = STEP_MAX if is_step else ID_MAX
        if values[name] > limit:
            return BadRow(0, name, f"too large: {values[name]} (at most {limit})")
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
    if path.is_dir():
        raise DataError(f"{path}: is a directory, not a file")
    with _read_errors(path):
        try:
            raw = pd.read_csv(path)
        except UnicodeDecodeError:
            raise
        except pd.errors.EmptyDataError as exc:
            raise DataError(f"{path}: empty file (no rows)") from exc
        except (ValueError, pd.errors.ParserError) as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise DataError(f"{path}: cannot read as the sample format: {first}") from exc
    needed = {"user_id", "streamer_name", "start_time"}
    missing = needed - set(raw.columns)
    if missing:
        raise DataError(f"{path}: not the sample format, missing columns {sorted(missing)}")
    if len(raw) == 0:
        raise DataError(f"{path}: no rows (only the header line)")
    frame = pd.DataFrame(
        {
            "user": _sample_ints(raw, "user_id", ID_MAX, path),
            "streamer": "s" + raw["streamer_name"].astype(str),
            "start": _sample_ints(raw, "start_time", STEP_MAX - SAMPLE_ROW_STEPS, path),
        }
    )
    if raw["streamer_name"].isna().any():
        _sample_bad(raw, "streamer_name", raw["streamer_name"].isna().to_numpy(), path, "")
    frame["stop"] = frame["start"] + SAMPLE_ROW_STEPS
    frame["stream"] = _sample_stream_ids(frame)
    return from_frame(frame[list(COLUMNS)], source=f"{path} (sample convention)")


def _sample_ints(raw: pd.DataFrame, column: str, limit: int, path: Path) -> np.ndarray:
    """``raw[column]`` as int64, or `DataError` at the first value that is not an integer in
    ``0..limit``."""
    col = raw[column]
    if pd.api.types.is_integer_dtype(col):
        ints = col.to_numpy(np.int64)
        bad = (ints < 0) | (ints > limit)
    else:  # NaN for an empty field, text, or a number written as a float
        values = pd.to_numeric(col, errors="coerce").to_numpy(np.float64)
        with np.errstate(invalid="ignore"):
            bad = (~np.isfinite(values) | (values < 0) | (values > min(limit, 2**53))
                   | (values != np.round(values)))
        ints = np.where(bad, 0, values).astype(np.int64)
    if bad.any():
        _sample_bad(raw, column, bad, path, f"not an integer in 0..{limit}")
    return ints


def _sample_bad(raw: pd.DataFrame, column: str, bad: np.ndarray, path: Path,
                reason: str) -> None:
    i = int(np.flatnonzero(bad)[0])
    value = raw[column].iloc[i]
    what = "empty field" if pd.isna(value) else f"{reason}: {str(value)!r}"
    # Line numbers count the header (line 1) and assume no blank lines in between.
    raise DataError(f"{path}: line {i + 2}, column {column!r}: {what}")


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
