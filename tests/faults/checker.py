"""An independent checker of the service's answers, for the fault suite.

It recomputes everything it checks from the viewing log itself (the Twitch CSV:
``user,stream,streamer,start,stop``, header optional) with the standard library only; it
uses neither liverank's live index (`LiveStreams`), nor its availability or evaluation
code, nor the replay's timeline. From liverank it takes only what reads the answers:
`liverank.broker.kafka.read_topic` and `liverank.core.events.decode`.

What it recomputes:

* **Requests.** The replay sends one request before every row's watch, with id
  ``req:<row index>`` (rows numbered from 0 in file order; `model/data/timeline.py`:
  ``RecRequest(event_id=f"req:{ref}")`` with ``ref`` the row), for the row's user, at the
  row's start step.
* **Availability** ("broadcast" definition): a stream id is live on
  ``[min start, max end)`` over its rows, where a row's end is ``max(stop, start + 1)`` (a
  row with ``stop == start`` lasts one step, the loader's convention); its streamer is the
  one on its first row in file order. The stream that answers for a streamer at step s is
  its live stream with the latest start (ties: the larger stream id).

What it checks on every answer read from ``recommendations``:

* every request answered (``lost`` = requests without any answer); answers to ids that
  are not requests (``unexpected``), or not of trigger ``request``, or naming another user
  or step than the request, or with ranks not 1..n / scores not descending / a streamer
  twice (``malformed``);
* duplicates (at-least-once) identical: same streams in the same order with the same
  scores (within `TOL`; neighbours whose scores are within `TOL` may swap: float noise
  across batch shapes) — ``differing`` counts requests whose answers disagree;
* every item is the answering stream of its streamer at the request's step
  (``not_live`` counts items), and an answer holds min(k, streamers live at that step)
  items (``wrong_count`` counts answers) — unless the answer says ``stale`` or ``late``
  (counted separately; the fault tests require both to be 0).

``recover_s``: for each fault a test gives an instant for (the end of a fault the service
waits out: a SIGCONT, a broker restart; the start of one the group must get over by
itself: a SIGKILL, a member paused while a peer can take over), the seconds until every
partition of ``recommendations`` answered again after it had an answer built after it
(``published_ms``); the worst over the faults of a test; n/a when nothing was answered
after it (everything was answered before).
"""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from liverank.broker import kafka
from liverank.core import events as ev
from liverank.core.settings import Settings

TOL = 1e-5


# --- the log ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Request:
    user: int
    step: int


@dataclass
class Log:
    """What the CSV says: the requests the replay sends, and who is live at each step."""

    requests: dict[str, Request]
    # step -> {streamer: the stream that answers for it}; steps absent: nobody live
    answering: dict[int, dict[str, int]]
    broadcasts: dict[int, tuple[int, int, str]]  # stream -> (start, end, streamer)

    def live(self, step: int) -> dict[str, int]:
        return self.answering.get(step, {})


def load_log(path: str | Path) -> Log:
    rows: list[tuple[int, int, str, int, int]] = []
    with open(path, newline="") as f:
        for i, rec in enumerate(csv.reader(f)):
            if not rec:
                continue
            if i == 0 and not rec[3].strip().lstrip("-").isdigit():
                continue  # a header line
            user, stream, streamer, start, stop = rec[:5]
            rows.append((int(user), int(stream), streamer, int(start), int(stop)))
    requests = {f"req:{i}": Request(user, start)
                for i, (user, _, _, start, _) in enumerate(rows)}
    # Broadcasts: [min start, max end) per stream id; streamer of its first row.
    casts: dict[int, list[object]] = {}
    for _, stream, streamer, start, stop in rows:
        end = max(stop, start + 1)
        c = casts.get(stream)
        if c is None:
            casts[stream] = [start, end, streamer]
        else:
            c[0] = min(c[0], start)  # type: ignore[call-overload]
            c[1] = max(c[1], end)  # type: ignore[call-overload]
    answering: dict[int, dict[str, int]] = {}
    best: dict[int, dict[str, tuple[int, int]]] = {}  # step -> streamer -> (start, stream)
    for stream, (start, end, streamer) in casts.items():
        for step in range(start, end):  # type: ignore[call-overload]
            at = best.setdefault(step, {})
            key = (start, stream)
            if streamer not in at or key > at[streamer]:  # type: ignore[operator]
                at[streamer] = key  # type: ignore[index,assignment]
    for step, at in best.items():
        answering[step] = {name: stream for name, (_, stream) in at.items()}
    return Log(requests, answering,
               {stream: (int(c[0]), int(c[1]), str(c[2]))  # type: ignore[call-overload]
                for stream, c in casts.items()})


# --- the answers ------------------------------------------------------------------------------
@dataclass(frozen=True)
class Answer:
    partition: int
    rec: ev.Recommendation


def read_answers(settings: Settings, timeout_s: float = 30.0) -> list[Answer]:
    msgs = kafka.read_topic(settings, settings.topic(kafka.RECOMMENDATIONS),
                            timeout_s=timeout_s)
    out = []
    for m in msgs:
        rec = ev.decode(m.value(), ev.Recommendation)
        assert isinstance(rec, ev.Recommendation)
        out.append(Answer(int(m.partition() or 0), rec))
    return out


# --- the check -------------------------------------------------------------------------------
@dataclass
class Result:
    requests: int = 0
    answered: int = 0
    answers: int = 0  # records read, duplicates included
    lost: int = 0
    duplicated: int = 0  # requests answered more than once
    differing: int = 0  # ... whose answers are not the same
    near_ties: int = 0  # ... whose answers are the same only up to float noise (TOL)
    not_live: int = 0  # items not the answering stream of their streamer at the step
    wrong_count: int = 0  # answers without min(k, live streamers) items
    stale: int = 0
    late: int = 0
    unexpected: int = 0  # answers to ids that are not requests of the log
    malformed: int = 0
    recover_s: float | None = None
    problems: list[str] = field(default_factory=list)  # the first few, for the message

    def note(self, text: str) -> None:
        if len(self.problems) < 10:
            self.problems.append(text)

    @property
    def ok(self) -> bool:
        return (self.lost == self.differing == self.not_live == self.wrong_count == 0
                and self.stale == self.late == self.unexpected == self.malformed == 0)

    def line(self, fault: str, runs: int = 1) -> str:
        rec = "n/a" if self.recover_s is None else f"{self.recover_s:.1f}"
        return (f"fault={fault} runs={runs} lost={self.lost} duplicated={self.duplicated} "
                f"differing={self.differing} recover_s={rec} near_ties={self.near_ties} "
                f"requests={self.requests} "
                f"answered={self.answered} answers={self.answers} not_live={self.not_live} "
                f"wrong_count={self.wrong_count} stale={self.stale} late={self.late} "
                f"unexpected={self.unexpected} malformed={self.malformed}")

    def as_json(self, fault: str, runs: int = 1, **extra: object) -> str:
        d = {"fault": fault, "runs": runs, **asdict(self), **extra}
        d.pop("problems")
        return json.dumps(d, sort_keys=True)


def same_answer(a: ev.Recommendation, b: ev.Recommendation) -> bool:
    """Same streams in the same order with the same scores, up to float noise: a position
    may hold another item only if both scores there are within TOL of each other and the
    item sits in the other answer with a score within TOL (a swap of near-ties, or a
    near-tie at the k-th place)."""
    if len(a.items) != len(b.items):
        return False
    where = {(i.stream, i.streamer): i.score for i in b.items}
    for x, y in zip(a.items, b.items, strict=True):
        if abs(x.score - y.score) > TOL:
            return False
        if (x.stream, x.streamer) == (y.stream, y.streamer):
            continue
        other = where.get((x.stream, x.streamer))
        if other is None:
            if abs(x.score - b.items[-1].score) > TOL:  # not a tie at the k-th place
                return False
        elif abs(other - x.score) > TOL:
            return False
    return True


def check(log: Log, answers: Sequence[Answer], k: int,
          fault_ends_ms: Sequence[int] = ()) -> Result:
    r = Result(requests=len(log.requests), answers=len(answers))
    by_id: dict[str, list[ev.Recommendation]] = {}
    for a in answers:
        by_id.setdefault(a.rec.request_id, []).append(a.rec)
    for rid, recs in by_id.items():
        req = log.requests.get(rid)
        if req is None:
            r.unexpected += len(recs)
            r.note(f"answer to {rid!r}, not a request of the log")
            continue
        r.answered += 1
        if len(recs) > 1:
            r.duplicated += 1
            if not all(same_answer(recs[0], other) for other in recs[1:]):
                r.differing += 1
                r.note(f"{rid}: duplicates differ: "
                       + " | ".join(str([(i.streamer, round(i.score, 6)) for i in x.items])
                                    for x in recs))
            elif any(other.items != recs[0].items for other in recs[1:]):
                r.near_ties += 1
        for rec in recs:
            _check_one(log, req, rec, k, r)
    r.lost = sum(1 for rid in log.requests if rid not in by_id)
    if r.lost:
        r.note(f"{r.lost} requests unanswered, e.g. "
               f"{sorted(set(log.requests) - set(by_id))[:5]}")
    r.recover_s = recover_seconds(answers, fault_ends_ms)
    return r


def _check_one(log: Log, req: Request, rec: ev.Recommendation, k: int, r: Result) -> None:
    rid = rec.request_id
    scores = [i.score for i in rec.items]
    if (rec.trigger != "request" or rec.user != req.user or rec.step != req.step
            or [i.rank for i in rec.items] != list(range(1, len(rec.items) + 1))
            or any(a < b for a, b in zip(scores, scores[1:], strict=False))
            or len({i.streamer for i in rec.items}) != len(rec.items)):
        r.malformed += 1
        r.note(f"{rid}: malformed (trigger={rec.trigger} user={rec.user}/{req.user} "
               f"step={rec.step}/{req.step} items={rec.items})")
    if rec.stale or rec.late:
        r.stale += rec.stale
        r.late += rec.late
        r.note(f"{rid}: marked stale={rec.stale} late={rec.late}")
        return  # such an answer may miss streams: not checked against the live set
    live = log.live(req.step)
    for item in rec.items:
        if live.get(item.streamer) != item.stream:
            r.not_live += 1
            r.note(f"{rid}: step {req.step}: {item.streamer}/{item.stream} is not live "
                   f"(answering stream {live.get(item.streamer)})")
    if len(rec.items) != min(k, len(live)):
        r.wrong_count += 1
        r.note(f"{rid}: step {req.step}: {len(rec.items)} items, want "
               f"min({k}, {len(live)})")


def recover_seconds(answers: Sequence[Answer], fault_ends_ms: Sequence[int]) -> float | None:
    """For each fault end: the time until every partition answered again after it (only
    partitions answered before the next fault end count); the worst over the faults."""
    if not fault_ends_ms:
        return None
    ends = sorted(fault_ends_ms)
    worst: float | None = None
    for i, end in enumerate(ends):
        nxt = ends[i + 1] if i + 1 < len(ends) else None
        first: dict[int, int] = {}
        for a in answers:
            t = a.rec.published_ms
            if (t >= end and (nxt is None or t < nxt)
                    and (a.partition not in first or t < first[a.partition])):
                first[a.partition] = t
        if first:
            took = (max(first.values()) - end) / 1000
            worst = took if worst is None else max(worst, took)
    return worst


# --- reporting -------------------------------------------------------------------------------
def report(result: Result, fault: str, report_file: str | None, runs: int = 1,
           **extra: object) -> str:
    """The one-line summary (printed by the caller) and, when ``report_file`` is set, one
    JSON line appended to it."""
    line = result.line(fault, runs)
    if report_file:
        with open(report_file, "a") as f:
            f.write(result.as_json(fault, runs, **extra) + "\n")
    return line
