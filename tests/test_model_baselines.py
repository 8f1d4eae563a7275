"""Baselines and the evaluation targets on a toy log where the right answers are known."""

from __future__ import annotations

import numpy as np
import pandas as pd

from liverank.model.baselines import LivePopScorer, PopScorer, RepCountScorer, RepScorer
from liverank.model.data.availability import availability
from liverank.model.data.split import TimeSplit
from liverank.model.data.twitch import from_frame
from liverank.model.evaluate import (
    evaluate_scorers,
    iter_requests,
    iter_targets,
    markdown_table,
)
from liverank.model.scorer import RankRequest

# Streams: 10 = "big" live 0..30, 11 = "mid" live 0..30, 12 = "small" live 10..30,
# 13 = "old" and 14 (an earlier "big" broadcast) live until step 5 only. Before step 20
# "big" has most rows (6: POP); at step 20 the current stream of "small" had the most
# viewers so far (5 vs 4: live pop); user 9's most recent watch is "mid" (REP).
ROWS = [
    (1, 10, "big", 0, 30), (2, 10, "big", 1, 30), (3, 10, "big", 2, 30), (4, 10, "big", 3, 30),
    (5, 13, "old", 0, 5), (6, 13, "old", 1, 5), (7, 13, "old", 2, 5),
    (6, 14, "big", 3, 5), (7, 14, "big", 4, 5),  # an earlier broadcast of "big"
    (1, 12, "small", 10, 30), (2, 12, "small", 11, 30), (3, 12, "small", 12, 30),
    (4, 12, "small", 13, 30),
    (9, 12, "small", 14, 15), (9, 11, "mid", 15, 16),
    (9, 12, "small", 20, 21),  # the test target: user 9, step 20
    (5, 12, "small", 20, 30),  # same step, later in file order: not in user 9's past
    (8, 11, "mid", 0, 30),
]


def _log() -> object:
    return from_frame(pd.DataFrame(ROWS, columns=["user", "stream", "streamer", "start", "stop"]))


def _req(ds: object) -> RankRequest:
    (target,) = [t for t in iter_targets(ds, 20, 30, 16) if t.event_id == "req:15"]
    return target.request


def test_targets_follow_the_timeline_and_hold_only_the_past() -> None:
    ds = _log()
    triples = list(iter_requests(ds, 20, 30, window_len=16))
    assert [t[0] for t in triples] == ["req:15", "req:16"]  # step 20, file order
    event_id, req, truth = triples[0]
    assert truth == "small" and req.step == 20
    assert list(req.window) == [("small", 14), ("mid", 15)]
    assert sorted(req.candidates) == ["big", "mid", "small"]  # "old" is off air
    last = list(iter_targets(ds, 0, 30, 16, targets="last"))
    assert sorted(int(t.event_id[4:]) for t in last) == [7, 8, 9, 10, 11, 12, 15, 16, 17]
    repeats = {t.event_id: t.repeat for t in iter_targets(ds, 0, 30, 16)}
    assert repeats["req:15"] and not repeats["req:13"] and not repeats["req:16"]


def test_pop_live_pop_and_rep_give_their_known_answers() -> None:
    ds = _log()
    req = _req(ds)
    live = availability(ds, "broadcast")
    assert PopScorer(ds, 20).rank([req], 3)[0].streamers == ["big", "small", "mid"]
    # viewers so far at step 20: small 5 (rows 10..14 of stream 12), big 4, mid 2
    ranked = LivePopScorer(ds, live, 20).rank([req], 3)[0]
    assert ranked.streamers == ["small", "big", "mid"]
    assert ranked.scores == [5.0, 4.0, 2.0]
    assert RepScorer(ds, 20).rank([req], 3)[0].streamers == ["mid", "small", "big"]
    empty = RankRequest((), 20, req.candidates)
    assert RepScorer(ds, 20).rank([empty], 1)[0].streamers == ["big"]
    assert RepScorer(ds, 20).rank([empty], 1)[0].fallback


def test_evaluate_counts_the_known_ranks() -> None:
    ds = _log()
    split = TimeSplit(pivot_1=18, pivot_2=20, max_step=30)
    result = evaluate_scorers(ds, {"REP": RepScorer(ds, 20), "POP": PopScorer(ds, 20)}, split)
    assert result["n_targets"] == 2
    # req:15 (user 9 -> small): REP ranks mid, small: 2; POP big, small: 2.
    # req:16 (user 5, window old@0, off air now -> small): REP falls to POP order: 2.
    for name in ("REP", "POP"):
        m = result["models"][name]["all"]
        assert m["HR@1"] == 0.0 and m["HR@5"] == 1.0
        assert np.isclose(m["MRR"], 0.5)
    assert result["models"]["REP"]["repeat_ratio"] == 0.5


def test_rep_count_is_liverecs_count_in_the_window_without_the_newest_watch() -> None:
    ds = _log()
    req = _req(ds)  # window: small@14, mid@15 (newest); live: big, mid, small
    # LiveRec counts inputs[:-1]: small once, mid (the newest) not at all; the rest by POP.
    assert RepCountScorer(ds, 20).rank([req], 3)[0].streamers == ["small", "big", "mid"]
    # Counting the newest too: small and mid tie at 1, POP settles it (small has more rows).
    both = RepCountScorer(ds, 20, skip_newest=False).rank([req], 3)[0]
    assert both.streamers == ["small", "mid", "big"]
    assert both.scores[0] - both.scores[2] > 0.5 and both.scores[0] - both.scores[1] < 1
    # A window of 1 holds only the newest watch, which LiveRec does not count: POP order.
    assert RepCountScorer(ds, 20, window_len=1).rank([req], 3)[0].streamers == [
        "big", "small", "mid"]
    assert RepCountScorer(ds, 20).rank([RankRequest((), 20, req.candidates)], 1)[0].fallback


def test_repeats_under_both_definitions() -> None:
    ds = _log()
    by_log = {t.event_id: (t.repeat, t.in_window) for t in iter_targets(ds, 0, 30, 16)}
    assert by_log["req:15"] == (True, True)  # small, watched at 14: in the last 16 watches
    assert by_log["req:13"] == (False, False)
    short = {t.event_id: (t.repeat, t.in_window)
             for t in iter_targets(ds, 0, 30, 16, repeat_window=1)}
    assert short["req:15"] == (True, False)  # watched before, but not the newest watch
    (target,) = [t for t in iter_targets(ds, 0, 30, 2, repeat_window=1)
                 if t.event_id == "req:15"]
    assert len(target.request.window) == 2  # the model's window is not cut to repeat_window


def test_evaluate_reports_both_definitions_labelled() -> None:
    ds = _log()
    split = TimeSplit(pivot_1=18, pivot_2=20, max_step=30)
    scorers = {"REP": RepScorer(ds, 20), "REP-count": RepCountScorer(ds, 20)}
    result = evaluate_scorers(ds, scorers, split, repeat_window=1)
    m = result["models"]["REP"]
    assert m["repeat_ratio"] == 0.5 and m["window_repeat_ratio"] == 0.0
    assert m["window_repeat"]["n"] == 0 and m["window_new"]["n"] == 2
    assert set(result["repeat_definitions"]) == {"log", "window"}
    table = markdown_table(result)
    assert "new (log) HR@1" in table and "rep (win) NDCG@10" in table
    assert "repeat ratio 0.500 (log" in table and "0.000 (win: among the last 1 watches" in table
    # req:15: REP-count ranks small first (counted once), REP puts mid (newest) first.
    assert result["models"]["REP-count"]["all"]["HR@1"] == 0.5
    assert m["all"]["HR@1"] == 0.0
