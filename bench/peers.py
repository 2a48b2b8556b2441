"""Running the peers' benchmark scripts (bench_<peer>.py in PEERS_DIR, $STREGO_PEERS_DIR) and ours
(bench/bench_strego.py) one after another on one Redis: same argv (N, concurrency, URL), one JSON
line each, the database flushed before every run.

The peers run in a virtualenv of their own (bench/results/peers-venv, or $STREGO_PEERS_VENV):
arq and taskiq-redis require redis < 6, and installing them beside strego would downgrade the
redis-py strego runs on."""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
from typing import Any

import redis

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
#: where the peers' scripts live (read-only; we run them in place)
PEERS_DIR = os.environ.get(
    "STREGO_PEERS_DIR", os.path.normpath(os.path.join(ROOT, "..", "shared", "bench", "peers"))
)
PEERS = ("floor", "strego", "streaq", "saq", "taskiq", "arq")
PEERS_VENV = os.environ.get("STREGO_PEERS_VENV", os.path.join(HERE, "results", "peers-venv"))
#: the module each peer imports, and the pip package that provides it
_PACKAGES = {"arq": "arq", "saq": "saq", "streaq": "streaq", "taskiq": "taskiq",
             "taskiq_redis": "taskiq-redis"}  # fmt: skip


def peers_python() -> str:
    return os.path.join(PEERS_VENV, "bin", "python")


def ensure_installed() -> None:
    """Create the peers' virtualenv if needed and pip-install whichever peers it lacks."""
    python = peers_python()
    if not os.path.exists(python):
        print(f"creating {PEERS_VENV} ...", file=sys.stderr)
        subprocess.run([sys.executable, "-m", "venv", PEERS_VENV], check=True)
    probe = (
        "import importlib.util as u, sys;"
        "print(' '.join(m for m in sys.argv[1:] if not u.find_spec(m)))"
    )
    found = subprocess.run(
        [python, "-c", probe, *_PACKAGES], capture_output=True, text=True, check=True
    )
    missing = [_PACKAGES[m] for m in found.stdout.split()]
    if missing:
        print(f"installing {' '.join(missing)} into {PEERS_VENV} ...", file=sys.stderr)
        subprocess.run(
            [python, "-m", "pip", "install", "-q", "redis[hiredis]", *missing], check=True
        )


def script(peer: str) -> str:
    if peer == "strego":
        return os.path.join(HERE, "bench_strego.py")
    return os.path.join(PEERS_DIR, f"bench_{peer}.py")


def run_once(peer: str, n: int, concurrency: int, url: str) -> dict[str, Any]:
    r = redis.Redis.from_url(url)
    try:
        r.flushdb()
    finally:
        r.close()
    # the peers import their _mem.py helper from their own folder
    python = sys.executable if peer == "strego" else peers_python()
    out = subprocess.run(
        [python, script(peer), str(n), str(concurrency), url],
        capture_output=True, text=True, timeout=900, cwd=PEERS_DIR,
    )  # fmt: skip
    for line in reversed(out.stdout.splitlines()):
        if line.startswith("{"):
            result: dict[str, Any] = json.loads(line)
            return result
    raise RuntimeError(f"{peer} printed no result:\n{out.stdout[-2000:]}\n{out.stderr[-2000:]}")


def compare(
    peers: list[str], n: int, concurrency: int, url: str, repeat: int
) -> dict[str, dict[str, float]]:
    """Median enqueue_s, process_s and bytes_per_task of each peer over `repeat` rounds (peers
    interleaved within a round, so a busy moment of the machine hits all of them)."""
    rows: dict[str, list[dict[str, Any]]] = {}
    for _ in range(repeat):
        for peer in peers:
            try:
                rows.setdefault(peer, []).append(run_once(peer, n, concurrency, url))
            except Exception as exc:  # a peer that fails is reported, not fatal
                print(f"{peer}: {exc}", file=sys.stderr)
    return {
        peer: {k: statistics.median(r[k] for r in rs)
               for k in ("enqueue_s", "process_s", "bytes_per_task")}
        for peer, rs in rows.items() if rs
    }  # fmt: skip


def table(medians: dict[str, dict[str, float]], n: int) -> str:
    """Markdown: each peer's throughput, and how many times faster strego is (>1: strego wins)."""
    base = medians.get("strego")
    lines = [
        "| peer | enqueue tasks/s | process tasks/s | Redis bytes/task | strego enqueue x "
        "| strego process x | strego bytes x |",
        "|---|---|---|---|---|---|---|",
    ]
    for peer, m in medians.items():
        if base:
            ratios = (f"{m['enqueue_s'] / base['enqueue_s']:.2f}",
                      f"{m['process_s'] / base['process_s']:.2f}",
                      f"{m['bytes_per_task'] / base['bytes_per_task']:.2f}")  # fmt: skip
        else:
            ratios = ("-", "-", "-")
        lines.append(
            f"| {peer} | {n / m['enqueue_s']:,.0f} | {n / m['process_s']:,.0f} "
            f"| {m['bytes_per_task']:.0f} | {' | '.join(ratios)} |"
        )
    return "\n".join(lines)
