"""RedisPyTransport: replies as parsed, error replies mapped to strego's typed errors, pipelines
returning errors in place, blocking calls on their own connection."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import anyio
import pytest
import redis.asyncio
from redis import exceptions as rx
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from strego.backends.redis.redispy_transport import RedisPyTransport, map_error
from strego.backends.redis.transport import Command, Script, ScriptCall
from strego.errors import (
    BackendConnectionError,
    BackendError,
    BackendTimeoutError,
    ForeignKeyError,
    OutOfMemoryError,
)
from tests.redis_server import free_port

pytestmark = pytest.mark.anyio

INCR = Script("incr", "return redis.call('INCR', KEYS[1])")


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # redis-py runs on asyncio only


@pytest.fixture
async def transport(redis_url: str) -> AsyncIterator[RedisPyTransport]:
    # decode_responses=True on purpose: the transport reads raw replies regardless
    client = redis.asyncio.Redis.from_url(redis_url, decode_responses=True, protocol=2)
    t = RedisPyTransport(client)
    yield t
    await t.aclose()


@pytest.fixture
def key() -> str:
    return f"test:{uuid.uuid4().hex}"


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (rx.OutOfMemoryError("command not allowed when used memory > 'maxmemory'"),
         OutOfMemoryError),
        (rx.ResponseError("OOM command not allowed when used memory > 'maxmemory'"),
         OutOfMemoryError),
        (rx.ResponseError("WRONGTYPE Operation against a key holding the wrong kind of value"),
         ForeignKeyError),
        (rx.ConnectionError("Connection refused"), BackendConnectionError),
        (rx.TimeoutError("Timeout reading from socket"), BackendTimeoutError),
        (rx.ResponseError("ERR unknown command 'NOPE'"), BackendError),
    ],
)  # fmt: skip
def test_map_error(error: Exception, expected: type[BackendError]) -> None:
    mapped = map_error(error)
    assert type(mapped) is expected
    assert str(error) in str(mapped), "the Redis text is kept"


async def test_replies_are_raw(transport: RedisPyTransport, key: str) -> None:
    await transport.execute(Command(("HSET", key, "f", b"\xff")))
    assert await transport.execute(Command(("HGETALL", key))) == [b"f", b"\xff"]
    assert await transport.execute(Command(("HLEN", key))) == 1
    assert await transport.execute(Command(("GET", key + "x"))) is None


async def test_script_loaded_on_noscript(transport: RedisPyTransport, key: str) -> None:
    await transport.execute(Command(("SCRIPT", "FLUSH")))
    assert await transport.run_script(ScriptCall(INCR, [key], [])) == 1
    await transport.execute(Command(("SCRIPT", "FLUSH")))
    replies = await transport.pipeline(
        [ScriptCall(INCR, [key], []), Command(("GET", key)), ScriptCall(INCR, [key], [])]
    )
    # the calls that met NOSCRIPT are sent again after the rest of the pipeline ran
    assert replies == [2, b"1", 3]


async def test_pipeline_returns_errors_in_place(transport: RedisPyTransport, key: str) -> None:
    await transport.execute(Command(("SET", key, "v")))
    replies = await transport.pipeline(
        [Command(("LPUSH", key, "x")), Command(("GET", key)), Command(("NOPE",))]
    )
    assert isinstance(replies[0], ForeignKeyError)
    assert replies[1] == b"v"
    assert isinstance(replies[2], BackendError) and "unknown command" in str(replies[2])
    with pytest.raises(ForeignKeyError):
        await transport.execute(Command(("LPUSH", key, "x")))
    await transport.execute(Command(("RPUSH", key + "l", "x")))
    with pytest.raises(ForeignKeyError):
        await transport.run_script(ScriptCall(INCR, [key + "l"], []))


async def test_out_of_memory(transport: RedisPyTransport, key: str) -> None:
    await transport.execute(Command(("CONFIG", "SET", "maxmemory", "1")))
    try:
        with pytest.raises(OutOfMemoryError):
            await transport.execute(Command(("SET", key, "v")))
        with pytest.raises(OutOfMemoryError):
            await transport.run_script(ScriptCall(INCR, [key], []))
    finally:
        await transport.execute(Command(("CONFIG", "SET", "maxmemory", "0")))
    assert await transport.execute(Command(("EXISTS", key))) == 0


async def test_unreachable_server_raises_connection_error() -> None:
    no_retry = Retry(NoBackoff(), 0)  # fail at once rather than back off
    t = RedisPyTransport(redis.asyncio.Redis(host="127.0.0.1", port=free_port(), retry=no_retry))
    try:
        with pytest.raises(BackendConnectionError):
            await t.ping()
    finally:
        await t.aclose()


async def test_blocking_call_does_not_hold_up_others(transport: RedisPyTransport, key: str) -> None:
    result: list[object] = []

    async def wait() -> None:
        result.append(await transport.blocking(Command(("BLPOP", key, 5)), 5_000))

    async with anyio.create_task_group() as tg:
        tg.start_soon(wait)
        await anyio.sleep(0.05)
        await transport.execute(Command(("RPUSH", key, "x")))  # not delayed by the BLPOP
    assert result == [[key.encode(), b"x"]]
