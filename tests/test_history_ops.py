"""Running the history drainer: its lag and counters as Prometheus metrics, several drainers at
once (each event stored once), a stopped drainer's entries taken over, and a drainer inside
`strego worker --history-postgres` that stores the history and never stops the worker, even
with PostgreSQL unreachable; under asyncio and trio, on the memory and the Redis backend.

The PostgreSQL fixtures and helpers are tests/test_history_postgres.py's, imported (so the
fixtures' names are redefined as test arguments: F811 is expected here)."""

# ruff: noqa: F811

from __future__ import annotations

import contextlib
import signal
import subprocess
import sys
import time
import uuid
from typing import Any

import anyio
import httpx
import psycopg
import pytest
from prometheus_client import CollectorRegistry, generate_latest

import strego
from strego.backends.memory import MemoryBackend
from strego.backends.redis import RedisBackend
from strego.backends.redis.keys import history_queues_key
from strego.backends.redis.transport import Command
from strego.errors import BackendConnectionError
from strego.history import PostgresHistory
from strego.history import events as history_events
from strego.history.events import DEFAULT_HISTORY_CAP, history_backlog, history_source
from strego.history.supervised import drain_beside
from strego.prometheus import BackendCollector, DrainerCollector, render
from tests.obs_support import ROOT, free_port, worker
from tests.runtime_support import PATIENCE, eventually
from tests.test_history_postgres import (  # noqa: F401 (fixtures)
    _count_events,
    _work,
    hbackend,
    message,
)
from tests.test_prometheus import samples, total

BACKLOG = "strego_history_backlog_entries"


async def _scrape(collector: BackendCollector) -> dict[Any, float]:
    body, _ = await render(CollectorRegistry(), collector)
    return samples(body.decode())


@pytest.mark.anyio
async def test_the_backlog_gauge_rises_without_a_drainer_and_falls_to_zero_after_one(
    hbackend: Any, history: PostgresHistory
) -> None:
    collector = BackendCollector(hbackend, max_age=0)
    assert total(await _scrape(collector), BACKLOG) == 0
    expected = await _work(hbackend, 20, "a")
    first = await _scrape(collector)
    assert total(first, BACKLOG, queue="q") > 0
    assert total(first, "strego_history_cap_entries") == DEFAULT_HISTORY_CAP
    expected += await _work(hbackend, 20, "b")
    second = await _scrape(collector)
    assert total(second, BACKLOG, queue="q") > total(first, BACKLOG, queue="q")
    # what Redis holds, as the drainer sees it
    waiting = await history_source(hbackend).history_backlog()
    assert total(second, BACKLOG, queue="q") == waiting["q"]

    await history.drain(hbackend, until_idle=True)
    assert await _count_events(history.dsn) == expected
    drained = await _scrape(collector)
    assert (BACKLOG, (("queue", "q"),)) in drained
    assert total(drained, BACKLOG, queue="q") == 0


@pytest.mark.anyio
async def test_no_backlog_metric_while_history_is_off(anyio_backend: Any) -> None:
    off = MemoryBackend()
    await off.enqueue(message("t1"))
    found = await _scrape(BackendCollector(off, max_age=0))
    assert total(found, "strego_queue_tasks", queue="q", state="pending") == 1
    assert not [name for name, _ in found if name.startswith("strego_history")]
    on = MemoryBackend(history=True)
    await on.enqueue(message("t1"))
    found = await _scrape(BackendCollector(on, max_age=0, history=False))
    assert not [name for name, _ in found if name.startswith("strego_history")]


@pytest.mark.redis
@pytest.mark.anyio
async def test_an_unreadable_history_stream_leaves_the_other_queues_reported(
    redis_url: str, anyio_backend: Any
) -> None:
    backend = RedisBackend.from_url(redis_url, prefix=f"u{uuid.uuid4().hex[:10]}", history=True)
    try:
        await backend.enqueue(message("t1", queue="good"))
        await backend.enqueue(message("t2", queue="bad"))
        key = backend.keys("bad").history
        await backend.transport.execute(Command(("DEL", key)))
        await backend.transport.execute(Command(("SET", key, "not a stream")))
        assert await history_backlog(backend, ["good", "bad"]) == {"good": 1}
        found = await _scrape(BackendCollector(backend, max_age=0))
        assert total(found, BACKLOG, queue="good") == 1
        assert (BACKLOG, (("queue", "bad"),)) not in found
        assert total(found, "strego_queue_tasks", queue="bad", state="pending") == 1
    finally:
        await backend.aclose()


def _drainer_samples(history: PostgresHistory) -> dict[Any, float]:
    registry = CollectorRegistry()
    registry.register(DrainerCollector(history))
    return samples(generate_latest(registry).decode())


@pytest.mark.anyio
async def test_the_drainer_counters(hbackend: Any, history: PostgresHistory) -> None:
    before = _drainer_samples(history)
    assert total(before, "strego_history_stored_events_total") == 0
    assert total(before, "strego_history_failed_batches_total") == 0
    assert total(before, "strego_history_refused_events_total") == 0
    assert ("strego_history_last_commit_age_seconds", ()) not in before  # never started
    expected = await _work(hbackend, 10, "d")
    await history.drain(hbackend, until_idle=True)
    after = _drainer_samples(history)
    assert total(after, "strego_history_stored_events_total") == expected
    assert total(after, "strego_history_failed_batches_total") == 0
    assert 0 <= after[("strego_history_last_commit_age_seconds", ())] < PATIENCE


@pytest.mark.anyio
async def test_the_drainer_counters_while_postgres_is_unreachable(anyio_backend: Any) -> None:
    backend = MemoryBackend(history=True)
    await backend.enqueue_many([message(f"t{i}") for i in range(5)])
    down = PostgresHistory(f"postgresql://postgres@127.0.0.1:{free_port()}/x", connect_timeout=1)
    async with anyio.create_task_group() as tg:
        tg.start_soon(lambda: down.drain(backend, retry_s=0.01, lag_every_s=0.01))
        await eventually(lambda: down.stats.failures >= 2, "failing batches")
        tg.cancel_scope.cancel()
    found = _drainer_samples(down)
    assert total(found, "strego_history_failed_batches_total") >= 2
    assert total(found, "strego_history_stored_events_total") == 0
    # no commit yet: the age counts from the drainer's start
    assert found[("strego_history_last_commit_age_seconds", ())] >= 0
    assert (await history_source(backend).history_backlog())["q"] == 5


@pytest.mark.redis
@pytest.mark.anyio
async def test_two_drainers_at_once_store_every_event_once(
    redis_url: str, pg_dsn: str, anyio_backend: Any, caplog: pytest.LogCaptureFixture
) -> None:
    backend = RedisBackend.from_url(redis_url, prefix=f"p{uuid.uuid4().hex[:10]}", history=True)
    drainers = [PostgresHistory(pg_dsn), PostgresHistory(pg_dsn)]
    await drainers[0].migrate()
    expected = 0
    try:
        async with anyio.create_task_group() as tg:
            for d in drainers:
                tg.start_soon(lambda d=d: d.drain(backend, batch=30, poll_s=0.005))
            for round_ in range(8):
                expected += await _work(backend, 60, f"r{round_}-")
            await eventually(
                lambda: sum(d.stats.stored for d in drainers) >= expected, "every event stored"
            )
            tg.cancel_scope.cancel()
        assert await _count_events(pg_dsn) == expected
        # each event stored by one drainer only: neither read the other's entries in flight
        assert [d.stats.stored > 0 for d in drainers] == [True, True]
        assert sum(d.stats.stored for d in drainers) == expected
        # nor did they trip over each other (creating the same day partition at once, say)
        assert [d.stats.failures for d in drainers] == [0, 0], caplog.text
    finally:
        for d in drainers:
            await d.aclose()
        await backend.aclose()


@pytest.mark.redis
@pytest.mark.anyio
async def test_after_a_failed_batch_each_pending_entry_is_read_again_once(
    redis_url: str, anyio_backend: Any
) -> None:
    backend = RedisBackend.from_url(redis_url, prefix=f"o{uuid.uuid4().hex[:10]}", history=True)
    try:
        await _work(backend, 40, "o")
        source = history_source(backend, "one")
        first = await source.read_history(100_000)
        assert first
        source.rewind()  # the batch was not stored: its entries come again, a few at a time
        again: list[Any] = []
        while batch := await source.read_history(8):
            again += batch
            assert len(again) <= len(first), "a pending entry came twice"
        assert sorted(e.seq for e in again) == sorted(e.seq for e in first)
    finally:
        await backend.aclose()


@pytest.mark.redis
@pytest.mark.anyio
async def test_a_purged_queue_stays_listed_when_looking_at_its_stream_fails(
    redis_url: str, monkeypatch: pytest.MonkeyPatch, anyio_backend: Any
) -> None:
    # the drainer takes a purged queue out of the set, then looks at its stream: a failure in
    # between must list it again, or its events are never read
    backend = RedisBackend.from_url(redis_url, prefix=f"p{uuid.uuid4().hex[:10]}", history=True)
    try:
        await backend.enqueue(message("t1"))
        await backend.enqueue(message("t2"))
        assert await backend.purge("q", [strego.TaskState.PENDING]) == 2
        pipeline = backend.transport.pipeline
        failed: list[str] = []

        async def fail_once(calls: Any) -> list[Any]:
            if not failed and isinstance(calls[0], Command) and calls[0].args[0] == "XLEN":
                failed.append("XLEN")
                raise BackendConnectionError("connection lost")
            return await pipeline(calls)

        monkeypatch.setattr(backend.transport, "pipeline", fail_once)
        source = history_source(backend, "d1")
        with pytest.raises(BackendConnectionError):
            await source.read_history(100)
        assert failed == ["XLEN"]
        listed = await backend.transport.execute(Command(("SMEMBERS", history_queues_key(
            backend.prefix))))  # fmt: skip
        assert [bytes(q) for q in listed] == [b"q"]
        events = await source.read_history(100)
        assert sorted((e.task_id, e.state) for e in events) == [
            ("t1", "deleted"), ("t1", "pending"), ("t2", "deleted"), ("t2", "pending"),
        ]  # fmt: skip
    finally:
        await backend.aclose()


@pytest.mark.redis
@pytest.mark.anyio
async def test_a_stopped_drainers_entries_are_taken_over(
    redis_url: str, history: PostgresHistory, monkeypatch: pytest.MonkeyPatch, anyio_backend: Any
) -> None:
    monkeypatch.setattr(history_events, "CLAIM_IDLE_MS", 100)
    backend = RedisBackend.from_url(redis_url, prefix=f"s{uuid.uuid4().hex[:10]}", history=True)
    try:
        expected = await _work(backend, 50, "s")
        # a drainer reads a batch and stops before storing it: its entries stay pending
        gone = history_source(backend, "gone-drainer")
        assert len(await gone.read_history(60)) > 0
        await anyio.sleep(0.2)
        await history.drain(backend, until_idle=True)
        assert await _count_events(history.dsn) == expected
        assert (await history_source(backend).history_backlog())["q"] == 0
    finally:
        await backend.aclose()


@pytest.mark.anyio
async def test_an_unexpected_drainer_failure_is_logged_and_the_drainer_restarted(
    anyio_backend: Any, caplog: pytest.LogCaptureFixture
) -> None:
    class Failing:
        calls = 0

        async def drain(self, backend: object, **options: Any) -> None:
            self.calls += 1
            if self.calls == 1:
                raise RuntimeError("a bug in the drainer")
            if self.calls == 2:
                async with anyio.create_task_group() as tg:  # one inside a task group too
                    tg.start_soon(self._boom)
            await anyio.sleep_forever()

        async def _boom(self) -> None:
            raise KeyError("in a task group")

    failing = Failing()
    async with anyio.create_task_group() as tg:
        tg.start_soon(lambda: drain_beside(failing, None, restart_s=0.01))  # type: ignore[arg-type]
        await eventually(lambda: failing.calls == 3, "restarted twice")
        tg.cancel_scope.cancel()  # and cancellation stops it
    failed = [r for r in caplog.records if "the drainer failed" in r.getMessage()]
    assert len(failed) == 2 and all(r.exc_info for r in failed)


# -- strego worker --history-postgres, strego history --metrics-port (subprocesses) ------------


def _seed(url: str, n: int) -> None:
    async def seed() -> None:
        backend = RedisBackend.from_url(url, history=True)  # the enqueue events are the client's
        async with strego.Client(backend) as client:
            for _ in range(n):
                await client.enqueue(strego.Task("ok", {}))
        await backend.aclose()

    anyio.run(seed)


def _rows(dsn: str) -> tuple[int, dict[str, int]]:
    with psycopg.connect(dsn) as conn:
        events = conn.execute("SELECT count(*) FROM strego_events").fetchone()
        states = conn.execute("SELECT state, count(*) FROM strego_tasks GROUP BY state").fetchall()
    return (int(events[0]) if events else 0), {s: int(n) for s, n in states}


def _stored(dsn: str) -> tuple[int, dict[str, int]]:
    try:
        return _rows(dsn)
    except psycopg.errors.UndefinedTable:
        return 0, {}  # the drainer has not made its tables yet


def _scrape_until(port: int, done: Any) -> dict[Any, float]:
    deadline = time.monotonic() + PATIENCE * 2
    last: dict[Any, float] = {}
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.TransportError):  # the process is starting
            last = samples(httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text)
        if last and done(last):
            return last
        time.sleep(0.05)
    raise AssertionError(f"the metrics never showed it: {last}")


N = 30


@pytest.mark.redis
@pytest.mark.slow
@pytest.mark.parametrize("loop", ["asyncio", "trio"])
def test_worker_with_history_postgres_runs_tasks_and_stores_their_history(
    clean_redis_url: str, pg_dsn: str, loop: str
) -> None:
    _seed(clean_redis_url, N)
    port = free_port()
    expected = 3 * N  # pending, active, completed
    with worker(
        loop, redis_url=clean_redis_url, port=port, extra=["--history-postgres", pg_dsn]
    ) as proc:
        found = _scrape_until(
            port,
            lambda s: (
                total(s, "strego_history_stored_events_total") == expected
                and total(s, "strego_queue_tasks", queue="default", state="completed") == N
                and (BACKLOG, (("queue", "default"),)) in s
                and total(s, BACKLOG, queue="default") == 0
            ),
        )
        assert proc.poll() is None
    assert proc.returncode == 0, proc.stderr
    assert total(found, "strego_history_failed_batches_total") == 0
    assert found[("strego_history_last_commit_age_seconds", ())] < PATIENCE
    assert _rows(pg_dsn) == (expected, {"completed": N})


@pytest.mark.redis
@pytest.mark.slow
@pytest.mark.parametrize("loop", ["asyncio", "trio"])
def test_worker_runs_tasks_with_postgres_unreachable_and_the_history_waits_in_redis(
    clean_redis_url: str, pg_dsn: str, loop: str
) -> None:
    _seed(clean_redis_url, N)
    port = free_port()
    down = f"postgresql://postgres@127.0.0.1:{free_port()}/none?connect_timeout=1"
    with worker(loop, redis_url=clean_redis_url, port=port, extra=["--history-postgres", down]):
        found = _scrape_until(
            port,
            lambda s: (
                total(s, "strego_queue_tasks", queue="default", state="completed") == N
                and total(s, "strego_history_failed_batches_total") > 0
                and total(s, BACKLOG, queue="default") > 0
            ),
        )
    assert total(found, "strego_history_stored_events_total") == 0

    async def drain_later() -> None:
        backend = RedisBackend.from_url(clean_redis_url, history=True)
        later = PostgresHistory(pg_dsn)
        try:
            assert (await history_backlog(backend, ["default"]))["default"] > 0
            await later.drain(backend, until_idle=True)
        finally:
            await later.aclose()
            await backend.aclose()

    anyio.run(drain_later, backend=loop)  # nothing was lost: another drainer stores it all
    assert _rows(pg_dsn) == (3 * N, {"completed": N})


@pytest.mark.redis
@pytest.mark.slow
@pytest.mark.parametrize("loop", ["asyncio", "trio"])
def test_the_history_command_serves_its_metrics(
    clean_redis_url: str, pg_dsn: str, loop: str
) -> None:
    _seed(clean_redis_url, N)  # N enqueue events, nothing runs them
    port = free_port()
    args = [sys.executable, "-m", "strego.cli", "history", "--redis", clean_redis_url,
            "--postgres", pg_dsn, "--metrics-port", str(port), "--metrics-host", "127.0.0.1",
            "--log-level", "WARNING"] + (["--trio"] if loop == "trio" else [])  # fmt: skip
    proc = subprocess.Popen(args, cwd=ROOT, stderr=subprocess.PIPE, text=True)
    try:
        found = _scrape_until(
            port,
            lambda s: (
                total(s, "strego_history_stored_events_total") == N
                and total(s, BACKLOG, queue="default") == 0
                and (BACKLOG, (("queue", "default"),)) in s
            ),
        )
        assert total(found, "strego_queue_tasks", queue="default", state="pending") == N
    finally:
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert _stored(pg_dsn) == (N, {"pending": N})


@pytest.mark.parametrize(
    ("url", "extra", "cap"),
    [
        ("redis://127.0.0.1:1/0?history=true&history_cap=500", [], 500),
        ("redis://127.0.0.1:1/0?history_cap=500", ["--cap", "7"], 7),
        ("redis://127.0.0.1:1/0", [], DEFAULT_HISTORY_CAP),
    ],
)
def test_the_history_command_takes_the_urls_cap_unless_given_one(
    url: str, extra: list[str], cap: int
) -> None:
    """The servers writing with the URL cap their streams at its history_cap: so does the
    drainer (which warns as a backlog nears it), unless --cap says otherwise."""
    from strego.cli import parser
    from strego.history.cli import redis_backend

    args = parser().parse_args(
        ["history", "--redis", url, "--postgres", "postgresql://x/y", *extra]
    )
    assert redis_backend(args).history_cap == cap
