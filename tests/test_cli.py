"""`strego demo` end to end as a subprocess, and the CLI's argument handling."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from strego.cli import load_server, parser

ROOT = Path(__file__).resolve().parent.parent


def run_demo(*args: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "strego.cli", "demo", "--tasks", "60", "--seconds", "0.5", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def summary(output: str) -> dict[str, str]:
    lines = output.split("\nsummary\n", 1)[1].splitlines()
    return {line.split()[0]: line.split()[1] for line in lines if len(line.split()) >= 2}


@pytest.mark.parametrize("loop", ["asyncio", "trio"])
def test_demo_in_memory_prints_its_summary(loop: str) -> None:
    output = run_demo(*(["--trio"] if loop == "trio" else []))
    assert f"60 tasks on the in-memory backend under {loop}" in output
    table = summary(output)
    assert table["enqueued"] == "60"
    # every task finished, completed or dead
    assert int(table["processed"]) + int(table["dead"]) == 60
    assert "throughput" in table


@pytest.mark.redis
def test_demo_on_redis_prints_its_summary(redis_url: str) -> None:
    table = summary(run_demo("--redis", redis_url))
    assert int(table["processed"]) + int(table["dead"]) == 60


def test_worker_needs_a_server() -> None:
    with pytest.raises(SystemExit, match=r"is not a strego\.Server"):
        load_server("strego.cli:parser")
    with pytest.raises(SystemExit, match="expected module:attribute"):
        load_server("strego.cli")


def test_commands_parse() -> None:
    args = parser().parse_args(["demo", "--tasks", "5", "--trio"])
    assert (args.tasks, args.trio, args.redis) == (5, True, None)
    args = parser().parse_args(["worker", "pkg.mod:server"])
    assert args.server == "pkg.mod:server"
