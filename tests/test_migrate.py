"""The data's schema version and `strego migrate` (strego/backends/redis/migrate.py): v1 data
(tests/fixtures/format_v1) is checked in bounded batches and marked version 2 while nothing is
rewritten; a backend refuses data of a newer version, and reads older or unmarked data."""

from __future__ import annotations

import itertools
import socket
from typing import Any

import pytest
import redis

from strego.backends.redis import RedisBackend
from strego.backends.redis.keys import schema_key
from strego.backends.redis.migrate import (
    RECORD_VERSION,
    STEPS,
    Migration,
    check_schema,
    migrate,
    read_version,
)
from strego.backends.redis.transport import Command, ScriptCall
from strego.errors import SchemaVersionError
from strego.task import TaskState
from tests.test_cli import strego
from tests.test_format_upgrade import FIXTURE, IDS, restore

pytestmark = [pytest.mark.redis]
PREFIX = FIXTURE["prefix"]


def snapshot(url: str) -> dict[bytes, Any]:
    """Every key of the prefix with its DUMP (what a migration must leave alone)."""
    client = redis.Redis.from_url(url)
    try:
        return {k: client.dump(k) for k in client.scan_iter(match=f"{PREFIX}:*")}
    finally:
        client.close()


def stored_version(url: str) -> bytes | None:
    client = redis.Redis.from_url(url)
    try:
        value = client.hget(schema_key(PREFIX), "record")
        return value if isinstance(value, bytes) else None
    finally:
        client.close()


def test_steps_chain_up_to_the_record_version() -> None:
    versions = [(s.from_version, s.to_version) for s in STEPS]
    assert versions[0][0] == 1 and versions[-1][1] == RECORD_VERSION
    assert all(a[1] == b[0] for a, b in itertools.pairwise(versions))


def test_migrate_marks_v1_data_version_2_rewriting_nothing(clean_redis_url: str) -> None:
    restore(clean_redis_url)
    before = snapshot(clean_redis_url)
    dry = strego("migrate", "--redis", clean_redis_url, "--prefix", PREFIX, "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert "would write record version 2" in dry.stdout
    assert stored_version(clean_redis_url) is None and snapshot(clean_redis_url) == before

    done = strego("migrate", "--redis", clean_redis_url, "--prefix", PREFIX, "--batch", "2")
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "no record is rewritten" in out
    for queue, count in (("q", 9), ("work", 5), ("held", 1)):
        assert f"queue {queue}: {count} records checked" in out
    # the unreadable record is reported by id, and only it
    assert f"unreadable: queue q task {IDS['unreadable']}" in out
    assert out.count("unreadable: ") == 1
    assert "1 of 15 records do not decode" in done.stderr
    assert stored_version(clean_redis_url) == b"2"
    after = snapshot(clean_redis_url)
    assert after.pop(schema_key(PREFIX).encode()) is not None
    assert after == before  # no record, stream or set was touched

    again = strego("migrate", "--redis", clean_redis_url, "--prefix", PREFIX)
    assert again.returncode == 0 and "record version 2, nothing to do" in again.stdout


def test_migrate_usage_errors_exit_2() -> None:
    assert strego("migrate").returncode == 2  # --redis is required
    assert strego("migrate", "--redis", "redis://127.0.0.1:1/0", "--batch", "1001").returncode == 2
    assert strego("migrate", "--redis", "redis://127.0.0.1:1/0", "--batch", "x").returncode == 2
    bad_url = strego("migrate", "--redis", "http://127.0.0.1/0")
    assert bad_url.returncode == 2 and "unsupported Redis URL scheme" in bad_url.stderr


def test_migrate_takes_the_url_every_process_uses(clean_redis_url: str) -> None:
    """Backend options (history, durable) in the URL are the backend's, not the connection's:
    migrate accepts them; a Sentinel URL reaches its sentinels (here none: exit 1, not 2)."""
    restore(clean_redis_url)
    url = f"{clean_redis_url}?history=true&history_cap=1000&durable=true&connect_timeout=5"
    done = strego("migrate", "--redis", url, "--prefix", PREFIX)
    assert done.returncode == 0, done.stderr
    assert stored_version(clean_redis_url) == b"2"
    bad = strego("migrate", "--redis", f"{clean_redis_url}?history=maybe")
    assert bad.returncode == 2 and "history must be true or false" in bad.stderr
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    sentinel = f"redis+sentinel://127.0.0.1:{port}/mymaster?failover_timeout=0.3"
    down = strego("migrate", "--redis", sentinel, "--prefix", PREFIX)
    assert down.returncode == 1 and "no sentinel named the master" in down.stderr, down.stderr


def test_migrate_fails_with_1_when_redis_is_down_or_the_data_is_newer(
    clean_redis_url: str,
) -> None:
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    down = strego("migrate", "--redis", f"redis://127.0.0.1:{port}/0")
    assert down.returncode == 1
    assert down.stderr.startswith("strego migrate: BackendConnectionError: ")
    client = redis.Redis.from_url(clean_redis_url)
    client.hset(schema_key(PREFIX), "record", str(RECORD_VERSION + 1))
    client.close()
    newer = strego("migrate", "--redis", clean_redis_url, "--prefix", PREFIX)
    assert newer.returncode == 1
    assert "SchemaVersionError" in newer.stderr and "upgrade strego" in newer.stderr
    assert stored_version(clean_redis_url) == str(RECORD_VERSION + 1).encode()


class Recording:
    """A transport that records the commands it passes on."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.commands: list[tuple[Any, ...]] = []

    async def execute(self, command: Command) -> Any:
        self.commands.append(tuple(command.args))
        return await self.inner.execute(command)

    async def run_script(self, call: ScriptCall) -> Any:
        return await self.inner.run_script(call)

    async def aclose(self) -> None:
        await self.inner.aclose()


@pytest.mark.anyio
async def test_migrate_scans_in_bounded_batches(clean_redis_url: str) -> None:
    restore(clean_redis_url)
    backend = RedisBackend.from_url(clean_redis_url, prefix=PREFIX)
    transport = Recording(backend.transport)
    lines: list[str] = []
    m = Migration(transport, PREFIX, batch=3, report=lines.append)  # type: ignore[arg-type]
    try:
        assert await migrate(m) == RECORD_VERSION
    finally:
        await backend.aclose()
    scans = [c for c in transport.commands if c[0] == "HSCAN"]
    assert scans and all(c[3:] == ("COUNT", 3) for c in scans)
    assert m.checked == 15 and [u[1] for u in m.unreadable] == [IDS["unreadable"]]


@pytest.mark.anyio
async def test_a_backend_refuses_newer_data_and_reads_older_or_unmarked(
    clean_redis_url: str,
) -> None:
    restore(clean_redis_url)
    client = redis.Redis.from_url(clean_redis_url)
    try:
        for stored in (None, b"1", b"2"):  # unmarked, older, current: served
            if stored is not None:
                client.hset(schema_key(PREFIX), "record", stored)
            backend = RedisBackend.from_url(clean_redis_url, prefix=PREFIX)
            try:
                assert await read_version(backend.transport, PREFIX) == int(stored or 1)
                info = await backend.get_task(IDS["options"], "q")
                assert info is not None and info.state is TaskState.PENDING
                assert (await backend.queue_info("q")).counts[TaskState.PENDING] == 6
            finally:
                await backend.aclose()
        client.hset(schema_key(PREFIX), "record", "3")
        backend = RedisBackend.from_url(clean_redis_url, prefix=PREFIX)
        try:
            with pytest.raises(SchemaVersionError, match="record version 3") as refused:
                await backend.fetch(["q"], 10, "w", lease_ms=60_000)
            assert (refused.value.found, refused.value.known) == (3, RECORD_VERSION)
            # refused at every call, nothing written: the v1 tasks stay pending
            with pytest.raises(SchemaVersionError):
                await backend.ack("q", IDS["fresh"], "w")
            with pytest.raises(SchemaVersionError):
                await check_schema(backend.transport, PREFIX)
        finally:
            await backend.aclose()
        client.hset(schema_key(PREFIX), "record", "2")
        backend = RedisBackend.from_url(clean_redis_url, prefix=PREFIX)
        try:
            got = await backend.fetch(["q"], 10, "w", lease_ms=60_000)
            assert IDS["fresh"] in {t.id for t in got}
        finally:
            await backend.aclose()
    finally:
        client.close()


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio", "trio"])
async def test_concurrent_first_calls_all_wait_for_the_check(clean_redis_url: str) -> None:
    """A starting server makes several first calls at once: none may pass the check unchecked
    (they used to: one raised, the others wrote into the newer data)."""
    import anyio

    from conformance.helpers import message

    client = redis.Redis.from_url(clean_redis_url)
    client.hset(schema_key(PREFIX), "record", "3")
    client.close()
    backend = RedisBackend.from_url(clean_redis_url, prefix=PREFIX)
    refused: list[BaseException] = []

    async def enqueue(i: int) -> None:
        try:
            await backend.enqueue(message(f"t{i}"))
        except SchemaVersionError as exc:
            refused.append(exc)

    async def promote() -> None:
        try:
            await backend.promote(["q"])
        except SchemaVersionError as exc:
            refused.append(exc)

    try:
        async with anyio.create_task_group() as tg:
            for i in range(3):
                tg.start_soon(enqueue, i)
            tg.start_soon(promote)
    finally:
        await backend.aclose()
    assert len(refused) == 4
    client = redis.Redis.from_url(clean_redis_url)
    try:
        assert not list(client.scan_iter(match=f"{PREFIX}:v1:{{q}}:*"))  # nothing written
    finally:
        client.close()


@pytest.mark.anyio
async def test_a_schema_key_of_another_type_is_named(clean_redis_url: str) -> None:
    client = redis.Redis.from_url(clean_redis_url)
    client.set(schema_key(PREFIX), "someone else's")
    client.close()
    backend = RedisBackend.from_url(clean_redis_url, prefix=PREFIX)
    try:
        with pytest.raises(SchemaVersionError, match="schema is not a hash"):
            await backend.fetch(["q"], 1, "w", lease_ms=1000)
    finally:
        await backend.aclose()


def test_migrate_refuses_a_version_no_strego_wrote(clean_redis_url: str) -> None:
    restore(clean_redis_url)
    client = redis.Redis.from_url(clean_redis_url)
    client.hset(schema_key(PREFIX), "record", "0")
    client.close()
    done = strego("migrate", "--redis", clean_redis_url, "--prefix", PREFIX)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "record version 0" in done.stdout + done.stderr
