"""The viewing log read back from the broker: what ``liverank train --from-topics`` trains on.

Reads ``stream-events`` (broadcast starts and stops) and ``user-events`` (watches) of the
settings' broker and topic prefix and rebuilds the rows a CSV would give, as known at a cut
step (`liverank.model.data.eventlog.log_from_events`: a row lasts as long as its broadcast,
broadcasts still on air at the cut are open until it).

    from liverank.client.history import read_log
    log = read_log(Settings(), until_step=4000)     # an `Interactions`, like load_interactions

Completeness comes from the stream's own markers, never from broker watermarks (tansu's can
be wrong): ``stream-events`` is read until every partition has delivered a `Watermark`
beyond the cut (every start and stop up to the cut is in) or the replay's `End`; then
``user-events`` to the end of every partition (the replay sends a step's watches before the
next step's watermarks). Without a cut, both topics are read to their end and the cut is
the last step read. Records that do not decode are counted, logged and skipped (the service
sends them to the dead-letter topic; they never stop a read).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from confluent_kafka import KafkaException, Message

from liverank.broker.kafka import STREAM_EVENTS, USER_EVENTS, KafkaSetupError, read_topic
from liverank.core import events as ev
from liverank.core.settings import Settings
from liverank.model.data.eventlog import log_from_events
from liverank.model.data.twitch import Interactions

logger = logging.getLogger(__name__)

_WATERMARK = b'{"kind":"watermark"'
_END = b'{"kind":"end"'


def past(until_step: int) -> Callable[[Message], bool]:
    """``read_topic``'s stop test on stream-events: a watermark beyond ``until_step`` or the
    replay's end (both are sent to every partition)."""

    def passed(msg: Message) -> bool:
        value = msg.value() or b""
        if value.startswith(_END):
            return True
        if not value.startswith(_WATERMARK):
            return False
        try:
            return ev.decode_stream_event(value).step > until_step
        except ev.EventError:
            return False

    return passed


def read_log(settings: Settings, *, until_step: int | None = None,
             since_step: int | None = None, timeout_s: float = 120.0) -> Interactions:
    """The rows of the watches in ``[since_step, until_step]`` on the topics of ``settings``
    (see the module docstring). Raises `TimeoutError` when a topic is not read (with a cut:
    stream-events has not passed it) within ``timeout_s``, `KafkaSetupError` when no broker
    answers or a topic is missing, `ValueError` when no watch is left."""
    s_topic, u_topic = settings.topic(STREAM_EVENTS), settings.topic(USER_EVENTS)
    until = past(until_step) if until_step is not None else None
    try:
        try:
            stream_msgs = read_topic(settings, s_topic, timeout_s=timeout_s, until=until)
        except TimeoutError as exc:
            if until_step is None:
                raise
            raise TimeoutError(f"{s_topic}: not past step {until_step} on every partition "
                               f"within {timeout_s:.0f} s (is the cut beyond what was "
                               f"sent?): {exc}") from exc
        user_msgs = read_topic(settings, u_topic, timeout_s=timeout_s)
    except KafkaException as exc:  # e.g. bad client settings: one line, like the others
        raise KafkaSetupError(f"reading {s_topic} and {u_topic}: {exc}") from exc
    events: list[ev.Event] = []
    bad = 0
    for msg in stream_msgs:
        try:
            events.append(ev.decode_stream_event(msg.value() or b""))
        except ev.EventError:
            bad += 1
    for msg in user_msgs:
        value = msg.value() or b""
        if value.startswith(b'{"kind":"rec_request"'):
            continue  # half the topic, and no row: not worth decoding
        try:
            events.append(ev.decode_user_event(value))
        except ev.EventError:
            bad += 1
    if bad:
        logger.warning("undecodable records skipped=%d topics=%s,%s", bad, s_topic, u_topic)
    logger.info("read log stream_events=%d user_events=%d until_step=%s", len(stream_msgs),
                len(user_msgs), until_step)
    cut = f"step {until_step}" if until_step is not None else "their end"
    source = f"topics {s_topic}+{u_topic} at {settings.kafka_bootstrap} up to {cut}"
    return log_from_events(events, until_step=until_step, since_step=since_step,
                           source=source)
