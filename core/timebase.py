"""Time on a liverank timeline: 10-minute steps, their event time, days and sessions.

Defined once here; the data layer, the replay, the service and the monitor import these.
"""

from __future__ import annotations

STEP_MS = 600_000  # one step is 10 minutes, as in the Twitch logs
STEPS_PER_DAY = 144
STEPS_PER_HOUR = 6
# 2019-10-01T00:00:00Z: the Twitch logs were crawled in autumn 2019. Step 0 maps here unless
# a run configures another epoch.
DEFAULT_EPOCH_MS = 1_569_888_000_000
# A user's rows closer than an hour belong to one session; a request after a longer gap is
# a log-in (the replay's "session-start" request mode, the synthetic generator's sessions).
SESSION_GAP = 6


def event_time_ms(step: int, epoch_ms: int = DEFAULT_EPOCH_MS) -> int:
    """The event time (ms since 1970) of ``step``: also the Kafka message timestamp."""
    return epoch_ms + step * STEP_MS
