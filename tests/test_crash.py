"""Real worker processes on Redis (`strego worker tests.crash_worker:server`): a worker killed with
SIGKILL mid-task loses nothing (another server completes its tasks once their leases expire), and
SIGTERM shuts a worker down gracefully."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

import strego
from strego.backends.redis import RedisBackend
from strego.task import TaskState
from tests.runtime_support import eventually, wait_for_state

pytestmark = [
    pytest.mark.anyio,
    pytest.mark.redis,
    pytest.mark.parametrize("anyio_backend", ["asyncio"]),  # redis-py runs on asyncio only
]

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def prefix() -> str:
    return f"crash{uuid.uuid4().hex[:10]}"


@pytest.fixture
async def backend(redis_url: str, prefix: str) -> AsyncIterator[RedisBackend]:
    b = RedisBackend.from_url(redis_url, prefix=prefix)
    try:
        yield b
    finally:
        await b.aclose()


@pytest.fixture
def start_worker(
    redis_url: str, prefix: str, tmp_path: Path
) -> Iterator[tuple[Path, list[subprocess.Popen[bytes]]]]:
    log = tmp_path / "handlers.log"
    log.touch()
    procs: list[subprocess.Popen[bytes]] = []
    env = dict(os.environ, STREGO_TEST_REDIS_URL_FOR_WORKER=redis_url,
               STREGO_TEST_PREFIX=prefix, STREGO_TEST_LOG=str(log))  # fmt: skip
    procs.append(
        subprocess.Popen(
            [sys.executable, "-m", "strego.cli", "worker", "tests.crash_worker:server"],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
    )
    try:
        yield log, procs
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait(timeout=10)


def started_ids(log: Path) -> set[str]:
    return {line.split()[1] for line in log.read_text().splitlines() if line.startswith("start")}


async def test_tasks_of_a_killed_worker_are_completed_by_another(
    backend: RedisBackend, start_worker: tuple[Path, list[subprocess.Popen[bytes]]]
) -> None:
    log, (proc,) = start_worker
    client = strego.Client(backend)
    infos = [await client.enqueue(strego.Task("sleep", 60)) for _ in range(3)]
    ids = {info.id for info in infos}
    await eventually(lambda: started_ids(log) == ids, "the worker to start all three tasks")
    proc.send_signal(signal.SIGKILL)
    assert proc.wait(timeout=10) == -signal.SIGKILL
    for info in infos:
        now = await backend.get_task(info.id)
        assert now is not None and now.state is TaskState.ACTIVE  # held by the dead worker

    ran: list[str] = []
    rescuer = strego.Server(backend, claim_stale_after=1.0)

    @rescuer.handler("sleep")
    async def quick(task: strego.Task) -> None:
        assert task.id is not None
        ran.append(task.id)

    async with rescuer:
        for info in infos:
            done = await wait_for_state(backend, info.id, TaskState.COMPLETED)
            assert done.deliveries == 2
    assert sorted(ran) == sorted(ids)
    assert "finish" not in log.read_text()


async def test_sigterm_lets_running_handlers_finish(
    backend: RedisBackend, start_worker: tuple[Path, list[subprocess.Popen[bytes]]]
) -> None:
    log, (proc,) = start_worker
    info = await strego.Client(backend).enqueue(strego.Task("sleep", 0.5))
    await eventually(lambda: started_ids(log) == {info.id}, "the worker to start the task")
    proc.send_signal(signal.SIGTERM)
    await eventually(lambda: proc.poll() is not None, "the worker to exit")
    output = proc.stdout.read().decode() if proc.stdout else ""
    assert proc.returncode == 0, output
    assert f"finish {info.id}" in log.read_text()
    done = await backend.get_task(info.id)
    assert done is not None and done.state is TaskState.COMPLETED
    assert "received SIGTERM: shutting down" in output
