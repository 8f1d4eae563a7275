"""An experiment, never a setting: on ``PYTHONPATH`` with ``LOOP_PUBLISHER=1``, a worker's
`KafkaPublisher` runs its delivery callbacks on the event loop (``poll(0)`` every
``LOOP_PUBLISHER_MS``, default 2, while a publish is unsettled) instead of in its poll
thread, so no thread takes the GIL from the loop for each delivery report. A prototype to
measure before building it (session 18); since then `KafkaPublisher` polls on the loop
itself, and this patch applies to the poll-thread publisher of 321edf7 only (it stops
loudly on any other).

    python docs/measure/latency_ticks.py 1800 OUT '{}' \\
        '{"env": {"PYTHONPATH": "docs/measure/loop_publisher", "LOOP_PUBLISHER": "1"}}'
"""

import os

if os.environ.get("LOOP_PUBLISHER") == "1":
    import asyncio

    from liverank.broker import clients

    every_s = float(os.environ.get("LOOP_PUBLISHER_MS", "2")) / 1000
    if not hasattr(clients.KafkaPublisher, "_poll") or hasattr(clients.KafkaPublisher,
                                                                   "POLL_S"):
        raise RuntimeError("LOOP_PUBLISHER: this publisher already polls on the event loop; "
                           "the experiment applies to 321edf7's poll-thread publisher")
    init, publish = clients.KafkaPublisher.__init__, clients.KafkaPublisher.publish

    def _init(self, *a, **kw):  # type: ignore[no-untyped-def]
        init(self, *a, **kw)
        self._stop.set()  # the poll thread ends at its next wake-up
        self._thread.join()
        self._unsettled = 0
        self._ticking = False

    def _tick(self):  # type: ignore[no-untyped-def]
        self._producer.poll(0)
        if len(self._producer) or self._unsettled_futs():
            asyncio.get_running_loop().call_later(every_s, self._tick)
        else:
            self._ticking = False

    def _unsettled_futs(self):  # type: ignore[no-untyped-def]
        self._futs = [f for f in self._futs if not f.done()]
        return bool(self._futs)

    def _publish(self, messages):  # type: ignore[no-untyped-def]
        fut = publish(self, messages)
        if not hasattr(self, "_futs"):
            self._futs = []
        self._futs.append(fut)
        if not self._ticking:
            self._ticking = True
            asyncio.get_running_loop().call_later(every_s, self._tick)
        return fut

    clients.KafkaPublisher.__init__ = _init
    clients.KafkaPublisher._tick = _tick
    clients.KafkaPublisher._unsettled_futs = _unsettled_futs
    clients.KafkaPublisher.publish = _publish
