"""The task history's figures (issue 20), side by side in one run:

    python bench/history.py [--dsn postgresql://postgres@127.0.0.1:5432/postgres]
                            [--tasks 20000] [--lag-tasks 100000] [--rows 1000000]
                            [--parts 123] [--drainer-args '--connections 3']

1. process rate with history on against off: one Server (concurrency 32, asyncio, anyio
   transport) runs `--tasks` no-op tasks already enqueued, runs alternating off/on, medians;
2. drainer lag: a Server runs `--lag-tasks` tasks with history on while `strego history` (its own
   process, with `--drainer-args`) drains into PostgreSQL; the backlog (XLEN of the history
   stream, in entries) is sampled every 100 ms: its maximum, its value at 25/50/75/100% of the
   server's run (growing, or level), how long the drainer took after the last task to store the
   rest, and the CPU time per event of the drainer and of its PostgreSQL connections;
3. search: `--rows` tasks (one enqueue event each, over 30 days, 20 types, 3 queues, 5 states)
   stored through PostgresHistory.store in batches, then 200 searches by type, state and a
   time window: p50 and p95, and the same for label and text searches.

A throwaway redis-server and a throwaway database (dropped at the end) are used."""

from __future__ import annotations

import argparse
import os
import random
import statistics
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import anyio
import redis

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.scenarios import drain, enqueue_batches, percentile
from strego import Client
from strego.backends.redis import RedisBackend
from strego.history import HistoryEvent, PostgresHistory
from strego.ids import new_task_id
from tests.postgres_server import throwaway_database
from tests.redis_server import start_redis_server

CONCURRENCY = 32


def _flush(url: str) -> None:
    r = redis.Redis.from_url(url)
    try:
        r.flushdb()
    finally:
        r.close()


async def _process_rate(url: str, n: int, history: bool) -> float:
    backend = RedisBackend.from_url(url, history=history)
    await enqueue_batches(Client(backend), n)
    seconds = await drain(backend, n, CONCURRENCY)
    await backend.aclose()
    return n / seconds


def _redis_cpu_s(url: str) -> float:
    """The redis-server process's CPU time (user + system): unlike a command's time, not
    stretched when the machine's other load takes the core away mid-command."""
    r = redis.Redis.from_url(url)
    try:
        cpu = r.info("cpu")
        return float(cpu["used_cpu_user"]) + float(cpu["used_cpu_sys"])
    finally:
        r.close()


def on_off(url: str, n: int, runs: int) -> dict[str, float]:
    """Alternating runs (off, on, on, off, ...: neither side always goes first), medians; and
    Redis's own CPU time per task, which the machine's other load disturbs far less."""
    rates: dict[bool, list[float]] = {False: [], True: []}
    cpu: dict[bool, list[float]] = {False: [], True: []}
    for i in range(runs):
        for on in (False, True) if i % 2 == 0 else (True, False):
            _flush(url)
            before = _redis_cpu_s(url)
            rates[on].append(anyio.run(_process_rate, url, n, on))
            cpu[on].append((_redis_cpu_s(url) - before) / n * 1e6)
    off, on = statistics.median(rates[False]), statistics.median(rates[True])
    off_us, on_us = statistics.median(cpu[False]), statistics.median(cpu[True])
    return {
        "off tasks/s": off, "on tasks/s": on, "rate cost %": 100 * (1 - on / off),
        "off redis cpu us/task": off_us, "on redis cpu us/task": on_us,
        "redis cpu cost %": 100 * (on_us / off_us - 1),
    }  # fmt: skip


def _cpu_s(pid: int) -> float:
    """A process's CPU time (user + system) so far, from /proc (Linux)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _backends(dsn: str) -> list[int]:
    """The PostgreSQL server processes of the drainer's connections."""
    import psycopg

    with psycopg.connect(dsn, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT pid FROM pg_stat_activity WHERE application_name = 'strego-history'"
        ).fetchall()
    return [int(pid) for (pid,) in rows]


async def _lag_run(url: str, dsn: str, n: int, drainer_args: list[str]) -> dict[str, Any]:
    backend = RedisBackend.from_url(url, history=True)
    await enqueue_batches(Client(backend), n)
    key = backend.keys("default").history
    drainer = subprocess.Popen(  # noqa: ASYNC220 (started once, before the measure)
        [sys.executable, "-m", "strego.cli", "history", "--redis", url, "--postgres", dsn,
         "--log-level", "WARNING", *drainer_args],
    )  # fmt: skip
    #: (seconds since the server started, backlog in stream entries), every 100 ms
    samples: list[tuple[float, int]] = []
    r = redis.Redis.from_url(url)
    stop = anyio.Event()
    t0 = time.perf_counter()

    async def sample() -> None:
        while not stop.is_set():
            backlog = int(await anyio.to_thread.run_sync(r.xlen, key))
            samples.append((time.perf_counter() - t0, backlog))
            await anyio.sleep(0.1)

    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(sample)
            t0 = time.perf_counter()
            seconds = await drain(backend, n, CONCURRENCY)
            t1 = time.perf_counter()
            lag_at_end = int(await anyio.to_thread.run_sync(r.xlen, key))
            while int(await anyio.to_thread.run_sync(r.xlen, key)) > 0:  # noqa: ASYNC110
                await anyio.sleep(0.05)
            catch_up = time.perf_counter() - t1
            stop.set()
        during = [(t, b) for t, b in samples if t <= seconds]

        def at(share: float) -> int:
            """The backlog sampled last before `share` of the server's run."""
            before = [b for t, b in during if t <= share * seconds]
            return before[-1] if before else 0

        events = 3 * n  # enqueue, active, completed
        cpu = _cpu_s(drainer.pid), sum(_cpu_s(pid) for pid in _backends(dsn))
        return {
            "tasks/s": round(n / seconds),
            "max backlog (entries)": max(b for _, b in during) if during else lag_at_end,
            "backlog at 25/50/75/100% of the run": [at(0.25), at(0.5), at(0.75), lag_at_end],
            "catch-up s": round(catch_up, 2),
            "drained events/s": round(events / (time.perf_counter() - t0)),
            "drainer cpu us/event": round(cpu[0] / events * 1e6, 1),
            "postgres cpu us/event": round(cpu[1] / events * 1e6, 1),
        }
    finally:
        drainer.terminate()
        drainer.wait()
        r.close()
        await backend.aclose()


TYPES = [f"type.{i:02}" for i in range(20)]
QUEUES = ["default", "mail", "reports"]
STATES = ["completed", "completed", "completed", "dead", "pending", "retry", "cancelled"]


async def _fill(history: PostgresHistory, rows: int, batch: int = 5000) -> float:
    rng = random.Random(20)
    end = datetime.now(UTC).replace(microsecond=0)
    start_ms = int((end - timedelta(days=30)).timestamp() * 1000)
    span = 30 * 86_400_000
    t0 = time.perf_counter()
    seq = 0
    for first in range(0, rows, batch):
        events = []
        for i in range(first, min(rows, first + batch)):
            at = start_ms + span * i // rows
            seq += 1
            events.append(HistoryEvent(
                queue=rng.choice(QUEUES), seq=(at, seq), task_id=new_task_id(at),
                state=rng.choice(STATES), at_ms=at, retried=0, type=rng.choice(TYPES),
                labels={"customer": f"c{rng.randrange(1000)}"},
                payload=f'{{"order": {rng.randrange(10**6)}}}'.encode(), encoding="json",
                created_ms=at,
            ))  # fmt: skip
        await history.store(events)
    return rows / (time.perf_counter() - t0)


async def _searches(history: PostgresHistory) -> dict[str, float]:
    rng = random.Random(7)
    now = datetime.now(UTC)
    times: dict[str, list[float]] = {"type+state+time": [], "label": [], "text": []}
    for _ in range(200):
        since = now - timedelta(days=rng.randrange(1, 30))
        window = timedelta(days=rng.choice([1, 7]))
        queries: dict[str, dict[str, Any]] = {
            "type+state+time": {"type": rng.choice(TYPES), "state": rng.choice(STATES),
                                "since": since, "until": since + window},
            "label": {"label": f"customer=c{rng.randrange(1000)}"},
            "text": {"text": str(rng.randrange(10**6))},
        }  # fmt: skip
        for name, q in queries.items():
            t0 = time.perf_counter()
            await history.search(limit=50, **q)
            times[name].append((time.perf_counter() - t0) * 1000)
    out = {}
    for name, ms in times.items():
        out[f"{name} p50 ms"] = statistics.median(ms)
        out[f"{name} p95 ms"] = percentile(ms, 0.95)
    return out


async def _search_run(dsn: str, rows: int) -> dict[str, float]:
    history = PostgresHistory(dsn)
    try:
        rate = await _fill(history, rows)
        await history._run(lambda conn: conn.execute("ANALYZE strego_tasks"))
        return {"stored rows/s": rate, **await _searches(history)}
    finally:
        await history.aclose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--dsn", default="postgresql://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--url", help="a Redis to use (flushed!); default: a throwaway one")
    parser.add_argument("--tasks", type=int, default=20_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--lag-tasks", type=int, default=100_000)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--parts", default="123", help="which figures (default 123: all)")
    parser.add_argument(
        "--drainer-args", default="", help="more arguments for `strego history` (part 2)"
    )
    a = parser.parse_args()
    server = None if a.url else start_redis_server()
    url = a.url or server.url  # type: ignore[union-attr]
    try:
        if "1" in a.parts:
            print("1. history on vs off, process rate:", on_off(url, a.tasks, a.runs), flush=True)
            _flush(url)
        if "2" in a.parts:
            with throwaway_database(a.dsn) as dsn:
                lag = anyio.run(_lag_run, url, dsn, a.lag_tasks, a.drainer_args.split())
                print("2. drainer lag:", lag, flush=True)
        if "3" in a.parts:
            with throwaway_database(a.dsn) as dsn:
                print("3. search:", anyio.run(_search_run, dsn, a.rows), flush=True)
    finally:
        if server is not None:
            server.stop()


if __name__ == "__main__":
    main()
