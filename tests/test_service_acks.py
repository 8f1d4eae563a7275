"""`OrderedAcks`: batches acked in order, only after their delivery, never after a failure."""

from __future__ import annotations

import asyncio

import pytest

from liverank.services.acks import OrderedAcks


class Batches:
    """Deliveries that finish when the test says so; acks recorded in order."""

    def __init__(self) -> None:
        self.gates: dict[int, asyncio.Future[int]] = {}
        self.acked: list[int] = []
        self.failures: list[BaseException] = []

    def deliver(self, n: int) -> asyncio.Future[int]:
        self.gates[n] = asyncio.get_running_loop().create_future()
        return self.gates[n]

    async def ack(self, n: int) -> None:
        self.acked.append(n)

    async def failed(self, exc: BaseException) -> None:
        self.failures.append(exc)


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def test_acks_follow_submission_order_whatever_order_deliveries_finish_in() -> None:
    b = Batches()
    acks: OrderedAcks[int] = OrderedAcks(8, b.failed)
    done = [await acks.submit(lambda n=n: b.deliver(n), b.ack) for n in range(4)]
    assert acks.in_flight == 4
    await settle()
    b.gates[2].set_result(2)
    b.gates[1].set_result(1)
    await settle()
    assert b.acked == []  # batch 0 is not delivered yet: nothing after it may be acked
    b.gates[0].set_result(0)
    await settle()
    assert b.acked == [0, 1, 2] and acks.in_flight == 1
    b.gates[3].set_result(3)
    await asyncio.gather(*done)
    await acks.drain()
    assert b.acked == [0, 1, 2, 3] and acks.in_flight == 0 and acks.failed is None


async def test_a_failed_delivery_stops_every_later_ack_and_is_reported_once() -> None:
    b = Batches()
    acks: OrderedAcks[int] = OrderedAcks(8, b.failed)
    for n in range(4):
        await acks.submit(lambda n=n: b.deliver(n), b.ack)
    await settle()
    b.gates[0].set_result(0)
    b.gates[3].set_result(3)  # delivered, but behind the failure: never acked
    b.gates[1].set_exception(RuntimeError("broker said no"))
    b.gates[2].set_exception(RuntimeError("and again"))
    await acks.drain()
    assert b.acked == [0]
    assert [str(e) for e in b.failures] == ["broker said no"]
    assert isinstance(acks.failed, RuntimeError) and acks.in_flight == 0
    await acks.submit(lambda: b.deliver(9), b.ack)  # after a failure: delivered, not acked
    await settle()
    b.gates[9].set_result(9)
    await acks.drain()
    assert b.acked == [0]


async def test_a_failing_ack_counts_as_a_failure() -> None:
    b = Batches()

    async def bad_ack(n: int) -> None:
        raise ValueError(f"cannot ack {n}")

    acks: OrderedAcks[int] = OrderedAcks(2, b.failed)
    await acks.submit(lambda: b.deliver(0), bad_ack)
    await acks.submit(lambda: b.deliver(1), b.ack)
    await settle()
    b.gates[0].set_result(0)
    b.gates[1].set_result(1)
    await acks.drain()
    assert b.acked == [] and [str(e) for e in b.failures] == ["cannot ack 0"]


async def test_at_most_limit_batches_are_in_flight() -> None:
    b = Batches()
    acks: OrderedAcks[int] = OrderedAcks(2, b.failed)
    await acks.submit(lambda: b.deliver(0), b.ack)
    await acks.submit(lambda: b.deliver(1), b.ack)
    third = asyncio.ensure_future(acks.submit(lambda: b.deliver(2), b.ack))
    await settle()
    assert not third.done() and acks.in_flight == 2  # waits for a slot
    b.gates[0].set_result(0)
    await settle()
    assert third.done() and acks.in_flight == 2
    await settle()
    b.gates[1].set_result(1)
    b.gates[2].set_result(2)
    await acks.drain()
    assert b.acked == [0, 1, 2]
    with pytest.raises(ValueError, match="limit"):
        OrderedAcks(0, b.failed)


async def test_delivered_batches_are_acked_at_once_not_one_per_loop_turn() -> None:
    """200 batches delivered while the first was still out: once it arrives, all 200 are
    acked within a couple of loop turns (a chain of tasks, each awaiting the one before,
    needed a turn per batch, and a worker whose loop turns seldom piled them up)."""
    b = Batches()
    acks: OrderedAcks[int] = OrderedAcks(1000, b.failed)
    for n in range(200):
        await acks.submit(lambda n=n: b.deliver(n), b.ack)
    await settle()
    for n in range(1, 200):
        b.gates[n].set_result(n)
    await settle()
    assert b.acked == [] and acks.unacked == 200
    b.gates[0].set_result(0)
    for _ in range(3):
        await asyncio.sleep(0)
    assert b.acked == list(range(200)) and acks.unacked == 0 and acks.in_flight == 0
