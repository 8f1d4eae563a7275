"""What the worker tells Kubernetes: liveness, readiness, and how long the broker has been away.

Pure bookkeeping, no Faust and no broker, so every rule is tested with a fake clock:

* **broker** (`BrokerWatch`): every call the worker makes to the broker on its own (the
  committed-floor and lag timer) reports success or failure; an outage is the time since
  the first failure after a success. An outage is waited out (back off, keep state) until
  it lasts ``outage_timeout_s``; then the worker stops with a message naming the setting.
* **readiness** (`Health.readiness`): the live index has caught up, table recovery is done,
  no rebalance is under way, the worker is serving, the broker answers, and the worker is
  not stuck behind lag it has (lag > 0 and no batch done for ``stall_s``).
* **liveness** (`Health.liveness`): false only when the process is wedged: the processing
  task died, or events have waited in the micro-batcher for ``stall_s`` while no batch was
  taken and none awaits the broker. A recovering, rebalancing or broker-less worker is
  alive (restarting it would not help), just not ready.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

logger = logging.getLogger(__name__)

Clock = Callable[[], float]


class BrokerWatch:
    """Outage bookkeeping for the calls the worker makes to the broker itself."""

    def __init__(self, outage_timeout_s: float, clock: Clock = time.monotonic):
        self.outage_timeout_s = outage_timeout_s
        self.clock = clock
        self.down_since: float | None = None
        self.last_error = ""
        self.failures = 0  # consecutive

    @property
    def up(self) -> bool:
        return self.down_since is None

    def outage_s(self) -> float:
        return 0.0 if self.down_since is None else self.clock() - self.down_since

    def ok(self) -> None:
        if self.down_since is not None:
            logger.warning("broker reachable again after %.1f s of outage", self.outage_s())
        self.down_since, self.failures, self.last_error = None, 0, ""

    def failed(self, error: object) -> bool:
        """Record a failed call; True when the outage has lasted past the limit."""
        if self.down_since is None:
            self.down_since = self.clock()
            logger.warning("broker unreachable, waiting it out (up to %.0f s) error=%s",
                           self.outage_timeout_s, error)
        self.failures += 1
        self.last_error = str(error)
        return self.outage_s() > self.outage_timeout_s

    def give_up_message(self) -> str:
        return (f"the broker has been unreachable for {self.outage_s():.0f} s, longer than "
                f"LIVERANK_OUTAGE_TIMEOUT_S={self.outage_timeout_s:g}; stopping "
                f"(last error: {self.last_error})")


@dataclass
class Health:
    """The worker's progress, as the timers and the processing loop report it."""

    stall_s: float
    clock: Clock = time.monotonic
    last_progress: float = field(default=0.0)  # a batch published and acked (or idle)
    last_taken: float = field(default=0.0)  # the micro-batcher handed out a batch
    lag: dict[int, int] = field(default_factory=dict)  # owned partition -> records behind

    def __post_init__(self) -> None:
        self.last_progress = self.last_taken = self.clock()

    def progressed(self) -> None:
        self.last_progress = self.clock()

    def taken(self) -> None:
        self.last_taken = self.clock()

    def since_progress(self) -> float:
        return self.clock() - self.last_progress

    def stuck(self) -> bool:
        """Lag to work on and nothing done about it for ``stall_s``."""
        return sum(self.lag.values()) > 0 and self.since_progress() > self.stall_s

    def readiness(self, *, live_index: bool, recovered: bool, rebalancing: bool,
                  serving: bool, broker: BrokerWatch) -> tuple[bool, dict[str, Any]]:
        state = {"live_index": live_index, "recovered": recovered,
                 "rebalancing": rebalancing, "serving": serving, "broker_up": broker.up,
                 "stuck": self.stuck(), "lag": sum(self.lag.values()),
                 "seconds_since_progress": round(self.since_progress(), 1)}
        ok = (live_index and recovered and not rebalancing and serving and broker.up
              and not state["stuck"])
        return ok, state

    def liveness(self, *, processing_alive: bool, queued: int, in_flight: int
                 ) -> tuple[bool, dict[str, Any]]:
        """Batches in flight mean the worker waits on the broker's acknowledgements
        (bounded by the outage timeout, then it stops by itself): not wedged."""
        waited = self.clock() - self.last_taken
        wedged = queued > 0 and in_flight == 0 and waited > self.stall_s
        state = {"processing_alive": processing_alive, "queued": queued,
                 "in_flight": in_flight, "seconds_since_batch_taken": round(waited, 1)}
        return processing_alive and not wedged, state
