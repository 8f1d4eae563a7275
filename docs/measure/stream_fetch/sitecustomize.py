"""An experiment: on ``PYTHONPATH`` with ``STREAM_FETCH_WAIT_MS=N``, a worker's reader of
stream-events (`liverank.broker.clients.StreamFeed`) fetches with an ``N``-ms wait while
user-events keep ``LIVERANK_FETCH_WAIT_MS``: which of the two fetch waits a request's
latency follows (tansu holds every fetch for its whole wait, docs/platform-notes.md; a
request waits for its step's watermark, read by the stream-events reader).

    REPEAT=2 python docs/measure/pinned_half.py OUT '{}' \\
        '{"env": {"PYTHONPATH": "docs/measure/stream_fetch", "STREAM_FETCH_WAIT_MS": "5"}}'
"""

import os

if "STREAM_FETCH_WAIT_MS" in os.environ:
    from liverank.broker import clients

    _init = clients.StreamFeed.__init__

    def _init_with_wait(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        _init(self, *args, **kwargs)
        self._config["fetch.wait.max.ms"] = int(os.environ["STREAM_FETCH_WAIT_MS"])

    clients.StreamFeed.__init__ = _init_with_wait  # type: ignore[method-assign]
