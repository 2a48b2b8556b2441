"""Measure every performance target of strego (issue 6) and print one table.

    python bench/run.py [--url redis://...] [--setups ...] [--peers] [--n 10000] ...

Columns are setups: the memory backend; the Redis backend over the anyio transport (what
RedisBackend.from_url uses) under asyncio and trio; and over redis-py ("redispy", asyncio only).
Without --url a throwaway redis-server is started on a free port. --peers also runs the peers'
scripts (in `peers.PEERS_DIR`) on the same Redis (installing them in a venv of their own when
missing) and prints strego's ratio to each. The figures go to bench/results/run-<time>.json as
well. The default sizes take a few minutes."""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench import peers, scenarios
from bench.scenarios import Setup
from tests.redis_server import start_redis_server

SETUPS = ("memory-asyncio", "memory-trio", "redis-asyncio", "redis-trio", "redispy-asyncio")

#: figure -> (target text, check); a check of None means "see the note"
TARGETS: dict[str, tuple[str, Any]] = {
    "enqueue_many_per_s": (">= 40,000", lambda v: v >= 40_000),
    "enqueue_seq_per_s": (">= 8,000", lambda v: v >= 8_000),
    "enqueue_concurrent_per_s": ("far > sequential", None),
    "process_per_s": (">= 25,000", lambda v: v >= 25_000),
    "bytes_per_task": ("<= 150", lambda v: v <= 150),
    "latency_p50_ms": ("<= 1", lambda v: v <= 1),
    "latency_p99_ms": ("<= 5", lambda v: v <= 5),
    "scheduled_late_p50_ms": ("-", None),
    "scheduled_late_p99_ms": ("<= 20", lambda v: v <= 20),
    "process_with_10k_scheduled_per_s": ("~ process_per_s", None),
    "process_with_100_idle_queues_per_s": ("~ process_per_s", None),
    "with_10k_scheduled_vs_process": ("~ 1", None),
    "with_100_idle_queues_vs_process": ("~ 1", None),
    "process_observed_per_s": ("-", None),
    "process_plain_per_s": ("-", None),
    "process_observed_sdk_per_s": ("-", None),
    "observed_vs_plain": (">= 0.8", lambda v: v >= 0.8),
    "observed_sdk_vs_plain": ("-", None),
    "observed_sdk_10_vs_plain": ("-", None),
    "observed_vs_plain_cpu": ("-", None),
    "observed_sdk_vs_plain_cpu": ("-", None),
    "observed_sdk_10_vs_plain_cpu": ("-", None),
}
#: the steps measured `--repeat` times (medians kept): their short runs vary most
REPEATED = ("throughput", "enqueue_one_by_one", "under_load", "observed_throughput")


def make_setup(name: str, url: str) -> Setup:
    backend, _, loop = name.rpartition("-")
    transport = {"memory": None, "redis": "anyio", "redispy": "redispy"}[backend]
    return Setup(name, loop, transport, None if transport is None else url)


def measure(setup: Setup, a: argparse.Namespace) -> dict[str, float]:
    out: dict[str, float] = {}
    steps = [
        (scenarios.throughput, (a.n, a.concurrency)),
        (scenarios.enqueue_one_by_one, (a.seq_n, a.producers)),
        (scenarios.latency, (a.rate, a.latency_seconds)),
        (scenarios.scheduled_lateness, (a.scheduled_n, a.scheduled_spread)),
        (scenarios.under_load, (a.n, a.concurrency)),
        (scenarios.observed_throughput, (a.n, a.concurrency)),
    ]
    for func, args in steps:
        runs = a.repeat if func.__name__ in REPEATED else 1
        print(f"  {setup.name}: {func.__name__} (x{runs}) ...", file=sys.stderr, flush=True)

        def once(func: Any = func, args: Any = args) -> dict[str, float]:
            setup.flush()
            result: dict[str, float] = scenarios.run_in_loop(setup.loop, func, setup, *args)
            return result

        out.update(scenarios.median_of(runs, once))
    setup.flush()
    for figure in ("with_10k_scheduled", "with_100_idle_queues"):
        out[f"{figure}_vs_process"] = out[f"process_{figure}_per_s"] / out["process_per_s"]
    return out


def fmt(value: float) -> str:
    return f"{value:,.0f}" if value >= 100 else f"{value:.2f}"


def print_table(results: dict[str, dict[str, float]]) -> None:
    names = list(results)
    print("| figure | target | " + " | ".join(names) + " |")
    print("|---|---|" + "---|" * len(names))
    for figure, (target, check) in TARGETS.items():
        cells = []
        for name in names:
            value = results[name].get(figure)
            if value is None:
                cells.append("-")
                continue
            mark = "" if check is None else (" ✓" if check(value) else " ✗")
            cells.append(fmt(value) + mark)
        print(f"| {figure} | {target} | " + " | ".join(cells) + " |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--url", default=None, help="Redis to use (default: start a throwaway one)")
    ap.add_argument("--setups", default=",".join(SETUPS))
    ap.add_argument("--n", type=int, default=10_000, help="tasks per throughput run")
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--seq-n", type=int, default=2_000, help="tasks enqueued one at a time")
    ap.add_argument("--producers", type=int, default=100)
    ap.add_argument("--rate", type=float, default=1_000.0, help="tasks/s offered for latency")
    ap.add_argument("--latency-seconds", type=float, default=3.0)
    ap.add_argument("--scheduled-n", type=int, default=300)
    ap.add_argument("--scheduled-spread", type=float, default=2.0)
    ap.add_argument("--processes", default="1,2,4", help="server processes for the scaling row")
    ap.add_argument("--scale-n", type=int, default=20_000)
    ap.add_argument(
        "--scale-work-ms",
        type=float,
        default=0.5,
        help="CPU time each task of the second scaling row burns (0: no such row)",
    )
    ap.add_argument("--scale-work-n", type=int, default=4_000)
    ap.add_argument("--repeat", type=int, default=3, help="runs of the short steps (medians)")
    ap.add_argument(
        "--peers", action="store_true", help="run the peers too (installed in their own venv)"
    )
    ap.add_argument("--peer-repeat", type=int, default=3)
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results"))
    a = ap.parse_args()

    server = None if a.url else start_redis_server()
    url = a.url or server.url  # type: ignore[union-attr]
    report: dict[str, Any] = {
        "when": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": {
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
        },
        "argv": sys.argv[1:],
        "setups": {},
    }
    try:
        report["round_trip_floor_per_s"] = scenarios.round_trip_floor(url)
        if server is not None and server.process is not None and hasattr(os, "sched_setaffinity"):
            report["round_trip_floor_same_core_per_s"] = scenarios.round_trip_floor(
                url, same_core_as=server.process.pid
            )
        for name in (x for x in a.setups.split(",") if x):
            report["setups"][name] = measure(make_setup(name, url), a)
        processes = [int(x) for x in a.processes.split(",") if x]
        rows = [("scaling_process_per_s", a.scale_n, 0.0)]
        if a.scale_work_ms > 0:
            rows.append(("scaling_cpu_bound_per_s", a.scale_work_n, a.scale_work_ms))
        for key, n, work_ms in rows:
            report[key] = {}
            for p in processes:
                print(f"  {key}: {p} server processes ...", file=sys.stderr, flush=True)
                report[key][str(p)] = scenarios.scaling(url, n, a.concurrency, p, work_ms=work_ms)
        if a.peers:
            peers.ensure_installed()
            print("  peers ...", file=sys.stderr, flush=True)
            report["peers"] = peers.compare(
                list(peers.PEERS), a.n, a.concurrency, url, a.peer_repeat
            )
    finally:
        if server is not None:
            server.stop()

    floor = report["round_trip_floor_per_s"]
    print(f"round-trip floor of this machine: {floor:,.0f} PING/s, one at a time over a blocking")
    print("socket (the ceiling of any sequential call, such as enqueue_seq_per_s)")
    same_core = report.get("round_trip_floor_same_core_per_s")
    if same_core:
        print(f"with the client and Redis held on one core: {same_core:,.0f} PING/s (no round trip")
        print("then wakes an idle core: the gap is what those wake-ups cost here)")
    print()
    if report["setups"]:
        print_table(report["setups"])
        print()
    print("scaling (Redis, anyio transport, asyncio): tasks/s by server processes, with how busy")
    print("Redis (% of one core) and the machine (% of all its cores) were meanwhile")
    titles = {
        "scaling_process_per_s": f"no-op tasks ({a.scale_n:,})",
        "scaling_cpu_bound_per_s": (
            f"tasks burning {a.scale_work_ms} ms of CPU each ({a.scale_work_n:,})"
        ),
    }
    for key, title in titles.items():
        if key not in report:
            continue
        print(f"  {title}:")
        for p, v in report[key].items():
            print(f"    {p}: {v['per_s']:,.0f}/s, Redis {v['redis_cpu_pct']:.0f}%, "
                  f"machine {v['machine_cpu_pct']:.0f}%")  # fmt: skip
    if a.peers:
        print()
        print(f"peers (bench_<peer>.py, n={a.n}, concurrency={a.concurrency}, "
              f"medians of {a.peer_repeat}):")  # fmt: skip
        print(peers.table(report["peers"], a.n))
    os.makedirs(a.out, exist_ok=True)
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    path = os.path.join(a.out, f"run-{stamp}.json")
    with open(path, "w") as f:
        json.dump(report, f, indent=2)
    print(f"\nwritten to {path}")


if __name__ == "__main__":
    main()
