"""SentinelTransport against a stand-in sentinel (whose answer the test sets) in front of real
redis-servers: finding the master, following +switch-master, READONLY, ROLE. The failovers of a
real Sentinel setup are in test_sentinel_failover.py."""

from __future__ import annotations

from collections.abc import Iterator

import anyio
import anyio.abc
import hiredis
import pytest
import redis

from conformance.helpers import LEASE_MS, message
from strego.backends.redis import RedisBackend
from strego.backends.redis.sentinel import SentinelSettings, SentinelTransport
from strego.backends.redis.transport import Command
from strego.backends.redis.url import ConnectionSettings
from strego.errors import BackendConnectionError, BackendError
from tests.redis_server import RedisServer, fake_redis, free_port, running_redis_server
from tests.runtime_support import eventually

pytestmark = pytest.mark.anyio


class FakeSentinel:
    """Answers SENTINEL GET-MASTER-ADDR-BY-NAME with 127.0.0.1:`master_port`, and can publish
    on +switch-master to the connections that subscribed."""

    def __init__(self, master_port: int) -> None:
        self.master_port = master_port
        self.asked = 0
        self.logins: list[list[bytes]] = []
        self.subscribers: list[anyio.abc.SocketStream] = []

    async def handle(self, stream: anyio.abc.SocketStream) -> None:
        reader = hiredis.Reader()
        try:
            while True:
                reader.feed(await stream.receive())
                while (command := reader.gets()) is not False:
                    name = command[0].upper()
                    if name == b"SENTINEL":
                        self.asked += 1
                        port = str(self.master_port).encode()
                        await stream.send(
                            b"*2\r\n$9\r\n127.0.0.1\r\n$%d\r\n%s\r\n" % (len(port), port)
                        )
                    elif name == b"SUBSCRIBE":
                        self.subscribers.append(stream)
                        for n, channel in enumerate(command[1:], 1):
                            await stream.send(
                                b"*3\r\n$9\r\nsubscribe\r\n$%d\r\n%s\r\n:%d\r\n"
                                % (len(channel), channel, n)
                            )
                    elif name == b"AUTH":
                        self.logins.append(command[1:])
                        await stream.send(b"+OK\r\n")
                    else:
                        await stream.send(b"+PONG\r\n")
        except (anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError):
            pass

    async def publish(self) -> None:
        text = b"mymaster 127.0.0.1 1 127.0.0.1 2"
        for stream in self.subscribers:
            await stream.send(
                b"*3\r\n$7\r\nmessage\r\n$14\r\n+switch-master\r\n$%d\r\n%s\r\n" % (len(text), text)
            )


@pytest.fixture
def two_servers() -> Iterator[tuple[RedisServer, RedisServer]]:
    with running_redis_server() as a, running_redis_server() as b:
        yield a, b


def transport(sentinel_ports: list[int], failover_timeout: float = 10.0) -> SentinelTransport:
    return SentinelTransport(
        SentinelSettings(
            sentinels=tuple(("127.0.0.1", port) for port in sentinel_ports),
            service="mymaster",
            master=ConnectionSettings(),
            failover_timeout=failover_timeout,
        )
    )


def clients(server: RedisServer) -> int:
    return int(redis.Redis(port=server.port).info("clients")["connected_clients"])


async def test_finds_the_master_and_follows_switch_master(
    two_servers: tuple[RedisServer, RedisServer],
) -> None:
    a, b = two_servers
    fake = FakeSentinel(a.port)
    # the first sentinel is down
    async with fake_redis(fake.handle) as port, transport([free_port(), port]) as t:
        await t.execute(Command(("SET", "k", "a")))
        assert t.settings.port == a.port
        before = clients(a)
        fake.master_port = b.port
        await fake.publish()
        # the next call asks again, closes the connection to a and writes on b
        await t.execute(Command(("SET", "k", "b")))
        assert t.settings.port == b.port and t.switches == 1
        assert redis.Redis(port=a.port).get("k") == b"a"
        assert redis.Redis(port=b.port).get("k") == b"b"
        await eventually(lambda: clients(a) < before, "the old master's connection closed")


async def test_readonly_asks_again_and_resends(
    two_servers: tuple[RedisServer, RedisServer],
) -> None:
    a, b = two_servers
    fake = FakeSentinel(a.port)
    async with fake_redis(fake.handle) as port, transport([port]) as t:
        backend = RedisBackend(t, prefix="ro")
        await backend.enqueue(message("t1", queue="q"))
        # a is demoted behind the transport's back (no event): its writes answer READONLY
        fake.master_port = b.port
        redis.Redis(port=a.port).replicaof("127.0.0.1", b.port)
        try:
            await t.execute(Command(("SET", "k", "1")))
            replies = await t.pipeline(
                [Command(("SET", "k", "2")), Command(("GET", "k"), idempotent=True)]
            )
            assert replies == [b"OK", b"2"]
            # a script the new master never saw: NOSCRIPT, loaded and run
            await backend.enqueue(message("t2", queue="q"))
            (task,) = await backend.fetch(["q"], 1, "c", lease_ms=LEASE_MS)
            assert task.id == "t2" and t.settings.port == b.port
        finally:
            redis.Redis(port=a.port).replicaof("NO", "ONE")


async def test_blocked_fetch_on_a_demoted_master_resumes_on_the_new_one(
    two_servers: tuple[RedisServer, RedisServer],
) -> None:
    a, b = two_servers
    fake = FakeSentinel(a.port)
    async with fake_redis(fake.handle) as port, transport([port]) as t:
        on_a = RedisBackend(t, prefix="bf")
        await on_a.enqueue(message("warm", queue="q"))
        await on_a.fetch(["q"], 1, "c", lease_ms=LEASE_MS)
        got: list[str] = []
        async with anyio.create_task_group() as tg:

            async def fetch() -> None:
                tasks = await on_a.fetch(["q"], 1, "c", lease_ms=LEASE_MS, block_ms=15_000)
                got.extend(task.id for task in tasks)

            tg.start_soon(fetch)
            await eventually(lambda: clients(a) >= 3, "the blocked fetch")
            fake.master_port = b.port
            redis.Redis(port=a.port).replicaof("127.0.0.1", b.port)  # unblocks: UNBLOCKED
            try:
                on_b = RedisBackend.from_url(f"redis://127.0.0.1:{b.port}", prefix="bf")
                await eventually(lambda: t.settings.port == b.port, "the fetch moved to b")
                await on_b.enqueue(message("after", queue="q"))
                await on_b.aclose()
            finally:
                redis.Redis(port=a.port).replicaof("NO", "ONE")
        assert got == ["after"]


async def test_a_replica_is_never_used_as_master(
    two_servers: tuple[RedisServer, RedisServer],
) -> None:
    a, b = two_servers
    redis.Redis(port=b.port).replicaof("127.0.0.1", a.port)
    try:
        fake = FakeSentinel(b.port)
        async with fake_redis(fake.handle) as port, transport([port], failover_timeout=0.5) as t:
            with pytest.raises(BackendConnectionError, match="not the master"):
                await t.execute(Command(("SET", "k", "1")))
            assert fake.asked >= 2  # asked again after each refusal
    finally:
        redis.Redis(port=b.port).replicaof("NO", "ONE")


async def test_no_sentinel_answers() -> None:
    async with transport([free_port(), free_port()], failover_timeout=0.3) as t:
        with pytest.raises(BackendConnectionError, match="no sentinel named the master"):
            await t.execute(Command(("PING",), idempotent=True))


async def never_answer(stream: anyio.abc.SocketStream) -> None:
    """A sentinel that accepts the connection and reads, but never replies."""
    try:
        while True:
            await stream.receive()
    except (anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError):
        pass


async def test_sentinels_that_never_answer_are_retried_for_the_window() -> None:
    # A timeout is not a refusal: asking again may help, so it is a connection error (retried
    # for failover_timeout), not a BackendError raised at once.
    async with fake_redis(never_answer) as p1, fake_redis(never_answer) as p2:
        url = f"redis+sentinel://127.0.0.1:{p1},127.0.0.1:{p2}/mymaster?connect_timeout=0.3"
        async with SentinelTransport.from_url(url) as t:
            with pytest.raises(BackendConnectionError, match="no sentinel named the master"):
                await t._discover()


async def test_a_sentinel_refusing_the_question_fails_at_once() -> None:
    async def refuse(stream: anyio.abc.SocketStream) -> None:
        reader = hiredis.Reader()
        try:
            while True:
                reader.feed(await stream.receive())
                while (command := reader.gets()) is not False:
                    if command[0].upper() == b"SENTINEL":
                        await stream.send(b"-NOPERM not allowed\r\n")
                    else:
                        await stream.send(b"+PONG\r\n")
        except (anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError):
            pass

    async with fake_redis(refuse) as port, transport([port], failover_timeout=30) as t:
        with anyio.fail_after(10):  # not retried for the 30 s window
            with pytest.raises(BackendError, match="NOPERM") as raised:
                await t.execute(Command(("PING",), idempotent=True))
        assert not isinstance(raised.value, BackendConnectionError)


async def test_passwords_of_the_master_and_of_the_sentinels() -> None:
    with running_redis_server(["--requirepass", "mpw"]) as master:
        fake = FakeSentinel(master.port)
        async with fake_redis(fake.handle) as port:
            url = f"redis+sentinel://:mpw@127.0.0.1:{port}/mymaster/0?sentinel_password=spw"
            backend = RedisBackend.from_url(url, prefix="auth")
            try:
                await backend.enqueue(message("t1"))
                assert await backend.get_task("t1", "q") is not None
            finally:
                await backend.aclose()
            assert fake.logins and all(login == [b"spw"] for login in fake.logins)
            wrong = RedisBackend.from_url(url.replace(":mpw@", ":nope@"), prefix="auth")
            try:
                with pytest.raises(BackendError, match="refused the connection setup"):
                    await wrong.enqueue(message("t2"))
            finally:
                await wrong.aclose()


async def test_watches_subscribe_on_the_master_and_follow_it(
    two_servers: tuple[RedisServer, RedisServer],
) -> None:
    a, b = two_servers
    fake = FakeSentinel(a.port)
    async with fake_redis(fake.handle) as port:
        backend = RedisBackend(transport([port]), prefix="w")
        try:
            await backend.enqueue(message("t1"))
            assert len(await backend.fetch(["q"], 1, "c", lease_ms=LEASE_MS)) == 1
            async with backend.watch_ended("q", "t1") as watch:  # first call: finds a
                await backend.ack("q", "t1", "c")
                assert await watch.wait(10) == [("q", "t1")]
            fake.master_port = b.port
            await fake.publish()
            await backend.enqueue(message("t2"))  # on b now
            await backend.fetch(["q"], 1, "c", lease_ms=LEASE_MS)
            # the old master drops its subscribers (as the sentinels make it do)
            redis.Redis(port=a.port).client_kill_filter(_type="pubsub")
            on_b = redis.Redis(port=b.port)
            async with backend.watch_ended("q", "t2") as watch:
                # the notifier finds its connection lost and subscribes again, on b
                async with anyio.create_task_group() as tg:

                    async def keep_waiting() -> None:
                        while True:  # the waiter reads (and so reconnects)
                            await watch.wait(0.1)

                    tg.start_soon(keep_waiting)
                    await eventually(
                        lambda: len(on_b.client_list(_type="pubsub")) >= 1, "subscribed on b"
                    )
                    tg.cancel_scope.cancel()
                await backend.ack("q", "t2", "c")
                ended: list[tuple[str, str]] = []
                with anyio.fail_after(10):
                    while not ended:  # (a wake-up left from the lost connection is empty)
                        ended = await watch.wait(10)
                assert ended == [("q", "t2")]
        finally:
            await backend.aclose()
