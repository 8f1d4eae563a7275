"""Timeline entries -> Kafka messages (topic, key, partition, timestamp, JSON value), fast.

The JSON of each event is formatted from pieces built once — per step (``step`` and
``event_time_ms``), per user (the key, which is also the ``user`` value), per broadcast
(``stream`` and ``streamer``) — so a message costs one ``bytes %`` and no struct; the first
event of every kind is checked byte for byte against `events.encode` at start, so a change
of the contract cannot slip past. A watermark becomes one message per partition.

Formatting costs ~0.5 µs a message on one core of this machine, a fifth of what
``produce`` + ``poll`` + the delivery callback cost. At ``--speed max`` on a large timeline
with spare cores (`PARALLEL_MIN_CPUS`), `encode_blocks` runs the encoder in a forked child
that streams pickled batches through a pipe, so the produce loop only unpickles (~0.2 µs).
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import pickle
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import msgspec
import numpy as np

from liverank.core import events as ev
from liverank.core.timebase import STEP_MS, event_time_ms
from liverank.model.data.timeline import REQUEST, START, STOP, WATCH, WATERMARK, Timeline

logger = logging.getLogger(__name__)

BLOCK_EVENTS = 16_384  # timeline entries encoded and produced together at --speed max
# At a paced rate (`EvenRateSink`) a block is encoded between two hand-overs, so it holds the
# pacing up for as long as it takes: 8-12 ms for 16,384 entries on an idle core, ~23 ms on a
# busy one, which sent a partition's share of a tick late, onto the next (docs/results.md,
# session 28). 1,024 entries encode in ~0.6 ms (1.7 at most): well under a partition's slot
# of a spread tick (25 ms with the embedded broker's 2 partitions, 6 ms with 8).
RATE_BLOCK_EVENTS = 1_024
PARALLEL_MIN_EVENTS = 200_000  # below this a child process costs more than it saves
# With 2 cores the broker, librdkafka's threads and the produce loop already use both: a
# child then only adds pickling (measured: no gain, often a loss). It pays with spare cores.
PARALLEL_MIN_CPUS = 4


class EncodeError(RuntimeError):
    """The encoder disagrees with the event contract, or its child process failed."""


_T_START = b'{"kind":"stream_start","event_id":"start:%d","seq":%d%s%s'
_T_STOP = b'{"kind":"stream_stop","event_id":"stop:%d","seq":%d%s%s'
_T_WM = b'{"kind":"watermark","event_id":"wm:%d","seq":%d%s,"partition":%d}'
_T_REQ = b'{"kind":"rec_request","event_id":"req:%d","seq":%d%s,"user":%s}'
_T_WATCH = b'{"kind":"watch","event_id":"watch:%d","seq":%d%s,"user":%s%s'
_T_SUFFIX = b',"stream":%d,"streamer":%s}'


@dataclass
class Batch:
    """Messages of timeline entries ``lo:hi``, in send order (column lists for a tight
    produce loop). ``first_step``/``last_step``: steps of the first and last entry."""

    lo: int
    hi: int
    first_step: int
    last_step: int
    topic: list[str]
    value: list[bytes]
    key: list[bytes | None]
    partition: list[int]  # -1: placed by the key
    timestamp: list[int]
    user: np.ndarray  # (M,) bool: message goes to user-events


class Encoder:
    """Timeline entries -> Kafka messages, from pieces built once per step/user/broadcast."""

    def __init__(self, tl: Timeline, partitions: int, stream_topic: str, user_topic: str):
        self.tl, self.partitions = tl, partitions
        self.topics = np.array([stream_topic, user_topic], dtype=object)
        data, casts = tl.data, tl.casts
        names = [msgspec.json.encode(str(n)) for n in data.streamer_names.tolist()]
        last = max(tl.last_step, int(tl.step.max()) if len(tl) else 0)
        self.step_piece = np.array(
            [b',"step":%d,"event_time_ms":%d' % (s, event_time_ms(s, tl.epoch_ms))
             for s in range(last + 1)], dtype=object)
        self.user_key = np.array([ev.user_key(u) for u in data.user_ids.tolist()], dtype=object)
        # Per broadcast, built on first use (in the encoding child when there is one): the
        # key and the '"stream":..,"streamer":..}' tail shared by its start, stop and watches.
        self.names = names
        self.stream_key = np.full(len(casts), None, dtype=object)
        self.cast_suffix = np.full(len(casts), None, dtype=object)
        self.cast_built = np.zeros(len(casts), dtype=bool)
        # A watch names its own row's streamer; a stream id seen with two streamers keeps its
        # first one for start/stop, so those rows get their own suffix.
        self.row_cast = np.searchsorted(casts.stream, data.stream)
        odd = np.flatnonzero(casts.streamer[self.row_cast] != data.streamer) if len(
            casts) else np.zeros(0, dtype=np.int64)
        self.odd_rows = {int(r): _T_SUFFIX % (int(data.stream[r]), names[int(data.streamer[r])])
                         for r in odd}
        self.row_is_odd = np.zeros(len(data), dtype=bool)
        self.row_is_odd[odd] = True
        self.check_contract()

    def _casts(self, b: np.ndarray) -> np.ndarray:
        """The suffixes of broadcasts ``b``, building (and keeping) the missing ones."""
        missing = np.flatnonzero(~self.cast_built[b])
        if missing.size:
            new = np.unique(b[missing])
            stream = self.tl.casts.stream[new].tolist()
            self.cast_suffix[new] = [_T_SUFFIX % (s, self.names[n]) for s, n in zip(
                stream, self.tl.casts.streamer[new].tolist(), strict=True)]
            self.stream_key[new] = [ev.stream_key(s) for s in stream]
            self.cast_built[new] = True
        return self.cast_suffix[b]  # type: ignore[no-any-return]

    def encode(self, lo: int, hi: int) -> Batch:
        """Messages for timeline entries ``lo:hi`` (a watermark becomes one per partition)."""
        tl, n = self.tl, hi - lo
        kind, step, seq, ref = tl.kind[lo:hi], tl.step[lo:hi], tl.seq[lo:hi], tl.ref[lo:hi]
        value = np.empty(n, dtype=object)
        key = np.full(n, None, dtype=object)
        for code, tmpl in ((START, _T_START), (STOP, _T_STOP)):
            i = np.flatnonzero(kind == code)
            if i.size:
                b = ref[i]
                value[i] = [tmpl % a for a in zip(
                    tl.casts.stream[b].tolist(), seq[i].tolist(),
                    self.step_piece[step[i]].tolist(), self._casts(b).tolist(), strict=True)]
                key[i] = self.stream_key[b]
        for code in (REQUEST, WATCH):
            i = np.flatnonzero(kind == code)
            if not i.size:
                continue
            rows = ref[i]
            ukeys = self.user_key[tl.data.user[rows]]
            key[i] = ukeys
            cols = [rows.tolist(), seq[i].tolist(), self.step_piece[step[i]].tolist(),
                    ukeys.tolist()]
            if code == REQUEST:
                value[i] = [_T_REQ % a for a in zip(*cols, strict=True)]
            else:
                suffix = self._casts(self.row_cast[rows])
                if self.odd_rows:
                    for j in np.flatnonzero(self.row_is_odd[rows]).tolist():
                        suffix[j] = self.odd_rows[int(rows[j])]
                value[i] = [_T_WATCH % a for a in zip(*cols, suffix.tolist(), strict=True)]
        # Watermarks: one message per partition, in partition order, at the entry's place.
        reps = np.where(kind == WATERMARK, self.partitions, 1)
        pos = np.repeat(np.arange(n), reps)
        value, key = value[pos], key[pos]
        part = np.full(pos.size, -1, dtype=np.int64)
        w = np.flatnonzero(kind[pos] == WATERMARK)
        if w.size:
            part[w] = np.tile(np.arange(self.partitions), w.size // self.partitions)
            ws = step[pos[w]]
            value[w] = [_T_WM % a for a in zip(ws.tolist(), seq[pos[w]].tolist(),
                                               self.step_piece[ws].tolist(), part[w].tolist(),
                                               strict=True)]
        user = kind[pos] >= REQUEST
        ts = tl.epoch_ms + step[pos] * STEP_MS
        return Batch(lo, hi, int(step[0]), int(step[-1]),
                     self.topics[user.view(np.uint8)].tolist(), value.tolist(), key.tolist(),
                     part.tolist(), ts.tolist(), user)

    def check_contract(self) -> None:
        """The first entry of every kind must encode exactly as `events.encode` does."""
        tl = self.tl
        for code in (STOP, START, WATERMARK, REQUEST, WATCH):
            hits = np.flatnonzero(tl.kind == code)
            if not hits.size:
                continue
            i = int(hits[0])
            batch = self.encode(i, i + 1)
            want = tl.event(i)
            if code == WATERMARK:
                want = msgspec.structs.replace(want, partition=0)
            if batch.value[0] != ev.encode(want):
                raise EncodeError(f"replay encoder disagrees with the event contract for "
                                  f"{want.event_id}: {batch.value[0]!r} != {ev.encode(want)!r}")
        for r in list(self.odd_rows)[:1]:  # a row whose streamer differs from its cast's
            i = int(np.flatnonzero((tl.kind == WATCH) & (tl.ref == r))[:1].sum())
            if tl.kind[i] == WATCH and self.encode(i, i + 1).value[0] != ev.encode(tl.event(i)):
                raise EncodeError(f"replay encoder disagrees with the event contract for "
                                  f"watch:{r} (stream seen with two streamers)")


def blocks(tl: Timeline, paced: bool, size: int = BLOCK_EVENTS) -> Iterator[tuple[int, int]]:
    """Entry ranges to encode and send together: whole steps when paced, else ``size``."""
    if not paced:
        for lo in range(0, len(tl), size):
            yield lo, min(lo + size, len(tl))
        return
    cuts = np.flatnonzero(np.diff(tl.step)) + 1
    edges = [0, *cuts.tolist(), len(tl)]
    for lo, hi in zip(edges[:-1], edges[1:], strict=True):
        for a in range(lo, hi, size):
            yield a, min(a + size, hi)


def encode_blocks(encoder: Encoder, paced: bool, block_size: int = BLOCK_EVENTS,
                  parallel: bool | None = None) -> Iterable[Batch]:
    """Every block of the timeline, encoded, in order.

    ``parallel`` (default: when the timeline is large, not paced, and fork is available)
    encodes in a forked child. Call it before any Kafka client exists in this process:
    fork copies no librdkafka threads, and none are needed in the child.
    """
    ranges = list(blocks(encoder.tl, paced, block_size))
    if parallel is None:
        parallel = (not paced and len(encoder.tl) >= PARALLEL_MIN_EVENTS
                    and "fork" in multiprocessing.get_all_start_methods()
                    and (os.cpu_count() or 1) >= PARALLEL_MIN_CPUS)
    if not parallel:
        return (encoder.encode(lo, hi) for lo, hi in ranges)
    return ForkedEncoder(encoder, ranges)


class ForkedEncoder:
    """Iterator over batches encoded by a forked child; the pipe's buffer bounds how far the
    child runs ahead. Closing (or exhausting) it ends the child."""

    def __init__(self, encoder: Encoder, ranges: list[tuple[int, int]]) -> None:
        ctx = multiprocessing.get_context("fork")
        self._conn, child_end = ctx.Pipe(duplex=False)
        self._proc = ctx.Process(target=_encode_in_child, args=(encoder, ranges, child_end),
                                 daemon=True, name="liverank-encoder")
        self._proc.start()
        child_end.close()
        self._left = len(ranges)
        self._topics = encoder.topics
        logger.debug("encoder child pid=%s blocks=%d", self._proc.pid, self._left)

    def __iter__(self) -> Iterator[Batch]:
        try:
            while self._left:
                try:
                    payload = pickle.loads(self._conn.recv_bytes())
                except EOFError:
                    raise EncodeError(f"the encoder process exited early (code "
                                      f"{self._proc.exitcode})") from None
                if isinstance(payload, str):
                    raise EncodeError(f"the encoder process failed: {payload}")
                lo, hi, first, last, value, key, part, ts, user = payload
                self._left -= 1
                yield Batch(lo, hi, first, last, self._topics[user.view(np.uint8)].tolist(),
                            value, key, part.tolist(), ts.tolist(), user)
        finally:
            self.close()

    def close(self) -> None:
        self._conn.close()
        if self._proc.is_alive():
            self._proc.terminate()
        self._proc.join(5)


def _encode_in_child(encoder: Encoder, ranges: list[tuple[int, int]], conn: Any) -> None:
    try:
        for lo, hi in ranges:
            b = encoder.encode(lo, hi)
            conn.send_bytes(pickle.dumps(
                (b.lo, b.hi, b.first_step, b.last_step, b.value, b.key,
                 np.asarray(b.partition, dtype=np.int64), np.asarray(b.timestamp, dtype=np.int64),
                 b.user), protocol=pickle.HIGHEST_PROTOCOL))
    except (BrokenPipeError, KeyboardInterrupt):
        pass  # the parent stopped reading (interrupted, or a failed delivery)
    except Exception as exc:  # noqa: BLE001 - reported to the parent, which raises it
        with contextlib.suppress(BrokenPipeError):
            conn.send_bytes(pickle.dumps(f"{type(exc).__name__}: {exc}"))
    finally:
        conn.close()
