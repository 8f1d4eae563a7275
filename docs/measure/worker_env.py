"""The environment of the workers `liverank.cli.bench_service` starts, for the measure
scripts next to this file (run as ``python docs/measure/<script>.py``, so this folder is on
the import path): `worker_env` returns a dict, and what it holds when the bench starts a
``serve`` worker goes into that worker's environment, after the bench's own settings."""

from __future__ import annotations

import subprocess
from typing import Any


def worker_env() -> dict[str, str]:
    env: dict[str, str] = {}
    popen = subprocess.Popen

    def worker_popen(cmd: Any, *a: Any, **kw: Any) -> Any:
        if "serve" in cmd and "env" in kw:
            kw["env"] = {**kw["env"], **env}
        return popen(cmd, *a, **kw)

    subprocess.Popen = worker_popen  # type: ignore[misc]  # the bench starts the worker
    return env
