"""A worker module for `strego worker tests.crash_worker:server`, run as a real subprocess by the
crash and CLI tests. Configured by environment: STREGO_TEST_REDIS_URL_FOR_WORKER (Redis URL),
STREGO_TEST_PREFIX (key prefix), STREGO_TEST_LOG (a file: one line per handler start/finish)."""

from __future__ import annotations

import os

import anyio

import strego
from strego.backends.redis import RedisBackend

backend = RedisBackend.from_url(
    os.environ["STREGO_TEST_REDIS_URL_FOR_WORKER"], prefix=os.environ["STREGO_TEST_PREFIX"]
)
server = strego.Server(backend, concurrency=4, claim_stale_after=1.0, shutdown_timeout=10)


def _log(line: str) -> None:
    with open(os.environ["STREGO_TEST_LOG"], "a") as f:
        f.write(line + "\n")


@server.handler("sleep")
async def sleep(task: strego.Task) -> None:
    _log(f"start {task.id}")
    await anyio.sleep(float(task.payload))
    _log(f"finish {task.id}")
