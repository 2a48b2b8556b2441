"""One server process for bench/run.py's scaling figure: runs no-op tasks of queue "default" until
SIGTERM.  usage: python bench/worker.py REDIS_URL CONCURRENCY [asyncio|trio]

Once loaded, it counts itself in READY_KEY and waits for a token on GO_KEY, so that all the
processes of a run start together (process start-up takes longer than a short run)."""

from __future__ import annotations

import logging
import os
import sys

import anyio
import redis

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from strego import Server, Task
from strego.backends.redis.backend import RedisBackend

READY_KEY = "strego-bench:ready"
GO_KEY = "strego-bench:go"


async def main(url: str, concurrency: int, loop: str) -> None:
    from strego.backends.redis.anyio_transport import AnyioTransport

    backend = RedisBackend(AnyioTransport.from_url(url))  # runs under asyncio and trio
    server = Server(backend, concurrency=concurrency)

    @server.handler("noop")
    async def noop(task: Task) -> None:
        return None

    await server.run()  # until SIGTERM, then a graceful stop
    await backend.aclose()


if __name__ == "__main__":
    logging.disable(logging.INFO)
    loop = sys.argv[3] if len(sys.argv) > 3 else "asyncio"
    with redis.Redis.from_url(sys.argv[1]) as r:
        r.incr(READY_KEY)
        r.blpop([GO_KEY])
    anyio.run(main, sys.argv[1], int(sys.argv[2]), loop, backend=loop)
