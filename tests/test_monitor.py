"""The online evaluator on hand-made answers whose metrics are known."""

from __future__ import annotations

import math

import pandas as pd

from liverank.client.monitor import OnlineEvaluator, format_summary
from liverank.core import events as ev
from liverank.model.data.timeline import build_timeline
from liverank.model.data.twitch import from_frame

ROWS = [  # user, stream, streamer, start, stop
    (1, 10, "a", 0, 6),
    (2, 20, "b", 0, 6),
    (1, 20, "b", 2, 3),
    (2, 10, "a", 3, 4),
    (1, 10, "a", 4, 5),
    (3, 30, "c", 4, 5),
]


def timeline_events() -> list[ev.Event]:
    ds = from_frame(pd.DataFrame(ROWS, columns=["user", "stream", "streamer", "start", "stop"]))
    t = build_timeline(ds)
    return [*t, t.end_event()]


def answer(req: ev.RecRequest, streamers: list[str], streams: dict[str, int],
           late: bool = False) -> ev.Recommendation:
    items = [ev.RecItem(stream=streams[s], streamer=s, score=float(-i), rank=i + 1)
             for i, s in enumerate(streamers)]
    return ev.Recommendation(event_id=f"rec:{req.event_id}", seq=req.seq, step=req.step,
                             event_time_ms=req.event_time_ms, user=req.user,
                             request_id=req.event_id, trigger="request", produced_ms=1000,
                             published_ms=1000 + 10 * req.seq, model_version="v", fallback=False,
                             items=items, late=late)


def test_hits_ranks_live_share_and_counts() -> None:
    events = timeline_events()
    streams = {"a": 10, "b": 20, "c": 30, "z": 99}
    truth = {e.event_id.replace("watch", "req"): e.streamer
             for e in events if isinstance(e, ev.Watch)}
    evaluator = OnlineEvaluator(k=2)
    for e in events:
        evaluator.add(e)
    requests = [e for e in events if isinstance(e, ev.RecRequest)]
    # req:0 hit@1, req:1 hit@2, req:2 miss (z is not live), req:3 unanswered, req:4/5 hit@1
    plans = {"req:0": ["a", "b"], "req:1": ["a", "b"], "req:2": ["z", "a"],
             "req:4": ["a", "c"], "req:5": ["c", "a"]}
    for req in requests:
        if req.event_id in plans:
            evaluator.add(answer(req, plans[req.event_id], streams,
                                 late=req.event_id == "req:5"))
    evaluator.add(answer(requests[0], ["a", "b"], streams))  # an at-least-once duplicate
    assert truth["req:1"] == "b"
    report = evaluator.report()
    m = report["model"]["all"]
    assert m["n"] == 5 and report["unanswered_requests"] == 1
    assert math.isclose(m["HR@1"], 3 / 5) and math.isclose(m["HR@5"], 4 / 5)
    assert math.isclose(m["NDCG@5"], (3 + 1 / math.log2(3)) / 5)
    assert report["duplicates"] == 1 and report["duplicates_differing"] == 0
    assert report["late_answers"] == 1
    # 10 items recommended, one (z) not live at its step
    assert math.isclose(report["live_share"], 9 / 10)
    # repeats: req:4 (user 1 saw a at 0) is the only repeat target
    assert report["model"]["repeat"]["n"] == 1
    assert report["pop"]["all"]["n"] == 5
    assert report["latency_ms"]["p50"] > 0
    assert "model" in format_summary(report)


def test_pop_reference_ranks_by_watches_so_far() -> None:
    events = timeline_events()
    evaluator = OnlineEvaluator(k=3)
    for e in events:
        evaluator.add(e)
    streams = {"a": 10, "b": 20, "c": 30}
    for e in events:
        if isinstance(e, ev.RecRequest):
            evaluator.add(answer(e, ["a", "b", "c"], streams))
    pop = evaluator.report()["pop"]["all"]
    # POP ranks: req:0 a (tie 0/0, name) 1; req:1 b: a has 1 -> 2; req:2 b: a1 b1 -> 2;
    # req:3 a: a1 b2 -> 2; req:4 a: a2 b2 c0 (tie, name) -> 1; req:5 c: a3 b2 -> 3
    assert math.isclose(pop["MRR"], (1 + 1 / 2 * 3 + 1 + 1 / 3) / 6)
