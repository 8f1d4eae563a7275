"""Consumers of the service's output: `RecsClient` (the answers from Kafka, typed by the
contract), `lookup` (the HTTP lookup endpoint), and online evaluation (``liverank monitor``).

The names are loaded on first use, so importing one module of this package (e.g.
``liverank.client.monitor``) does not import the others. Guide: docs/consuming.md.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from liverank.client.consumer import RecsClient, latest
    from liverank.client.endpoint import LookupUnavailableError, lookup
    from liverank.core.partitioner import partition_for

__all__ = ["RecsClient", "LookupUnavailableError", "latest", "lookup", "partition_for"]

# name -> its module (not named like a function: a loaded submodule would shadow it)
_HOMES = {"RecsClient": "liverank.client.consumer", "latest": "liverank.client.consumer",
          "lookup": "liverank.client.endpoint",
          "LookupUnavailableError": "liverank.client.endpoint",
          "partition_for": "liverank.core.partitioner"}


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(home), name)
