"""Throughput on a Redis Cluster as a ratio to one Redis: worker processes each run a loop of
enqueue_many (50 tasks over 12 queues), fetch over the 12 queues and ack_many, for --seconds; the
figure is tasks completed per second, all processes together. Starts one redis-server and a
6-node cluster (3 primaries, 3 replicas) on free loopback ports and stops them at the end.

    .venv/bin/python bench/cluster_ratio.py [--processes 4] [--seconds 5] [--repeat 3]

On a machine with few cores the clients compete with the servers for CPU: the ratio says what
this machine gives, not what a cluster of separate hosts would."""

from __future__ import annotations

import argparse
import multiprocessing
import os
import statistics
import sys
import time
import uuid

import anyio

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from strego.backends.redis import RedisBackend
from strego.message import TaskMessage

QUEUES = 12
BATCH = 50


async def _work(url: str, seconds: float) -> int:
    backend = RedisBackend.from_url(url, prefix=f"b{uuid.uuid4().hex[:8]}")
    queues = [f"q{i}" for i in range(QUEUES)]
    done = 0
    n = 0
    deadline = time.monotonic() + seconds
    try:
        while time.monotonic() < deadline:
            messages = []
            for _ in range(BATCH):
                n += 1
                messages.append(
                    TaskMessage(
                        id=f"t{n}", type="bench", queue=queues[n % QUEUES], payload=b"{}",
                        encoding="json", created_ms=0,
                    )
                )  # fmt: skip
            await backend.enqueue_many(messages)
            tasks = await backend.fetch(queues, BATCH, "w", lease_ms=60_000, ordered=False)
            acked = await backend.ack_many([(t.queue, t.id) for t in tasks], "w")
            done += sum(acked)
    finally:
        await backend.aclose()
    return done


def _process(url: str, seconds: float, out: multiprocessing.Queue[int]) -> None:
    out.put(anyio.run(_work, url, seconds))


def measure(url: str, processes: int, seconds: float) -> float:
    out: multiprocessing.Queue[int] = multiprocessing.Queue()
    procs = [
        multiprocessing.Process(target=_process, args=(url, seconds, out)) for _ in range(processes)
    ]
    for p in procs:
        p.start()
    total = sum(out.get() for _ in procs)
    for p in procs:
        p.join()
    return total / seconds


def main() -> None:
    from tests.cluster_setup import running_cluster
    from tests.redis_server import running_redis_server

    parser = argparse.ArgumentParser()
    parser.add_argument("--processes", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    with running_redis_server() as single, running_cluster() as cluster:
        one, many = [], []
        for _ in range(args.repeat):  # interleaved, so load on the machine hits both alike
            one.append(measure(single.url, args.processes, args.seconds))
            many.append(measure(cluster.url(), args.processes, args.seconds))
        a, b = statistics.median(one), statistics.median(many)
        print(f"one Redis: {a:,.0f} tasks/s  (runs: {[round(x) for x in one]})")
        print(f"cluster:   {b:,.0f} tasks/s  (runs: {[round(x) for x in many]})")
        print(f"ratio cluster / one Redis: {b / a:.2f} ({args.processes} client processes)")


if __name__ == "__main__":
    main()
