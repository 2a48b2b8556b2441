"""The overhead of strego[prometheus] and strego[otel] together: process rate with both on, as a
ratio to both off (issue 19's goal: >= 0.8). The same figure is a row of bench/run.py.

    python bench/observability.py [--url redis://...] [--setups memory-asyncio,...] [--n 10000]

Each run enqueues `n` no-op tasks and drains them with one server: with MetricsMiddleware and
TracingMiddleware on the client and the server ("on": the OpenTelemetry API alone, no SDK
configured; "on+SDK": the SDK recording every span into an exporter that drops them), then with
neither; medians of --repeat runs. No-op handlers are the worst case: the middleware's cost is
a share of nothing else."""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench import scenarios
from bench.run import SETUPS, make_setup
from tests.redis_server import start_redis_server


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--url", default=None, help="Redis to use (default: start a throwaway one)")
    ap.add_argument("--setups", default=",".join(SETUPS[:4]))
    ap.add_argument("--n", type=int, default=10_000)
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--repeat", type=int, default=3)
    a = ap.parse_args()
    server = None if a.url else start_redis_server()
    url = a.url or server.url  # type: ignore[union-attr]
    try:
        print(
            f"{'setup':<16} {'plain/s':>9} {'on/s':>9} {'ratio':>6} {'on+SDK/s':>9} {'ratio':>6}"
            f"   CPU ratios: {'on':>5} {'on+SDK':>7}"
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
            print(
                f"{name:<16} {r['process_plain_per_s']:>9,.0f} "
                f"{r['process_observed_per_s']:>9,.0f} {r['observed_vs_plain']:>6.2f} "
                f"{r['process_observed_sdk_per_s']:>9,.0f} {r['observed_sdk_vs_plain']:>6.2f}"
                f"               {r['observed_vs_plain_cpu']:>5.2f} "
                f"{r['observed_sdk_vs_plain_cpu']:>7.2f}",
                flush=True,
            )
    finally:
        if server is not None:
            server.stop()


if __name__ == "__main__":
    main()
