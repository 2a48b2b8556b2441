"""AnyioTransport when connections fail, under asyncio and trio: killed connections are replaced
and idempotent calls retried, a non-idempotent call whose reply was lost raises ReplyLostError, a
server restart is survived."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import anyio
import anyio.abc
import pytest

from strego.backends.redis.anyio_transport import AnyioTransport
from strego.backends.redis.transport import Command, Script, ScriptCall
from strego.errors import BackendConnectionError, ReplyLostError
from tests.redis_server import RedisServer, fake_redis, running_redis_server
from tests.runtime_support import eventually

pytestmark = [pytest.mark.anyio, pytest.mark.redis]

INCR = Script("incr", "return redis.call('INCR', KEYS[1])")


@pytest.fixture
def server() -> Iterator[RedisServer]:
    """A server per test: these tests kill connections and restart it."""
    with running_redis_server() as server:
        yield server


@pytest.fixture
async def admin(server: RedisServer) -> AsyncIterator[AnyioTransport]:
    """A second client, for CLIENT KILL and checks from outside."""
    async with AnyioTransport.from_url(server.url) as t:
        yield t


def blocked(admin: AnyioTransport, count: int) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        info: bytes = await admin.execute(Command(("INFO", "clients")))
        return f"blocked_clients:{count}\r\n".encode() in info

    return check


async def kill(admin: AnyioTransport, client_id: int) -> None:
    assert await admin.execute(Command(("CLIENT", "KILL", "ID", client_id))) == 1


# -- CLIENT KILL -----------------------------------------------------------------------------------


async def test_killed_connection_is_replaced_and_idempotent_calls_retried(
    server: RedisServer, admin: AnyioTransport
) -> None:
    results: dict[str, Any] = {}

    async def call(name: str, command: Command) -> None:
        results[name] = await t.execute(command)

    async with AnyioTransport.from_url(server.url) as t:
        await t.execute(Command(("SET", "k", "v")))
        first_id = await t.execute(Command(("CLIENT", "ID")))
        async with anyio.create_task_group() as tg:
            # A blocked BLPOP holds the calls behind it in flight on the same connection.
            tg.start_soon(call, "blpop", Command(("BLPOP", "list", 10), idempotent=True))
            await eventually(blocked(admin, 1), patience=10)
            for i in range(10):
                tg.start_soon(call, f"get{i}", Command(("GET", "k"), idempotent=True))
            tg.start_soon(call, "ping", Command(("PING",), idempotent=True))
            await eventually(lambda: _load_is(t, 12), patience=10)
            await kill(admin, first_id)
            # Retried on a new connection, the BLPOP blocks again; then it gets an item.
            await eventually(blocked(admin, 1), patience=10)
            await admin.execute(Command(("LPUSH", "list", "item")))
        assert results == {
            "blpop": [b"list", b"item"],
            "ping": b"PONG",
            **{f"get{i}": b"v" for i in range(10)},
        }
        assert t.stats.connections_opened == 2
        assert await t.execute(Command(("CLIENT", "ID"))) != first_id


async def test_non_idempotent_call_whose_reply_was_lost(
    server: RedisServer, admin: AnyioTransport
) -> None:
    async with AnyioTransport.from_url(server.url) as t:
        client_id = await t.execute(Command(("CLIENT", "ID")))
        outcome: list[BaseException] = []

        async def blpop() -> None:
            try:
                await t.execute(Command(("BLPOP", "list", 10)))
            except ReplyLostError as exc:
                outcome.append(exc)

        async with anyio.create_task_group() as tg:
            tg.start_soon(blpop)
            await eventually(blocked(admin, 1), patience=10)
            await kill(admin, client_id)
        [error] = outcome
        assert "may or may not have taken effect" in str(error)
        assert isinstance(error, BackendConnectionError)
        # The transport itself recovers.
        await t.ping()


async def test_connection_killed_while_idle_is_not_a_lost_reply(
    server: RedisServer, admin: AnyioTransport
) -> None:
    async with AnyioTransport.from_url(server.url) as t:
        assert await t.run_script(ScriptCall(INCR, ["c"], [])) == 1
        await kill(admin, await t.execute(Command(("CLIENT", "ID"))))
        # Never written to the dead connection: safe to send on a new one, even not idempotent.
        assert await t.run_script(ScriptCall(INCR, ["c"], [])) == 2
        assert t.stats.connections_opened == 2


async def test_server_restart_is_survived(server: RedisServer) -> None:
    async with AnyioTransport.from_url(server.url) as t:
        assert await t.run_script(ScriptCall(INCR, ["c"], [])) == 1
        server.restart()  # no persistence: the data and the script cache are gone
        assert await t.run_script(ScriptCall(INCR, ["c"], [])) == 1
        assert await t.execute(Command(("GET", "c"))) == b"1"


async def test_server_down_for_a_while(server: RedisServer) -> None:
    async with AnyioTransport.from_url(server.url, connect_attempts=2, backoff_base=0.01) as t:
        await t.ping()
        server.stop()
        with pytest.raises(BackendConnectionError):
            await t.ping()
        server.start()
        await t.ping()


# -- lost replies, through a proxy that cuts them -------------------------------------------------


class ReplyCuttingProxy:
    """Forwards TCP to Redis. While `cuts` > 0, the next reply Redis sends is swallowed and the
    client's connection closed instead: the request reached Redis, its reply never came back."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.cuts = 0
        self.connections = 0

    async def serve(self, *, task_status: anyio.abc.TaskStatus[int]) -> None:
        async with await anyio.create_tcp_listener(local_host="127.0.0.1") as listener:
            task_status.started(listener.extra(anyio.abc.SocketAttribute.local_port))
            await listener.serve(self._forward)

    async def _forward(self, client: anyio.abc.SocketStream) -> None:
        self.connections += 1
        upstream = await anyio.connect_tcp("127.0.0.1", self.upstream_port)
        async with client, upstream, anyio.create_task_group() as tg:

            async def requests() -> None:
                async for chunk in client:
                    await upstream.send(chunk)
                tg.cancel_scope.cancel()

            async def replies() -> None:
                async for chunk in upstream:
                    if self.cuts:
                        self.cuts -= 1
                        break
                    await client.send(chunk)
                tg.cancel_scope.cancel()

            tg.start_soon(requests)
            tg.start_soon(replies)


@pytest.fixture
async def proxied(server: RedisServer) -> AsyncIterator[tuple[AnyioTransport, ReplyCuttingProxy]]:
    proxy = ReplyCuttingProxy(server.port)
    async with anyio.create_task_group() as tg:
        port = await tg.start(proxy.serve)
        async with AnyioTransport.from_url(f"redis://127.0.0.1:{port}") as t:
            yield t, proxy
        tg.cancel_scope.cancel()


async def test_script_reply_lost(
    proxied: tuple[AnyioTransport, ReplyCuttingProxy], admin: AnyioTransport
) -> None:
    t, proxy = proxied
    assert await t.run_script(ScriptCall(INCR, ["c"], [])) == 1
    proxy.cuts = 1
    with pytest.raises(ReplyLostError, match="not idempotent"):
        await t.run_script(ScriptCall(INCR, ["c"], []))
    # It did run: that is why it must not be retried blindly.
    assert await admin.execute(Command(("GET", "c"))) == b"2"


async def test_idempotent_script_reply_lost_is_retried(
    proxied: tuple[AnyioTransport, ReplyCuttingProxy], admin: AnyioTransport
) -> None:
    t, proxy = proxied
    assert await t.run_script(ScriptCall(INCR, ["c"], [], idempotent=True)) == 1
    proxy.cuts = 1
    # Sent twice (the first reply was cut), answered once.
    assert await t.run_script(ScriptCall(INCR, ["c"], [], idempotent=True)) == 3
    assert t.stats.connections_opened == 2


async def test_pipeline_reply_lost(
    proxied: tuple[AnyioTransport, ReplyCuttingProxy], admin: AnyioTransport
) -> None:
    t, proxy = proxied
    await t.ping()
    proxy.cuts = 1
    with pytest.raises(ReplyLostError):
        await t.pipeline([Command(("INCR", "a")), Command(("GET", "a"), idempotent=True)])
    proxy.cuts = 1
    reads = [Command(("GET", "a"), idempotent=True), Command(("EXISTS", "a"), idempotent=True)]
    assert await t.pipeline(reads) == [b"1", 1]


async def test_retries_are_bounded(
    proxied: tuple[AnyioTransport, ReplyCuttingProxy], admin: AnyioTransport
) -> None:
    t, proxy = proxied
    await t.ping()
    proxy.cuts = 100
    with pytest.raises(BackendConnectionError, match="could not connect"):
        await t.ping()
    # The first connection, then connect_attempts (4) new ones whose login replies were cut.
    assert proxy.connections == 5
    proxy.cuts = 0
    await t.ping()


async def _load_is(t: AnyioTransport, expected: int) -> bool:
    conn = t._shared[0]
    return conn is not None and conn.load == expected


async def test_concurrent_callers_share_one_reconnect_failure() -> None:
    """While the server is unreachable, calls waiting for the same reconnect get its failure
    instead of each trying again with backoff."""
    accepted = 0

    async def hang_up(stream: anyio.abc.SocketStream) -> None:
        nonlocal accepted
        accepted += 1
        await stream.aclose()

    async with fake_redis(hang_up) as port:
        t = AnyioTransport.from_url(
            f"redis://127.0.0.1:{port}", connect_attempts=3, backoff_base=0.01
        )
        errors: list[BaseException] = []

        async def ping() -> None:
            try:
                await t.ping()
            except BackendConnectionError as exc:
                errors.append(exc)

        async with anyio.create_task_group() as callers:
            for _ in range(50):
                callers.start_soon(ping)
        assert len(errors) == 50
        assert accepted == 3  # one caller's connect_attempts; the other 49 shared its failure
