"""The timeline: a loaded log turned into the ordered events a live platform would emit.

Order within one step s:

1. stops of streams whose last stop is s (a stream is off air during its stop step),
2. starts of streams whose first start is s,
3. the watermark for s (every stream event up to and including s has been sent),
4. user events in file order, each watch preceded by its recommendation request.

A watermark is emitted for every step, including steps with no other event, so consumers
can advance event time. ``seq`` numbers the full timeline with a request slot before every
watch, so seq and event ids are the same whichever request mode or step range is replayed.

The timeline is columnar (numpy arrays, one entry per event) so the replay can stream
millions of events; `Timeline.event` builds the typed record for one entry.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal

import numpy as np

from liverank.core import events as ev
from liverank.core.timebase import DEFAULT_EPOCH_MS, SESSION_GAP, event_time_ms
from liverank.model.data.availability import Broadcasts, broadcasts
from liverank.model.data.twitch import Interactions

# Kind codes in the columnar timeline (the order of the phases within a step).
STOP, START, WATERMARK, REQUEST, WATCH = 0, 1, 2, 3, 4
_PHASE = np.array([0, 1, 2, 3, 3], dtype=np.int8)

RequestMode = Literal["every-watch", "session-start", "none"]
REQUEST_MODES: tuple[RequestMode, ...] = ("every-watch", "session-start", "none")


@dataclass(frozen=True)
class Timeline:
    kind: np.ndarray  # (E,) uint8, one of STOP..WATCH
    step: np.ndarray  # (E,) int64
    seq: np.ndarray  # (E,) int64, strictly increasing
    ref: np.ndarray  # (E,) int64: broadcast index (stream events), row (user events), step
    data: Interactions
    casts: Broadcasts
    epoch_ms: int = DEFAULT_EPOCH_MS

    def __len__(self) -> int:
        return int(self.kind.shape[0])

    @property
    def last_step(self) -> int:
        return int(self.step[-1]) if len(self) else 0

    def counts(self) -> dict[str, int]:
        names = ("stream_stop", "stream_start", "watermark", "rec_request", "watch")
        bins = np.bincount(self.kind, minlength=5)
        return {n: int(c) for n, c in zip(names, bins, strict=True)}

    def event(self, i: int) -> ev.Event:
        kind, step, seq, ref = (int(self.kind[i]), int(self.step[i]), int(self.seq[i]),
                                int(self.ref[i]))
        t = event_time_ms(step, self.epoch_ms)
        if kind in (STOP, START):
            stream = int(self.casts.stream[ref])
            name = str(self.data.streamer_names[self.casts.streamer[ref]])
            if kind == START:
                return ev.StreamStart(event_id=f"start:{stream}", seq=seq, step=step,
                                      event_time_ms=t, stream=stream, streamer=name)
            return ev.StreamStop(event_id=f"stop:{stream}", seq=seq, step=step,
                                 event_time_ms=t, stream=stream, streamer=name)
        if kind == WATERMARK:
            return ev.Watermark(event_id=f"wm:{step}", seq=seq, step=step, event_time_ms=t)
        user = int(self.data.user_ids[self.data.user[ref]])
        if kind == REQUEST:
            return ev.RecRequest(event_id=f"req:{ref}", seq=seq, step=step, event_time_ms=t,
                                 user=user)
        return ev.Watch(event_id=f"watch:{ref}", seq=seq, step=step, event_time_ms=t,
                        user=user, stream=int(self.data.stream[ref]),
                        streamer=str(self.data.streamer_names[self.data.streamer[ref]]))

    def __iter__(self) -> Iterator[ev.Event]:
        return (self.event(i) for i in range(len(self)))

    def end_event(self) -> ev.End:
        stream_events = int(np.count_nonzero(self.kind <= WATERMARK))
        return ev.End(event_id="end", seq=int(self.seq[-1]) + 1 if len(self) else 0,
                      step=self.last_step, event_time_ms=event_time_ms(self.last_step,
                                                                          self.epoch_ms),
                      stream_events=stream_events, user_events=len(self) - stream_events)

    def select(self, mask: np.ndarray) -> Timeline:
        return Timeline(self.kind[mask], self.step[mask], self.seq[mask], self.ref[mask],
                        self.data, self.casts, self.epoch_ms)


def build_timeline(
    data: Interactions,
    requests: RequestMode = "every-watch",
    requests_from: int | None = None,
    session_gap: int = SESSION_GAP,
    from_step: int | None = None,
    to_step: int | None = None,
    epoch_ms: int = DEFAULT_EPOCH_MS,
) -> Timeline:
    """Order every event of ``data``; see the module docstring for the order.

    ``requests`` picks which watches get a request before them (``session-start``: only when
    the user had no watch in the previous ``session_gap`` steps); ``requests_from`` drops
    requests before that step (earlier watches only fill windows). ``from_step``/``to_step``
    keep events in that inclusive step range; streams that started before ``from_step``
    and are still live at it (or stop at it) have their start sent first.
    """
    if requests not in REQUEST_MODES:
        raise ValueError(f"unknown request mode {requests!r}: use one of {REQUEST_MODES}")
    casts = broadcasts(data)
    full = _full_order(data, casts, epoch_ms)
    keep = np.ones(len(full), dtype=bool)
    is_req = full.kind == REQUEST
    if requests == "none":
        keep &= ~is_req
    elif requests == "session-start":
        starts = _session_starts(data, session_gap)
        keep[is_req] &= starts[full.ref[is_req]]
    if requests_from is not None:
        keep &= ~is_req | (full.step >= requests_from)
    if from_step is not None or to_step is not None:
        lo = from_step if from_step is not None else 0
        hi = to_step if to_step is not None else full.last_step
        in_range = (full.step >= lo) & (full.step <= hi)
        carried = (full.kind == START) & (full.step < lo)
        carried[carried] = casts.stop[full.ref[carried]] >= lo
        keep &= in_range | carried
    return full.select(keep)


def _full_order(data: Interactions, casts: Broadcasts, epoch_ms: int) -> Timeline:
    n_b, n_rows = len(casts), len(data)
    last = max(data.max_step, int(casts.stop.max()) if n_b else 0)
    b_idx = np.arange(n_b, dtype=np.int64)
    # User events interleaved per row (request, then watch), so that concatenation order is
    # already the order inside every (step, phase) group; one stable sort by (step, phase)
    # then finishes the job (a radix sort when the key fits 16 bits).
    user_kind = np.tile(np.array([REQUEST, WATCH], dtype=np.uint8), n_rows)
    user_ref = np.repeat(np.arange(n_rows, dtype=np.int64), 2)
    user_step = np.repeat(data.start.astype(np.int64), 2)
    kind = np.concatenate([np.full(n_b, STOP, dtype=np.uint8),
                           np.full(n_b, START, dtype=np.uint8),
                           np.full(last + 1, WATERMARK, dtype=np.uint8), user_kind])
    step = np.concatenate([casts.stop.astype(np.int64), casts.start.astype(np.int64),
                           np.arange(last + 1, dtype=np.int64), user_step])
    ref = np.concatenate([b_idx, b_idx, np.arange(last + 1, dtype=np.int64), user_ref])
    key = step * 4 + _PHASE[kind]
    if int(key.max(initial=0)) < 1 << 16:
        key = key.astype(np.uint16)
    order = np.argsort(key, kind="stable")
    seq = np.arange(order.shape[0], dtype=np.int64)
    return Timeline(kind[order], step[order], seq, ref[order], data, casts, epoch_ms)


def _session_starts(data: Interactions, gap: int) -> np.ndarray:
    """Per row: True when the user had no watch in the ``gap`` steps before it."""
    n = len(data)
    order = np.lexsort((np.arange(n), data.start, data.user))
    user, start = data.user[order], data.start[order].astype(np.int64)
    first = np.ones(n, dtype=bool)
    first[1:] = user[1:] != user[:-1]
    prev = np.empty(n, dtype=np.int64)
    prev[0] = -1
    prev[1:] = start[:-1]
    is_start = first | (prev < start - gap)
    out = np.empty(n, dtype=bool)
    out[order] = is_start
    return out
