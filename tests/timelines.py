"""Test helpers shared by the state and live-index tests: a tiny log, its stream events,
and the data layer's answer to "who is live at step s"."""

from __future__ import annotations

import functools

from liverank.core import events as ev
from liverank.model.data import timeline as tl
from liverank.model.data.availability import Availability, availability
from liverank.model.data.synth import generate
from liverank.model.data.twitch import Interactions


@functools.lru_cache(maxsize=1)
def tiny() -> Interactions:
    return generate("tiny", seed=0)


def stream_events(t: tl.Timeline) -> list[ev.Event]:
    return [e for e in t if isinstance(e, ev.StreamStart | ev.StreamStop | ev.Watermark)]


def partitioned(events: list[ev.Event], parts: int) -> list[list[ev.Event]]:
    """Deal stream events over partitions by stream id; watermarks go to every one."""
    out: list[list[ev.Event]] = [[] for _ in range(parts)]
    for e in events:
        if isinstance(e, ev.Watermark):
            for p in out:
                p.append(e)
        else:
            out[e.stream % parts].append(e)  # type: ignore[union-attr]
    return out


_AVAILABILITY: dict[int, tuple[Interactions, Availability]] = {}


def expected_live(data: Interactions, step: int) -> dict[str, int]:
    """The broadcast definition of model/data/availability.py, name -> answering stream."""
    if id(data) not in _AVAILABILITY:
        _AVAILABILITY[id(data)] = (data, availability(data, "broadcast"))
    av = _AVAILABILITY[id(data)][1]
    return {str(data.streamer_names[s]): int(m)
            for s, m in zip(av.streamers_at(step), av.streams_at(step), strict=True)}
