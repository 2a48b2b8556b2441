"""FailureLog: a loop that fails every second for an hour writes a few lines, not 3,600."""

from __future__ import annotations

import logging

import pytest

from strego.failure_log import FailureLog

log = logging.getLogger("strego.test_failure_log")


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == log.name]


def test_an_hour_of_failures_a_second_logs_one_line_a_minute(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = Clock()
    failures = FailureLog(log, "fetch", interval=60.0, clock=clock)
    with caplog.at_level(logging.WARNING, logger=log.name):
        for _ in range(3600):
            failures.failed(ConnectionError("refused"))
            clock.now += 1.0
    shown = lines(caplog)
    assert len(shown) == 60
    assert shown[0] == "fetch failed: refused"
    # every later line says how many failures it stands for
    assert all(line == "fetch failed: refused (59 more failures not shown)" for line in shown[1:])


def test_success_after_failures_says_so_once(caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock()
    failures = FailureLog(log, "renewing leases", clock=clock)
    with caplog.at_level(logging.WARNING, logger=log.name):
        failures.succeeded()  # nothing failed: nothing to say
        for _ in range(5):
            failures.failed(OSError("down"))
        failures.succeeded()
        failures.succeeded()
    assert lines(caplog) == [
        "renewing leases failed: down",
        "renewing leases works again after 5 failures",
    ]


def test_a_new_outage_after_recovery_is_logged_at_once(caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock()
    failures = FailureLog(log, "scheduler", clock=clock)
    with caplog.at_level(logging.WARNING, logger=log.name):
        failures.failed(OSError("first"))
        failures.failed(OSError("hidden"))
        failures.succeeded()
        clock.now += 1.0  # well within the interval of the last line
        failures.failed(OSError("second"))
    assert lines(caplog) == [
        "scheduler failed: first",
        "scheduler works again after 2 failures",
        "scheduler failed: second",
    ]
