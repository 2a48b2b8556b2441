"""Handlers that misbehave inside a live server: one that ignores cancellation (a sync handler
sleeping in a thread, an async one in a shielded scope) and one that blocks the event loop for a
second. The server stays alive, keeps renewing its leases (a rival server never gets to claim
them), and a stop completes once its shutdown timeout has passed and the shielded handler ended,
leaving no task active."""

from __future__ import annotations

import time
from collections import Counter

import anyio
import pytest

import strego
from strego.backends.redis import RedisBackend
from strego.task import TaskState
from tests.faults.support import make_backend
from tests.redis_server import RedisServer
from tests.runtime_support import eventually, wait_for_state

pytestmark = [pytest.mark.anyio, pytest.mark.redis]


def misbehaving_server(backend: RedisBackend, ran: Counter[str], **options: float) -> strego.Server:
    server = strego.Server(backend, concurrency=4, **options)  # type: ignore[arg-type]

    @server.handler("thread")
    def in_thread(seconds: float) -> None:  # cannot be interrupted: abandoned on cancel
        ran["thread"] += 1
        time.sleep(seconds)

    @server.handler("shielded")
    async def shielded(seconds: float) -> None:
        ran["shielded"] += 1
        with anyio.CancelScope(shield=True):
            await anyio.sleep(seconds)

    @server.handler("block_loop")
    async def block_loop(seconds: float) -> None:
        ran["block_loop"] += 1
        time.sleep(seconds)  # noqa: ASYNC251 -- the point: the event loop stalls

    return server


async def active_count(backend: RedisBackend) -> int:
    return (await backend.queue_info("default")).counts[TaskState.ACTIVE]


async def test_leases_stay_renewed_while_handlers_misbehave(
    own_redis: RedisServer, prefix: str, anyio_backend: object
) -> None:
    backend = make_backend(own_redis.url, prefix, anyio_backend)
    rival_backend = make_backend(own_redis.url, prefix, anyio_backend)
    client = strego.Client(backend)
    ran: Counter[str] = Counter()
    rival_ran: Counter[str] = Counter()
    # lease 3 s, renewed every 1 s: a 1 s stall of the loop must not lose it
    server = misbehaving_server(backend, ran, claim_stale_after=3.0)
    rival = misbehaving_server(rival_backend, rival_ran, claim_stale_after=3.0,
                               recovery_interval=0.1)  # fmt: skip
    infos = [
        await client.enqueue(strego.Task("thread", 4.0)),
        await client.enqueue(strego.Task("shielded", 4.0)),
        await client.enqueue(strego.Task("block_loop", 1.0)),
        await client.enqueue(strego.Task("block_loop", 1.0)),
    ]
    async with server:
        await eventually(lambda: sum(ran.values()) >= 3, "the server to start the handlers")
        # everything left is held by `server`: the rival can only get a task by claiming it
        async with rival:
            for info in infos:
                done = await wait_for_state(backend, info.id, TaskState.COMPLETED)
                assert done.deliveries == 1, done
    await backend.aclose()
    await rival_backend.aclose()
    assert ran == Counter(thread=1, shielded=1, block_loop=2)
    assert not rival_ran and rival.stats.claimed == 0
    assert server.stats.processed == 4


async def test_shutdown_ends_despite_handlers_ignoring_cancellation(
    own_redis: RedisServer, prefix: str, anyio_backend: object
) -> None:
    backend = make_backend(own_redis.url, prefix, anyio_backend)
    client = strego.Client(backend)
    ran: Counter[str] = Counter()
    server = misbehaving_server(backend, ran, shutdown_timeout=0.5, claim_stale_after=3.0)
    infos = [
        await client.enqueue(strego.Task("thread", 3.0)),
        await client.enqueue(strego.Task("shielded", 1.5)),
    ]
    stopped = anyio.Event()

    async def run() -> None:
        await server.run(handle_signals=False)
        stopped.set()

    async with anyio.create_task_group() as tg:
        tg.start_soon(run)
        await eventually(lambda: sum(ran.values()) == 2, "both handlers to start")
        # hang guard, not a timing assertion: timeout + the shielded handler + generous slack
        with anyio.fail_after(0.5 + 1.5 + 10):
            server.stop()
            await stopped.wait()
    states = {
        info.type: (await backend.get_task(info.id, "default")).state  # type: ignore[union-attr]
        for info in infos
    }
    assert await active_count(backend) == 0
    await backend.aclose()
    # the abandoned thread's task went back to pending; the shielded one finished or went back
    assert states["thread"] is TaskState.PENDING
    assert states["shielded"] in (TaskState.COMPLETED, TaskState.PENDING)
