"""The overhead of strego[prometheus] and strego[otel] together: process rate with both on, as a
ratio to both off (issue 19's goal: >= 0.8). The same figures are rows of bench/run.py.

    python bench/observability.py [--url redis://...] [--setups memory-asyncio,...] [--n 10000]

Each run enqueues `n` no-op tasks and drains them with one server, with MetricsMiddleware and
TracingMiddleware on the client and the server, then with neither; medians of --repeat runs.
Tracing three ways: "api" (the OpenTelemetry API alone, no SDK configured: what strego[otel]
itself costs), "sdk" (the SDK recording every span into a BatchSpanProcessor that exports to
nowhere) and "sdk10%" (the same, sampling 10% of the traces). Ratios by the wall clock, then by
this process's CPU time (steadier on a shared machine; Redis's own CPU left out). No-op handlers
are the worst case: the middleware's cost is a share of nothing else."""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench import scenarios
from bench.run import SETUPS, make_setup
from tests.redis_server import start_redis_server

COLUMNS = ("observed_vs_plain", "observed_sdk_vs_plain", "observed_sdk_10_vs_plain")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--url", default=None, help="Redis to use (default: start a throwaway one)")
    ap.add_argument("--setups", default=",".join(SETUPS[:4]))
    ap.add_argument("--n", type=int, default=10_000)
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--repeat", type=int, default=5)
    a = ap.parse_args()
    server = None if a.url else start_redis_server()
    url = a.url or server.url  # type: ignore[union-attr]
    try:
        print(f"{'':<16} {'':>9}   {'wall-clock ratios':^21}   {'CPU-time ratios':^21}")
        print(
            f"{'setup':<16} {'plain/s':>9}"
            + "   {:>5} {:>5} {:>7}".format("api", "sdk", "sdk10%") * 2
        )
        for name in a.setups.split(","):
            setup = make_setup(name, url)

            def once(setup: scenarios.Setup = setup) -> dict[str, float]:
                setup.flush()
                result: dict[str, float] = scenarios.run_in_loop(
                    setup.loop, scenarios.observed_throughput, setup, a.n, a.concurrency
                )
                return result

            r = scenarios.median_of(a.repeat, once)
            wall = "{:>5.2f} {:>5.2f} {:>7.2f}".format(*(r[c] for c in COLUMNS))
            cpu = "{:>5.2f} {:>5.2f} {:>7.2f}".format(*(r[f"{c}_cpu"] for c in COLUMNS))
            print(f"{name:<16} {r['process_plain_per_s']:>9,.0f}   {wall}   {cpu}", flush=True)
    finally:
        if server is not None:
            server.stop()


if __name__ == "__main__":
    main()
