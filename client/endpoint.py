"""The service's lookup endpoint, ``GET /users/{user}/recommendations`` on a worker's web port
(any worker: the request is routed to the one that owns the user), typed by the contract.

Standard library only (urllib): a consumer that only looks answers up needs no Kafka client.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request

from liverank.core import events as ev


class LookupUnavailableError(RuntimeError):
    """The lookup endpoint cannot answer now: unreachable, recovering (503), or it answered
    something that is not a liverank answer. The message says which, in one line."""


def lookup(url: str, user: int, *, now: bool = False,
           timeout_s: float = 10.0) -> ev.Recommendation | None:
    """``user``'s latest published answer from the worker at ``url`` (e.g.
    ``http://127.0.0.1:6066``), or None when the service has none for that user (404).

    ``now``: rank the streams live now for the user's current window instead (trigger
    ``lookup``; not published). Raises `LookupUnavailableError` otherwise.
    """
    target = f"{url.rstrip('/')}/users/{user}/recommendations" + ("?now=1" if now else "")
    try:
        with urllib.request.urlopen(target, timeout=timeout_s) as resp:  # noqa: S310
            body = resp.read()
    except urllib.error.HTTPError as exc:
        error = _error_of(exc)
        if exc.code == 404 and error.startswith("no recommendations"):
            return None
        if exc.code == 503:
            raise LookupUnavailableError(f"{target}: the service is recovering its state "
                                         "(503); try again shortly") from None
        raise LookupUnavailableError(f"{target}: HTTP {exc.code} {error or exc.reason}"
                                     ) from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise LookupUnavailableError(f"cannot reach {target}: {reason}") from None
    try:
        rec = ev.decode(body, ev.Recommendation)
    except ev.EventError as exc:
        raise LookupUnavailableError(f"{target} answered something else than a "
                                     f"recommendation: {exc}") from None
    assert isinstance(rec, ev.Recommendation)
    return rec


def _error_of(exc: urllib.error.HTTPError) -> str:
    """The ``error`` of the service's JSON error body, else ""."""
    try:
        error = json.loads(exc.read() or b"{}").get("error", "")
    except (ValueError, AttributeError, OSError):
        return ""
    return error if isinstance(error, str) else ""
