"""The fault suite's checker on its own (no broker): it passes right answers and counts
each kind of wrong one, on a hand-made log whose availability is worked out by hand."""

from __future__ import annotations

from pathlib import Path

import pytest
from checker import Answer, check, load_log

from liverank.core import events as ev

pytestmark = [pytest.mark.faults]

# user,stream,streamer,start,stop. Stream 10 (alice): rows 0-3 and 5-8 -> live [0, 8).
# Stream 11 (bob): [2, 4). Stream 12 (bob again, started later): [3, 6): answers for bob
# from step 3. Stream 13 (carol): a zero-length row at 5 -> live [5, 6).
LOG = """user,stream,streamer,start,stop
1,10,alice,0,3
2,11,bob,2,4
1,12,bob,3,6
3,10,alice,5,8
2,13,carol,5,5
"""


def rec(rid: str, user: int, step: int, items: list[tuple[int, str]], **kw: object
        ) -> ev.Recommendation:
    return ev.Recommendation(
        event_id=f"rec:{rid}", seq=0, step=step, event_time_ms=0, user=user, request_id=rid,
        trigger="request", produced_ms=None, published_ms=1_000, model_version="v",
        fallback=False, items=[ev.RecItem(s, n, 1.0 - i / 10, i + 1)
                               for i, (s, n) in enumerate(items)], **kw)


RIGHT = {  # k = 2
    "req:0": rec("req:0", 1, 0, [(10, "alice")]),
    "req:1": rec("req:1", 2, 2, [(11, "bob"), (10, "alice")]),
    "req:2": rec("req:2", 1, 3, [(12, "bob"), (10, "alice")]),
    "req:3": rec("req:3", 3, 5, [(13, "carol"), (10, "alice")]),
    "req:4": rec("req:4", 2, 5, [(12, "bob"), (13, "carol")]),
}


@pytest.fixture
def log_path(tmp_path: Path) -> Path:
    path = tmp_path / "log.csv"
    path.write_text(LOG)
    return path


def answers(*recs: ev.Recommendation) -> list[Answer]:
    return [Answer(r.user % 2, r) for r in recs]


def test_right_answers_pass(log_path: Path) -> None:
    log = load_log(log_path)
    assert log.live(3) == {"alice": 10, "bob": 12}  # the later start answers for bob
    assert log.live(5) == {"alice": 10, "bob": 12, "carol": 13}
    assert log.live(8) == {}
    r = check(log, answers(*RIGHT.values(), RIGHT["req:1"]), k=2, fault_ends_ms=[500])
    assert r.ok and r.answered == 5 and r.duplicated == 1 and r.lost == 0, r.problems
    assert r.recover_s == pytest.approx(0.5)


def test_each_kind_of_wrong_answer_is_counted(log_path: Path) -> None:
    log = load_log(log_path)
    wrong = [
        rec("req:1", 2, 2, [(10, "alice"), (11, "bob")]),  # a duplicate in another order
        rec("req:2", 1, 3, [(11, "bob"), (10, "alice")]),  # bob's older stream
        rec("req:3", 3, 5, [(13, "carol")]),  # 1 item where 2 are live
        rec("req:0", 1, 0, [(10, "alice")], late=True),
        rec("req:9", 1, 0, [(10, "alice")]),  # no such request
    ]
    r = check(log, answers(RIGHT["req:1"], *wrong), k=2)
    assert (r.differing, r.not_live, r.wrong_count, r.late, r.unexpected) == (1, 1, 1, 1, 1)
    assert r.lost == 1 and r.answered == 4  # req:4 never answered
    assert not r.ok
