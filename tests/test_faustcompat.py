"""Every Faust workaround of `liverank.services.faustcompat`, run on real Faust objects.

A Faust release that changes what a workaround patches or reads fails here (and stops the
worker at start-up with `FaustCompatError`), instead of the workaround silently doing nothing.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import faust
import pytest
from faust.sensors.prometheus import PrometheusMonitor
from faust.transport.consumer import Consumer as FaustConsumer
from faust.types import TP

from liverank.core.settings import Settings
from liverank.services import faustcompat as fc
from liverank.services.app import Service
from liverank.services.gaps import GapGuard
from liverank.services.testing import FakeScorer, MemoryPublisher


@pytest.fixture
def app() -> Iterator[faust.App]:
    yield faust.App("liverank-compat-test", broker="kafka://127.0.0.1:1", store="memory://",
                    autodiscover=False, web_enabled=False)


def test_only_the_pinned_minor_versions_are_accepted() -> None:
    fc.check_versions()  # what is installed here
    with pytest.raises(fc.FaustCompatError, match=r"faust-streaming 0\.16\.0 is installed"):
        fc.check_versions(lambda dist: "0.16.0" if dist == "faust-streaming" else "0.7.1")
    with pytest.raises(fc.FaustCompatError, match=r"mode-streaming 0\.8\.2"):
        fc.check_versions(lambda dist: "0.15.3" if dist == "faust-streaming" else "0.8.2")
    fc.check_versions(lambda dist: {"faust-streaming": "0.15.9", "mode-streaming": "0.7"}[dist])


def test_a_missing_internal_names_itself_and_the_workaround() -> None:
    with pytest.raises(fc.FaustCompatError, match=r"no attribute '_add_gap'.*'GapGuard'"):
        fc.require(object(), "_add_gap", "GapGuard")


def test_the_service_refuses_to_start_when_faust_lacks_what_a_workaround_patches(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delattr(FaustConsumer, "_add_gap")  # as a Faust upgrade might
    settings = Settings(kafka_bootstrap="127.0.0.1:1", broker_kind="kafka", store="memory://")
    with pytest.raises(fc.FaustCompatError, match="_add_gap"):
        Service(settings, FakeScorer(), publisher=MemoryPublisher(), web=False)


async def test_as_current_makes_the_event_faust_s_current_event(app: faust.App) -> None:
    msg = faust.types.Message("t", 3, 10, 0.0, 0, {}, b"k", b"v", None)
    event = faust.Event(app, b"k", b"v", {}, msg)
    assert faust.current_event() is None
    with fc.as_current(event):
        assert faust.current_event() is event  # what Faust's tables read the partition from
    assert faust.current_event() is None


async def test_fetch_wait_is_set_on_the_aiokafka_consumer_faust_creates(
        app: faust.App) -> None:
    consumer = app.consumer
    fc.set_fetch_wait(consumer, 20)
    client = consumer._thread._create_worker_consumer(app.transport)
    try:
        assert client._fetch_max_wait_ms == 20  # Faust's own: 1500
    finally:
        await client.stop()


async def test_records_reach_the_streams_without_tasks_unless_the_flow_is_suspended(
        app: faust.App) -> None:
    """Faust's per-record ``wait_first(on_message(..), suspend_flow.wait())`` awaits
    ``on_message`` directly while the flow runs; with the flow suspended (a rebalance) it
    goes through Faust's own ``wait_first``, which also waits on the flow."""
    consumer = app.consumer
    fc.deliver_without_tasks(consumer)
    got: list[int] = []

    async def on_message(n: int) -> int:
        got.append(n)
        return n * 2

    fast = await consumer.wait_first(on_message(1), consumer.suspend_flow.wait())
    assert got == [1] and fast.results == [2] and len(fast.done) == 1
    consumer.suspend_flow.set()
    slow = await asyncio.wait_for(
        consumer.wait_first(on_message(2), consumer.suspend_flow.wait()), 5)
    assert got == [1, 2] and len(slow.done) == 2 and sorted(map(str, slow.results)) == [
        "4", "True"]


async def test_gap_acking_goes_to_the_guard_for_user_events_only(app: faust.App) -> None:
    consumer = app.consumer
    settings = Settings(kafka_bootstrap="127.0.0.1:1", broker_kind="kafka")
    faust_gaps: list[tuple[TP, int, int]] = []
    original = consumer._add_gap

    async def spy(tp: TP, first: int, last: int) -> None:
        faust_gaps.append((tp, first, last))
        await original(tp, first, last)

    consumer._add_gap = spy
    guard = GapGuard(consumer, "user-events", settings)
    await consumer._add_gap(TP("user-events", 0), 3, 5)  # Faust's fetcher noticed a gap
    assert faust_gaps == []  # not acked behind the guard's back
    await consumer._add_gap(TP("windows-changelog", 0), 3, 5)
    assert faust_gaps == [(TP("windows-changelog", 0), 3, 5)]  # other topics: Faust's way
    assert guard.refetched == 0


def test_committed_offset_reads_what_faust_sought_to(app: faust.App) -> None:
    consumer = app.consumer
    tp = TP("user-events", 2)
    assert fc.committed_offset(consumer, tp) is None
    consumer._committed_offset[tp] = 41  # as Faust records it after an assignment
    assert fc.committed_offset(consumer, tp) == 41


def test_recovery_is_not_done_before_the_app_ran(app: faust.App) -> None:
    assert fc.recovered(app) is False


def test_the_lean_sensor_overrides_hooks_faust_really_calls() -> None:
    for hook in fc._SKIPPED_HOOKS:
        assert hook in vars(PrometheusMonitor) or any(
            hook in vars(base) for base in PrometheusMonitor.__mro__[1:])
        assert getattr(fc.LeanPrometheusMonitor, hook) is not getattr(PrometheusMonitor, hook)


def test_faust_options_name_real_faust_settings() -> None:
    opts: dict[str, Any] = fc.faust_app_options(Settings(broker_kind="tansu"))
    faust.App("liverank-options", **opts)  # an unknown key would raise here
