"""The online evaluator on hand-made answers whose metrics are known."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from liverank.client.monitor import (
    OnlineEvaluator,
    answer_rate,
    day_labels,
    format_histogram,
    format_summary,
    latency_histogram,
    write_report,
)
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


def test_rep_reference_ranks_the_latest_live_watched_streamer_first() -> None:
    events = timeline_events()
    evaluator = OnlineEvaluator(k=3)
    for e in events:
        evaluator.add(e)
    streams = {"a": 10, "b": 20, "c": 30}
    for e in events:
        if isinstance(e, ev.RecRequest):
            evaluator.add(answer(e, ["a", "b", "c"], streams))
    report = evaluator.report()
    rep = report["rep"]["all"]
    # REP ranks: req:0 a (no history, POP tie, name) 1; req:1 b (no history, a has 1) 2;
    # req:2 b: window [a] first, then b 2; req:3 a: window [b] first 2; req:4 a: window
    # [a, b], b most recent 2; req:5 c (no history): a2 b2 c0 3
    assert math.isclose(rep["MRR"], (1 + 4 / 2 + 1 / 3) / 6)
    assert set(report["by_day_rep"]) == set(report["by_day"]) == set(report["by_day_pop"])
    assert "REP" in format_summary(report)


def test_requests_before_from_step_are_not_scored_nor_timed() -> None:
    events = timeline_events()
    evaluator = OnlineEvaluator(k=2, from_step=3)
    for e in events:
        evaluator.add(e)
    streams = {"a": 10, "b": 20, "c": 30}
    for e in events:
        if isinstance(e, ev.RecRequest):
            evaluator.add(answer(e, ["a", "b"], streams))
    report = evaluator.report()
    assert report["requests_not_scored"] == 3  # req:0..2 are at steps 0 and 2
    assert report["requests"] == report["answered_requests"] == 3
    assert report["model"]["all"]["n"] == 3
    # answers published at 1000 + 10 * seq: only req:3..5's count in the latency figures
    scored = [e for e in events if isinstance(e, ev.RecRequest) and e.step >= 3]
    assert report["latency_ms"]["max"] == max(10 * e.seq for e in scored)
    assert sum(n for _, n in report["latency_histogram"]) == 3
    # three answers span two gaps: (3 - 1) over the span of their publish times
    span_s = 10 * (max(e.seq for e in scored) - min(e.seq for e in scored)) / 1000
    assert report["answers_per_s"] == pytest.approx(2 / span_s)


def test_answer_rate_counts_gaps_not_answers() -> None:
    assert answer_rate([0, 500, 1000]) == pytest.approx(2.0)
    assert answer_rate([1000, 0, 500, 250]) == pytest.approx(3.0)  # any order
    assert math.isnan(answer_rate([5]))  # one answer: no rate
    assert math.isnan(answer_rate([]))
    assert math.isnan(answer_rate([7, 7]))  # no span
    assert answer_rate([7, 7], min_span_ms=1.0) == pytest.approx(1000.0)


def test_latency_histogram_bins_and_day_labels() -> None:
    bins = dict(latency_histogram(np.array([1.0, 5.0, 7.0, 10.0, 15_000.0])))
    assert bins["<5 ms"] == 1 and bins["5-10 ms"] == 2 and bins["10-20 ms"] == 1
    assert bins[">=10000 ms"] == 1 and sum(bins.values()) == 5
    lines = format_histogram(list(bins.items()))
    assert lines[1].strip().startswith("<5 ms") and lines[-1].strip().startswith(">=10000")
    start = 1_563_235_200_000  # 2019-07-16 00:00 UTC, a Tuesday
    assert day_labels([3, 4], {"3": start}) == ["day 3\nTue 07-16", "day 4"]
    assert day_labels([5], {}, {"5": {"n": 812.0}}) == ["day 5\nn=812"]


def test_write_report_draws_the_day_figure_and_the_latency_histogram(tmp_path) -> None:  # type: ignore[no-untyped-def]
    pytest.importorskip("matplotlib", reason="figures need matplotlib (the report extra)")
    events = timeline_events()
    evaluator = OnlineEvaluator(k=2)
    for e in events:
        evaluator.add(e)
    for e in events:
        if isinstance(e, ev.RecRequest):
            evaluator.add(answer(e, ["a", "b"], {"a": 10, "b": 20}))
    report = evaluator.report()
    assert report["day_start_ms"] == {"0": events[0].event_time_ms - events[0].step * 600_000}
    paths = write_report(report, tmp_path)
    assert {p.name for p in paths} == {"online.json", "online_by_day.png", "latency.png"}
    assert all(p.stat().st_size > 0 for p in paths)
