"""The web API at scale (issue 16): 1,000,000 tasks over 100 queues on a throwaway redis-server,
served by `strego web` (Hypercorn, asyncio) in a subprocess, measured over real HTTP.

    python bench/web_scale.py [--queues 100] [--per-queue 10000] [--requests 100]

1. Loads the tasks (enqueue_many), then in each queue runs some: most complete, some die, so
   the per-minute history and the completed and dead listings have data.
2. With `--interval 0` (no snapshot kept: every request reads Redis, unless it arrives while
   another's read is under way), the latency of
   GET /api/v1/queues, of a first page of tasks, of a page deep in a listing (by cursor) and
   of one task: p50, p95, max over `--requests` sequential requests.
3. Pollers: 1 and then 50 clients each asking GET /api/v1/queues once a second for
   `--seconds`, against the default `--interval 1` and against `--interval 0`; the Redis
   commands processed meanwhile (INFO total_commands_processed) and the pollers' p95.

A bench, not a test: it prints its figures (README, Operations, quotes them)."""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from typing import Any

import anyio
import httpx
import redis

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.scenarios import percentile
from strego import Client, Task
from strego.backends.redis import RedisBackend
from tests.redis_server import free_port, start_redis_server

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PREFIX = "scale"


def queue_name(i: int) -> str:
    return f"q{i:03d}"


async def load(url: str, queues: int, per_queue: int, run: int) -> None:
    backend = RedisBackend.from_url(url, prefix=PREFIX)
    client = Client(backend)
    limiter = anyio.CapacityLimiter(4)

    async def one(i: int) -> None:
        name = queue_name(i)
        async with limiter:
            for start in range(0, per_queue, 1000):
                batch = [
                    Task("job", {"i": n}, queue=name)
                    for n in range(start, min(start + 1000, per_queue))
                ]
                await client.enqueue_many(batch)
            started = await backend.fetch([name], run, "bench:1:00000000", lease_ms=600_000)
            dead = started[: len(started) // 10]
            for task in dead:
                await backend.fail(name, task.id, "bench:1:00000000", "boom", retry_in_ms=None)
            await backend.ack_many([(name, t.id) for t in started[len(dead) :]], "bench:1:00000000")

    began = time.perf_counter()
    async with anyio.create_task_group() as tg:
        for i in range(queues):
            tg.start_soon(one, i)
    await backend.aclose()
    print(f"loaded {queues * per_queue:,} tasks in {time.perf_counter() - began:.0f} s", flush=True)


class Web:
    """`strego web` in a subprocess."""

    def __init__(self, url: str, interval: float) -> None:
        self.port = free_port()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "strego.cli", "web", "--redis", url, "--prefix", PREFIX,
             "--port", str(self.port), "--interval", str(interval)],
            cwd=ROOT,
            stderr=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        assert self.process.stderr is not None
        for _ in range(2):  # our line, then Hypercorn's "Running on" once it listens
            line = self.process.stderr.readline()
        if "Running on" not in line:
            raise RuntimeError(f"strego web did not start: {line}")
        self.base = f"http://127.0.0.1:{self.port}/api/v1"

    def stop(self) -> None:
        self.process.send_signal(signal.SIGINT)
        self.process.wait(timeout=30)


async def timed(http: httpx.AsyncClient, path: str) -> float:
    began = time.perf_counter()
    answer = await http.get(path)
    elapsed = (time.perf_counter() - began) * 1000
    if answer.status_code != 200:
        raise RuntimeError(f"{path}: {answer.status_code} {answer.text[:200]}")
    return elapsed


def summary(name: str, ms: list[float]) -> dict[str, Any]:
    row = {
        "what": name,
        "n": len(ms),
        "p50_ms": round(percentile(ms, 0.50), 1),
        "p95_ms": round(percentile(ms, 0.95), 1),
        "max_ms": round(max(ms), 1),
    }
    print(f"  {name:44} p50 {row['p50_ms']:7.1f} ms  p95 {row['p95_ms']:7.1f} ms  "
          f"max {row['max_ms']:7.1f} ms  (n={len(ms)})", flush=True)  # fmt: skip
    return row


async def latencies(base: str, requests: int, queue: str) -> None:
    async with httpx.AsyncClient(base_url=base, timeout=60) as http:
        await timed(http, "/queues")  # connections, scripts loaded
        ms = [await timed(http, "/queues") for _ in range(requests)]
        summary("GET /queues (no shared snapshot)", ms)
        first = f"/queues/{queue}/tasks?state=pending&limit=50"
        summary("GET first page, 50 pending", [await timed(http, first) for _ in range(requests)])
        cursor = None
        for _ in range(100):  # 100 pages of 50 in: task 5,000 of the queue
            page = (await http.get(first + (f"&cursor={cursor}" if cursor else ""))).json()
            cursor = page["next_cursor"]
        deep = f"{first}&cursor={cursor}"
        summary(
            "GET page 101 of pending (by cursor)",
            [await timed(http, deep) for _ in range(requests)],
        )
        done = f"/queues/{queue}/tasks?state=completed&limit=50"
        summary("GET first page, 50 completed", [await timed(http, done) for _ in range(requests)])
        task_id = page["tasks"][0]["id"]
        summary("GET one task", [await timed(http, f"/tasks/{task_id}") for _ in range(requests)])


def commands(url: str) -> int:
    client = redis.Redis.from_url(url)
    try:
        return int(client.info("stats")["total_commands_processed"])
    finally:
        client.close()


async def pollers(url: str, base: str, count: int, seconds: float) -> tuple[float, list[float]]:
    """`count` clients polling GET /queues once a second; Redis commands per second, and the
    pollers' latencies."""
    ms: list[float] = []

    async def poller(http: httpx.AsyncClient, offset: float) -> None:
        await anyio.sleep(offset)  # spread over the second, as independent tabs are
        deadline = time.perf_counter() + seconds
        while time.perf_counter() < deadline:
            began = time.perf_counter()
            ms.append(await timed(http, "/queues"))
            await anyio.sleep(max(0.0, 1.0 - (time.perf_counter() - began)))

    async with httpx.AsyncClient(base_url=base, timeout=60, limits=httpx.Limits(
            max_connections=count + 5)) as http:  # fmt: skip
        before = commands(url)
        began = time.perf_counter()
        async with anyio.create_task_group() as tg:
            for i in range(count):
                tg.start_soon(poller, http, i / count)
        per_s = (commands(url) - before) / (time.perf_counter() - began)
    return per_s, ms


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--queues", type=int, default=100)
    parser.add_argument("--per-queue", type=int, default=10_000)
    parser.add_argument("--run", type=int, default=1000, help="tasks run per queue (10%% die)")
    parser.add_argument("--requests", type=int, default=100)
    parser.add_argument("--seconds", type=float, default=10.0)
    args = parser.parse_args()
    server = start_redis_server(["--maxmemory-policy", "noeviction"])
    try:
        anyio.run(load, server.url, args.queues, args.per_queue, args.run)
        memory = redis.Redis.from_url(server.url).info("memory")["used_memory_human"]
        print(f"redis used_memory: {memory}")
        print("latency, strego web --interval 0 (every request reads Redis):")
        web = Web(server.url, 0)
        try:
            anyio.run(latencies, web.base, args.requests, queue_name(args.queues // 2))
        finally:
            web.stop()
        for interval in (1.0, 0.0):
            web = Web(server.url, interval)
            try:
                print(f"pollers, strego web --interval {interval:g}:")
                for count in (1, 50):
                    per_s, ms = anyio.run(pollers, server.url, web.base, count, args.seconds)
                    print(f"  {count:2} pollers: Redis {per_s:8.0f} commands/s", flush=True)
                    summary(f"  {count} pollers, GET /queues", ms)
            finally:
                web.stop()
    finally:
        server.stop()


if __name__ == "__main__":
    main()
