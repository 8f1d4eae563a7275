"""The Faust agent in Faust's test context (no broker): answers, dead letters, metrics,
event-time waiting, model swap, changelog partitions, and the torch-free serving path."""

from __future__ import annotations

import asyncio
import functools
import hashlib
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import faust
import numpy as np
import pytest
from faust.types import TP
from prometheus_client import generate_latest

from liverank.broker.clients import PublishError
from liverank.core import events as ev
from liverank.core.settings import Settings
from liverank.model.data import timeline as tl
from liverank.model.data.live import LiveStreams
from liverank.model.data.synth import generate
from liverank.model.data.twitch import Interactions
from liverank.model.features import ItemIndex, TimeEncoding
from liverank.model.scorer import ModelScorer, RankRequest
from liverank.services.app import SEAL_KEY, Service
from liverank.services.state import UserWindows, answer_batch, plan_batch
from liverank.services.testing import FakeScorer, MemoryPublisher, load_fake_model, write_fake_model

PREFIX = "t."
RECS, DEAD = f"{PREFIX}recommendations", f"{PREFIX}dead-letters"


@functools.lru_cache(maxsize=1)
def tiny() -> Interactions:
    return generate("tiny", seed=0)


def settings(**kw: Any) -> Settings:
    base: dict[str, Any] = {"kafka_bootstrap": "127.0.0.1:1", "broker_kind": "kafka",
                            "store": "memory://", "topic_prefix": PREFIX,
                            "batch_wait_ms": 2.0, "partitions": 4}
    return Settings(**(base | kw))


def service(scorer: Any = None, live: LiveStreams | None = None, model_dir: str | None = None,
            **kw: Any) -> tuple[Service, MemoryPublisher]:
    pub = MemoryPublisher()
    live = live if live is not None else LiveStreams(partitions=1, stopped_horizon=10_000)
    # Faust's test context numbers offsets across partitions: no offset checks here (the
    # guard is tested on the broker, tests/test_service_kafka.py).
    svc = Service(settings(**kw), scorer or FakeScorer(window_len=5), publisher=pub,
                  live=live, model_dir=model_dir, load=load_fake_model, web=False,
                  guard_consumer=False)
    return svc, pub


def split_timeline(t: tl.Timeline) -> tuple[list[ev.Event], list[ev.UserEvent]]:
    users = [e for e in t if isinstance(e, ev.Watch | ev.RecRequest)]
    stream = [e for e in t if not isinstance(e, ev.Watch | ev.RecRequest)]
    return stream, users  # type: ignore[return-value]


def decoded(pub: MemoryPublisher, topic: str, type_: Any) -> list[Any]:
    return [ev.decode(v, type_) for _, v in pub.sent.get(topic, [])]


async def wait_for(cond: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not met in time")
        await asyncio.sleep(0.01)


async def put_all(agent: Any, users: Sequence[ev.UserEvent], partitions: int = 4) -> None:
    for e in users:
        await agent.put(ev.encode(e), key=ev.user_key(e.user), partition=e.user % partitions,
                        headers=[("produced_ms", b"%d" % (1000 + e.seq))], wait=False)


def metric(svc: Service, name: str, **labels: str) -> float:
    value = svc.metrics.registry.get_sample_value(name, labels or None)
    return 0.0 if value is None else value


async def serve_tiny(scorer: Any = None) -> tuple[Service, MemoryPublisher, list[ev.Event],
                                                list[ev.UserEvent], int]:
    """The tiny timeline through a service in Faust's test context, until every request is
    answered: (service, publisher, stream events, user events, requests)."""
    stream, users = split_timeline(tl.build_timeline(tiny()))
    svc, pub = service(scorer)
    for e in stream:
        svc.live.apply(e, 0)  # type: ignore[union-attr, arg-type]
    async with svc.agent.test_context() as agent:
        await put_all(agent, users)
        n_req = sum(isinstance(e, ev.RecRequest) for e in users)
        await wait_for(lambda: len(pub.sent.get(RECS, [])) >= n_req)
    return svc, pub, stream, users, n_req


async def offline_answers(stream: Sequence[ev.Event], users: Sequence[ev.UserEvent],
                          scorer: Any) -> list[ev.Recommendation]:
    """The reference: the state classes straight over the timeline, one batch."""
    ref_live = LiveStreams(partitions=1, stopped_horizon=10_000)
    for e in stream:
        ref_live.apply(e, 0)  # type: ignore[arg-type]
    jobs = plan_batch([(ev.user_key(e.user), e, 1000 + e.seq) for e in users],
                      UserWindows({}, length=5, slack=8))
    return await answer_batch(jobs, ref_live, scorer, k=10, now_ms=lambda: 0)


async def test_every_request_gets_the_offline_answer_once() -> None:
    svc, pub, stream, users, n_req = await serve_tiny()
    recs = decoded(pub, RECS, ev.Recommendation)
    ref = await offline_answers(stream, users, FakeScorer(window_len=5))
    want = {r.request_id: r for r in ref}
    assert len(recs) == n_req == len(want)
    assert {r.request_id for r in recs} == set(want)
    for r in recs:
        w = want[r.request_id]
        assert r.items == w.items and r.fallback == w.fallback and r.step == w.step
        assert r.produced_ms == 1000 + r.seq and r.published_ms > 0 and not r.late
        assert r.model_version == "fake-1"
    assert metric(svc, "liverank_answers_total", trigger="request") == n_req
    assert metric(svc, "liverank_events_in_total", topic=f"{PREFIX}user-events",
                  kind="watch") == len(users) - n_req
    assert metric(svc, "liverank_produce_to_publish_seconds_count") == n_req
    assert svc.windows.created == len({e.user for e in users})


async def test_window_records_go_to_the_users_partition_then_a_seal() -> None:
    stream, users = split_timeline(tl.build_timeline(tiny()))
    svc, pub = service()
    for e in stream:
        svc.live.apply(e, 0)  # type: ignore[union-attr, arg-type]
    changelog = f"{PREFIX}liverank-service-windows-changelog"
    async with svc.agent.test_context() as agent:
        await put_all(agent, users[:300])
        await wait_for(lambda: len(pub.sent.get(RECS, [])) >= 150)
        await wait_for(lambda: any(k == SEAL_KEY for k, _ in pub.sent.get(changelog, [])))
    records = list(zip(pub.sent[changelog], pub.partitions[changelog], strict=True))
    for (key, _value), partition in records:
        if key != SEAL_KEY:
            assert partition == int(key) % 4  # put_all placed user u on partition u % 4
            assert svc.table.data[key] is not None
    # Every partition written to is sealed after its records.
    last_seal = {p: i for i, ((k, _), p) in enumerate(records) if k == SEAL_KEY}
    for i, ((key, _), p) in enumerate(records):
        if key != SEAL_KEY:
            assert last_seal[p] > i


HOSTILE: list[tuple[bytes, bytes | None, str]] = [
    (b"\xff\xfe not json", b"1", "undecodable"),
    (b'{"kind":"watch","event_id":"w","seq":1,"step":"x","event_time_ms":0,"user":1,'
     b'"stream":2,"streamer":"a"}', b"1", "wrong_type"),
    (b'{"kind":"watch","event_id":"w","seq":1,"step":1,"event_time_ms":0,"user":1}', b"1",
     "missing_field"),
    (b'{"kind":"teleport","event_id":"w","seq":1,"step":1,"event_time_ms":0}', b"1",
     "unknown_kind"),
    (b'{"kind":"stream_start","event_id":"s","seq":1,"step":1,"event_time_ms":0,'
     b'"stream":5,"streamer":"a"}', b"1", "unknown_kind"),  # a stream event on user-events
    (ev.encode(ev.Watch(event_id="w:neg", seq=5, step=-3, event_time_ms=0, user=1, stream=2,
                        streamer="a")), b"1", "negative_step"),
    (ev.encode(ev.RecRequest(event_id="r:far", seq=6, step=10**6, event_time_ms=0, user=1)),
     b"1", "beyond_horizon"),
    (ev.encode(ev.RecRequest(event_id="r:key", seq=7, step=3, event_time_ms=0, user=1)),
     b"2", "wrong_key"),  # keyed as another user: would land in the wrong partition
]


async def test_hostile_inputs_become_dead_letters_and_leave_state_alone() -> None:
    stream, users = split_timeline(tl.build_timeline(tiny()))
    svc, pub = service()
    for e in stream:
        svc.live.apply(e, 0)  # type: ignore[union-attr, arg-type]
    good = users[:40]
    async with svc.agent.test_context() as agent:
        await put_all(agent, good[:20])
        for value, key, _ in HOSTILE:
            await agent.put(value, key=key, partition=1, wait=False)
        await put_all(agent, good[20:])
        n_req = sum(isinstance(e, ev.RecRequest) for e in good)
        await wait_for(lambda: len(pub.sent.get(RECS, [])) >= n_req
                       and len(pub.sent.get(DEAD, [])) >= len(HOSTILE))
    letters = decoded(pub, DEAD, ev.DeadLetter)
    assert [d.original for d in letters] == [v for v, _, _ in HOSTILE]
    assert all(d.topic == f"{PREFIX}user-events" and d.reason for d in letters)
    assert "at `$.step`" in letters[1].reason and "`stream`" in letters[2].reason
    assert "not the user's key" in letters[7].reason
    assert len({d.event_id for d in letters}) == len(letters)
    text = generate_latest(svc.metrics.registry).decode()
    for _, _, kind in HOSTILE:
        assert f'reason="{kind}"' in text
    assert metric(svc, "liverank_dead_letters_total", topic=f"{PREFIX}user-events",
                  reason="unknown_kind") == 2
    # State: the same windows and answers as without the hostile records.
    clean, clean_pub = service()
    for e in stream:
        clean.live.apply(e, 0)  # type: ignore[union-attr, arg-type]
    async with clean.agent.test_context() as agent:
        await put_all(agent, good)
        await wait_for(lambda: len(clean_pub.sent.get(RECS, [])) >= n_req)
    assert dict(svc.table.data.items()) == dict(clean.table.data.items())
    got = sorted((r.request_id, r.items) for r in decoded(pub, RECS, ev.Recommendation))
    assert got == sorted((r.request_id, r.items)
                         for r in decoded(clean_pub, RECS, ev.Recommendation))
    assert svc.clock.newest == max(e.step for e in good)  # refused steps were not recorded


async def test_requests_wait_for_every_partitions_watermark_or_go_out_late() -> None:
    live = LiveStreams(partitions=2)
    svc, pub = service(live=live, watermark_wait_ms=300.0)
    start = ev.StreamStart(event_id="start:9", seq=0, step=5, event_time_ms=0, stream=9,
                           streamer="a")
    req = ev.RecRequest(event_id="req:1", seq=10, step=5, event_time_ms=0, user=7)
    svc.on_stream_records([(0, 0, ev.encode(start))])
    async with svc.agent.test_context() as agent:
        svc.on_stream_records([(0, 1, ev.encode(ev.Watermark(event_id="wm:5", seq=1, step=5,
                                                             event_time_ms=0)))])
        await agent.put(ev.encode(req), key=b"7", wait=False)
        await asyncio.sleep(0.1)
        assert RECS not in pub.sent  # partition 1 has not reached step 5
        svc.on_stream_records([(1, 0, ev.encode(ev.Watermark(event_id="wm:6", seq=2, step=6,
                                                             event_time_ms=0)))])
        await wait_for(lambda: len(pub.sent.get(RECS, [])) == 1)
        on_time = decoded(pub, RECS, ev.Recommendation)[0]
        assert not on_time.late and [i.stream for i in on_time.items] == [9]
        # Step 8: no watermark comes; answered after the bounded wait, counted late.
        t0 = time.monotonic()
        late_req = ev.RecRequest(event_id="req:2", seq=20, step=8, event_time_ms=0, user=7)
        await agent.put(ev.encode(late_req), key=b"7", wait=False)
        await wait_for(lambda: len(pub.sent.get(RECS, [])) == 2)
        assert time.monotonic() - t0 >= 0.25
    late = decoded(pub, RECS, ev.Recommendation)[1]
    assert late.late and late.request_id == "req:2"
    assert metric(svc, "liverank_late_requests_total") == 1


async def test_watch_trigger_answers_exclude_the_watched_streamer() -> None:
    stream, users = split_timeline(tl.build_timeline(tiny()))
    svc, pub = service(recommend_on_watch=True)
    for e in stream:
        svc.live.apply(e, 0)  # type: ignore[union-attr, arg-type]
    async with svc.agent.test_context() as agent:
        await put_all(agent, users[:200])
        await wait_for(lambda: len(pub.sent.get(RECS, [])) >= 200)
    recs = decoded(pub, RECS, ev.Recommendation)
    watches = {e.event_id: e for e in users[:200] if isinstance(e, ev.Watch)}
    by_trigger = [r for r in recs if r.trigger == "watch"]
    assert len(by_trigger) == len(watches)
    for r in by_trigger:
        assert watches[r.request_id].streamer not in {i.streamer for i in r.items}


async def test_model_swap_by_symlink_flip_is_picked_up_and_named_in_answers(
        tmp_path: Path) -> None:
    v1, v2 = write_fake_model(tmp_path / "v1", "fake-v1"), write_fake_model(tmp_path / "v2",
                                                                             "fake-v2")
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "model.json").write_text('{"format": "liverank-model/1"}')
    current = tmp_path / "current"
    current.symlink_to(v1)
    stream, users = split_timeline(tl.build_timeline(tiny()))
    svc, pub = service(scorer=load_fake_model(current), model_dir=str(current))
    for e in stream:
        svc.live.apply(e, 0)  # type: ignore[union-attr, arg-type]
    half = len(users) // 2
    n1 = sum(isinstance(e, ev.RecRequest) for e in users[:half])
    async with svc.agent.test_context() as agent:
        await put_all(agent, users[:half])
        await wait_for(lambda: len(pub.sent.get(RECS, [])) >= n1)
        assert not await svc.check_model()  # nothing changed
        flip = tmp_path / "flip"
        flip.symlink_to(broken)
        os.replace(flip, current)  # atomic: a directory that does not load
        assert not await svc.check_model()
        assert svc.scorer.version == "fake-v1"
        assert metric(svc, "liverank_model_swap_failures_total") == 1
        flip.symlink_to(v2)
        os.replace(flip, current)
        assert await svc.check_model()
        await put_all(agent, users[half:])
        n = sum(isinstance(e, ev.RecRequest) for e in users)
        await wait_for(lambda: len(pub.sent.get(RECS, [])) >= n)
    recs = decoded(pub, RECS, ev.Recommendation)
    assert len(recs) == len({r.request_id for r in recs}) == n
    assert {r.model_version for r in recs[:n1]} == {"fake-v1"}
    assert {r.model_version for r in recs[n1:]} == {"fake-v2"}
    assert metric(svc, "liverank_model_swaps_total") == 1
    assert metric(svc, "liverank_model_info", version="fake-v2") == 1
    assert str(v1) != str(v2)


def test_load_scorer_names_a_bad_model_directory(tmp_path: Path) -> None:
    from liverank.model.scorer import ModelDirError, load_scorer

    with pytest.raises(ModelDirError, match="no model.json"):
        load_scorer(tmp_path)


def test_the_serving_path_never_imports_torch_or_pandas() -> None:
    code = ("import sys\n"
            "import liverank.services.app, liverank.services.serve\n"
            "import liverank.broker.clients, liverank.model.scorer\n"
            "from liverank.services.app import Service\n"
            "bad = [m for m in sys.modules if m.split('.')[0] in ('torch', 'pandas')]\n"
            "assert not bad, bad\n"
            "print('ok')\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


def test_fake_scorer_cache_keeps_rankings_and_stays_bounded() -> None:
    stream, users = split_timeline(tl.build_timeline(tiny()))
    live = LiveStreams(partitions=1, stopped_horizon=10_000)
    for e in stream:
        live.apply(e, 0)  # type: ignore[arg-type]
    jobs = plan_batch([(ev.user_key(e.user), e, None) for e in users],
                      UserWindows({}, length=5, slack=8), recommend_on_watch=True)
    from liverank.services.state import rank_inputs

    requests, _ = rank_inputs(jobs, live)
    cached = FakeScorer(window_len=5)
    first = cached.rank(requests, 10)
    assert cached.rank(requests, 10) == first  # answered from the cache
    fresh = [FakeScorer(window_len=5).rank([r], 10)[0] for r in requests]
    assert first == fresh
    assert len(cached._sets) <= FakeScorer.CACHE_SIZE


def test_faust_sensor_skips_per_message_hooks_and_metrics_keep_faust_families() -> None:
    from liverank.services.faustcompat import LeanPrometheusMonitor

    svc, _ = service()
    monitor = svc.app.monitor
    assert isinstance(monitor, LeanPrometheusMonitor)
    before = generate_latest(svc.metrics.registry)
    monitor.on_message_in(tl_tp(), 1, None)
    monitor.on_message_out(tl_tp(), 1, None)
    assert generate_latest(svc.metrics.registry) == before  # nothing counted per message
    text = before.decode()
    assert "faust_" in text and "liverank_answers_total" in text


def tl_tp() -> Any:
    from faust.types import TP

    return TP(f"{PREFIX}user-events", 0)


def test_publisher_that_cannot_reach_the_broker_says_so() -> None:
    from liverank.broker import kafka
    from liverank.broker.clients import KafkaPublisher, PublishError

    publisher = KafkaPublisher(kafka.producer_config(settings(kafka_timeout_s=1.0)))
    try:
        with pytest.raises(PublishError, match="cannot reach the broker"):
            publisher.connect(1.0)
    finally:
        publisher.close()


# --- failure paths ---------------------------------------------------------------------------
class FailingPublisher(MemoryPublisher):
    """Delivers the first ``good`` publish calls, then the broker refuses everything (a
    batch makes two: its answers and window records, then the changelog seals)."""

    def __init__(self, good: int) -> None:
        super().__init__()
        self.good = good

    def publish(self, messages: Sequence[Any]) -> asyncio.Future[Any]:
        if self.good > 0:
            self.good -= 1
            return super().publish(messages)
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        fut.set_exception(PublishError("the broker did not acknowledge a message: boom"))
        return fut


async def run_until_crash(svc: Service, users: Sequence[ev.UserEvent]
                          ) -> tuple[list[BaseException], list[Any]]:
    """Feed ``users`` to a worker whose stream events are applied, until it crashes; returns
    what it crashed with and every event it acked."""
    crashed: list[BaseException] = []

    async def crash(exc: BaseException) -> None:
        crashed.append(exc)

    svc.app.crash = crash  # type: ignore[method-assign]
    acked: list[Any] = []
    async with svc.agent.test_context() as agent:
        real_ack = svc._ack

        async def spy(events: list[Any]) -> None:
            acked.extend(events)
            await real_ack(events)

        svc._ack = spy  # type: ignore[method-assign]
        await put_all(agent, users)
        await wait_for(lambda: bool(crashed))
        await svc._acks.drain()
    return crashed, acked


async def test_a_publish_failure_stops_acking_and_crashes_the_worker() -> None:
    stream, users = split_timeline(tl.build_timeline(tiny()))
    pub = FailingPublisher(good=2)
    svc = Service(settings(batch_size=8), FakeScorer(window_len=5), publisher=pub,
                  live=LiveStreams(partitions=1, stopped_horizon=10_000), web=False,
                  guard_consumer=False)
    for e in stream:
        svc.live.apply(e, 0)  # type: ignore[union-attr, arg-type]
    crashed, acked = await run_until_crash(svc, users[:64])
    assert isinstance(crashed[0], PublishError) and "boom" in str(crashed[0])
    assert isinstance(svc._acks.failed, PublishError)
    assert 0 < len(acked) <= 8  # the delivered first batch only; nothing after the failure
    assert len(pub.sent.get(RECS, [])) <= 8
    # Only delivered answers are counted.
    delivered = len(pub.sent.get(RECS, []))
    assert metric(svc, "liverank_answers_total", trigger="request") == delivered


class ThreadNotingScorer(ModelScorer):
    """A model scorer whose "model" scores a candidate by its item id, noting the thread
    each step of `Scoring` runs on."""

    def __init__(self, names: Sequence[str]):
        index = ItemIndex(tuple(sorted(set(names))), np.ones(len(set(names)), dtype=np.int64))
        super().__init__(index, 5, TimeEncoding(), "noting-1")
        self.threads: dict[str, set[str]] = {"inputs": set(), "forward": set()}

    def window_inputs(self, requests: Any) -> dict[str, np.ndarray]:
        self.threads["inputs"].add(threading.current_thread().name)
        return super().window_inputs(requests)

    def candidate_inputs(self, requests: Any, sets: Any, share: Any = None
                         ) -> dict[str, np.ndarray]:
        self.threads["inputs"].add(threading.current_thread().name)
        return super().candidate_inputs(requests, sets, share)

    def _forward(self, inputs: dict[str, np.ndarray]) -> np.ndarray:
        self.threads["forward"].add(threading.current_thread().name)
        return inputs["cand_items"].astype(np.float32)


async def test_only_the_models_run_leaves_the_event_loop_and_answers_stay_the_offline_ones(
        ) -> None:
    """A model's inputs are built and its scores ranked on the event loop; only the run may
    go to the scoring thread (in the thread, the Python steps waited for the GIL behind the
    loop: `Scoring`). The answers are still those of `scorer.rank` offline."""
    stream, _ = split_timeline(tl.build_timeline(tiny()))
    names = [e.streamer for e in stream if isinstance(e, ev.StreamStart)]
    scorer = ThreadNotingScorer(names)
    svc, pub, stream, users, n_req = await serve_tiny(scorer)
    loop_thread = threading.current_thread().name
    assert scorer.threads["inputs"] == {loop_thread}
    assert scorer.threads["forward"] and all(
        t == loop_thread or t.startswith("liverank-scorer") for t in scorer.threads["forward"])
    ref = await offline_answers(stream, users, ThreadNotingScorer(names))
    want = {r.request_id: (r.items, r.fallback) for r in ref}
    got = {r.request_id: (r.items, r.fallback) for r in decoded(pub, RECS, ev.Recommendation)}
    assert got == want and sum(not fb for _, fb in got.values()) > n_req // 2


async def test_the_model_runs_in_the_thread_only_while_input_is_waiting() -> None:
    """With records waiting in the batcher the run goes to the scoring thread (the loop
    prepares them meanwhile); with none it runs on the loop, sparing the thread's GIL
    hand-overs. Both give the offline ranking, and the metric says where each ran."""
    stream, users = split_timeline(tl.build_timeline(tiny()))
    names = sorted({e.streamer for e in stream if isinstance(e, ev.StreamStart)})
    window = [(names[0], 1), (names[1], 2)]
    requests = [RankRequest(window, 3, names), RankRequest(window[:1], 4, names[:5])]
    want = ThreadNotingScorer(names).rank(requests, 3)
    scorer = ThreadNotingScorer(names)
    svc, _ = service(scorer)
    loop_thread = threading.current_thread().name

    assert await svc._rank(scorer, requests, 3) == want
    assert scorer.threads["forward"] == {loop_thread}
    assert metric(svc, "liverank_model_runs_total", on="loop") == 1

    scorer.threads["forward"].clear()
    svc._batcher.put(users[0])  # input waiting for the next batch
    assert await svc._rank(scorer, requests, 3) == want
    (thread,) = scorer.threads["forward"]
    assert thread != loop_thread and thread.startswith("liverank-scorer")
    assert metric(svc, "liverank_model_runs_total", on="thread") == 1


async def test_a_backlog_collects_the_young_generation_less_often_and_steady_load_does_not(
        ) -> None:
    """Batches taken while the worker is behind (full ones in a row) are prepared under
    `gc_backlog_threshold` (and counted), a partial one under the interpreter's own
    threshold, and the worker leaves the threshold as it found it when it stops
    (`LoadCollector`)."""
    import gc

    steady = gc.get_threshold()
    stream, users = split_timeline(tl.build_timeline(tiny()))
    svc, pub = service(batch_size=4, gc_backlog_threshold=12_345)
    for e in stream:
        svc.live.apply(e, 0)  # type: ignore[union-attr, arg-type]
    seen: list[tuple[int, int]] = []
    real_prepare = svc.prepare

    async def noting(events: Sequence[Any]) -> Any:
        seen.append((len(events), gc.get_threshold()[0]))
        return await real_prepare(events)

    svc.prepare = noting  # type: ignore[method-assign]
    try:
        async with svc.agent.test_context() as agent:
            await put_all(agent, users)  # queued at once: full batches, then the tail
            n_req = sum(isinstance(e, ev.RecRequest) for e in users)
            await wait_for(lambda: len(pub.sent.get(RECS, [])) >= n_req)
            assert {size for size, _ in seen} > {4}  # full batches and a partial one
            assert all(young == steady[0] for size, young in seen if size < 4), seen
            backlog = sum(young == 12_345 for _, young in seen)
            assert backlog and metric(svc, "liverank_backlog_batches_total") == backlog
        await wait_for(lambda: gc.get_threshold() == steady)
    finally:
        gc.set_threshold(*steady)


def test_the_load_collector_switches_only_the_young_threshold_and_0_leaves_it() -> None:
    import gc

    from liverank.services.app import LoadCollector

    steady = gc.get_threshold()
    try:
        collector = LoadCollector(9_000, streak=3)
        assert not collector.follow(True) and not collector.follow(True)
        assert gc.get_threshold() == steady  # two full batches: a burst, maybe
        assert collector.follow(True)  # the third in a row: behind
        assert gc.get_threshold() == (9_000, *steady[1:])
        assert collector.follow(True)
        assert not collector.follow(False)  # a partial batch: caught up
        assert gc.get_threshold() == steady
        assert not collector.follow(True)  # the count starts again
        off = LoadCollector(0, streak=1)
        assert not off.follow(True)
        assert gc.get_threshold() == steady
    finally:
        gc.set_threshold(*steady)


class FailingScorer(FakeScorer):
    """Ranks ``good`` batches, then raises (a model gone wrong: non-finite scores)."""

    def __init__(self, good: int):
        super().__init__(window_len=5)
        self.good = good

    def score_all(self, requests: Any) -> Any:  # one call per batch, in the scoring thread
        if self.good <= 0:
            raise FloatingPointError("model fake-1 produced non-finite scores")
        self.good -= 1
        return super().score_all(requests)


@pytest.mark.parametrize("scored_batches", [0, 1])
async def test_a_scoring_failure_in_the_finishing_stage_crashes_the_worker(
        scored_batches: int) -> None:
    """The finishing stage (scores -> answers) runs in its own task while the preparing
    stage waits for input: its failure must stop the worker, not leave it hanging, whether
    the failed batch is the first or later ones follow it."""
    stream, users = split_timeline(tl.build_timeline(tiny()))
    n = 8 if scored_batches == 0 else 64  # 0: one batch, nothing after the failed one
    svc = Service(settings(batch_size=8), FailingScorer(good=scored_batches),
                  publisher=MemoryPublisher(),
                  live=LiveStreams(partitions=1, stopped_horizon=10_000), web=False,
                  guard_consumer=False)
    for e in stream:
        svc.live.apply(e, 0)  # type: ignore[union-attr, arg-type]
    crashed, acked = await run_until_crash(svc, users[:n])
    assert isinstance(crashed[0], FloatingPointError)
    answered = {r.request_id for r in decoded(svc.publisher, RECS, ev.Recommendation)}  # type: ignore[arg-type]
    acked_requests = {e.event_id for e in (ev.decode_user_event(a.message.value)
                                           for a in acked) if isinstance(e, ev.RecRequest)}
    asked = {e.event_id for e in users[:n] if isinstance(e, ev.RecRequest)}
    # Every acked request was answered; the failed batch's requests were neither.
    assert acked_requests <= answered < asked
    assert metric(svc, "liverank_answers_total", trigger="request") == len(answered)


async def test_events_of_revoked_partitions_are_dropped_not_answered() -> None:
    _, users = split_timeline(tl.build_timeline(tiny()))
    pub = MemoryPublisher()
    live = LiveStreams(partitions=1, stopped_horizon=10_000)
    svc = Service(settings(), FakeScorer(window_len=5), publisher=pub, live=live, web=False)
    topic = f"{PREFIX}user-events"
    requests = [e for e in users if isinstance(e, ev.RecRequest)][:40]

    def event(e: ev.UserEvent, offset: int) -> Any:
        msg = faust.types.Message(topic, e.user % 4, offset, 0.0, 0, {}, ev.user_key(e.user),
                                  ev.encode(e), None)
        return faust.Event(svc.app, msg.key, msg.value, {}, msg)

    events = [event(e, i) for i, e in enumerate(requests)]
    svc._owned.assigned([TP(topic, 0), TP(topic, 1)])  # type: ignore[union-attr]
    svc._owned.revoked([TP(topic, 1)])  # type: ignore[union-attr]
    live.advance(0, 10**6)
    out = (await svc.handle(events)).out
    answered = {ev.decode(v, ev.Recommendation).user for t, _, v, _ in out if t == RECS}
    kept = {e.user for e in requests if e.user % 4 == 0}
    assert kept and answered == kept  # partitions 1-3 are not ours: dropped, not answered


def test_a_gap_that_cannot_be_read_back_stops_the_worker_loudly() -> None:
    from confluent_kafka import KafkaException

    from liverank.services.gaps import Gap, GapGuard

    app = faust.App("gap-timeout", broker="kafka://127.0.0.1:1", store="memory://",
                    autodiscover=False, web_enabled=False)
    guard = GapGuard(app.consumer, "user-events", settings(kafka_timeout_s=1.0), "g")
    start = time.monotonic()
    with pytest.raises(KafkaException, match="could not read back"):
        guard.read_back(Gap(TP("user-events", 0), 3, 5), timeout_s=1.0)
    assert time.monotonic() - start < 10


async def test_a_stream_event_beyond_the_future_horizon_is_dead_lettered() -> None:
    pub = MemoryPublisher()
    live = LiveStreams(partitions=1, stopped_horizon=10_000)
    svc = Service(settings(future_horizon=100), FakeScorer(window_len=5), publisher=pub,
                  live=live, web=False, guard_consumer=False)
    start = ev.StreamStart(event_id="start:1", seq=0, step=5, event_time_ms=0, stream=1,
                           streamer="a")
    wm = ev.Watermark(event_id="wm:5", seq=1, step=5, event_time_ms=0)
    far = ev.Watermark(event_id="wm:5000", seq=2, step=5000, event_time_ms=0)
    svc.on_stream_records([(0, 0, ev.encode(start)), (0, 1, ev.encode(wm)),
                           (0, 2, ev.encode(far)), (0, 3, b"\xff")])
    await asyncio.sleep(0)
    assert live.watermark == 5  # the far watermark did not move event time
    letters = decoded(pub, DEAD, ev.DeadLetter)
    assert [d.event_id for d in letters] == [f"dead:{PREFIX}stream-events:0:2",
                                             f"dead:{PREFIX}stream-events:0:3"]
    assert letters[0].step == 5000 and "beyond the newest" in letters[0].reason
    assert metric(svc, "liverank_dead_letters_total", topic=f"{PREFIX}stream-events",
                  reason="beyond_horizon") == 1
    assert metric(svc, "liverank_dead_letters_total", topic=f"{PREFIX}stream-events",
                  reason="undecodable") == 1


async def test_a_huge_poison_record_is_dead_lettered_small_and_the_records_behind_it_apply(
        ) -> None:
    pub = MemoryPublisher()
    live = LiveStreams(partitions=1, stopped_horizon=10_000)
    svc = Service(settings(), FakeScorer(window_len=5), publisher=pub, live=live, web=False,
                  guard_consumer=False)
    huge = b'{"kind":"stream_start","streamer":"' + b"x" * 900_000 + b'"}'
    start = ev.StreamStart(event_id="start:1", seq=0, step=5, event_time_ms=0, stream=1,
                           streamer="a")
    wm = ev.Watermark(event_id="wm:5", seq=1, step=5, event_time_ms=0)
    svc.on_stream_records([(0, 0, huge), (0, 1, ev.encode(start)), (0, 2, ev.encode(wm))])
    await asyncio.sleep(0)
    assert live.watermark == 5 and live.candidates(5).streams == {"a": 1}
    (letter,) = decoded(pub, DEAD, ev.DeadLetter)
    raw = ev.encode(letter)
    assert len(raw) < 64 * 1024  # fits any broker's message limit
    assert letter.truncated and letter.original_size == len(huge)
    assert letter.original == huge[: ev.DEAD_LETTER_PAYLOAD]
    assert letter.original_sha256 == hashlib.sha256(huge).hexdigest()
    assert (letter.partition, letter.offset) == (0, 0)
    assert metric(svc, "liverank_dead_letters_total", topic=f"{PREFIX}stream-events",
                  reason="too_large") == 1


async def test_a_message_the_client_refuses_fails_the_publish_and_is_counted() -> None:
    from liverank.broker import kafka
    from liverank.broker.clients import KafkaPublisher

    failures: list[int] = []
    publisher = KafkaPublisher(kafka.producer_config(settings(kafka_timeout_s=1.0)),
                               on_failure=lambda: failures.append(1))
    try:
        fut = publisher.publish([("t", b"k", b"x" * 2_000_000, None),  # > message.max.bytes
                                 ("t", b"k", b"y", None)])
        with pytest.raises(PublishError, match="(?i)too large"):
            await asyncio.wait_for(fut, 5)
        assert len(failures) == 2  # the refused one and the one never sent after it
    finally:
        publisher.close()
