"""A poison task: its handler SIGKILLs the server process every time it runs. Servers are
restarted as they die; after `max_deliveries` deaths the task is dead with the reason recorded,
the other tasks complete, and the last server keeps running."""

from __future__ import annotations

import anyio
import pytest

import strego
from strego.task import TaskState
from tests.faults.support import Progress, Workers, make_backend, wait_for_progress
from tests.redis_server import RedisServer

pytestmark = [
    pytest.mark.anyio,
    pytest.mark.redis,
    pytest.mark.parametrize("anyio_backend", ["asyncio"]),
]

MAX_DELIVERIES = 3


async def test_poison_task_ends_dead_after_the_delivery_cap(
    own_redis: RedisServer, workers: Workers, prefix: str
) -> None:
    backend = make_backend(own_redis.url, prefix, "asyncio")
    client = strego.Client(backend)
    poison = await client.enqueue(strego.Task("poison"))
    workers.env.update(STREGO_FAULT_LEASE="0.5", STREGO_FAULT_MAX_DELIVERIES=str(MAX_DELIVERIES))
    deaths = 0
    proc = workers.start()
    # each death is progress: a server starting slowly on a loaded machine is not a hang
    progress = Progress("server deaths", ceiling=300)
    while True:
        info = await backend.get_task(poison.id, "default")
        assert info is not None
        if info.state is TaskState.DEAD:
            break
        progress.moved(deaths, f"poison task still {info.state}")
        if proc.poll() is not None:
            assert proc.returncode == -9, workers.stderr_text()  # killed by its own handler
            deaths += 1
            proc = workers.start()
        await anyio.sleep(0.05)
    # tasks fetched along with the poison die with it (and count deliveries): send the others
    # once it is dead, to the server that replaced the last victim
    jobs = [await client.enqueue(strego.Task("job", 0.01)) for _ in range(20)]

    async def completed() -> int:
        infos = [await backend.get_task(job.id, "default") for job in jobs]
        return sum(1 for i in infos if i is not None and i.state is TaskState.COMPLETED)

    await wait_for_progress(completed, len(jobs), "the other tasks completed")
    await anyio.sleep(0.5)  # the surviving server is still serving, not dying again
    alive = proc.poll() is None
    runs = workers.runs()
    await backend.aclose()
    print(
        f"\npoison: {deaths} server deaths, {len(runs[poison.id])} runs,"
        f" then dead: {info.last_error}"
    )
    assert alive
    assert deaths == MAX_DELIVERIES == len(runs[poison.id])
    assert info.deliveries == MAX_DELIVERIES
    assert info.last_error is not None
    assert f"exceeded max deliveries ({MAX_DELIVERIES})" in info.last_error
