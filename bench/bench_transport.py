"""Benchmark the Redis transports on one workload: EVALSHA of a tiny script, sequentially, from many
concurrent tasks, and in pipelined batches; through RedisPyTransport under asyncio, AnyioTransport
under asyncio and AnyioTransport under trio. Prints a table of ops/s and of this process's CPU time
(user + sys, from os.times) per call, and writes the figures as JSON.

    .venv/bin/python bench/bench_transport.py [--url redis://...] [--ops 20000] [--repeat 3]

Each workload runs --repeat times; the figures are the medians. CPU per call is the steadier figure
on a busy machine: wall time also counts waiting for Redis and for other processes.
Without --url it starts a throwaway redis-server on a free port (and stops it at the end)."""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

import anyio

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from strego.backends.redis.anyio_transport import AnyioTransport
from strego.backends.redis.transport import Command, Script, ScriptCall, Transport

SCRIPT = Script("bench_incr", "return redis.call('INCR', KEYS[1])")
CALL = ScriptCall(SCRIPT, ["bench:counter"], [])


async def sequential(t: Transport, ops: int, _concurrency: int, _batch: int) -> None:
    for _ in range(ops):
        await t.run_script(CALL)


async def concurrent(t: Transport, ops: int, concurrency: int, _batch: int) -> None:
    async def worker(n: int) -> None:
        for _ in range(n):
            await t.run_script(CALL)

    async with anyio.create_task_group() as tg:
        for i in range(concurrency):
            tg.start_soon(worker, ops // concurrency + (1 if i < ops % concurrency else 0))


async def pipelined(t: Transport, ops: int, _concurrency: int, batch: int) -> None:
    for start in range(0, ops, batch):
        await t.pipeline([CALL] * min(batch, ops - start))


WORKLOADS: dict[str, Callable[[Transport, int, int, int], Awaitable[None]]] = {
    "sequential": sequential,
    "concurrent": concurrent,
    "pipelined": pipelined,
}


def make_transport(kind: str, url: str) -> Transport:
    if kind == "anyio":
        return AnyioTransport.from_url(url)
    try:
        from strego.backends.redis.redispy_transport import RedisPyTransport
    except ImportError:
        sys.exit("strego.backends.redis.redispy_transport is missing")
    import redis.asyncio

    return RedisPyTransport(redis.asyncio.Redis.from_url(url))


async def run_all(
    kind: str, url: str, ops: int, concurrency: int, batch: int, repeat: int
) -> dict[str, Any]:
    transport = make_transport(kind, url)
    results: dict[str, Any] = {}
    try:
        await transport.execute(Command(("SCRIPT", "FLUSH")))
        await transport.run_script(CALL)  # connect and load the script before timing
        for name, workload in WORKLOADS.items():
            seconds, cpu_seconds = [], []
            for _ in range(repeat):
                before = await transport.execute(Command(("GET", "bench:counter")))
                started, cpu_started = time.perf_counter(), os.times()
                await workload(transport, ops, concurrency, batch)
                elapsed, cpu_ended = time.perf_counter() - started, os.times()
                after = await transport.execute(Command(("GET", "bench:counter")))
                assert int(after) - int(before) == ops, "every call must have run exactly once"
                seconds.append(elapsed)
                cpu_seconds.append(
                    cpu_ended.user - cpu_started.user + cpu_ended.system - cpu_started.system
                )
            elapsed = statistics.median(seconds)
            results[name] = {
                "ops": ops,
                "seconds": round(elapsed, 4),
                "ops_per_s": ops / elapsed,
                "cpu_us_per_op": statistics.median(cpu_seconds) / ops * 1e6,
                "runs_seconds": [round(x, 4) for x in seconds],
            }
        if isinstance(transport, AnyioTransport):
            results["stats"] = {
                "connections_opened": transport.stats.connections_opened,
                "writes": transport.stats.writes,
                "requests": transport.stats.requests,
            }
    finally:
        await transport.aclose()
    return results


RESULTS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", help="an existing Redis (default: start a throwaway server)")
    parser.add_argument("--ops", type=int, default=20_000, help="EVALSHA calls per workload")
    parser.add_argument("--concurrency", type=int, default=100, help="tasks in 'concurrent'")
    parser.add_argument("--batch", type=int, default=100, help="calls per pipeline")
    parser.add_argument("--repeat", type=int, default=3, help="runs per workload (medians kept)")
    parser.add_argument(
        "--json",
        default=os.path.join(RESULTS_DIR, "transport.json"),
        help="where to write results (default: bench/results/transport.json, git-ignored)",
    )
    args = parser.parse_args()

    server = None
    url = args.url
    if url is None:
        from tests.redis_server import start_redis_server

        server = start_redis_server()
        url = server.url
    runs = [
        ("redis-py", "redispy", "asyncio"),
        ("anyio", "anyio", "asyncio"),
        ("anyio", "anyio", "trio"),
    ]
    report: dict[str, Any] = {
        "ops": args.ops,
        "concurrency": args.concurrency,
        "batch": args.batch,
        "repeat": args.repeat,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "runs": [],
    }
    try:
        for label, kind, loop in runs:
            figures = anyio.run(run_all, kind, url, args.ops, args.concurrency, args.batch,
                                args.repeat, backend=loop)  # fmt: skip
            report["runs"].append({"transport": label, "event_loop": loop, **figures})
    finally:
        if server is not None:
            server.stop()

    names = list(WORKLOADS)
    print(
        f"{args.ops} EVALSHA per workload ({args.concurrency} tasks, batches of {args.batch}; "
        f"median of {args.repeat} runs)"
    )
    for title, key, fmt in (("ops/s", "ops_per_s", ",.0f"), ("CPU us/op", "cpu_us_per_op", ".1f")):
        print(f"{'transport':<10} {'loop':<8} " + " ".join(f"{n + ' ' + title:>21}" for n in names))
        for run in report["runs"]:
            cells = " ".join(f"{run[n][key]:>21{fmt}}" for n in names)
            print(f"{run['transport']:<10} {run['event_loop']:<8} {cells}")
    os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
    with open(args.json, "w") as f:
        json.dump(report, f, indent=2)
    print(f"results written to {os.path.abspath(args.json)}")


if __name__ == "__main__":
    main()
