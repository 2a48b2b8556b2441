"""PostgresHistory on a throwaway database: the drainer stores every transition, replayed and
reordered batches give the same rows, nothing is lost while PostgreSQL is down or its connection
is killed mid-batch, search finds what was done, retention drops partitions; under asyncio and
trio, from the memory and the Redis backend."""

from __future__ import annotations

import logging
import random
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, date, datetime, timedelta
from typing import Any

import anyio
import psycopg
import pytest
from prometheus_client import CollectorRegistry, generate_latest

from strego.backends.memory import MemoryBackend
from strego.backends.redis import RedisBackend
from strego.errors import InvalidCursorError, InvalidTaskError, NaiveDatetimeError
from strego.history import HistoryEvent, PostgresHistory, history_source
from strego.history import schema as history_schema
from strego.message import TaskMessage
from strego.prometheus import DrainerCollector
from strego.task import TaskState
from tests.postgres_server import Cluster, in_schema, throwaway_cluster, throwaway_database
from tests.runtime_support import eventually

pytestmark = pytest.mark.anyio

LEASE_MS = 30_000


@pytest.fixture(params=["memory", "redis"])
async def hbackend(request: pytest.FixtureRequest) -> AsyncIterator[Any]:
    """A backend with history on: memory, or Redis over the anyio transport."""
    if request.param == "memory":
        backend: Any = MemoryBackend(history=True)
    else:
        url = request.getfixturevalue("redis_url")
        backend = RedisBackend.from_url(url, prefix=f"h{uuid.uuid4().hex[:10]}", history=True)
    yield backend
    await backend.aclose()


def message(
    task_id: str,
    *,
    queue: str = "q",
    type: str = "email.send",
    payload: bytes = b"{}",
    labels: dict[str, str] | None = None,
) -> TaskMessage:
    return TaskMessage(
        id=task_id, type=type, queue=queue, payload=payload, encoding="json",
        labels=labels or {}, max_retry=1, created_ms=0,
    )  # fmt: skip


async def run_story(b: Any) -> None:
    """Tasks through every transition: o completes after a retry, d dies, c is cancelled, x
    deleted, r released then completed."""
    await b.enqueue(message("o", payload=b'{"order": 1234}', labels={"order": "1234"}))
    await b.enqueue(message("d", type="report.build"))
    await b.enqueue(message("c"))
    await b.enqueue(message("x"))
    await b.enqueue(message("r", queue="other"))
    assert await b.cancel("c", "q")
    assert await b.delete("x", "q")
    [o] = await b.fetch(["q"], 1, "w1", lease_ms=LEASE_MS)
    assert o.id == "o"
    assert await b.fail("q", "o", "w1", "SMTP 451", retry_in_ms=0) == TaskState.RETRY
    await eventually(lambda: _promoted(b), "o due again")
    await b.fetch(["q"], 2, "w2", lease_ms=LEASE_MS)
    assert await b.ack("q", "o", "w2")
    assert await b.fail("q", "d", "w2", "no such report", retry_in_ms=None) == TaskState.DEAD
    await b.fetch(["other"], 1, "w3", lease_ms=LEASE_MS)
    assert await b.release("other", ["r"], "w3") == 1
    await b.fetch(["other"], 1, "w4", lease_ms=LEASE_MS)
    assert await b.ack("other", "r", "w4")


async def _promoted(b: Any) -> bool:
    await b.promote(["q"])
    info = await b.get_task("o", "q")
    return bool(info and info.state == TaskState.PENDING)


async def test_the_drainer_stores_every_transition(hbackend: Any, history: PostgresHistory) -> None:
    await run_story(hbackend)
    await history.drain(hbackend, until_idle=True)
    assert history.stats.lag == 0 and history.stats.stored > 0
    story = await history.task("o")
    assert story is not None
    assert [e.state for e in story.events] == [
        "pending", "active", "retry", "pending", "active", "completed",
    ]  # fmt: skip
    assert story.events[2].error == "SMTP 451"
    assert [e.consumer for e in story.events if e.state == "active"] == ["w1", "w2"]
    t = story.task
    assert (t.state, t.type, t.queue, t.labels) == (
        "completed",
        "email.send",
        "q",
        {"order": "1234"},
    )
    assert t.payload == b'{"order": 1234}' and t.last_error == "SMTP 451" and t.retried == 1
    expected = {"d": "dead", "c": "cancelled", "x": "deleted", "r": "completed"}
    for task_id, state in expected.items():
        found = await history.task(task_id)
        assert found is not None and found.task.state == state, task_id
    released = await history.task("r")
    assert released is not None
    assert [e.state for e in released.events] == ["pending", "active", "pending", "active",
                                                  "completed"]  # fmt: skip
    # everything stored was acknowledged: the backlog is empty
    assert sum((await history_source(hbackend).history_backlog()).values()) == 0
    assert await history.task("nope") is None


async def test_the_events_of_a_queue_purged_empty_are_stored(
    hbackend: Any, history: PostgresHistory
) -> None:
    """The purge empties the queue (on Redis: takes it out of the registry, where drainers find
    history streams); its `deleted` events are stored all the same, and on Redis the queue
    leaves the set of purged queues once they are."""
    await hbackend.enqueue(message("t1"))
    await hbackend.fetch(["q"], 1, "w1", lease_ms=LEASE_MS)
    assert await hbackend.fail("q", "t1", "w1", "boom", retry_in_ms=None) == TaskState.DEAD
    await history.drain(hbackend, until_idle=True)
    assert await hbackend.purge("q", [TaskState.DEAD]) == 1
    assert "q" not in await hbackend.queues()
    await history.drain(hbackend, until_idle=True)
    story = await history.task("t1")
    assert story is not None
    assert [e.state for e in story.events] == ["pending", "active", "dead", "deleted"]
    assert story.task.state == "deleted"
    assert sum((await history_source(hbackend).history_backlog()).values()) == 0
    if isinstance(hbackend, RedisBackend):
        from strego.backends.redis.keys import history_queues_key
        from strego.backends.redis.transport import Command

        purged = Command(("SMEMBERS", history_queues_key(hbackend.prefix)))
        assert not await hbackend.transport.execute(purged)


@pytest.mark.redis
async def test_stopped_drainers_leave_no_consumer_behind(
    redis_url: str, history: PostgresHistory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each drainer start reads under a name of its own: the next drainer's look for idle
    entries forgets those idle for CLAIM_IDLE_MS with nothing pending, and takes over the
    entries of one that stopped mid-batch before forgetting it too."""
    from strego.backends.redis.transport import Command
    from strego.history import events

    monkeypatch.setattr(events, "CLAIM_IDLE_MS", 200)
    backend = RedisBackend.from_url(redis_url, prefix=f"c{uuid.uuid4().hex[:10]}", history=True)

    async def consumers() -> dict[str, int]:
        reply = await backend.transport.execute(
            Command(("XINFO", "CONSUMERS", backend.keys("q").history, events.GROUP))
        )
        infos = [dict(zip(c[::2], c[1::2], strict=True)) if isinstance(c, list) else c
                 for c in reply]  # fmt: skip
        return {i[b"name"].decode(): i[b"pending"] for i in infos}

    try:
        for i in range(5):  # five drainer starts (worker restarts), each storing one event
            await backend.enqueue(message(f"t{i}"))
            await history.drain(backend, until_idle=True)
            await anyio.sleep(0.3)
        assert list((await consumers()).values()) == [0]
        # a drainer stopped mid-batch: its entries are pending under its name
        await backend.enqueue(message("late"))
        stopped = history_source(backend, "stopped")
        assert [e.task_id for e in await stopped.read_history(10)] == ["late"]
        assert (await consumers())["stopped"] == 1
        await anyio.sleep(0.3)
        # the script alone (idle 0): a consumer holding entries is kept
        forget = ("remove_idle_drainers", (backend.keys("q").history,), (events.GROUP, 0, "me"))
        assert await backend._run(*forget) == 0
        assert await consumers() == {"stopped": 1}
        await history.drain(backend, until_idle=True)
        story = await history.task("late")
        assert story is not None and story.task.state == "pending"
        left = await consumers()
        assert "stopped" not in left and list(left.values()) == [0]
    finally:
        await backend.aclose()


async def _rows(dsn: str) -> tuple[list[Any], list[Any]]:
    def read() -> tuple[list[Any], list[Any]]:
        with psycopg.connect(dsn) as conn:
            tasks = conn.execute(
                "SELECT id, created_at, queue, type, state, labels, payload, encoding,"
                " enqueued_at, retried, last_error, consumer, updated_at, seq_ms, seq_n,"
                " error_seq_ms, error_seq_n, retried_seq_ms, retried_seq_n, words::text"
                " FROM strego_tasks ORDER BY id"
            ).fetchall()
            events = conn.execute(
                "SELECT * FROM strego_events ORDER BY queue, seq_ms, seq_n"
            ).fetchall()
            return tasks, events

    return await anyio.to_thread.run_sync(read)


async def test_replayed_and_reordered_batches_give_the_same_rows(
    pg_database: str, pg_dsn: str
) -> None:
    backend = MemoryBackend(history=True)
    await run_story(backend)
    events = await history_source(backend).read_history(10_000)
    assert len(events) == 18
    in_order = PostgresHistory(pg_dsn)
    await in_order.store(events)
    expected = await _rows(pg_dsn)
    await in_order.aclose()
    rng = random.Random(20)
    for attempt in range(3):
        name = f"r_{uuid.uuid4().hex[:10]}"
        with psycopg.connect(pg_database, autocommit=True) as conn:
            conn.execute(f"CREATE SCHEMA {name}")
        dsn = in_schema(pg_database, name)
        shuffled = PostgresHistory(dsn)
        try:
            order = events[:]
            rng.shuffle(order)
            # batches of random sizes, in random order, some stored twice
            i = 0
            while i < len(order):
                n = rng.randint(1, 7)
                await shuffled.store(order[i : i + n])
                if rng.random() < 0.3:
                    await shuffled.store(order[i : i + n])
                i += n
            if attempt == 0:
                await shuffled.store(events)  # the whole replay on top
            assert await _rows(dsn) == expected
        finally:
            await shuffled.aclose()
            with psycopg.connect(pg_database, autocommit=True) as conn:
                conn.execute(f"DROP SCHEMA {name} CASCADE")


async def test_search_finds_what_was_done(hbackend: Any, history: PostgresHistory) -> None:
    await run_story(hbackend)
    for i in range(12):
        await hbackend.enqueue(message(f"bulk{i:02}", type="bulk.job", labels={"batch": "b1"}))
    await history.drain(hbackend, until_idle=True)

    def ids(page: Any) -> set[str]:
        return {t.id for t in page.tasks}

    assert ids(await history.search(state="dead")) == {"d"}
    assert ids(await history.search(type="email.send", state="completed")) == {"o", "r"}
    assert ids(await history.search(queue="q", type="email.send", state="completed")) == {"o"}
    assert ids(await history.search(queue="other")) == {"r"}
    assert ids(await history.search(label="order=1234")) == {"o"}
    assert ids(await history.search(label={"batch": "b1"}, limit=100)) == {
        f"bulk{i:02}" for i in range(12)
    }
    assert ids(await history.search(text="1234")) == {"o"}
    assert ids(await history.search(text="report")) == {"d"}
    assert ids(await history.search(text="bulk07")) == {"bulk07"}
    # created_ms 0 in the messages: the ids (not strego's) carry no time, so time filters see
    # them at 1970-01-01
    epoch = datetime(1970, 1, 1, tzinfo=UTC)
    assert len((await history.search(since=epoch, until=epoch + timedelta(days=1),
                                      limit=100)).tasks) == 17  # fmt: skip
    assert (await history.search(since=datetime.now(UTC))).tasks == []
    # pages by cursor, newest first, nothing twice
    seen: list[str] = []
    cursor = None
    while True:
        page = await history.search(type="bulk.job", limit=5, cursor=cursor)
        seen += [t.id for t in page.tasks]
        if page.next_cursor is None:
            break
        cursor = page.next_cursor
    assert seen == sorted(seen, reverse=True) and len(seen) == 12 == len(set(seen))


async def test_search_refuses_bad_input(history: PostgresHistory) -> None:
    with pytest.raises(InvalidTaskError):
        await history.search(limit=0)
    with pytest.raises(InvalidTaskError):
        await history.search(state="sleeping")
    with pytest.raises(InvalidTaskError):
        await history.search(label="no-equals")
    with pytest.raises(NaiveDatetimeError):
        await history.search(since=datetime(2026, 1, 1))
    with pytest.raises(InvalidCursorError):
        await history.search(cursor="!!")


def _event(queue: str, seq: int, task_id: str, day: date, state: str = "pending") -> HistoryEvent:
    at = int(datetime(day.year, day.month, day.day, 12, tzinfo=UTC).timestamp() * 1000)
    return HistoryEvent(queue, (at, seq), task_id, state, at, type="t" if seq == 0 else None)


async def test_retention_drops_old_partitions(history: PostgresHistory, pg_dsn: str) -> None:
    from strego.ids import new_task_id

    old, new = date(2026, 1, 1), date(2026, 3, 1)
    old_id = new_task_id(int(datetime(2026, 1, 1, 12, tzinfo=UTC).timestamp() * 1000))
    new_id = new_task_id(int(datetime(2026, 3, 1, 12, tzinfo=UTC).timestamp() * 1000))
    await history.store([
        _event("q", 0, old_id, old), _event("q", 1, old_id, old, "active"),
        _event("q", 0, new_id, new), _event("q", 0, "no-time-in-this-id", old),
    ])  # fmt: skip
    dropped = await history.drop_partitions(datetime(2026, 2, 1, tzinfo=UTC))
    assert sorted(dropped) == ["strego_events_p20260101", "strego_tasks_p20260101"]
    assert await history.task(old_id) is None
    kept = await history.task(new_id)
    assert kept is not None and len(kept.events) == 1
    # text search finds a task by its id (its time says where to look)
    assert [t.id for t in (await history.search(text=new_id)).tasks] == [new_id]
    # a task whose id has no time lives under 1970-01-01, which retention keeps
    assert await history.task("no-time-in-this-id") is not None

    def parts() -> dict[str, list[date]]:
        with psycopg.connect(pg_dsn) as conn:
            return history_schema.partitions(conn)

    found = await anyio.to_thread.run_sync(parts)
    assert found["strego_events"] == [new]
    assert found["strego_tasks"] == [date(1970, 1, 1), new]


async def test_migrations_give_the_fresh_schema(pg_database: str) -> None:
    catalog = """
        SELECT c.relname, a.attname, format_type(a.atttypid, a.atttypmod), a.attnotnull, a.attnum
        FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid
        JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE n.nspname = current_schema() AND a.attnum > 0 AND NOT a.attisdropped
        UNION ALL
        SELECT c.relname, pg_get_indexdef(i.indexrelid), '', i.indisprimary, 0
        FROM pg_index i JOIN pg_class c ON c.oid = i.indrelid
        JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = current_schema()
        UNION ALL
        SELECT c.relname, pg_get_partkeydef(c.oid), '', true, -1
        FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE n.nspname = current_schema() AND c.relkind = 'p'
        ORDER BY 1, 2
    """

    def build(fresh: bool) -> list[Any]:
        name = f"m_{uuid.uuid4().hex[:10]}"
        with psycopg.connect(pg_database, autocommit=True) as conn:
            conn.execute(f"CREATE SCHEMA {name}")
            conn.execute(f"SET search_path = {name}")
            try:
                assert history_schema.migrate(conn, fresh=fresh) == 0
                assert history_schema.current_version(conn) == history_schema.VERSION
                rows = conn.execute(catalog).fetchall()
                # schema names differ: compare the definitions without them
                return [tuple(str(v).replace(name + ".", "") for v in r) for r in rows]
            finally:
                conn.execute(f"DROP SCHEMA {name} CASCADE")

    fresh, stepped = await anyio.to_thread.run_sync(build, True), None
    stepped = await anyio.to_thread.run_sync(build, False)
    assert fresh == stepped
    assert any("strego_tasks_words" in str(r) for r in fresh)


async def _terminate(dsn: str) -> int:
    def kill() -> int:
        with psycopg.connect(dsn, autocommit=True) as conn:
            rows = conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE datname = current_database() AND pid <> pg_backend_pid()"
                " AND application_name = 'strego-history'"
            ).fetchall()
            return len(rows)

    return await anyio.to_thread.run_sync(kill)


async def _count_events(dsn: str) -> int:
    def count() -> int:
        with psycopg.connect(dsn) as conn:
            row = conn.execute("SELECT count(*) FROM strego_events").fetchone()
            return int(row[0]) if row else 0

    return await anyio.to_thread.run_sync(count)


async def _work(backend: Any, n: int, prefix: str) -> int:
    """Enqueue n tasks and complete them; returns the events that makes (3 per task)."""
    await backend.enqueue_many([message(f"{prefix}{i:04}") for i in range(n)])
    done = 0
    while done < n:
        tasks = await backend.fetch(["q"], 50, "w", lease_ms=LEASE_MS)
        for t in tasks:
            assert await backend.ack("q", t.id, "w")
        done += len(tasks)
    return 3 * n


async def test_killing_the_connection_mid_batch_loses_nothing(
    hbackend: Any, pg_dsn: str, caplog: pytest.LogCaptureFixture
) -> None:
    history = PostgresHistory(pg_dsn)
    await history.migrate()
    expected = 0
    async with anyio.create_task_group() as tg:
        tg.start_soon(lambda: history.drain(hbackend, batch=40, retry_s=0.05, poll_s=0.01))
        for round_ in range(6):
            expected += await _work(hbackend, 60, f"k{round_}-")
            await eventually(lambda: history.stats.stored > 0, "a first batch stored")
            await _terminate(pg_dsn)
        await eventually(lambda: _all_stored(pg_dsn, expected), "every event stored")
        tg.cancel_scope.cancel()
    await history.aclose()
    assert await _count_events(pg_dsn) == expected
    assert history.stats.failures > 0, "a connection was killed under the drainer"
    assert any("PostgreSQL failed" in r.message for r in caplog.records)


async def _all_stored(dsn: str, expected: int) -> bool:
    return await _count_events(dsn) == expected


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    """A PostgreSQL of this module's own, which the test may stop and start."""
    with throwaway_cluster() as c:
        yield c


async def test_postgres_stopped_and_restarted_mid_run_loses_nothing(
    hbackend: Any, cluster: Cluster, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "strego.history")
    with throwaway_database(cluster.dsn) as dsn:
        history = PostgresHistory(dsn, connect_timeout=2)
        await history.migrate()
        expected = 0
        async with anyio.create_task_group() as tg:
            tg.start_soon(
                lambda: history.drain(
                    hbackend, batch=100, retry_s=0.05, poll_s=0.01, lag_every_s=0.05
                )
            )
            expected += await _work(hbackend, 100, "a")
            await eventually(lambda: _all_stored(dsn, expected), "first events stored")
            await anyio.to_thread.run_sync(cluster.stop)
            try:
                expected += await _work(hbackend, 200, "b")  # while PostgreSQL is down
                await eventually(lambda: history.stats.failures > 0, "the drainer failing")
                await eventually(lambda: history.stats.lag >= 200, "the lag seen")
            finally:
                await anyio.to_thread.run_sync(cluster.start)
            expected += await _work(hbackend, 50, "c")
            await eventually(lambda: _all_stored(dsn, expected), "every event stored")
            await eventually(lambda: history.stats.lag == 0, "no lag left")
            tg.cancel_scope.cancel()
        await history.aclose()
        assert any("PostgreSQL is back" in r.message for r in caplog.records)


async def test_a_backlog_near_the_cap_warns(caplog: pytest.LogCaptureFixture) -> None:
    from tests.redis_server import free_port

    backend = MemoryBackend(history=True, history_cap=100)
    await backend.enqueue_many([message(f"t{i:03}") for i in range(90)])
    # nothing listens there: every batch fails, and the backlog stays
    history = PostgresHistory(f"postgresql://postgres@127.0.0.1:{free_port()}/x", connect_timeout=1)
    async with anyio.create_task_group() as tg:
        tg.start_soon(lambda: history.drain(backend, retry_s=0.01, lag_every_s=0.01))
        await eventually(
            lambda: any("near the cap" in r.message and r.levelno == logging.WARNING
                        for r in caplog.records),
            "the warning",
        )  # fmt: skip
        tg.cancel_scope.cancel()
    assert history.stats.lag == 90
    assert await history_source(backend).history_backlog() == {"q": 90}


async def test_the_history_command_drains_a_redis(
    redis_url: str, pg_dsn: str, anyio_backend: Any
) -> None:
    import sys

    prefix = f"c{uuid.uuid4().hex[:10]}"
    backend = RedisBackend.from_url(redis_url, prefix=prefix, history=True)
    try:
        expected = await _work(backend, 30, "cli")
    finally:
        await backend.aclose()
    loop = ["--trio"] if anyio_backend[0] == "trio" else []
    done = await anyio.run_process(
        [sys.executable, "-m", "strego.cli", "history", "--redis", redis_url, "--postgres",
         pg_dsn, "--prefix", prefix, "--until-idle", *loop],
        check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr.decode()
    assert await _count_events(pg_dsn) == expected
    bad = await anyio.run_process(
        [sys.executable, "-m", "strego.cli", "history", "--redis", redis_url, "--postgres",
         "postgresql://postgres@127.0.0.1:1/none", "--until-idle"],
        check=False,
    )  # fmt: skip
    assert bad.returncode == 1
    assert b"strego history: OperationalError" in bad.stderr
    usage = await anyio.run_process(
        [sys.executable, "-m", "strego.cli", "history", "--redis", redis_url, "--postgres",
         pg_dsn, "--batch", "100", "--max-batch", "50"],
        check=False,
    )  # fmt: skip
    assert usage.returncode == 2 and b"--max-batch" in usage.stderr


def _schema_dsn(pg_database: str) -> str:
    name = f"b_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(pg_database, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {name}")
    return in_schema(pg_database, name)


def _record_reads(backend: MemoryBackend) -> list[int]:
    """The event counts the drainer asks the memory backend's history for, in order."""
    assert backend.history is not None
    asked: list[int] = []
    read = backend.history.read_history

    async def recording(count: int) -> list[HistoryEvent]:
        asked.append(count)
        return await read(count)

    backend.history.read_history = recording  # type: ignore[method-assign]
    return asked


async def test_a_backlog_grows_the_batch_and_gives_the_same_rows(
    pg_database: str, pg_dsn: str
) -> None:
    backend = MemoryBackend(history=True)
    expected = await _work(backend, 200, "g")
    assert backend.history is not None
    events = await backend.history.read_history(10_000)
    assert len(events) == expected
    one_go = PostgresHistory(_schema_dsn(pg_database))  # the reference: one batch
    await one_go.store(events)
    reference = await _rows(one_go.dsn)
    await one_go.aclose()

    asked = _record_reads(backend)
    history = PostgresHistory(pg_dsn)
    stored: list[int] = []
    store = history._store

    def counting(conn: Any, batch: Any, known: Any = None) -> None:
        stored.append(len(batch))
        store(conn, batch, known)

    history._store = counting  # type: ignore[method-assign]
    await history.drain(backend, batch=10, max_batch=80, connections=1, until_idle=True)
    await history.aclose()
    # full reads double the batch up to max_batch; the last, short one brings it back
    assert asked[:5] == [10, 20, 40, 80, 80]
    assert max(stored) == 80 and sum(stored) == expected
    assert history.stats.batch_size == 10
    # a task's events folded in one batch give the rows one batch of everything gives
    assert await _rows(pg_dsn) == reference
    with pytest.raises(InvalidTaskError):
        await history.drain(backend, batch=10, max_batch=5)
    with pytest.raises(InvalidTaskError):
        await history.drain(backend, connections=0)


async def test_a_failing_grown_batch_loses_nothing_and_starts_small_again(
    pg_dsn: str, caplog: pytest.LogCaptureFixture
) -> None:
    backend = MemoryBackend(history=True)
    expected = await _work(backend, 100, "f")
    asked = _record_reads(backend)
    history = PostgresHistory(pg_dsn)
    store = history._store
    failed: list[int] = []

    def failing_once(conn: Any, batch: Any, known: Any = None) -> None:
        if len(batch) >= 40 and not failed:
            failed.append(len(batch))
            raise psycopg.OperationalError("the server closed the connection")
        store(conn, batch, known)

    history._store = failing_once  # type: ignore[method-assign]
    await history.drain(
        backend, batch=10, max_batch=80, connections=1, retry_s=0.01, until_idle=True
    )
    await history.aclose()
    assert failed == [40] and history.stats.failures == 1
    # after the failure the drainer reads from its last commit again, `batch` events at first
    at = asked.index(40)
    assert 10 in asked[at + 1 : at + 4]
    assert await _count_events(pg_dsn) == expected
    assert backend.history is not None
    assert sum((await backend.history.history_backlog()).values()) == 0
    assert any("PostgreSQL failed" in r.message for r in caplog.records)


async def _reference_rows(pg_database: str, backend: Any) -> tuple[int, Any]:
    """The events waiting in `backend`'s history (read, left unacknowledged: a drainer reads
    them again) and the rows they give stored in one batch, in a schema of their own."""
    source = history_source(backend, "drainer")  # the drainer's name: they are its pending ones
    events: list[HistoryEvent] = []
    while more := await source.read_history(100_000):  # Redis counts entries: several reads
        events += more
    one_go = PostgresHistory(_schema_dsn(pg_database))
    await one_go.store(events)
    rows = await _rows(one_go.dsn)
    await one_go.aclose()
    return len(events), rows


def _overlapping(history: PostgresHistory, fail_at: int | None = None) -> list[int]:
    """Make each batch's store last a little (so that batches overlap) and count the batches in
    flight at once ([the most seen]); with `fail_at`, that store (1-based) fails."""
    store = history._store
    lock = threading.Lock()
    state = {"now": 0, "calls": 0}
    most = [0]

    def slow(conn: Any, batch: Any, known: Any = None) -> None:
        with lock:
            state["now"] += 1
            state["calls"] += 1
            call = state["calls"]
            most[0] = max(most[0], state["now"])
        try:
            time.sleep(0.02)
            if call == fail_at:
                raise psycopg.OperationalError("the server closed the connection")
            store(conn, batch, known)
        finally:
            with lock:
                state["now"] -= 1

    history._store = slow  # type: ignore[method-assign]
    return most


async def test_concurrent_batches_give_the_same_rows(
    hbackend: Any, pg_database: str, pg_dsn: str
) -> None:
    for round_ in range(3):
        await _work(hbackend, 60, f"p{round_}-")
    expected, reference = await _reference_rows(pg_database, hbackend)
    history = PostgresHistory(pg_dsn)
    most = _overlapping(history)
    await history.drain(
        hbackend, batch=20, max_batch=20, connections=4, until_idle=True, consumer="drainer"
    )
    await history.aclose()
    assert most[0] >= 2, "batches were stored at once"
    assert history.stats.stored >= expected
    assert await _rows(pg_dsn) == reference
    assert sum((await history_source(hbackend).history_backlog()).values()) == 0


async def test_a_failing_batch_among_concurrent_ones_loses_nothing(
    hbackend: Any, pg_database: str, pg_dsn: str, caplog: pytest.LogCaptureFixture
) -> None:
    for round_ in range(3):
        await _work(hbackend, 60, f"q{round_}-")
    expected, reference = await _reference_rows(pg_database, hbackend)
    history = PostgresHistory(pg_dsn)
    most = _overlapping(history, fail_at=3)
    await history.drain(
        hbackend, batch=20, max_batch=20, connections=3, retry_s=0.01, until_idle=True,
        consumer="drainer",
    )  # fmt: skip
    await history.aclose()
    assert most[0] >= 2 and history.stats.failures == 1
    assert await _count_events(pg_dsn) == expected
    assert await _rows(pg_dsn) == reference
    assert sum((await history_source(hbackend).history_backlog()).values()) == 0
    assert any("PostgreSQL failed" in r.message for r in caplog.records)


# -- events PostgreSQL would refuse, retention under a running writer, `retried` out of order ---


async def test_nul_bytes_are_stored_not_refused(hbackend: Any, history: PostgresHistory) -> None:
    # msgpack and raw payloads often hold 0x00, a handler's error text may: PostgreSQL refuses it
    # in text and jsonb, and one such event used to stop the drainer for good
    await hbackend.enqueue(message("z", payload=b"a\x00b"))
    await hbackend.fetch(["q"], 1, "w\x00", lease_ms=LEASE_MS)
    assert await hbackend.fail("q", "z", "w\x00", "bad\x00byte", retry_in_ms=None) == TaskState.DEAD
    with anyio.fail_after(30):
        await history.drain(hbackend, retry_s=0.01, until_idle=True)
    story = await history.task("z")
    assert story is not None
    t = story.task
    assert (t.state, t.payload) == ("dead", b"a\x00b")  # bytea keeps every byte
    assert t.last_error == "bad\ufffdbyte"
    assert [(r.state, r.consumer) for r in story.events] == [
        ("pending", None), ("active", "w\ufffd"), ("dead", None),
    ]  # fmt: skip
    assert sum((await history_source(hbackend).history_backlog()).values()) == 0


async def test_nul_bytes_in_every_text_field_are_stored(history: PostgresHistory) -> None:
    from strego.ids import new_task_id

    now = int(time.time() * 1000)
    tid = new_task_id(now)
    await history.store([
        HistoryEvent("q", (now, 0), tid, "pending", now, type="t\x00y", payload=b"a\x00b",
                     encoding="by\x00tes", labels={"k\x00": "v\x00"}),
        HistoryEvent("q", (now, 1), tid, "retry", now, retried=1, error="e\x00", consumer="c\x00"),
    ])  # fmt: skip
    story = await history.task(tid)
    assert story is not None
    t = story.task
    assert (t.type, t.encoding, t.labels) == ("t\ufffdy", "by\ufffdtes", {"k\ufffd": "v\ufffd"})
    assert (t.payload, t.last_error, t.consumer) == (b"a\x00b", "e\ufffd", "c\ufffd")
    assert [r.error for r in story.events] == [None, "e\ufffd"]
    assert [x.id for x in (await history.search(text="a b")).tasks] == [tid]


async def test_an_event_postgresql_refuses_is_logged_and_skipped(
    pg_dsn: str, caplog: pytest.LogCaptureFixture
) -> None:
    # a refusal (DataError: here a retry count past int) is no outage: retrying cannot help, so
    # the batch is split, the rest stored, the refused event logged with its id and acknowledged
    backend = MemoryBackend(history=True)
    expected = await _work(backend, 30, "g")
    assert backend.history is not None
    now = int(time.time() * 1000)
    backend.history.add(HistoryEvent("q", (0, 0), "g0007", "retry", now, retried=2**31))
    history = PostgresHistory(pg_dsn)
    with anyio.fail_after(30):
        await history.drain(backend, batch=200, connections=1, retry_s=0.01, until_idle=True)
    await history.aclose()
    assert await _count_events(pg_dsn) == expected
    assert sum((await backend.history.history_backlog()).values()) == 0
    refused = [r for r in caplog.records if r.levelno == logging.ERROR and "refused" in r.message]
    assert refused and "g0007" in refused[0].message
    assert history.stats.refused == 1 and history.stats.failures == 0
    registry = CollectorRegistry()
    registry.register(DrainerCollector(history))
    assert b"strego_history_refused_events_total 1.0" in generate_latest(registry)
    story = await history.task("g0007")
    assert story is not None and story.task.state == "completed"


async def test_an_event_past_a_postgresql_limit_is_logged_and_skipped(
    pg_dsn: str, caplog: pytest.LogCaptureFixture
) -> None:
    # a limit exceeded (ProgramLimitExceeded, an OperationalError in psycopg: here a task id too
    # long for an index row) is refused the same every time: skipped like a DataError, not
    # retried forever as an outage
    backend = MemoryBackend(history=True)
    expected = await _work(backend, 30, "l")
    assert backend.history is not None
    now = int(time.time() * 1000)
    long_id = "".join(uuid.uuid4().hex for _ in range(300))  # 9600 characters, incompressible
    backend.history.add(HistoryEvent("q", (0, 0), long_id, "pending", now, type="t"))
    history = PostgresHistory(pg_dsn)
    with anyio.fail_after(20):
        await history.drain(backend, batch=200, connections=1, retry_s=0.01, until_idle=True)
    await history.aclose()
    assert await _count_events(pg_dsn) == expected
    assert sum((await backend.history.history_backlog()).values()) == 0
    refused = [r for r in caplog.records if r.levelno == logging.ERROR and "refused" in r.message]
    assert len(refused) == 1 and "index row" in refused[0].message
    assert history.stats.refused == 1 and history.stats.failures == 0


async def test_labels_of_any_size_are_stored_and_their_first_words_searchable(
    history: PostgresHistory,
) -> None:
    # labels have no size limit, a tsvector has one (1 MB): only the labels' first 4096
    # characters (WORDS_LABELS) are words, or such a task's events would be refused (before:
    # retried forever)
    now = int(time.time() * 1000)
    labels = {f"key{i:06}": f"value{i:06}" for i in range(100_000)}  # 2 MB of distinct words
    assert len(" ".join(f"{k} {v}" for k, v in labels.items())) > 2_000_000
    backend = MemoryBackend(history=True)
    assert backend.history is not None
    tid = "big"
    backend.history.add(HistoryEvent("q", (0, 0), tid, "pending", now, type="t", labels=labels))
    with anyio.fail_after(20):
        await history.drain(backend, connections=1, retry_s=0.01, until_idle=True)
    assert history.stats.refused == 0 and history.stats.failures == 0
    story = await history.task(tid)
    assert story is not None and story.task.labels == labels
    assert [t.id for t in (await history.search(text="value000000")).tasks] == [tid]
    assert (await history.search(text="value099999")).tasks == []
    found = await history.search(label={"key099999": "value099999"})
    assert [t.id for t in found.tasks] == [tid]


async def test_a_late_event_after_retention_is_stored(history: PostgresHistory) -> None:
    from strego.ids import new_task_id

    now = int(time.time() * 1000)
    tid = new_task_id(now - 10 * 86_400_000)
    await history.store([HistoryEvent("q", (now, 0), tid, "pending", now, type="t")])
    dropped = await history.drop_partitions(datetime.now(UTC) - timedelta(days=5))
    assert (
        history_schema.partition_name("strego_tasks", history_schema.day_of(now - 10 * 86_400_000))
        in dropped
    )
    # the task, created 10 days ago, completes now: its row's partition was dropped, and the
    # connection had seen it
    with anyio.fail_after(10):
        await history.store([HistoryEvent("q", (now, 1), tid, "completed", now)])
    story = await history.task(tid)
    assert story is not None and story.task.state == "completed"


async def test_the_drainer_survives_retention_of_a_partition_it_wrote(
    pg_dsn: str, caplog: pytest.LogCaptureFixture
) -> None:
    from strego.ids import new_task_id

    backend = MemoryBackend(history=True)
    assert backend.history is not None
    now = int(time.time() * 1000)
    tid = new_task_id(now - 10 * 86_400_000)
    history = PostgresHistory(pg_dsn)
    # one drain, one writer (connection): it writes the old task's row, retention drops that
    # partition (another process's drainer, say), then the task's late event comes
    backend.history.add(HistoryEvent("q", (0, 0), tid, "pending", now, type="t"))
    writes: list[int] = []
    store = history._store

    def then_drop(conn: Any, batch: Any, known: Any = None) -> None:
        store(conn, batch, known)
        writes.append(len(batch))
        if len(writes) == 1:
            with psycopg.connect(pg_dsn, autocommit=True) as other:
                history_schema.drop_before(other, (datetime.now(UTC) - timedelta(days=5)).date())
            backend.history.add(HistoryEvent("q", (0, 0), tid, "completed", now))  # type: ignore[union-attr]

    history._store = then_drop  # type: ignore[method-assign]
    with anyio.fail_after(30):
        await history.drain(backend, connections=1, retry_s=0.01, until_idle=True)
    await history.aclose()
    story = await history.task(tid)
    assert story is not None and story.task.state == "completed"
    assert sum((await backend.history.history_backlog()).values()) == 0


async def test_retried_does_not_depend_on_batch_boundaries(
    history: PostgresHistory, pg_database: str
) -> None:
    from strego.ids import new_task_id

    now = int(time.time() * 1000)
    tid = new_task_id(now)
    e1 = HistoryEvent("q", (now, 1), tid, "retry", now, retried=1, error="a")
    e2 = HistoryEvent("q", (now, 2), tid, "retry", now, retried=2, error="b")
    e3 = HistoryEvent("q", (now, 3), tid, "active", now, consumer="c")
    one_go = PostgresHistory(_schema_dsn(pg_database))
    await one_go.store([e1, e2, e3])
    # a drainer after a failed batch {e1}: {e2} committed, then the re-read {e1, e3} while the
    # batch {e3} was still in flight
    for batch in ([e2], [e1, e3], [e3]):
        await history.store(batch)
    found, reference = await _rows(history.dsn), await _rows(one_go.dsn)
    await one_go.aclose()
    assert found == reference
    story = await history.task(tid)
    assert story is not None and (story.task.retried, story.task.last_error) == (2, "b")


async def test_a_rolled_back_batch_leaves_no_partition_believed_made(
    history: PostgresHistory,
) -> None:
    from strego.ids import new_task_id

    # a batch on a new day makes its partitions, then fails: the rollback undoes them, and the
    # next batch on the same connection must make them again
    at = int(datetime(2026, 5, 1, 12, tzinfo=UTC).timestamp() * 1000)
    tid = new_task_id(at)
    refused = HistoryEvent("q", (at, 0), tid, "pending", at, type="t", retried=2**31)
    with pytest.raises(psycopg.DataError):
        await history.store([refused])
    await history.store([HistoryEvent("q", (at, 0), tid, "pending", at, type="t")])
    story = await history.task(tid)
    assert story is not None and story.task.state == "pending"


async def test_migration_2_rewrites_no_row_and_keeps_the_stored_retry_counts(
    pg_database: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from strego.ids import new_task_id

    dsn = _schema_dsn(pg_database)
    now = int(time.time() * 1000)
    tid, fresh = new_task_id(now), new_task_id(now)
    row_versions = "SELECT id, xmin::text, ctid::text FROM strego_tasks ORDER BY id"

    def at_version_1() -> list[Any]:
        with psycopg.connect(dsn, autocommit=True) as conn:
            with monkeypatch.context() as m:
                m.setattr(history_schema, "MIGRATIONS", history_schema.MIGRATIONS[:1])
                m.setattr(history_schema, "VERSION", 1)
                history_schema.migrate(conn, fresh=False)
            with conn.transaction():
                day = history_schema.day_of(now)
                history_schema.ensure_partitions(conn, "strego_tasks", {day}, set())
                # one row with a count (every enqueue brings one), one without
                for task_id, retried in ((tid, 1), (fresh, None)):
                    conn.execute(
                        "INSERT INTO strego_tasks (id, created_at, queue, state, updated_at,"
                        " retried, seq_ms, seq_n) VALUES (%s, to_timestamp(%s / 1000.0), 'q',"
                        " 'retry', now(), %s, %s, 5)",
                        (task_id, now, retried, now),
                    )
            return conn.execute(row_versions).fetchall()

    def rows_now() -> list[Any]:
        with psycopg.connect(dsn, autocommit=True) as conn:
            return conn.execute(row_versions).fetchall()

    before = await anyio.to_thread.run_sync(at_version_1)
    history = PostgresHistory(dsn)
    await history.migrate()
    # the migration only adds the columns: no row is written (it would be nearly every row, under
    # the ALTER's lock)
    assert await anyio.to_thread.run_sync(rows_now) == before
    # an old row's count is kept unless an event newer than the row's seq brings one
    await history.store([
        HistoryEvent("q", (now, 4), tid, "retry", now, retried=3),
        HistoryEvent("q", (now, 4), fresh, "retry", now, retried=3),
    ])  # fmt: skip
    found = {t: await history.task(t) for t in (tid, fresh)}
    assert {t: s.task.retried for t, s in found.items() if s is not None} == {tid: 1, fresh: 3}
    await history.store([HistoryEvent("q", (now, 6), tid, "retry", now, retried=2)])
    story = await history.task(tid)
    await history.aclose()
    assert story is not None and story.task.retried == 2
