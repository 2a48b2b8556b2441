"""AnyioTransport against a real redis-server, under asyncio and trio: replies, errors, scripts,
auto-pipelining, blocking commands, connection options and timeouts."""

from __future__ import annotations

import random
from collections.abc import AsyncIterator, Awaitable, Iterator
from typing import Any

import anyio
import anyio.abc
import pytest
import redis

from strego.backends.redis.anyio_transport import AnyioTransport
from strego.backends.redis.transport import Command, Script, ScriptCall
from strego.errors import (
    BackendConnectionError,
    BackendError,
    BackendTimeoutError,
    ForeignKeyError,
    OutOfMemoryError,
)
from tests.redis_server import RedisServer, fake_redis, free_port, running_redis_server
from tests.runtime_support import eventually

pytestmark = [pytest.mark.anyio, pytest.mark.redis]

INCR = Script("incr", "return redis.call('INCR', KEYS[1])")
ECHO = Script("echo", "return {KEYS[1], ARGV[1], tonumber(ARGV[2]), {1, 'nested'}}")


@pytest.fixture(scope="module")
def own_server() -> Iterator[RedisServer]:
    """A server of this module's own, for tests that change its config or use its Unix socket."""
    with running_redis_server() as server:
        yield server


@pytest.fixture
async def transport(clean_redis_url: str) -> AsyncIterator[AnyioTransport]:
    async with AnyioTransport.from_url(clean_redis_url) as t:
        yield t


async def blocked_clients(t: AnyioTransport) -> int:
    info: bytes = await t.execute(Command(("INFO", "clients")))
    for line in info.decode().splitlines():
        if line.startswith("blocked_clients:"):
            return int(line.split(":")[1])
    raise AssertionError("INFO clients has no blocked_clients")


# -- replies and errors ----------------------------------------------------------------------------


async def test_reply_types(transport: AnyioTransport) -> None:
    await transport.ping()
    assert await transport.execute(Command(("SET", "k", "v"))) == b"OK"
    assert await transport.execute(Command(("GET", "k"))) == b"v"
    assert await transport.execute(Command(("GET", "missing"))) is None
    assert await transport.execute(Command(("INCRBY", "n", 5))) == 5
    assert await transport.execute(Command(("RPUSH", "l", b"a", 2, 1.5))) == 3
    assert await transport.execute(Command(("LRANGE", "l", 0, -1))) == [b"a", b"2", b"1.5"]
    assert await transport.execute(Command(("LRANGE", "nolist", 0, -1))) == []


async def test_error_replies_are_typed(transport: AnyioTransport) -> None:
    await transport.execute(Command(("SET", "str", "x")))
    with pytest.raises(ForeignKeyError, match="WRONGTYPE"):
        await transport.execute(Command(("LPUSH", "str", "x")))
    with pytest.raises(BackendError, match="unknown command") as info:
        await transport.execute(Command(("NOSUCHCOMMAND",)))
    assert type(info.value) is BackendError
    # The connection is still in step after error replies.
    assert await transport.execute(Command(("GET", "str"))) == b"x"


async def test_out_of_memory(own_server: RedisServer) -> None:
    async with AnyioTransport.from_url(own_server.url) as t:
        await t.execute(Command(("CONFIG", "SET", "maxmemory", "1")))
        try:
            with pytest.raises(OutOfMemoryError, match="OOM"):
                await t.execute(Command(("SET", "oom", "x")))
        finally:
            await t.execute(Command(("CONFIG", "SET", "maxmemory", "0")))


# -- scripts ---------------------------------------------------------------------------------------


async def test_script_reply_and_noscript_reload(transport: AnyioTransport) -> None:
    await transport.execute(Command(("SCRIPT", "FLUSH")))
    call = ScriptCall(ECHO, ["key"], ["arg", 7])
    assert await transport.run_script(call) == [b"key", b"arg", 7, [1, b"nested"]]
    assert await transport.run_script(ScriptCall(INCR, ["c"], [])) == 1
    await transport.execute(Command(("SCRIPT", "FLUSH")))
    assert await transport.run_script(ScriptCall(INCR, ["c"], [])) == 2
    assert await transport.execute(Command(("SCRIPT", "EXISTS", INCR.sha))) == [1]


async def test_script_errors(transport: AnyioTransport) -> None:
    broken = Script("broken", "return redis.call(")
    with pytest.raises(BackendError, match="compil"):
        await transport.run_script(ScriptCall(broken, [], []))
    failing = Script("failing", "return redis.error_reply('custom failure')")
    with pytest.raises(BackendError, match="custom failure"):
        await transport.run_script(ScriptCall(failing, [], []))


async def test_pipeline_returns_errors_in_place(transport: AnyioTransport) -> None:
    await transport.execute(Command(("SET", "str", "x")))
    await transport.execute(Command(("SCRIPT", "FLUSH")))
    broken = Script("broken", "return redis.call(")
    replies = await transport.pipeline(
        [
            ScriptCall(INCR, ["c"], []),
            Command(("LPUSH", "str", "x")),
            ScriptCall(broken, [], []),
            ScriptCall(ECHO, ["k"], ["a", 1]),
            Command(("GET", "c")),
            ScriptCall(INCR, ["c"], []),
        ]
    )
    assert replies[0] == 1
    assert isinstance(replies[1], ForeignKeyError)
    assert isinstance(replies[2], BackendError) and "compil" in str(replies[2])
    assert replies[3] == [b"k", b"a", 1, [1, b"nested"]]
    # Calls that met NOSCRIPT are re-sent after the others: GET saw the counter before them.
    assert replies[4] is None
    assert replies[5] == 2
    assert await transport.pipeline([]) == []


# -- auto-pipelining -------------------------------------------------------------------------------


async def test_concurrent_calls_share_writes(transport: AnyioTransport) -> None:
    await transport.run_script(ScriptCall(INCR, ["c"], []))  # loads the script
    writes_before = transport.stats.writes
    results: list[int] = []

    async def call() -> None:
        results.append(await transport.run_script(ScriptCall(INCR, ["c"], [])))

    async with anyio.create_task_group() as tg:
        for _ in range(100):
            tg.start_soon(call)
    assert sorted(results) == list(range(2, 102))
    writes = transport.stats.writes - writes_before
    assert writes < 20, f"100 concurrent calls took {writes} writes"
    assert transport.stats.connections_opened == 1


async def test_cancelled_caller_does_not_desync_the_connection(
    transport: AnyioTransport, clean_redis_url: str
) -> None:
    await transport.execute(Command(("SET", "x", "value of x")))
    results: list[Any] = []
    blpop_scope = anyio.CancelScope()

    async def blpop() -> None:
        with blpop_scope:
            await transport.execute(Command(("BLPOP", "list", 0)))

    async def get() -> None:
        results.append(await transport.execute(Command(("GET", "x"))))

    async with (
        AnyioTransport.from_url(clean_redis_url) as other,
        anyio.create_task_group() as tg,
    ):
        tg.start_soon(blpop)
        await eventually(lambda: _equals(blocked_clients(other), 1), patience=10)
        tg.start_soon(get)  # queued behind the blocked BLPOP on the same connection
        await eventually(lambda: _equals(_load(transport), 2), patience=10)
        blpop_scope.cancel()  # the BLPOP's caller leaves; its reply must still be read
        await other.execute(Command(("LPUSH", "list", "item")))
    assert results == [b"value of x"]
    assert await transport.execute(Command(("GET", "x"))) == b"value of x"
    assert transport.stats.connections_opened == 1


async def _load(t: AnyioTransport) -> int:
    conn = t._shared[0]
    return 0 if conn is None else conn.load


async def _equals(value: Awaitable[int], expected: int) -> bool:
    return await value == expected


# -- blocking commands -----------------------------------------------------------------------------


async def test_blocking_xread_does_not_delay_other_calls(transport: AnyioTransport) -> None:
    read: list[Any] = []
    xread = Command(("XREAD", "BLOCK", 10_000, "STREAMS", "stream", "$"))

    async def reader() -> None:
        read.append(await transport.blocking(xread, 10_000))

    async with anyio.create_task_group() as tg:
        tg.start_soon(reader)
        # These calls go through while the XREAD is blocked on its own connection.
        await eventually(lambda: _equals(blocked_clients(transport), 1), patience=10)
        for i in range(20):
            assert await transport.execute(Command(("INCR", "n"))) == i + 1
        assert await transport.pipeline([Command(("GET", "n"))] * 3) == [b"20"] * 3
        assert read == []
        await transport.execute(Command(("XADD", "stream", "*", "f", "v")))
    [[stream, [[_entry_id, fields]]]] = read[0]
    assert (stream, fields) == (b"stream", [b"f", b"v"])


async def test_blocking_timeout_returns_nil(transport: AnyioTransport) -> None:
    assert await transport.blocking(Command(("BLPOP", "empty", 0.05)), 50) is None


async def test_blocking_pool_is_bounded(clean_redis_url: str) -> None:
    async with AnyioTransport.from_url(clean_redis_url, max_blocking_connections=2) as t:
        popped: list[Any] = []

        async def pop() -> None:
            popped.append(await t.blocking(Command(("BLPOP", "q", 10)), 10_000))

        async with anyio.create_task_group() as tg:
            for _ in range(3):
                tg.start_soon(pop)
            await eventually(lambda: _equals(blocked_clients(t), 2), patience=10)
            await t.execute(Command(("RPUSH", "q", "a", "b", "c")))
        assert sorted(popped) == [[b"q", b"a"], [b"q", b"b"], [b"q", b"c"]]
        # One shared connection plus at most two blocking ones.
        assert t.stats.connections_opened <= 3


# -- connection options ----------------------------------------------------------------------------


async def test_db_and_client_name(own_server: RedisServer) -> None:
    url = f"redis://127.0.0.1:{own_server.port}/3?client_name=strego-test"
    async with AnyioTransport.from_url(url) as t:
        await t.execute(Command(("SET", "in-db-3", "yes")))
        assert await t.execute(Command(("CLIENT", "GETNAME"))) == b"strego-test"
    check = redis.Redis(port=own_server.port, db=3)
    try:
        assert check.get("in-db-3") == b"yes"
    finally:
        check.close()


async def test_unix_socket(own_server: RedisServer) -> None:
    async with AnyioTransport.from_url(f"unix://{own_server.unix_socket}?db=2") as t:
        await t.execute(Command(("SET", "over-unix", "1")))
        info: bytes = await t.execute(Command(("CLIENT", "INFO")))
        assert b"db=2" in info
        assert b"addr=/" in info or b"laddr=/" in info  # a Unix socket address is a path
        await t.ping()


@pytest.fixture(scope="module")
def auth_server() -> Iterator[RedisServer]:
    with running_redis_server(["--requirepass", "sesame"]) as server:
        admin = redis.Redis(port=server.port, password="sesame")
        try:
            admin.execute_command("ACL", "SETUSER", "alice", "on", ">alicepw", "~*", "+@all")
            yield server
        finally:
            admin.close()


async def test_auth_with_password(auth_server: RedisServer) -> None:
    async with AnyioTransport.from_url(f"redis://:sesame@127.0.0.1:{auth_server.port}") as t:
        assert await t.execute(Command(("ACL", "WHOAMI"))) == b"default"


async def test_auth_with_acl_user(auth_server: RedisServer) -> None:
    async with AnyioTransport.from_url(f"redis://alice:alicepw@127.0.0.1:{auth_server.port}") as t:
        assert await t.execute(Command(("ACL", "WHOAMI"))) == b"alice"


async def test_auth_refused(auth_server: RedisServer) -> None:
    async with AnyioTransport.from_url(f"redis://127.0.0.1:{auth_server.port}") as t:
        with pytest.raises(BackendError, match="NOAUTH"):
            await t.ping()
    async with AnyioTransport.from_url(f"redis://alice:wrong@127.0.0.1:{auth_server.port}") as t:
        with pytest.raises(BackendError, match="WRONGPASS"):
            await t.ping()


# -- timeouts and unreachable servers --------------------------------------------------------------


async def test_read_timeout(clean_redis_url: str) -> None:
    async with AnyioTransport.from_url(clean_redis_url + "?read_timeout=0.2") as t:
        with pytest.raises(BackendTimeoutError, match="no reply"):
            await t.execute(Command(("BLPOP", "never", 5), idempotent=True))
        # The timed-out connection is dropped; the next call gets a new one.
        await t.ping()
        assert t.stats.connections_opened == 2


async def test_connect_timeout() -> None:
    # A server that accepts connections but never answers.
    async def silent(stream: anyio.abc.SocketStream) -> None:
        async with stream:
            await anyio.sleep_forever()

    async with fake_redis(silent) as port:
        t = AnyioTransport.from_url(f"redis://127.0.0.1:{port}?connect_timeout=0.2")
        with pytest.raises(BackendTimeoutError, match="could not connect"):
            await t.ping()


async def test_connection_refused() -> None:
    t = AnyioTransport.from_url(
        f"redis://127.0.0.1:{free_port()}", connect_attempts=2, backoff_base=0.01
    )
    with pytest.raises(BackendConnectionError, match="could not connect"):
        await t.execute(Command(("GET", "k")))


async def test_replies_stay_matched_when_callers_are_cancelled(transport: AnyioTransport) -> None:
    """Many callers, a third of them cancelled at various points (waiting, driving, or handed
    the driver role): every caller that finishes gets its own reply."""
    rng = random.Random(1234)
    finished: list[tuple[int, Any]] = []

    async def call(i: int, scope: anyio.CancelScope) -> None:
        with scope:
            finished.append((i, await transport.execute(Command(("ECHO", f"reply-{i}")))))

    for _round in range(5):
        async with anyio.create_task_group() as tg:
            scopes = [anyio.CancelScope() for _ in range(60)]
            for i, scope in enumerate(scopes):
                tg.start_soon(call, i, scope)
            for _ in range(20):
                # Let the calls progress between cancellations: a loop turn, or long enough for I/O.
                await anyio.sleep(rng.choice((0, 0, 0.001)))
                rng.choice(scopes).cancel()
    assert 0 < len(finished) < 5 * 60, "some calls finish and some are cancelled"
    assert all(reply == f"reply-{i}".encode() for i, reply in finished)
    # The connection is still in step.
    assert await transport.execute(Command(("ECHO", "last"))) == b"last"
    assert transport.stats.connections_opened == 1


def test_closed_transport_can_be_used_under_another_event_loop(clean_redis_url: str) -> None:
    transport = AnyioTransport.from_url(clean_redis_url)  # made outside any event loop

    async def use() -> Any:
        try:
            await transport.blocking(Command(("BLPOP", "empty", 0.01)), 10)
            return await transport.execute(Command(("INCR", "uses")))
        finally:
            await transport.aclose()

    assert anyio.run(use, backend="asyncio") == 1
    assert anyio.run(use, backend="trio") == 2
