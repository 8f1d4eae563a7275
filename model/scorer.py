"""Scoring live candidates for a user: the narrow interface the service and `evaluate` share.

The serving path imports this module: numpy and onnxruntime only, never torch.

A `RankRequest` holds what is known at the moment of a request: the user's window (the
watches that precede the request on the timeline, oldest first, as streamer *names* and
steps), the request's step, and the streamers live at that step. A `Scorer` ranks a batch
of requests at once (micro-batching) and returns, per request, the top-k streamers with
their scores, best first. Ties are broken by the model's streamer index (then name), so
the offline evaluation and the online service produce the same lists.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True)
class RankRequest:
    window: Sequence[tuple[str, int]]  # (streamer name, step), oldest -> newest
    step: int  # the request's step (query time)
    candidates: Sequence[str]  # streamer names live at `step`, any order


@dataclass(frozen=True)
class Ranked:
    streamers: list[str]  # top-k, best first; exactly min(k, len(candidates)) of them
    scores: list[float]
    fallback: bool  # the window was empty: the answer comes from the fallback


class Scorer(Protocol):
    version: str

    def rank(self, requests: Sequence[RankRequest], k: int) -> list[Ranked]: ...
