"""Consumers of the service's output: online evaluation (``liverank monitor``)."""
