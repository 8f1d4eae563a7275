"""The viewing log rebuilt from the event topics, as it was known at a cut step.

`liverank train --from-topics` trains on what the platform's topics hold instead of a CSV:
the replay (or a live platform) wrote broadcast starts and stops to ``stream-events`` and
watches to ``user-events`` (`liverank.core.events`). `log_from_events` turns those decoded
events back into the rows the CSV loader gives (`Interactions`), as known at a cut step
``until`` (every event with ``step <= until``):

* one row per `Watch` (user, stream, streamer, ``start`` = its step), in event order (step,
  then ``seq``: the timeline's order); a record read twice (re-sent after a broker outage)
  counts once (same ``event_id``); requests, watermarks and ends carry no row;
* a watch never carries its stop (an event never carries its future), so a row lasts as long
  as its broadcast: ``stop`` is the step of the broadcast's `StreamStop` when that was sent
  by ``until``, else ``until + 1`` (still on air at the cut).

`as_known_at` gives the same rows from a loaded log, without events: the rows that started by
``until``, with those stops. Training from the topics up to T therefore equals training from
the CSV cut at T (``liverank train --data log.csv --until step:T``); the tests check that
both routes give the same rows and the same weights.

What the topics cannot give back is each row's own stop. Availability under the
``broadcast`` definition (liverank's default, the one training uses) is rebuilt exactly; under
``rows`` (LiveRec's) every watched stream counts as live for its whole broadcast.

    >>> log = log_from_events(events, until_step=4000, source="topics")  # doctest: +SKIP
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Protocol

import numpy as np
import pandas as pd

from liverank.core import events as ev
from liverank.core.settings import Settings
from liverank.core.timebase import STEP_MS

from .availability import broadcasts
from .twitch import COLUMNS, Interactions, from_frame, in_event_order

logger = logging.getLogger(__name__)


class LogReader(Protocol):
    """Reads the log from the broker of ``settings`` (``liverank.client.history.read_log``),
    handed to the ``train`` command by the root CLI: the model layer cannot import the
    broker."""

    def __call__(self, settings: Settings, *, until_step: int | None,
                 since_step: int | None, timeout_s: float) -> Interactions: ...


def step_at(text: str, epoch_ms: int) -> int:
    """The last step whose event time is at or before ``text``: an ISO-8601 time (UTC when it
    names no offset), a number of ms since 1970 (an event time), or ``step:N``. Raises
    `ValueError` with a one-line reason."""
    raw = text.strip()
    if raw.startswith("step:"):
        try:
            step = int(raw[5:])
        except ValueError:
            raise ValueError(f"{text!r}: step:N needs an integer N") from None
        if step < 0:
            raise ValueError(f"{text!r}: steps start at 0")
        return step
    if raw.isdigit():
        ms = int(raw)
    else:
        try:
            when = datetime.fromisoformat(raw)
        except ValueError:
            raise ValueError(f"{text!r}: not an ISO-8601 time (e.g. 2019-10-20T12:00Z), a "
                             "number of ms since 1970, or step:N") from None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        ms = int(when.timestamp() * 1000)
    if ms < epoch_ms:
        start = datetime.fromtimestamp(epoch_ms / 1000, UTC).isoformat()
        raise ValueError(f"{text!r} is before step 0 ({start}, LIVERANK_EPOCH_MS)")
    return (ms - epoch_ms) // STEP_MS


def log_from_events(events: Iterable[ev.Event], until_step: int | None = None,
                    since_step: int | None = None, source: str = "events") -> Interactions:
    """The rows of the watches with ``since_step <= step <= until_step`` (see the module
    docstring); ``until_step`` None: up to the last step any event names. Raises
    `ValueError` when no watch is left."""
    watches: dict[str, tuple[int, int, int, int, str]] = {}  # event_id -> step, seq, ...
    stops: dict[int, int] = {}
    last = -1
    for e in events:
        last = max(last, e.step)
        if isinstance(e, ev.Watch):
            watches[e.event_id] = (e.step, e.seq, e.user, e.stream, e.streamer)
        elif isinstance(e, ev.StreamStop):
            stops[e.stream] = max(stops.get(e.stream, e.step), e.step)
    until = last if until_step is None else until_step
    lo = since_step if since_step is not None else 0
    rows = sorted(w for w in watches.values() if lo <= w[0] <= until)
    if not rows:
        window = f"steps {lo}..{until}" if since_step is not None else f"up to step {until}"
        raise ValueError(f"{source}: no watch events {window} ({len(watches)} watches read)")
    step, _, user, stream, streamer = (list(c) for c in zip(*rows, strict=True))
    starts = np.asarray(step, dtype=np.int64)
    known = np.asarray([stops.get(s, until + 1) for s in stream], dtype=np.int64)
    stop = np.where(known <= until, known, until + 1)
    odd = int(np.count_nonzero(stop < starts))
    if odd:  # a stop before a watch of its stream: the topics contradict themselves
        logger.warning("rows whose broadcast stopped before the watch=%d (kept, stop=start)",
                       odd)
    frame = pd.DataFrame({"user": np.asarray(user, dtype=np.int64),
                          "stream": np.asarray(stream, dtype=np.int64),
                          "streamer": pd.Series(streamer, dtype=object).astype(str),
                          "start": starts, "stop": np.maximum(stop, starts)})
    logger.info("log from events rows=%d users=%d until_step=%d open_broadcasts=%d",
                len(frame), frame["user"].nunique(), until,
                int(np.count_nonzero(known > until)))
    return from_frame(frame[list(COLUMNS)], source=source)


def as_known_at(ds: Interactions, until_step: int, since_step: int | None = None
                ) -> Interactions:
    """The rows of ``ds`` as the event topics hold them at ``until_step``: rows that started
    in ``[since_step, until_step]``, in event order, each lasting as long as its broadcast
    (whose stop is known only if it came by ``until_step``; else ``until_step + 1``)."""
    casts = broadcasts(ds)
    cast_stop = casts.stop[np.searchsorted(casts.stream, ds.stream)].astype(np.int64)
    stop = np.where(cast_stop <= until_step, cast_stop, until_step + 1)
    keep = ds.start <= until_step
    if since_step is not None:
        keep &= ds.start >= since_step
    where = f"steps {since_step}..{until_step}" if since_step is not None else (
        f"step {until_step}")
    if not keep.any():
        raise ValueError(f"{ds.source}: no rows {'in' if since_step is not None else 'up to'} "
                         f"{where}")
    frame = ds.to_frame()
    frame["stop"] = stop
    cut = from_frame(frame[keep].reset_index(drop=True),
                     source=f"{ds.source} as known at {where}")
    return in_event_order(cut)
