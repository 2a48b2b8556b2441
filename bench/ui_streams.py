"""What open dashboard tabs cost Redis (issue 17): `strego web` (Hypercorn, asyncio) in a
subprocess on a throwaway redis-server holding `--queues` queues, and 1, then `--tabs` clients
each holding the live overview's event stream (/ui/events) open for `--seconds`; the Redis
commands processed meanwhile (INFO total_commands_processed) and the events each tab got.

    python bench/ui_streams.py [--queues 20] [--tabs 50] [--seconds 10] [--interval 1]

Every tab reads the one shared snapshot, so the Redis work should not grow with the tabs.
A bench, not a test: it prints its figures."""

from __future__ import annotations

import argparse
import subprocess
import sys
import time

import anyio
import httpx
import redis

from strego.backends.redis import RedisBackend
from strego.message import TaskMessage
from tests.redis_server import free_port, running_redis_server


async def load(url: str, queues: int) -> None:
    backend = RedisBackend.from_url(url)
    try:
        for q in range(queues):
            await backend.enqueue_many(
                [
                    TaskMessage(f"q{q}-{i}", "t", f"queue-{q}", b"{}", "json", created_ms=1)
                    for i in range(100)
                ]
            )
    finally:
        await backend.aclose()


async def tabs(base: str, count: int, seconds: float) -> list[int]:
    events = [0] * count

    async def tab(i: int) -> None:
        async with httpx.AsyncClient(timeout=None) as client:
            with anyio.move_on_after(seconds):
                async with client.stream("GET", base + "/ui/events") as stream:
                    async for line in stream.aiter_lines():
                        if line.startswith("event: overview"):
                            events[i] += 1

    async with anyio.create_task_group() as tg:
        for i in range(count):
            tg.start_soon(tab, i)
    return events


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--queues", type=int, default=20)
    parser.add_argument("--tabs", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--interval", type=float, default=1.0)
    args = parser.parse_args()
    with running_redis_server() as server:
        anyio.run(load, server.url, args.queues)
        port = free_port()
        web = subprocess.Popen(
            [
                *(sys.executable, "-m", "strego.cli", "web", "--redis", server.url),
                *("--port", str(port), "--interval", str(args.interval)),
            ],
        )
        base = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline:
                try:
                    if httpx.get(base + "/api/v1/queues").status_code == 200:
                        break
                except httpx.TransportError:
                    time.sleep(0.05)
            r = redis.Redis.from_url(server.url)
            for count in (1, args.tabs):
                before = int(r.info("stats")["total_commands_processed"])
                events = anyio.run(tabs, base, count, args.seconds)
                done = int(r.info("stats")["total_commands_processed"]) - before
                print(
                    f"{count:3d} tab(s), {args.seconds:.0f} s, {args.queues} queues: "
                    f"{done / args.seconds:,.0f} Redis commands/s; events per tab "
                    f"min {min(events)} max {max(events)}"
                )
        finally:
            web.terminate()
            web.wait(10)


if __name__ == "__main__":
    main()
