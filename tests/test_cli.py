"""`strego demo` end to end as a subprocess, and the CLI's argument handling."""

from __future__ import annotations

import importlib
import importlib.metadata
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
import redis

import strego as strego_package
from strego import Client, Task, cli
from strego.backends.redis import RedisBackend
from strego.backends.redis.transport import Command, ScriptCall
from strego.cli import load_server, parser

ROOT = Path(__file__).resolve().parent.parent


def strego(*args: str) -> subprocess.CompletedProcess[str]:
    """`strego ARGS` in a subprocess, as a user would run it."""
    return subprocess.run(
        [sys.executable, "-m", "strego.cli", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )


def run_demo(*args: str) -> str:
    done = strego("demo", "--tasks", "60", "--seconds", "0.5", *args)
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
    # the rate says what it measures: the pace the enqueues set, not strego's speed
    rate = output.split("\n  rate ", 1)[1]
    assert "tasks/s finished, paced by enqueues spread over 0.5 s" in rate
    assert "not strego's speed" in rate


@pytest.mark.redis
def test_demo_on_redis_prints_its_summary_and_leaves_no_key(clean_redis_url: str) -> None:
    admin = redis.Redis.from_url(clean_redis_url)
    try:
        admin.set("not-the-demos", "kept")
        table = summary(run_demo("--redis", clean_redis_url))
        assert int(table["processed"]) + int(table["dead"]) == 60
        assert admin.keys("*") == [b"not-the-demos"]
    finally:
        admin.close()


@pytest.mark.redis
@pytest.mark.anyio
async def test_remove_keys_deletes_only_its_prefix_in_batches(
    clean_redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(cli, "CLEANUP_BATCH", 4)
    # a glob character in the prefix matches itself only
    mine = RedisBackend.from_url(clean_redis_url, prefix="strego-demo-*")
    other = RedisBackend.from_url(clean_redis_url, prefix="strego-demo-other")
    deletes: list[int] = []  # the DELs sent per round trip
    pipeline = mine.transport.pipeline

    async def counted(calls: Sequence[ScriptCall | Command]) -> list[Any]:
        deletes.append(len(calls))
        return await pipeline(calls)

    try:
        for backend in (mine, other):
            client = Client(backend)
            for queue in "abcde":
                await client.enqueue(Task("t", queue=queue))
        everything = await other.transport.execute(Command(("KEYS", "*")))
        others = sorted(k for k in everything if k.startswith(b"strego-demo-other:"))
        monkeypatch.setattr(mine.transport, "pipeline", counted)
        # per queue its stream p0, tasks, ready and registered flag; and the registry
        assert await cli.remove_keys(mine) == len(everything) - len(others) == 5 * 4 + 1
        assert len(deletes) > 1  # several rounds of SCAN, each followed by its keys' DELs
        assert sorted(await other.transport.execute(Command(("KEYS", "*")))) == others
    finally:
        await mine.aclose()
        await other.aclose()


@pytest.mark.redis
@pytest.mark.parametrize("loop", ["asyncio", "trio"])
def test_demo_interrupted_on_redis_removes_its_keys(clean_redis_url: str, loop: str) -> None:
    admin = redis.Redis.from_url(clean_redis_url)
    demo = subprocess.Popen(
        [sys.executable, "-m", "strego.cli", "demo", "--redis", clean_redis_url, "--seconds", "60"]
        + (["--trio"] if loop == "trio" else []),
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 30  # a hang guard: the demo writes keys within a second
        while not admin.dbsize() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert admin.dbsize() > 0
        demo.send_signal(signal.SIGINT)  # Ctrl-C
        _, err = demo.communicate(timeout=60)
        assert demo.returncode == 130
        assert err == "strego demo: interrupted\n"
        assert admin.dbsize() == 0
    finally:
        demo.kill()
        demo.wait()
        admin.close()


def test_demo_against_a_redis_that_is_down_says_why_in_a_line() -> None:
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    done = strego("demo", "--redis", f"redis://127.0.0.1:{port}/0", "--tasks", "5")
    assert done.returncode == 1
    (line,) = done.stderr.splitlines()  # the cause, not a traceback
    assert line.startswith(
        f"strego demo: BackendConnectionError: could not connect to redis://127.0.0.1:{port}/0: "
    )


def test_version() -> None:
    assert strego_package.__version__ == importlib.metadata.version("strego")
    done = strego("--version")
    assert (done.returncode, done.stdout) == (0, f"strego {strego_package.__version__}\n")


def test_version_of_a_source_tree_that_was_never_installed(monkeypatch: pytest.MonkeyPatch) -> None:
    def not_installed(name: str) -> str:
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "version", not_installed)
    try:
        assert importlib.reload(strego_package).__version__ == "0+unknown"
    finally:
        monkeypatch.undo()
        importlib.reload(strego_package)
    assert strego_package.__version__ == importlib.metadata.version("strego")


def test_bare_strego_prints_the_help() -> None:
    done = strego()
    assert done.returncode == 2
    assert done.stderr.startswith("usage: strego")
    assert "demo" in done.stderr and "worker" in done.stderr
    assert "error" not in done.stderr


def test_worker_says_what_is_missing() -> None:
    no_module = strego("worker", "no_such_module_here:server")
    assert no_module.returncode == 1
    assert no_module.stderr == (
        "cannot import module 'no_such_module_here': No module named 'no_such_module_here'\n"
    )
    no_attribute = strego("worker", "strego.cli:missing")
    assert no_attribute.returncode == 1
    assert no_attribute.stderr == "module 'strego.cli' has no attribute 'missing'\n"


def test_worker_log_level_is_a_usage_error_when_unknown() -> None:
    done = strego("worker", "strego.cli:parser", "--log-level", "LOUD")
    assert done.returncode == 2
    assert "invalid choice: 'LOUD'" in done.stderr and "Traceback" not in done.stderr
    assert parser().parse_args(["worker", "m:s", "--log-level", "debug"]).log_level == "DEBUG"


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
