"""strego beside the peers on one Redis, in one run (their scripts, in `peers.PEERS_DIR`, are
read-only and run in place; ours from bench/).

    python bench/compare.py [--n 10000] [--concurrency 32] [--repeat 3] [--url redis://...]
                            [--peers floor,strego,streaq,saq,taskiq,arq] [--install]

Without --url a throwaway redis-server is started on a free port. Prints the medians as a markdown
table with strego's ratio to each peer (x > 1: strego is faster / smaller), then a JSON line."""

from __future__ import annotations

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench import peers
from tests.redis_server import start_redis_server


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=10000)
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--url", default=None, help="default: start a throwaway redis-server")
    ap.add_argument("--peers", default=",".join(peers.PEERS))
    ap.add_argument("--install", action="store_true", help="create/fill the peers' venv first")
    a = ap.parse_args()
    if a.install:
        peers.ensure_installed()
    server = None if a.url else start_redis_server()
    url = a.url or server.url  # type: ignore[union-attr]
    try:
        med = peers.compare(a.peers.split(","), a.n, a.concurrency, url, a.repeat)
    finally:
        if server is not None:
            server.stop()
    print(f"n={a.n} concurrency={a.concurrency} repeat={a.repeat} (medians)")
    print(peers.table(med, a.n))
    print("JSON " + json.dumps(med))


if __name__ == "__main__":
    main()
