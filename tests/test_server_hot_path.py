"""What the server's hot path must keep while it skips work: the Task a handler receives,
DEBUG logging, fetching for free slots beside long handlers, spreading a burst over runners."""

from __future__ import annotations

import logging

import anyio
import pytest

import strego
from strego.backends.base import Backend
from tests.runtime_support import backend, eventually

__all__ = ["backend"]  # the fixture, imported for pytest


def test_trusted_task_equals_the_validated_one() -> None:
    labels = {"tenant": "a"}
    fields = dict(queue="q1", max_retry=2, timeout=1.5, priority=7, labels=labels, id="t-1")
    fast = strego.Task._trusted("kind", {"x": 1}, **fields)  # type: ignore[arg-type]
    assert fast == strego.Task("kind", {"x": 1}, **fields)  # type: ignore[arg-type]
    assert fast.labels is not labels  # its own copy, as the validating constructor gives


@pytest.mark.anyio
@pytest.mark.parametrize("make_backend", ["memory", "anyio-redis"], indirect=True)
async def test_debug_logging_names_each_task_when_enabled(
    backend: Backend, caplog: pytest.LogCaptureFixture
) -> None:
    server = strego.Server(backend, concurrency=2)
    ran: list[str] = []

    @server.handler("job")
    async def job(task: strego.Task) -> None:
        assert task.id is not None
        ran.append(task.id)

    info = await strego.Client(backend).enqueue(strego.Task("job"))
    with caplog.at_level(logging.DEBUG, logger="strego.server"):
        async with server:
            await eventually(lambda: server.stats.processed == 1, "the ack")
    messages = [r.getMessage() for r in caplog.records if r.name == "strego.server"]
    assert ran == [info.id]
    assert f"start job {info.id} (queue default, attempt 1)" in messages
    assert any(m.startswith(f"done job {info.id} in ") for m in messages)


@pytest.mark.anyio
@pytest.mark.parametrize("make_backend", ["memory", "anyio-redis"], indirect=True)
async def test_free_slots_are_fetched_for_while_long_handlers_run(backend: Backend) -> None:
    server = strego.Server(backend, concurrency=4, shutdown_timeout=0)
    release = anyio.Event()
    long_running = quick_done = 0

    @server.handler("long")
    async def long(task: strego.Task) -> None:
        nonlocal long_running
        long_running += 1
        await release.wait()

    @server.handler("quick")
    async def quick(task: strego.Task) -> None:
        nonlocal quick_done
        quick_done += 1

    client = strego.Client(backend)
    await client.enqueue_many([strego.Task("long") for _ in range(3)])
    async with server:
        await eventually(lambda: long_running == 3, "3 long handlers")
        # one slot is left: the quick tasks must go through it, one fetch at a time
        await client.enqueue_many([strego.Task("quick") for _ in range(5)])
        await eventually(lambda: quick_done == 5, "5 quick tasks beside the long ones")
        release.set()
        await eventually(lambda: server.stats.processed == 8, "8 acks")


@pytest.mark.anyio
@pytest.mark.parametrize("make_backend", ["memory"], indirect=True)
async def test_a_burst_of_waiting_tasks_spreads_over_every_runner(backend: Backend) -> None:
    server = strego.Server(backend, concurrency=6)
    release = anyio.Event()
    running = 0

    @server.handler("wait")
    async def wait(task: strego.Task) -> None:
        nonlocal running
        running += 1
        await release.wait()

    await strego.Client(backend).enqueue_many([strego.Task("wait") for _ in range(6)])
    async with server:
        await eventually(lambda: running == 6, "6 handlers at once")
        release.set()
        await eventually(lambda: server.stats.processed == 6, "6 acks")
