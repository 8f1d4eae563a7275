"""Promotion on online evidence (`liverank.client.promote`): targets, paired comparison,
decisions on planted better and worse candidates, the symlink flip and the decision log.
Shadow answers never reaching ``recommendations`` is a broker test in
tests/test_service_kafka.py."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from liverank.client.promote import (
    PromotionError,
    compare,
    decide,
    log_decision,
    pair,
    promote,
    targets,
)
from liverank.core import events as ev

STREAMERS = [f"s{i}" for i in range(20)]


def request(rid: int, user: int, step: int) -> ev.RecRequest:
    return ev.RecRequest(event_id=f"req:{rid}", seq=2 * rid, step=step, event_time_ms=0,
                         user=user)


def watch(rid: int, user: int, step: int, streamer: str) -> ev.Watch:
    return ev.Watch(event_id=f"watch:{rid}", seq=2 * rid + 1, step=step, event_time_ms=0,
                    user=user, stream=1, streamer=streamer)


def answer(rid: str, items: list[str], version: str, shadow: bool = False
           ) -> ev.Recommendation:
    return ev.Recommendation(
        event_id=f"rec:{rid}", seq=0, step=0, event_time_ms=0, user=1, request_id=rid,
        trigger="request", produced_ms=None, published_ms=0, model_version=version,
        fallback=False, items=[ev.RecItem(1, s, 1.0, i) for i, s in enumerate(items, 1)],
        shadow=shadow)


def world(n: int, live_hit: float, cand_hit: float, seed: int = 0):  # type: ignore[no-untyped-def]
    """n requests each followed by a watch; each model puts the target first with its own
    probability, else leaves it out."""
    rng = random.Random(seed)
    events: list[ev.UserEvent] = []
    live, shadow = {}, {}
    for r in range(n):
        target = rng.choice(STREAMERS)
        events += [request(r, r % 50, r), watch(r, r % 50, r, target)]
        others = [s for s in STREAMERS if s != target]
        for book, p, version in ((live, live_hit, "live"), (shadow, cand_hit, "cand")):
            items = ([target] + others[:9]) if rng.random() < p else others[:10]
            book[f"req:{r}"] = answer(f"req:{r}", items, version, version == "cand")
    return events, live, shadow


def test_targets_are_the_watch_that_follows_a_request_at_its_step() -> None:
    events = [request(0, 1, 5), watch(0, 1, 5, "a"),  # followed at its step: target a
              request(1, 2, 5), watch(1, 2, 6, "b"),  # the watch is a step later: none
              request(2, 3, 7)]  # never followed
    assert targets(reversed(events)) == {"req:0": "a"}


def test_a_planted_better_candidate_is_promoted_and_a_worse_one_kept() -> None:
    events, live, shadow = world(3000, live_hit=0.30, cand_hit=0.40)
    t = targets(events)
    better = compare(pair(live, shadow, t, 10, "hr"), "hr", 10, resamples=500)
    assert better.n == 3000 and better.candidate_version == "cand"
    assert better.candidate > better.live and better.ci_low > 0
    assert decide(better, min_requests=1000, margin=0.0).promote
    assert not decide(better, min_requests=5000, margin=0.0).promote  # too few pairs
    assert not decide(better, min_requests=1000, margin=0.2).promote  # not by that much

    events, live, shadow = world(3000, live_hit=0.40, cand_hit=0.30, seed=1)
    worse = compare(pair(live, shadow, targets(events), 10, "ndcg"), "ndcg", 10,
                    resamples=500)
    assert worse.ci_high < 0
    kept = decide(worse, min_requests=1000, margin=0.0)
    assert not kept.promote and "no clear win" in kept.reason


def test_equal_models_are_not_promoted() -> None:
    events, live, shadow = world(2000, live_hit=0.35, cand_hit=0.35, seed=2)
    c = compare(pair(live, shadow, targets(events), 10, "hr"), "hr", 10, resamples=500)
    assert c.ci_low <= 0 <= c.ci_high
    assert not decide(c, 100, 0.0).promote


def test_only_requests_answered_by_both_with_a_target_are_paired() -> None:
    events, live, shadow = world(100, 0.5, 0.5)
    del shadow["req:3"], live["req:4"]
    p = pair(live, shadow, targets(events), 10, "hr")
    assert len(p.live) == len(p.candidate) == 98
    empty = compare(pair({}, {}, {}, 10, "hr"), "hr", 10)
    assert empty.n == 0 and not decide(empty, 1, 0.0).promote


def exported(path: Path, version: str) -> Path:
    path.mkdir(parents=True)
    (path / "model.json").write_text(json.dumps({"version": version}))
    return path


def test_promotion_flips_the_live_symlink_and_logs_the_numbers(tmp_path: Path) -> None:
    v1, v2 = exported(tmp_path / "v1", "v1"), exported(tmp_path / "v2", "v2")
    link = tmp_path / "model"
    link.symlink_to(v1)
    before = promote(link, v2)
    assert before == v1.resolve() and link.resolve() == v2.resolve() and link.is_symlink()
    events, live, shadow = world(1500, 0.2, 0.5)
    d = decide(compare(pair(live, shadow, targets(events), 10, "hr"), "hr", 10,
                       resamples=200), 1000, 0.0)
    log = tmp_path / "decisions.jsonl"
    log_decision(log, d, before)
    log_decision(log, d, None)
    lines = [json.loads(x) for x in log.read_text().splitlines()]
    assert len(lines) == 2 and lines[0]["promote"] is True and lines[0]["n"] == 1500
    assert lines[0]["previous_dir"] == str(v1.resolve())
    assert lines[0]["ci_low"] > 0 and lines[0]["candidate_version"] == "cand"


def test_promotion_refuses_a_directory_or_a_non_model(tmp_path: Path) -> None:
    live = exported(tmp_path / "live", "v1")
    with pytest.raises(PromotionError, match="not a symlink"):
        promote(live, exported(tmp_path / "v2", "v2"))
    link = tmp_path / "model"
    link.symlink_to(live)
    (tmp_path / "empty").mkdir()
    with pytest.raises(PromotionError, match="no model.json"):
        promote(link, tmp_path / "empty")
    assert link.resolve() == live.resolve()  # untouched
