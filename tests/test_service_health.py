"""Liveness, readiness and broker outages: the rules of `liverank.services.health`, on a
fake clock, and the worker's broker timer on a broker that is not there."""

from __future__ import annotations

from liverank.core.settings import Settings
from liverank.model.data.live import LiveStreams
from liverank.services.app import Service
from liverank.services.health import BrokerWatch, Health
from liverank.services.testing import FakeScorer, MemoryPublisher


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def ready(h: Health, broker: BrokerWatch, **kw: bool) -> bool:
    state = {"live_index": True, "recovered": True, "rebalancing": False, "serving": True}
    return h.readiness(broker=broker, **(state | kw))[0]


def test_an_outage_is_waited_out_until_its_limit() -> None:
    clock = Clock()
    watch = BrokerWatch(outage_timeout_s=60, clock=clock)
    assert watch.up and watch.outage_s() == 0
    assert not watch.failed("connection refused")
    clock.t += 30
    assert not watch.failed("connection refused") and not watch.up
    assert watch.outage_s() == 30
    watch.ok()  # back before the limit: the outage is forgotten
    assert watch.up and watch.failures == 0
    assert not watch.failed("timed out")
    clock.t += 61
    assert watch.failed("timed out")
    assert "LIVERANK_OUTAGE_TIMEOUT_S=60" in watch.give_up_message()
    assert "timed out" in watch.give_up_message()


def test_readiness_needs_every_condition_and_a_broker() -> None:
    clock = Clock()
    h, broker = Health(stall_s=60, clock=clock), BrokerWatch(300, clock=clock)
    assert ready(h, broker)
    for cond in ({"live_index": False}, {"recovered": False}, {"rebalancing": True},
                 {"serving": False}):
        assert not ready(h, broker, **cond), cond
    broker.failed("down")
    assert not ready(h, broker)
    broker.ok()
    assert ready(h, broker)


def test_a_worker_behind_lag_that_makes_no_progress_is_not_ready_but_alive() -> None:
    clock = Clock()
    h, broker = Health(stall_s=60, clock=clock), BrokerWatch(300, clock=clock)
    h.lag = {0: 0, 1: 0}
    clock.t += 600  # idle without lag: still ready
    assert ready(h, broker)
    h.lag = {0: 5, 1: 0}
    assert not ready(h, broker)
    h.progressed()
    assert ready(h, broker)
    clock.t += 61
    assert not ready(h, broker)
    assert h.liveness(processing_alive=True, queued=0, in_flight=0)[0]


def test_liveness_is_false_only_when_wedged() -> None:
    clock = Clock()
    h = Health(stall_s=60, clock=clock)
    assert h.liveness(processing_alive=True, queued=10, in_flight=0)[0]
    assert not h.liveness(processing_alive=False, queued=0, in_flight=0)[0]
    clock.t += 61
    assert not h.liveness(processing_alive=True, queued=10, in_flight=0)[0]  # nobody takes
    assert h.liveness(processing_alive=True, queued=10, in_flight=3)[0]  # waits on the broker
    assert h.liveness(processing_alive=True, queued=0, in_flight=0)[0]  # idle
    h.taken()
    assert h.liveness(processing_alive=True, queued=10, in_flight=0)[0]


async def test_the_worker_waits_out_a_broker_outage_then_stops_saying_why() -> None:
    settings = Settings(kafka_bootstrap="127.0.0.1:1", broker_kind="kafka", store="memory://",
                        kafka_timeout_s=0.2, outage_timeout_s=0.5)
    svc = Service(settings, FakeScorer(window_len=5), publisher=MemoryPublisher(),
                  live=LiveStreams(partitions=1), web=False)
    svc._serving = True
    crashed: list[BaseException] = []

    async def crash(exc: BaseException) -> None:
        crashed.append(exc)

    svc.app.crash = crash  # type: ignore[method-assign]
    await svc._check_broker()  # no broker: an outage starts, the worker keeps its state
    assert not crashed and not svc.broker.up
    assert svc.ready()[0] is False and svc.ready()[1]["broker_up"] is False
    assert svc.alive()[0] is True  # an outage does not make the worker wedged
    svc.broker.down_since = svc.broker.clock() - 1.0  # as if it had lasted a second
    await svc._check_broker()
    assert len(crashed) == 1
    assert "LIVERANK_OUTAGE_TIMEOUT_S=0.5" in str(crashed[0])
    assert svc.metrics.registry.get_sample_value("liverank_broker_up") == 0
