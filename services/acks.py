"""Acknowledging micro-batches in order, once their output is on the broker.

A worker publishes a batch's answers and moves on to the next batch while the broker
acknowledges them (several batches in flight). The input offsets of a batch may only be
acked, and so committed, when

* the broker has acknowledged every message the batch produced, and
* every earlier batch was acked: Faust commits up to the first unacked offset of a
  partition, so acking out of order would commit records whose answers are not delivered.

After a delivery fails nothing more is acked, ever: the worker stops and the unacked records
are read again from the committed offsets after the restart (at-least-once). No faust import:
tested with asyncio alone.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

logger = logging.getLogger(__name__)
R = TypeVar("R")


class _Batch(Generic[R]):
    __slots__ = ("ack", "acked", "delivered", "result")

    def __init__(self, ack: Callable[[R], Awaitable[None]], acked: asyncio.Future[None]):
        self.ack, self.acked = ack, acked
        self.delivered = False
        self.result: R | None = None


class OrderedAcks(Generic[R]):
    """At most ``limit`` batches in flight; each batch is ``deliver()`` (its publishing,
    result R) followed, in submission order, by ``ack(R)``. The first delivery error is kept
    in `failed` and handed to ``on_failure``; later batches are not acked.

    Acks are made by whichever delivery completes the head of the queue: every delivered
    batch at the head is acked in one go. (A chain of tasks, each awaiting the one before,
    advanced one batch per event-loop turn: with the worker's own reader the loop turns
    less often than batches are delivered, and delivered batches piled up unacked, with
    their records and answers, 1.7 GB in a whole-log run; docs/service.md.)"""

    def __init__(self, limit: int, on_failure: Callable[[BaseException], Awaitable[None]]):
        if limit < 1:
            raise ValueError(f"limit must be >= 1, got {limit}")
        self._slots = asyncio.Semaphore(limit)
        self._on_failure = on_failure
        self._queue: deque[_Batch[R]] = deque()  # submitted, not acked, in order
        self._acking = False
        self._last: asyncio.Future[None] | None = None
        self.in_flight = 0  # batches delivering, not yet acknowledged by the broker
        self.failed: BaseException | None = None

    @property
    def unacked(self) -> int:
        """Batches submitted and not acked yet (delivering, or delivered behind one that
        is not)."""
        return len(self._queue)

    async def submit(self, deliver: Callable[[], Awaitable[R]],
                     ack: Callable[[R], Awaitable[None]]) -> asyncio.Future[None]:
        """Start delivering a batch (waits while ``limit`` batches are in flight); the
        returned future is done when the batch was acked, or will never be."""
        await self._slots.acquire()
        self.in_flight += 1
        batch: _Batch[R] = _Batch(ack, asyncio.get_running_loop().create_future())
        if self.failed is not None:
            batch.acked.set_result(None)  # never acked: nothing is after a failure
        else:
            self._queue.append(batch)
        self._last = batch.acked
        asyncio.ensure_future(self._run(deliver, batch))
        return batch.acked

    async def _run(self, deliver: Callable[[], Awaitable[R]], batch: _Batch[R]) -> None:
        """Never raises: a failure is recorded and reported once."""
        try:
            batch.result = await deliver()
            batch.delivered = True
        except Exception as exc:  # any failure: nothing after it may be acked
            await self._fail(exc)
            return
        finally:
            self._slots.release()
            self.in_flight -= 1
        await self._ack_head()

    async def _ack_head(self) -> None:
        """Ack every delivered batch at the head of the queue, in order. One caller at a
        time: a delivery completing while an ack awaits is picked up by that loop."""
        if self._acking:
            return
        self._acking = True
        try:
            queue = self._queue
            while queue and queue[0].delivered and self.failed is None:
                batch = queue.popleft()
                try:
                    await batch.ack(batch.result)  # type: ignore[arg-type]
                except Exception as exc:
                    await self._fail(exc)
                batch.acked.set_result(None)
        finally:
            self._acking = False

    async def _fail(self, exc: BaseException) -> None:
        if self.failed is None:
            self.failed = exc
            logger.error("delivery failed, acking stops error=%s", exc)
            while self._queue:  # never acked now
                batch = self._queue.popleft()
                if not batch.acked.done():
                    batch.acked.set_result(None)
            await self._on_failure(exc)

    async def drain(self) -> None:
        """Wait until every submitted batch was acked or given up."""
        if self._last is not None:
            await asyncio.shield(self._last)
