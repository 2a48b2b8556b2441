"""What the queue registry costs an enqueue, for an older revision against the working tree,
interleaved (bench/ab.sh style: runs alternate, so a machine that drifts drifts for both):

    python bench/registry.py REV [--n 10000] [--queues 12] [--pairs 3]

On one throwaway redis-server: N single `enqueue` calls (one task each, `--concurrency` at a
time, 16 by default; `RedisBackend.from_url`'s transport), as tasks/s, Redis CPU per task and
Redis commands per task. On a throwaway 6-node Cluster (tests/cluster_setup.py): the same N
enqueues over `--queues` queues, and per primary how many commands it ran per enqueue (INFO
commandstats), the node holding the registry key marked: the registry's slot is hot when its
node runs a command for every enqueue."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

#: Run in a subprocess with the revision's tree first on sys.path: prints one JSON line.
LOAD = r"""
import json, sys, time
import anyio
from strego import Client, Task
from strego.backends.redis.backend import RedisBackend

url, n, queues, concurrency = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])

async def main():
    backend = RedisBackend.from_url(url, prefix="bench")
    client = Client(backend)
    names = [f"q{i}" for i in range(queues)]
    for name in names:  # scripts loaded, queues registered: the steady state is measured
        await client.enqueue(Task("noop", queue=name))
    print("ready", flush=True)
    sys.stdin.readline()
    left = iter(range(n))
    t0 = time.perf_counter()

    async def worker():
        for i in left:
            await client.enqueue(Task("noop", queue=names[i % queues]))

    async with anyio.create_task_group() as tg:
        for _ in range(concurrency):
            tg.start_soon(worker)
    print(json.dumps({"seconds": time.perf_counter() - t0}), flush=True)
    await backend.aclose()

anyio.run(main)
"""


def stats(port: int) -> tuple[dict[str, int], float]:
    """(calls per command, CPU seconds) of the Redis on `port`."""
    import redis

    r = redis.Redis(port=port)
    try:
        calls = {k.removeprefix("cmdstat_"): int(v["calls"])
                 for k, v in r.info("commandstats").items()}  # fmt: skip
        cpu = r.info("cpu")
        return calls, float(cpu["used_cpu_user"]) + float(cpu["used_cpu_sys"])
    finally:
        r.close()


def run_side(
    tree: str, url: str, ports: list[int], n: int, queues: int, concurrency: int
) -> dict[str, object]:
    env = {**os.environ, "PYTHONPATH": tree}
    proc = subprocess.Popen(
        [sys.executable, "-c", LOAD, url, str(n), str(queues), str(concurrency)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env, cwd=tree,
    )  # fmt: skip
    assert proc.stdin is not None and proc.stdout is not None
    assert proc.stdout.readline().strip() == "ready"
    before = {p: stats(p) for p in ports}
    proc.stdin.write("\n")
    proc.stdin.flush()
    result = json.loads(proc.stdout.readline())
    after = {p: stats(p) for p in ports}
    proc.wait()
    nodes = {}
    for p in ports:
        calls = {k: v - before[p][0].get(k, 0) for k, v in after[p][0].items()}
        calls = {k: v for k, v in calls.items() if v and k not in ("info",)}
        nodes[p] = {"per_task": {k: round(v / n, 3) for k, v in sorted(calls.items())},
                    "cpu_us_per_task": (after[p][1] - before[p][1]) / n * 1e6}  # fmt: skip
    return {"rate": n / float(result["seconds"]), "nodes": nodes}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("rev")
    parser.add_argument("--n", type=int, default=10_000)
    parser.add_argument("--queues", type=int, default=12)
    parser.add_argument("--pairs", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=16, help="enqueues at once")
    args = parser.parse_args()
    sys.path.insert(0, HERE)
    import redis

    from strego.backends.redis.keys import queues_key
    from strego.backends.redis.slots import key_slot
    from tests.cluster_setup import running_cluster
    from tests.redis_server import running_redis_server

    work = tempfile.mkdtemp()
    old = os.path.join(work, "old")
    subprocess.run(
        ["git", "-C", HERE, "worktree", "add", "-q", "--detach", old, args.rev], check=True
    )
    try:
        with running_redis_server() as server, running_cluster() as cluster:
            primaries = cluster.primaries()
            registry_slot = key_slot(queues_key("bench"))
            holder = next(p for p in primaries if _owns(p, registry_slot))
            for _ in range(args.pairs):
                for side, tree in (("old", old), ("new", HERE)):
                    redis.Redis(port=server.port).flushall()
                    one = run_side(
                        tree, server.url, [server.port], args.n, args.queues, args.concurrency
                    )
                    node = one["nodes"][server.port]  # type: ignore[index]
                    total = sum(node["per_task"].values())
                    print(f"{side} one Redis: {one['rate']:7.0f} enqueues/s  "
                          f"Redis CPU {node['cpu_us_per_task']:5.1f} us/task  "
                          f"{total:.2f} commands/task {node['per_task']}", flush=True)  # fmt: skip
                    for p in primaries:
                        redis.Redis(port=p).flushall()
                    many = run_side(
                        tree, cluster.url(), primaries, args.n, args.queues, args.concurrency
                    )
                    print(f"{side} cluster: {many['rate']:7.0f} enqueues/s", flush=True)
                    for p, node in many["nodes"].items():  # type: ignore[attr-defined]
                        mark = " (holds the registry)" if p == holder else ""
                        total = sum(node["per_task"].values())
                        print(f"    node {p}{mark}: {total:.3f} commands/enqueue "
                              f"{node['per_task']}", flush=True)  # fmt: skip
    finally:
        subprocess.run(["git", "-C", HERE, "worktree", "remove", "--force", old], check=False)


def _owns(port: int, slot: int) -> bool:
    import redis

    for shard in redis.Redis(port=port).execute_command("CLUSTER SLOTS"):
        if shard[0] <= slot <= shard[1]:
            return int(shard[2][1]) == port
    return False


if __name__ == "__main__":
    start = time.time()
    main()
    print(f"({time.time() - start:.0f} s)")
