"""The overview shared by every poller: fifty concurrent requests cost one backend read, a read
within the interval is reused, a mutation makes the next request read anew, and a failed read
fails its waiters too (each does not retry it in turn). Memory backend, asyncio and trio."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import anyio.lowlevel
import pytest

from strego.backends.memory import MemoryBackend
from strego.errors import BackendConnectionError
from strego.web import create_app
from strego.web.shared import Shared
from tests.web.support import http, seed

pytestmark = pytest.mark.anyio

API = "/api/v1"


class Counting(MemoryBackend):
    """A memory backend counting its reads; `gate`, when set, holds each `queues` call until it
    is set, so callers pile up behind one read."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0
        self.gate: anyio.Event | None = None

    async def queues(self) -> list[str]:
        self.calls += 1
        if self.gate is not None:
            await self.gate.wait()
        return await super().queues()


async def test_fifty_pollers_cost_one_read_and_a_mutation_invalidates() -> None:
    backend = Counting()
    await seed(backend)
    app = create_app(backend, readonly=False, snapshot_interval_s=3600)
    backend.gate = anyio.Event()
    answers: list[Any] = []
    async with http(app) as api:

        async def poll() -> None:
            answers.append((await api.get(f"{API}/queues")).json())

        async with anyio.create_task_group() as tg:
            for _ in range(50):
                tg.start_soon(poll)
            # until the one read is under way and the 49 others wait for it (bounded by progress)
            shared = app.state.api.overview
            for _ in range(100_000):
                if shared.waiting == 49:
                    break
                await anyio.lowlevel.checkpoint()
            assert shared.waiting == 49 and backend.calls == 1
            backend.gate.set()
        assert len(answers) == 50 and all(a == answers[0] for a in answers)
        assert backend.calls == 1 and app.state.api.overview.reads == 1
        backend.gate = None
        await api.get(f"{API}/queues")  # within the interval: the same read
        assert backend.calls == 1
        assert (await api.post(f"{API}/queues/work/pause")).status_code == 200
        calls = backend.calls
        after = (await api.get(f"{API}/queues")).json()
        assert backend.calls == calls + 1
        assert {q["name"]: q["paused"] for q in after["queues"]} == {"other": False, "work": True}


async def test_a_failed_read_fails_its_waiters_and_the_next_caller_reads_again() -> None:
    started = anyio.Event()
    release = anyio.Event()
    reads = 0

    async def read() -> int:
        nonlocal reads
        reads += 1
        if reads == 1:
            started.set()
            await release.wait()
            raise BackendConnectionError("down")
        return reads

    shared: Shared[int] = Shared(read, max_age_s=3600)
    outcomes: list[object] = []

    async def get() -> None:
        try:
            outcomes.append(await shared.get())
        except BackendConnectionError as exc:
            outcomes.append(exc)

    async with anyio.create_task_group() as tg:
        tg.start_soon(get)
        await started.wait()
        for _ in range(3):
            tg.start_soon(get)
        for _ in range(100_000):
            if shared.waiting == 3:
                break
            await anyio.lowlevel.checkpoint()
        release.set()
    assert reads == 1 and len(outcomes) == 4
    assert all(isinstance(o, BackendConnectionError) for o in outcomes)
    assert await shared.get() == 2  # not cached: read anew


async def test_a_cancelled_read_lets_a_waiter_read() -> None:
    gate = anyio.Event()
    calls: list[int] = []

    async def read() -> int:
        calls.append(1)
        if len(calls) == 1:
            await gate.wait()  # never set: its caller is cancelled
        return len(calls)

    shared: Shared[int] = Shared(read, max_age_s=3600)
    got: list[int] = []

    async def wait_for(call: Callable[[], Awaitable[int]]) -> None:
        got.append(await call())

    async with anyio.create_task_group() as tg:
        first = anyio.CancelScope()
        tg.start_soon(_cancellable, first, shared)
        for _ in range(100_000):
            if calls:
                break
            await anyio.lowlevel.checkpoint()
        tg.start_soon(wait_for, shared.get)
        for _ in range(100_000):
            if shared.waiting == 1:
                break
            await anyio.lowlevel.checkpoint()
        first.cancel()
    assert got == [2]


async def _cancellable(scope: anyio.CancelScope, shared: Shared[int]) -> None:
    with scope:
        await shared.get()
