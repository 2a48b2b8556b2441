"""FailureLog: a loop that fails every second for an hour writes a few lines, not 3,600, and each
gives the cause; a worker whose Redis is unreachable says why at a bounded rate."""

from __future__ import annotations

import logging

import anyio
import pytest

import strego
from strego import failure_log
from strego.backends.redis import RedisBackend
from strego.failure_log import FailureLog
from tests.redis_server import free_port

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
    assert shown[0] == "fetch failed: ConnectionError: refused"
    # every later line says how many failures it stands for
    assert all(
        line == "fetch failed: ConnectionError: refused (59 more failures not shown)"
        for line in shown[1:]
    )


def test_by_default_a_failing_loop_gives_its_cause_every_ten_seconds(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = Clock()
    failures = FailureLog(log, "fetch", clock=clock)
    with caplog.at_level(logging.WARNING, logger=log.name):
        for i in range(60):
            cause = ConnectionError("refused") if i < 30 else TimeoutError("no answer")
            failures.failed(cause, retry_in=1.0)
            clock.now += 1.0
    shown = lines(caplog)
    assert shown == [
        "fetch failed: ConnectionError: refused; retrying in 1s",
        "fetch failed: ConnectionError: refused; retrying in 1s (9 more failures not shown)",
        "fetch failed: ConnectionError: refused; retrying in 1s (9 more failures not shown)",
        "fetch failed: TimeoutError: no answer; retrying in 1s (9 more failures not shown)",
        "fetch failed: TimeoutError: no answer; retrying in 1s (9 more failures not shown)",
        "fetch failed: TimeoutError: no answer; retrying in 1s (9 more failures not shown)",
    ]


class Unprintable(OSError):
    def __str__(self) -> str:
        raise RuntimeError("no")


def test_an_unprintable_cause_is_named_by_its_type(caplog: pytest.LogCaptureFixture) -> None:
    failures = FailureLog(log, "scheduler", clock=Clock())
    with caplog.at_level(logging.WARNING, logger=log.name):
        failures.failed(Unprintable())
    assert lines(caplog) == ["scheduler failed: <unprintable Unprintable>"]


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
        "renewing leases failed: OSError: down",
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
        "scheduler failed: OSError: first",
        "scheduler works again after 2 failures",
        "scheduler failed: OSError: second",
    ]


@pytest.mark.anyio
async def test_a_worker_whose_redis_is_unreachable_says_why_at_a_bounded_rate(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    # nothing listens on the port: every loop fails at each step; with lines at most every
    # 1.5 s, 4.5 s of it gives each loop 2 to 4 lines, each with the cause
    monkeypatch.setattr(failure_log, "REPEAT_INTERVAL_S", 1.5)
    backend = RedisBackend.from_url(f"redis://127.0.0.1:{free_port()}/0")
    server = strego.Server(backend, recovery_interval=0.5, claim_stale_after=1.5)

    @server.handler("job")
    async def job(task: strego.Task) -> None: ...

    with caplog.at_level(logging.WARNING, logger="strego"):
        with anyio.move_on_after(4.5):
            await server.run(handle_signals=False)
    await backend.aclose()
    for what in ("fetch", "claiming stale tasks", "scheduler", "renewing leases"):
        shown = [
            r.getMessage() for r in caplog.records if r.getMessage().startswith(f"{what} failed: ")
        ]
        assert len(shown) <= 4, shown  # 1 + 4.5 / 1.5: bounded, however fast the loop fails
        if what == "renewing leases":
            continue  # nothing held: renewing sends nothing, so it cannot fail
        assert len(shown) >= 2, shown  # not one line then silence
        assert all("BackendConnectionError: could not connect" in line for line in shown), shown
        assert all("; retrying in " in line for line in shown), shown
