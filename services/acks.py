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
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

logger = logging.getLogger(__name__)
R = TypeVar("R")


class OrderedAcks(Generic[R]):
    """At most ``limit`` batches in flight; each batch is ``deliver()`` (its publishing,
    result R) followed, in submission order, by ``ack(R)``. The first delivery error is kept
    in `failed` and handed to ``on_failure``; later batches are not acked."""

    def __init__(self, limit: int, on_failure: Callable[[BaseException], Awaitable[None]]):
        if limit < 1:
            raise ValueError(f"limit must be >= 1, got {limit}")
        self._slots = asyncio.Semaphore(limit)
        self._on_failure = on_failure
        self._last: asyncio.Future[None] | None = None
        self.in_flight = 0  # batches delivering, not yet acknowledged by the broker
        self.failed: BaseException | None = None

    async def submit(self, deliver: Callable[[], Awaitable[R]],
                     ack: Callable[[R], Awaitable[None]]) -> asyncio.Future[None]:
        """Start delivering a batch (waits while ``limit`` batches are in flight); the
        returned future is done when the batch was acked, or will never be."""
        await self._slots.acquire()
        self.in_flight += 1
        fut = asyncio.ensure_future(self._run(deliver, ack, self._last))
        self._last = fut
        return fut

    async def _run(self, deliver: Callable[[], Awaitable[R]],
                   ack: Callable[[R], Awaitable[None]],
                   previous: asyncio.Future[None] | None) -> None:
        """Never raises: a failure is recorded and reported once (so the next batch's wait
        on this one cannot fail in turn)."""
        try:
            result = await deliver()
        except Exception as exc:  # any failure: nothing after it may be acked
            await self._fail(exc)
            return
        finally:
            self._slots.release()
            self.in_flight -= 1
        if previous is not None:
            await asyncio.shield(previous)  # acks in submission order
        if self.failed is not None:
            return
        try:
            await ack(result)
        except Exception as exc:
            await self._fail(exc)

    async def _fail(self, exc: BaseException) -> None:
        if self.failed is None:
            self.failed = exc
            logger.error("delivery failed, acking stops error=%s", exc)
            await self._on_failure(exc)

    async def drain(self) -> None:
        """Wait until every submitted batch was acked or given up."""
        if self._last is not None:
            await asyncio.shield(self._last)
