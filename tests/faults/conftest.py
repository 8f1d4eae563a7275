"""Fixtures of the fault suite: the tiny model (trained once per session), a broker of each
test's own (so a signal hits only it), workers stopped at teardown, and the result lines.

Every test prints one line ``fault=<name> runs=1 lost=.. duplicated=.. differing=..
recover_s=..`` (also listed under "fault results" at the end of the run) and, when
``FAULT_REPORT`` names a file, appends the same result as one JSON line to it.

``FAULT_REPORT`` and ``FAULT_BROKER_STORAGE`` are taken out of the
environment when `helpers` is imported (see there).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import pytest
from checker import Log, Result, load_log, report
from helpers import REPORT_FILE, FaultModel, GatedReplay, Worker, settings_for, train_tiny

from liverank.core.settings import Settings

_LINES: list[str] = []


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if _LINES:
        terminalreporter.write_sep("-", "fault results")
        for line in _LINES:
            terminalreporter.write_line(line)


@pytest.fixture(scope="session")
def fault_model(tmp_path_factory: pytest.TempPathFactory) -> FaultModel:
    return train_tiny(tmp_path_factory.mktemp("fault-model"))


@pytest.fixture(scope="session")
def fault_log(fault_model: FaultModel) -> Log:
    return load_log(fault_model.csv)


@pytest.fixture
def fault_settings(own_broker: object, request: pytest.FixtureRequest) -> Settings:
    return settings_for(own_broker.bootstrap, request.node.name)  # type: ignore[attr-defined]


@pytest.fixture
def workers() -> Iterator[list[Worker]]:
    """Workers a test started; stopped (woken first) at teardown."""
    started: list[Worker] = []
    yield started
    for w in started:
        w.stop()


@pytest.fixture
def replays() -> Iterator[list[GatedReplay]]:
    """Gated replays a test started; let run out at teardown (a failed test leaves none
    waiting at a gate)."""
    started: list[GatedReplay] = []
    yield started
    for r in started:
        r.close()


@pytest.fixture
def record_fault(request: pytest.FixtureRequest) -> Callable[..., str]:
    """``record_fault(name, result, **extra)``: print the result line, keep it for the
    summary, append the JSON line to ``FAULT_REPORT``; returns the line."""
    t0 = time.monotonic()

    def record(name: str, result: Result, **extra: object) -> str:
        extra.setdefault("seconds", round(time.monotonic() - t0, 1))
        extra.setdefault("test", request.node.nodeid)
        line = report(result, name, REPORT_FILE, **extra)
        print(line)  # noqa: T201 - the results table
        _LINES.append(line)
        return line

    return record
