"""The event contract, settings, the CLI and the streaming recommendation service."""
