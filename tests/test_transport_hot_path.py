"""AnyioTransport's direct socket I/O (plain TCP and Unix sockets), under asyncio and trio: the
connection's own socket is closed with it, a call whose reply is ready needs no event and no cancel
scope but is still a checkpoint, partial sends and long replies, write timeouts, a close that wakes
the task waiting on the socket, and a connection the server closed while idle."""

from __future__ import annotations

import os
import select
import socket
from collections.abc import Iterator
from typing import Any

import anyio
import anyio.abc
import anyio.lowlevel
import pytest

from strego.backends.redis.anyio_transport import AnyioTransport
from strego.backends.redis.connection import Connection
from strego.backends.redis.transport import Command, Script, ScriptCall
from strego.errors import BackendTimeoutError, ReplyLostError
from tests.redis_server import RedisServer, fake_redis, running_redis_server
from tests.runtime_support import eventually

pytestmark = [pytest.mark.anyio, pytest.mark.redis]

INCR = Script("incr", "return redis.call('INCR', KEYS[1])")


@pytest.fixture(scope="module")
def own_server() -> Iterator[RedisServer]:
    """A server of this module's own: its Unix socket, and CLIENT KILL of its connections."""
    with running_redis_server() as server:
        yield server


@pytest.fixture(params=["tcp", "unix"])
def url(request: pytest.FixtureRequest, own_server: RedisServer) -> str:
    if request.param == "unix":
        return f"unix://{own_server.unix_socket}"
    return own_server.url


def shared_connection(t: AnyioTransport) -> Connection:
    conn = t._shared[0]
    assert conn is not None
    return conn


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


class ReplyAlreadyThere:
    """Stands in for a connection's socket: a receive first waits (blocking the whole event loop)
    until the reply has arrived, so the driver always finds it without waiting on the socket."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock

    def recv(self, size: int, flags: int = 0) -> bytes:
        if not flags:  # (not the idle check's peek)
            select.select([self._sock], [], [], 5)
        return self._sock.recv(size, flags)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)


def counting(monkeypatch: pytest.MonkeyPatch, name: str) -> list[int]:
    """Count the instances of `anyio.<name>` made while the test runs."""
    made = [0]
    real = getattr(anyio, name)

    def make(*args: Any, **kwargs: Any) -> Any:
        made[0] += 1
        return real(*args, **kwargs)

    monkeypatch.setattr(anyio, name, make)
    return made


# -- the connection's own socket -------------------------------------------------------------------


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="counts /proc/self/fd")
async def test_own_socket_is_closed_with_the_connection(url: str) -> None:
    fds = open_fds()
    kept: list[tuple[Connection, socket.socket]] = []
    for _ in range(5):
        async with AnyioTransport.from_url(url) as t:
            await t.ping()
            conn = shared_connection(t)
            assert conn._sock is not None and conn._sock.fileno() >= 0
            kept.append((conn, conn._sock))  # held: garbage collection must not be what closes it
    assert all(sock.fileno() == -1 for _, sock in kept)
    assert open_fds() == fds


async def test_close_wakes_the_call_waiting_on_the_socket(
    own_server: RedisServer, url: str
) -> None:
    outcome: list[BaseException] = []
    async with AnyioTransport.from_url(own_server.url) as admin:
        t = AnyioTransport.from_url(url)

        async def blpop() -> None:
            try:
                await t.execute(Command(("BLPOP", "never", 0)))
            except ReplyLostError as exc:
                outcome.append(exc)

        async def blocked() -> bool:
            clients: bytes = await admin.execute(Command(("CLIENT", "LIST")))
            return shared_connection_load(t) == 1 and b"cmd=blpop" in clients

        with anyio.fail_after(10):  # without the wake-up it would wait for the read timeout (30 s)
            async with anyio.create_task_group() as tg:
                tg.start_soon(blpop)
                await eventually(blocked, patience=10)
                await t.aclose()
        assert len(outcome) == 1


def shared_connection_load(t: AnyioTransport) -> int:
    conn = t._shared[0]
    return 0 if conn is None else conn.load


# -- a call whose reply is ready -------------------------------------------------------------------


async def test_ready_reply_costs_no_event_and_no_cancel_scope(
    url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with AnyioTransport.from_url(url) as t:
        await t.execute(Command(("DEL", "hot:c")))
        await t.run_script(ScriptCall(INCR, ["hot:c"], []))
        conn = shared_connection(t)
        assert conn._sock is not None
        monkeypatch.setattr(conn, "_sock", ReplyAlreadyThere(conn._sock))
        events, scopes = counting(monkeypatch, "Event"), counting(monkeypatch, "CancelScope")
        for _ in range(20):
            await t.ping()
            await t.run_script(ScriptCall(INCR, ["hot:c"], []))
        monkeypatch.undo()
        assert (events[0], scopes[0]) == (0, 0)
        assert await t.execute(Command(("GET", "hot:c"))) == b"21"


async def test_a_call_whose_reply_is_ready_is_still_a_checkpoint(
    url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with AnyioTransport.from_url(url) as t:
        await t.ping()
        conn = shared_connection(t)
        assert conn._sock is not None
        monkeypatch.setattr(conn, "_sock", ReplyAlreadyThere(conn._sock))
        # Other tasks run between sequential calls...
        turns = 0

        async def other_task() -> None:
            nonlocal turns
            while True:
                turns += 1
                await anyio.lowlevel.checkpoint()

        async with anyio.create_task_group() as tg:
            tg.start_soon(other_task)
            await anyio.lowlevel.checkpoint()
            turns = 0
            for _ in range(10):
                await t.ping()
            assert turns >= 5  # (about one turn per call: how many exactly is up to the scheduler)
            tg.cancel_scope.cancel()
        # ...and a cancelled caller is stopped (its reply is read and dropped by the next call).
        with anyio.CancelScope() as scope:
            scope.cancel()
            await t.execute(Command(("ECHO", "dropped")))
        assert scope.cancelled_caught
        assert await t.execute(Command(("ECHO", "next"))) == b"next"
        assert t.stats.connections_opened == 1


# -- partial sends, long replies, write timeouts --------------------------------------------------


async def test_large_values_both_ways(url: str) -> None:
    big = os.urandom(1024) * (24 * 1024)  # 24 MiB: more than the kernel takes in one send
    async with AnyioTransport.from_url(url) as t:
        await t.ping()
        writes = t.stats.writes
        assert await t.execute(Command(("SET", "hot:big", big))) == b"OK"
        assert await t.execute(Command(("GET", "hot:big"))) == big
        replies = await t.pipeline([Command(("GET", "hot:big")), Command(("STRLEN", "hot:big"))])
        assert replies == [big, len(big)]
        assert t.stats.writes - writes == 3
        await t.execute(Command(("DEL", "hot:big")))


async def test_cancelled_in_the_middle_of_a_large_send(url: str) -> None:
    big = b"v" * (24 * 1024 * 1024)
    async with AnyioTransport.from_url(url) as t:
        await t.ping()
        with anyio.CancelScope() as scope:
            scope.cancel()
            await t.execute(Command(("SET", "hot:cut", big)))
        assert scope.cancelled_caught
        # The send was finished (no half command on the wire) and its reply is read and dropped.
        assert await t.execute(Command(("STRLEN", "hot:cut"))) == len(big)
        assert t.stats.connections_opened == 1
        await t.execute(Command(("DEL", "hot:cut")))


async def test_write_timeout_when_the_server_stops_reading() -> None:
    async def answer_login_then_stop_reading(stream: anyio.abc.SocketStream) -> None:
        async with stream:
            await stream.receive()  # the login PING
            await stream.send(b"+PONG\r\n")
            await anyio.sleep_forever()

    async with (
        fake_redis(answer_login_then_stop_reading) as port,
        AnyioTransport.from_url(f"redis://127.0.0.1:{port}", write_timeout=0.2) as t,
    ):
        with pytest.raises(BackendTimeoutError, match=r"write to .* timed out"):
            await t.execute(Command(("SET", "k", b"x" * (32 * 1024 * 1024)), idempotent=True))


# -- a connection the server closed while idle -----------------------------------------------------


@pytest.mark.parametrize("check", ["poll", "peek"])
async def test_call_after_the_server_closed_the_idle_connection_is_retried(
    own_server: RedisServer, url: str, check: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    if check == "peek":  # the fallback where poll(2) is missing
        monkeypatch.delattr(select, "poll")
    async with AnyioTransport.from_url(own_server.url) as admin, AnyioTransport.from_url(url) as t:
        await admin.execute(Command(("DEL", "hot:n")))
        for expected in (1, 2, 3):
            client_id = await t.execute(Command(("CLIENT", "ID")))
            assert await admin.execute(Command(("CLIENT", "KILL", "ID", client_id))) == 1
            # Not idempotent, yet retried: it was never written to the closed connection.
            assert await t.run_script(ScriptCall(INCR, ["hot:n"], [])) == expected
        assert t.stats.connections_opened == 4
