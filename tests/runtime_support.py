"""Helpers of the runtime tests (Client, Server): a backend on the wall clock for each backend of
`tests.backend_fixtures`, and waiting for a condition with a generous deadline."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import anyio
import pytest

import strego
from strego.backends.base import Backend
from strego.clock import wall_clock_ms
from strego.task import TaskInfo, TaskState

#: Upper bound for anything a test waits for; never a timing assertion, only a hang guard.
PATIENCE = 20.0


#: The runtime tests' backends: memory, Redis through redis-py and through strego's own
#: transport, fakeredis, and a Redis Cluster (the `backend` fixture below, made by `make_backend`).
ON_EVERY_BACKEND = pytest.mark.parametrize(
    "make_backend", ["memory", "redis", "anyio-redis", "fakeredis", "cluster-redis"], indirect=True
)


@pytest.fixture
async def backend(make_backend: Any) -> AsyncIterator[Backend]:
    """A fresh backend (each kind of tests.backend_fixtures) judging time by the wall clock, as a
    running server does."""
    async with make_backend(clock=wall_clock_ms) as b:
        yield b


async def eventually(
    check: Callable[[], Awaitable[bool]] | Callable[[], bool],
    what: str = "condition",
    *,
    patience: float = PATIENCE,
) -> None:
    """Wait until `check()` is true (polling every 10 ms), failing after `patience` seconds.
    For state on another side (a server, a backend) that no event announces."""
    with anyio.move_on_after(patience):
        while True:
            result = check()
            if not isinstance(result, bool):
                result = await result
            if result:
                return
            await anyio.sleep(0.01)
    raise AssertionError(f"timed out waiting for {what}")


async def wait_for_state(
    backend: Backend, task_id: str, *states: TaskState, queue: str | None = None
) -> TaskInfo:
    """Wait until the task is in one of `states`; returns its info."""
    found: list[TaskInfo] = []

    async def reached() -> bool:
        info = await backend.get_task(task_id, queue)
        if info is not None and info.state in states:
            found.append(info)
            return True
        return False

    await eventually(reached, f"task {task_id} to be {'/'.join(states)}")
    return found[0]


def no_delay(retried: int, exc: BaseException, info: TaskInfo) -> float:
    """A retry delay for tests: retries come at once."""
    return 0.01


def make_server(backend: Backend, **options: Any) -> strego.Server:
    """A Server whose retries come at once and whose shutdown waits 2 s at most."""
    options.setdefault("retry_delay", no_delay)
    options.setdefault("shutdown_timeout", 2.0)
    return strego.Server(backend, **options)
