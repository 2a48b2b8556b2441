"""Bounded work per script call, measured: the slowest calls Redis saw (its SLOWLOG) while one
queue holds many tasks. Redis serves nobody else while a script runs; the goal is that no call
takes 10 ms or more, however big the queue.

    python bench/slowlog.py [--pending 1000000] [--dead 100000] [--serve 5000]
                            [--scheduled 10000] [--slower-than-us 100] [--json]

On a throwaway redis-server it starts itself (never the one on 6379), it fills one queue with
`--dead` dead tasks (a Server whose handler fails them, no retries) and then `--pending` pending
no-op tasks (`Client.enqueue_many` in batches of 10,000). Nothing of the filling is measured.
Then, with `slowlog-log-slower-than` set to `--slower-than-us` (calls faster than that are not
counted: at 0, the commands that scripts run would flood the log) and the log read and reset
after each phase:

- list: every page (1,000 tasks each) of the pending and dead tasks, and the active, scheduled
  and completed ones, walked by cursor;
- serve: a Server (concurrency 32) runs `--serve` of the pending tasks;
- promote: `--scheduled` tasks enqueued due in a second, then promoted (`promote` until none is
  due);
- requeue: `requeue_all_dead` moves the dead tasks back to pending;
- purge: the queue's public `purge` of its pending tasks (the whole queue).

It prints, per phase, each script (by name) or command a client sent (the commands a script runs
are left out: the script's own entry counts them) with its number of logged calls and its slowest
and 99th percentile durations in ms. The filling takes minutes at the default sizes; small sizes
(`--pending 200 --dead 20 --serve 50 --scheduled 50`) make a smoke run."""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
import time
from collections import defaultdict
from typing import Any

import anyio
import redis

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.scenarios import drain, percentile
from strego import Client, Server, Task, TaskState
from strego.backends.base import MAX_PAGE
from strego.backends.redis.backend import RedisBackend
from strego.backends.redis.scripts import NAMES, script
from strego.errors import BackendTimeoutError
from tests.redis_server import start_redis_server

QUEUE = "default"
#: Messages per enqueue_many call while filling.
FILL_BATCH = 10_000
#: The goal: no call this slow or slower.
GOAL_MS = 10.0
#: Kept entries of the slow log: more than any phase sends commands.
SLOWLOG_LEN = 1_000_000

SCRIPT_NAMES = {script(name).sha: name for name in NAMES}


async def fill_dead(backend: RedisBackend, client: Client, n: int) -> None:
    """n dead tasks: enqueued with no retries, failed by a Server's handler."""
    if n == 0:
        return
    for start in range(0, n, FILL_BATCH):
        batch = [Task("boom", max_retry=0) for _ in range(min(FILL_BATCH, n - start))]
        await client.enqueue_many(batch)
    server = Server(backend, concurrency=64, queues=[QUEUE])
    done = anyio.Event()
    runs = 0

    @server.handler("boom")
    async def boom(task: Task) -> None:
        nonlocal runs
        runs += 1
        if runs >= n:
            done.set()
        raise RuntimeError("dead on purpose")

    # the handler fails each task on purpose: no warning per task
    server_log = logging.getLogger("strego.server")
    level = server_log.level
    server_log.setLevel(logging.ERROR)
    try:
        async with server:  # leaving the block stops it gracefully, flushing every failure
            await done.wait()
    finally:
        server_log.setLevel(level)
    assert (await backend.queue_info(QUEUE)).counts[TaskState.DEAD] == n


async def fill_pending(client: Client, n: int) -> None:
    for start in range(0, n, FILL_BATCH):
        await client.enqueue_many([Task("noop") for _ in range(min(FILL_BATCH, n - start))])


async def walk(client: Client, state: TaskState) -> int:
    """Every page of one state's listing; returns how many tasks it listed."""
    listed, cursor = 0, None
    while True:
        page = await client.list_tasks(QUEUE, state, cursor=cursor, limit=MAX_PAGE)
        listed += len(page.tasks)
        if page.next_cursor is None:
            return listed
        cursor = page.next_cursor


def slow_calls(r: redis.Redis) -> dict[str, list[float]]:
    """The durations (ms) of every call in the slow log, by script name or command; resets it."""
    by_name: dict[str, list[float]] = defaultdict(list)
    for entry in r.slowlog_get(SLOWLOG_LEN):
        if entry.get("client_address") == b"?:0":  # run by a script
            continue
        command = [a.decode(errors="replace") if isinstance(a, bytes) else str(a)
                   for a in entry["command"].split(b" ")[:2]]  # fmt: skip
        name = command[0].upper()
        if name in ("EVALSHA", "EVALSHA_RO") and len(command) > 1:
            name = SCRIPT_NAMES.get(command[1], f"script {command[1][:8]}")
        elif name in ("SLOWLOG", "CONFIG"):
            continue
        by_name[name].append(entry["duration"] / 1000)
    r.slowlog_reset()
    return by_name


def summary(by_name: dict[str, list[float]]) -> list[dict[str, Any]]:
    rows = [
        {"call": name, "calls": len(d), "max_ms": max(d), "p99_ms": percentile(d, 0.99)}
        for name, d in by_name.items()
    ]
    return sorted(rows, key=lambda row: -row["max_ms"])


async def measure(
    url: str, pending: int, dead: int, serve: int, scheduled: int, slower_than_us: int, log: Any
) -> dict[str, Any]:
    r = redis.Redis.from_url(url)
    backend = RedisBackend.from_url(url)
    client = Client(backend)
    out: dict[str, Any] = {"pending": pending, "dead": dead, "serve": serve, "scheduled": scheduled,
                           "slower_than_us": slower_than_us, "phases": {}}  # fmt: skip
    try:
        t0 = time.perf_counter()
        await fill_dead(backend, client, dead)
        await fill_pending(client, pending)
        filled_s = time.perf_counter() - t0
        log(f"filled {dead:,} dead and {pending:,} pending tasks in {filled_s:.0f} s")
        r.config_set("slowlog-max-len", SLOWLOG_LEN)
        r.config_set("slowlog-log-slower-than", slower_than_us)
        r.slowlog_reset()

        async def phase(name: str, work: Any) -> None:
            t = time.perf_counter()
            detail = await work()
            rows = summary(slow_calls(r))
            out["phases"][name] = {"seconds": time.perf_counter() - t, "detail": detail,
                                   "calls": rows}  # fmt: skip
            log(f"\n{name} ({time.perf_counter() - t:.1f} s): {detail}")
            log(f"  {'call':<24}{'calls':>9}{'max ms':>10}{'p99 ms':>10}")
            for row in rows:
                log(f"  {row['call']:<24}{row['calls']:>9}{row['max_ms']:>10.2f}"
                    f"{row['p99_ms']:>10.2f}")  # fmt: skip

        async def listing() -> dict[str, int]:
            return {s.value: await walk(client, s) for s in TaskState}

        async def serving() -> str:
            seconds = await drain(backend, serve, 32, [QUEUE])
            return f"{serve:,} tasks in {seconds:.1f} s"

        async def promote() -> str:
            for start in range(0, scheduled, FILL_BATCH):
                size = min(FILL_BATCH, scheduled - start)
                await client.enqueue_many([Task("noop", process_in=1) for _ in range(size)])
            await anyio.sleep(1.5)
            calls = 1
            while (due := await backend.promote([QUEUE])) is not None:
                calls += 1
                await anyio.sleep(max(0, due - time.time() * 1000) / 1000)
            return f"{scheduled:,} scheduled tasks promoted in {calls} calls"

        async def requeue() -> str:
            return f"{await client.requeue_all_dead(QUEUE):,} requeued"

        async def purge() -> str:
            try:
                return f"{await backend.purge(QUEUE, [TaskState.PENDING]):,} purged"
            except BackendTimeoutError as exc:  # the slow log shows how long it took
                return f"no reply: {exc}"

        await phase("list", listing)
        await phase("serve", serving)
        await phase("promote", promote)
        await phase("requeue", requeue)
        await phase("purge", purge)
        slowest = max(
            ((row["max_ms"], name, row["call"])
             for name, p in out["phases"].items() for row in p["calls"]),
            default=(0.0, "-", "-"),
        )  # fmt: skip
        out["slowest"] = {"ms": slowest[0], "phase": slowest[1], "call": slowest[2]}
        verdict = "met" if slowest[0] < GOAL_MS else "MISSED"
        log(f"\nslowest call: {slowest[2]} in {slowest[1]}, {slowest[0]:.2f} ms "
            f"(goal < {GOAL_MS:g} ms: {verdict})")  # fmt: skip
        return out
    finally:
        await backend.aclose()
        r.close()


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pending", type=int, default=1_000_000)
    parser.add_argument("--dead", type=int, default=100_000)
    parser.add_argument("--serve", type=int, default=5_000)
    parser.add_argument("--scheduled", type=int, default=10_000)
    parser.add_argument("--slower-than-us", type=int, default=100)
    parser.add_argument("--json", action="store_true", help="print one JSON object only")
    args = parser.parse_args(argv)
    if args.serve > args.pending:
        parser.error("--serve must not exceed --pending")

    def log(line: str) -> None:
        if not args.json:
            print(line, flush=True)

    server = start_redis_server()
    try:
        result = anyio.run(
            measure,
            server.url,
            args.pending,
            args.dead,
            args.serve,
            args.scheduled,
            args.slower_than_us,
            log,
        )
    finally:
        server.stop()
        shutil.rmtree(server.dir, ignore_errors=True)
    if args.json:
        print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
