"""strego: enqueue N no-op tasks (client.enqueue_many, batches of 1000), then one Server with
concurrency C drains them; prints one JSON line shaped like the peers' (bench/peers.py runs them).

    python bench/bench_strego.py N C REDIS_URL [--transport default|redispy|anyio] [--trio]

Redis memory is read with the synchronous redis-py client before and after enqueueing (as the
peers' _mem.py does), so bytes_per_task counts what the pending tasks occupy."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time

import anyio

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.scenarios import drain, enqueue_batches, redis_cpu, used_memory
from strego import Client, Task
from strego.backends.redis.backend import RedisBackend

BATCH = 1000


def make_backend(url: str, transport: str) -> RedisBackend:
    """`default`: whatever RedisBackend.from_url picks; `redispy` or `anyio`: that transport."""
    if transport == "redispy":
        import redis.asyncio

        return RedisBackend(redis.asyncio.Redis.from_url(url, decode_responses=False))
    if transport == "anyio":
        from strego.backends.redis.anyio_transport import AnyioTransport

        return RedisBackend(AnyioTransport.from_url(url))
    return RedisBackend.from_url(url)


async def run(n: int, concurrency: int, url: str, transport: str) -> dict[str, object]:
    backend = make_backend(url, transport)
    client = Client(backend)
    # load the scripts first: Redis counts its script cache in used_memory
    await client.enqueue(Task("noop", queue="warmup"))
    await backend.purge("warmup")
    m0 = used_memory(url)
    c0, r0 = time.process_time(), redis_cpu(url)
    enqueue_s = await enqueue_batches(client, n, BATCH)
    c1, r1 = time.process_time(), redis_cpu(url)
    m1 = used_memory(url)
    c2, r2 = time.process_time(), redis_cpu(url)
    process_s = await drain(backend, n, concurrency)  # returns once every ack is flushed
    c3, r3 = time.process_time(), redis_cpu(url)
    await backend.aclose()
    # CPU seconds (this process, and Redis) tell what a phase costs even on a busy machine
    return {"peer": "strego", "n": n, "bytes_per_task": (m1 - m0) / n,
            "enqueue_s": enqueue_s, "process_s": process_s,
            "enqueue_cpu_s": c1 - c0, "process_cpu_s": c3 - c2,
            "enqueue_redis_cpu_s": r1 - r0, "process_redis_cpu_s": r3 - r2}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("n", type=int)
    ap.add_argument("concurrency", type=int)
    ap.add_argument("url")
    ap.add_argument("--transport", choices=("default", "redispy", "anyio"), default="default")
    ap.add_argument("--trio", action="store_true", help="run under trio (not with redispy)")
    a = ap.parse_args()
    logging.disable(logging.INFO)
    backend = "trio" if a.trio else "asyncio"
    result = anyio.run(run, a.n, a.concurrency, a.url, a.transport, backend=backend)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
