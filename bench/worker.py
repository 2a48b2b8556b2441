"""One server process for bench/run.py's scaling figures: runs the tasks of queue "default" until
SIGTERM, each burning WORK_MS of CPU time (0, the default: no-op tasks).
usage: python bench/worker.py REDIS_URL CONCURRENCY [asyncio|trio [WORK_MS]]

Once loaded, it counts itself in READY_KEY and waits for a token on GO_KEY, so that all the
processes of a run start together (process start-up takes longer than a short run)."""

from __future__ import annotations

import logging
import os
import sys
import time

import anyio
import redis

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from strego import Server, Task
from strego.backends.redis.backend import RedisBackend

READY_KEY = "strego-bench:ready"
GO_KEY = "strego-bench:go"


def burn(seconds: float) -> None:
    """Use `seconds` of this thread's CPU time (not wall time: being descheduled does not count),
    as a handler that computes would."""
    end = time.thread_time() + seconds
    while time.thread_time() < end:
        pass


async def main(url: str, concurrency: int, loop: str, work_ms: float) -> None:
    from strego.backends.redis.anyio_transport import AnyioTransport

    backend = RedisBackend(AnyioTransport.from_url(url))  # runs under asyncio and trio
    server = Server(backend, concurrency=concurrency)

    @server.handler("noop")
    async def noop(task: Task) -> None:
        if work_ms:
            burn(work_ms / 1000)

    await server.run()  # until SIGTERM, then a graceful stop
    await backend.aclose()


if __name__ == "__main__":
    logging.disable(logging.INFO)
    loop = sys.argv[3] if len(sys.argv) > 3 else "asyncio"
    work_ms = float(sys.argv[4]) if len(sys.argv) > 4 else 0.0
    with redis.Redis.from_url(sys.argv[1]) as r:
        r.incr(READY_KEY)
        r.blpop([GO_KEY])
    anyio.run(main, sys.argv[1], int(sys.argv[2]), loop, work_ms, backend=loop)
