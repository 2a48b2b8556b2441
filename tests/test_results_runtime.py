"""Results and cancelling running tasks, end to end (Client.result, Client.cancel, Server) on
every backend, under asyncio and trio."""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager

import anyio
import attrs
import pytest

import strego
from strego.backends.base import Backend
from strego.backends.memory import MemoryBackend
from strego.backends.watch import Watch
from strego.clock import wall_clock_ms
from strego.task import TaskState
from tests.runtime_support import (
    ON_EVERY_BACKEND,
    backend,
    eventually,
    make_server,
    wait_for_state,
)

__all__ = ["backend"]  # the fixture, imported for pytest

pytestmark = pytest.mark.anyio
# most tests run on every backend; the memory-only ones simulate lost or stale notifications


@attrs.frozen
class Sum:
    total: int
    parts: list[int]


def _server(backend: Backend, **options: object) -> strego.Server:
    server = make_server(backend, concurrency=2, **options)

    @server.handler("add")
    async def add(task: strego.Task) -> dict[str, object]:
        return {"total": sum(task.payload), "parts": task.payload}

    @server.handler("raw")
    async def raw(task: strego.Task) -> bytes:
        return b"\x00\xff"

    @server.handler("none")
    async def none(task: strego.Task) -> None:
        return None

    @server.handler("boom")
    async def boom(task: strego.Task) -> None:
        raise ValueError("bad input")

    @server.handler("forever")
    async def forever(task: strego.Task) -> None:
        await anyio.sleep_forever()

    return server


@ON_EVERY_BACKEND
async def test_result_returns_the_value_structured_when_asked(backend: Backend) -> None:
    client = strego.Client(backend)
    async with _server(backend):
        a = await client.enqueue(strego.Task("add", [1, 2, 3]))
        assert await client.result(a.id, timeout=20) == {"total": 6, "parts": [1, 2, 3]}
        assert await client.result(a.id, type=Sum) == Sum(6, [1, 2, 3])
        r = await client.enqueue(strego.Task("raw"))
        assert await client.result(r.id, timeout=20) == b"\x00\xff"
        n = await client.enqueue(strego.Task("none"))
        assert await client.result(n.id, timeout=20) is None


@ON_EVERY_BACKEND
async def test_result_waits_for_a_task_that_has_not_run(backend: Backend) -> None:
    client = strego.Client(backend)
    a = await client.enqueue(strego.Task("add", [4, 5], process_in=0.3))
    async with _server(backend):
        assert (await client.result(a.id, timeout=20))["total"] == 9


@ON_EVERY_BACKEND
async def test_result_of_a_dead_task_raises_with_its_error(backend: Backend) -> None:
    client = strego.Client(backend)
    async with _server(backend):
        a = await client.enqueue(strego.Task("boom", max_retry=0))
        with pytest.raises(strego.TaskFailedError) as caught:
            await client.result(a.id, timeout=20)
    error = caught.value.error
    assert error is not None and error.type == "ValueError" and error.message == "bad input"
    assert "in boom" in error.traceback and "ValueError: bad input" in error.traceback


@ON_EVERY_BACKEND
async def test_result_timeout_unknown_and_ttl_zero(backend: Backend) -> None:
    client = strego.Client(backend)
    a = await client.enqueue(strego.Task("add", [1]))
    with pytest.raises(TimeoutError):
        await client.result(a.id, timeout=0.2)  # no server runs it
    with pytest.raises(strego.TaskNotFoundError):
        await client.result("no-such-task", timeout=1)
    z = await client.enqueue(strego.Task("add", [1], result_ttl=0))
    async with _server(backend):
        await wait_for_state(backend, z.id, TaskState.COMPLETED)
        assert (await client.get_task(z.id)).result is None  # type: ignore[union-attr]
        with pytest.raises(strego.TaskNotFoundError):
            await client.result(z.id, timeout=1)
        assert await client.result(a.id, timeout=20) == {"total": 1, "parts": [1]}


@ON_EVERY_BACKEND
async def test_cancel_stops_a_running_handler_and_frees_its_key(backend: Backend) -> None:
    client = strego.Client(backend)
    async with _server(backend) as server:
        a = await client.enqueue(strego.Task("forever", unique_key="k", unique_ttl=60))
        await wait_for_state(backend, a.id, TaskState.ACTIVE)
        started = anyio.current_time()
        assert await client.cancel(a.id) is True
        with pytest.raises(strego.TaskCancelledError):
            await client.result(a.id, timeout=20)
        # by the pub/sub path (about a millisecond), not the renewal (every 10 s here); the
        # bound leaves room for a loaded machine
        assert anyio.current_time() - started < 5.0
        info = await client.get_task(a.id)
        assert info is not None and info.state is TaskState.CANCELLED and info.retried == 0
        # its unique key is free: the same key runs again
        b = await client.enqueue(strego.Task("add", [7], unique_key="k", unique_ttl=60))
        assert (await client.result(b.id, timeout=20))["total"] == 7
        assert server.stats.dead == 0 and server.stats.retried == 0


@ON_EVERY_BACKEND
async def test_a_sync_handler_ends_cancelled_when_its_thread_returns(backend: Backend) -> None:
    client = strego.Client(backend)
    server = _server(backend)
    release = threading.Event()
    entered = threading.Event()

    @server.handler("sync")
    def sync(task: strego.Task) -> int:
        entered.set()
        release.wait(20)
        return 1

    async with server:
        a = await client.enqueue(strego.Task("sync"))
        await wait_for_state(backend, a.id, TaskState.ACTIVE)
        await anyio.to_thread.run_sync(entered.wait, 20)
        assert await client.cancel(a.id) is True
        info = await client.get_task(a.id)
        assert info is not None and info.state is TaskState.ACTIVE and info.cancel_requested
        release.set()
        with pytest.raises(strego.TaskCancelledError):
            await client.result(a.id, timeout=20)


@ON_EVERY_BACKEND
async def test_an_async_handler_waiting_on_a_thread_ends_cancelled(backend: Backend) -> None:
    """The request cancels the runner's scope while the handler waits on a thread (a shielded
    call): the handler returns, and the task must still end cancelled from that cancelled
    scope, not stay active with nobody holding it."""
    client = strego.Client(backend)
    server = _server(backend)
    release = threading.Event()
    entered = threading.Event()

    def work() -> int:
        entered.set()
        release.wait(20)
        return 1

    @server.handler("offload")
    async def offload(task: strego.Task) -> int:
        return await anyio.to_thread.run_sync(work)

    async with server:
        a = await client.enqueue(strego.Task("offload"))
        await anyio.to_thread.run_sync(entered.wait, 20)
        assert await client.cancel(a.id) is True
        # the server took the request (and cancelled the runner's scope) while the thread runs
        await eventually(lambda: bool(server._cancel_requested), "the server saw the request")
        release.set()
        with pytest.raises(strego.TaskCancelledError):
            await client.result(a.id, timeout=20)
        info = await client.get_task(a.id)
        assert info is not None and info.state is TaskState.CANCELLED


class _DeafMemory(MemoryBackend):
    """Cancel notifications are lost: only the lease renewal tells the server."""

    @asynccontextmanager
    async def watch_cancel_requests(self, queues: Sequence[str]) -> AsyncIterator[Watch]:
        yield Watch()


@pytest.mark.parametrize("make_backend", ["memory"], indirect=True)
async def test_a_lost_cancel_notification_is_caught_by_the_renewal(backend: Backend) -> None:
    deaf = _DeafMemory(clock=wall_clock_ms)
    client = strego.Client(deaf)
    async with _server(deaf, claim_stale_after=0.6):  # renewed every 0.2 s
        a = await client.enqueue(strego.Task("forever"))
        await wait_for_state(deaf, a.id, TaskState.ACTIVE)
        await client.cancel(a.id)
        with pytest.raises(strego.TaskCancelledError):
            await client.result(a.id, timeout=20)


@pytest.mark.parametrize("make_backend", ["memory"], indirect=True)
async def test_a_stale_cancel_notification_never_stops_a_later_task(backend: Backend) -> None:
    assert isinstance(backend, MemoryBackend)
    client = strego.Client(backend)
    async with _server(backend):
        a = await client.enqueue(strego.Task("forever", id="same"))
        await wait_for_state(backend, "same", TaskState.ACTIVE)
        await client.cancel("same")
        with pytest.raises(strego.TaskCancelledError):
            await client.result("same", timeout=20)
        await client.delete("same")
        b = await client.enqueue(strego.Task("forever", id="same"))
        await wait_for_state(backend, b.id, TaskState.ACTIVE)
        # the old request's notification again (a duplicate, a late delivery): a hint only
        for watch in backend._cancel_watches.get("default", ()):
            watch.put("default", "same")
        await anyio.sleep(0.3)
        info = await client.get_task("same")
        assert info is not None and info.state is TaskState.ACTIVE and a.id == b.id
        await client.cancel("same")
        await wait_for_state(backend, "same", TaskState.CANCELLED)


@ON_EVERY_BACKEND
async def test_a_return_value_that_cannot_be_stored_kills_the_task(backend: Backend) -> None:
    client = strego.Client(backend)
    server = _server(backend)

    @server.handler("odd")
    async def odd(task: strego.Task) -> object:
        return object()

    async with server:
        a = await client.enqueue(strego.Task("odd"))
        with pytest.raises(strego.TaskFailedError) as caught:
            await client.result(a.id, timeout=20)
    assert "cannot be stored" in (caught.value.last_error or "")
    assert caught.value.error is not None and caught.value.error.type == "SerializationError"


@ON_EVERY_BACKEND
async def test_a_released_task_with_a_request_ends_cancelled_without_running(
    backend: Backend,
) -> None:
    client = strego.Client(backend)
    server = _server(backend)
    ran: list[str] = []

    @server.handler("record")
    async def record(task: strego.Task) -> None:
        ran.append(task.id)

    a = await client.enqueue(strego.Task("record"))
    # another server fetched it, its cancel was requested, and it gave the task back
    await backend.fetch(["default"], 1, "other", lease_ms=60_000)
    assert await client.cancel(a.id) is True
    assert await backend.release("default", [a.id], "other") == 1
    async with server:
        with pytest.raises(strego.TaskCancelledError):
            await client.result(a.id, timeout=20)
    assert ran == []
