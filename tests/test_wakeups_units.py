"""Units of the Cluster wake-ups (strego/backends/redis/wakeups.py) without a cluster: the sharded
subscription (one SSUBSCRIBE per slot), what `Notifier` does with a subscription Redis drops
(SUNSUBSCRIBE) or refuses (MOVED), the Redis 7 check that keeps a Redis 6.2 Cluster on XREAD, and
the transport waiting while nodes disagree after a failover (which the wake-up tests ran into).
The real cluster is tests/test_cluster_wakeups.py."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import anyio
import hiredis
import pytest

from strego.backends.redis.notify import Notifier
from strego.backends.redis.pubsub import AnyioPubSub
from strego.backends.redis.slots import key_slot
from strego.backends.redis.wakeups import sharded_pubsub_supported
from strego.backends.watch import Watch
from strego.errors import BackendConnectionError, BackendError

pytestmark = pytest.mark.anyio

A1, A2, B = b"p:v1:{a}:ready", b"p:v1:{a}:signal", b"p:v1:{b}:ready"


class FakeConnection:
    """A pub/sub connection whose pushes the test decides: SSUBSCRIBE is confirmed per channel
    unless its slot is in `moved` (then one MOVED error per command, as Redis answers)."""

    def __init__(self, moved: frozenset[int] = frozenset()) -> None:
        self.moved = moved
        self.sent: list[list[bytes]] = []
        self.send, self.receive = anyio.create_memory_object_stream[Any](100)

    async def subscribe(self, channels: Sequence[bytes]) -> None:
        by_slot: dict[int, list[bytes]] = {}
        for channel in channels:
            by_slot.setdefault(key_slot(channel), []).append(channel)
        for slot, names in by_slot.items():
            self.sent.append(names)
            if slot in self.moved:
                self.send.send_nowait(hiredis.ReplyError(f"MOVED {slot} 127.0.0.1:7001"))
                continue
            for n, name in enumerate(names, 1):
                self.send.send_nowait([b"ssubscribe", name, n])

    async def read(self, timeout_s: float) -> Any:
        with anyio.move_on_after(timeout_s):
            return await self.receive.receive()
        return None

    async def aclose(self) -> None:
        pass


def test_sharded_subscribe_sends_one_ssubscribe_per_slot() -> None:
    conn = AnyioPubSub(stream=None, address="x", sharded=True)  # type: ignore[arg-type]
    packed = conn._subscribe_commands([A1, B, A2])
    reader = hiredis.Reader()
    reader.feed(packed)
    commands = []
    while (command := reader.gets()) is not False:
        commands.append(command)
    assert commands == [[b"SSUBSCRIBE", A1, A2], [b"SSUBSCRIBE", B]]
    plain = AnyioPubSub(stream=None, address="x")  # type: ignore[arg-type]
    reader.feed(plain._subscribe_commands([A1, B]))
    assert reader.gets() == [b"SUBSCRIBE", A1, B]


async def test_a_channel_redis_drops_wakes_its_watch_and_is_forgotten() -> None:
    conn = FakeConnection()
    moved: list[bool] = []

    async def open_connection() -> FakeConnection:
        return conn

    notifier = Notifier(open_connection, on_moved=lambda: moved.append(True))
    async with notifier.listen([(A1, "a"), (B, "b")]) as watch:
        assert not watch.woken
        conn.send.send_nowait([b"smessage", B, b"7"])
        assert await watch.wait(1) == [("b", "7")]
        # the slot of A1 moved away: Redis pushes SUNSUBSCRIBE
        conn.send.send_nowait([b"sunsubscribe", A1, 1])
        with anyio.fail_after(1):
            await watch.wait(5)
        assert moved == [True]
        assert A1 not in notifier._channels and A1 not in notifier._confirmed
        assert B in notifier._confirmed


async def test_a_refused_subscription_drops_only_its_slot() -> None:
    conn = FakeConnection(moved=frozenset({key_slot(A1)}))
    moved: list[bool] = []

    async def open_connection() -> FakeConnection:
        return conn

    notifier = Notifier(open_connection, on_moved=lambda: moved.append(True))
    async with notifier.listen([(B, "b")]):
        with anyio.fail_after(2):  # not SUBSCRIBE_TIMEOUT_S: a refusal ends the wait
            async with notifier.join(Watch(), [(A1, "a"), (A2, "a")]) as complete:
                assert not complete
        assert moved
        assert B in notifier._confirmed
        assert A1 not in notifier._channels and A2 not in notifier._channels


async def test_a_lost_connection_wakes_every_watch() -> None:
    class Lost(FakeConnection):
        async def read(self, timeout_s: float) -> Any:
            reply = await super().read(timeout_s)
            if reply == "lost":
                raise BackendConnectionError("lost")
            return reply

    conn = Lost()

    async def open_connection() -> FakeConnection:
        return conn

    notifier = Notifier(open_connection)
    async with notifier.listen([(A1, "a")]) as watch:
        conn.send.send_nowait("lost")
        with anyio.fail_after(1):
            await watch.wait(5)
        assert notifier._conn is None


async def test_opening_the_connection_ends_with_the_callers_time() -> None:
    """A connection that takes long to open (a node failing over) holds a waiter up to its own
    time, not up to SUBSCRIBE_TIMEOUT_S (a fetch with block_ms=300 took 5 s)."""
    opened: list[float] = []

    async def open_connection() -> FakeConnection:
        opened.append(anyio.current_time())
        await anyio.sleep_forever()
        raise AssertionError

    notifier = Notifier(open_connection)
    for _ in range(2):  # the cut open is no failure: the next waiter tries again at once
        started = anyio.current_time()
        with anyio.fail_after(10):
            async with notifier.join(Watch(), [(A1, "a")], None, 0.3) as complete:
                assert not complete
        assert anyio.current_time() - started < 0.3 + 2
    assert len(opened) == 2


class FakeNode:
    def __init__(self, version: str | None) -> None:
        self.version = version

    async def execute(self, command: Any) -> bytes:
        if self.version is None:
            raise BackendError("NOPERM INFO refused")
        if self.version == "down":
            raise BackendConnectionError("connection refused")
        return f"# Server\r\nredis_version:{self.version}\r\n".encode()


class FakeCluster:
    def __init__(self, *versions: str | None) -> None:
        self.nodes = {("h", i): FakeNode(v) for i, v in enumerate(versions)}
        self.primaries = list(self.nodes)

    async def fresh(self) -> None:
        pass

    def node(self, address: tuple[str, int]) -> FakeNode:
        return self.nodes[address]


@pytest.mark.parametrize(
    ("versions", "supported"),
    [
        (("7.0.15", "7.2.4"), True),
        (("7.0.15", "6.2.14"), False),
        (("7.0.15", None), False),
        # unreachable (a failover): unknown, asked again later, not "no" for good
        (("7.0.15", "down"), None),
    ],
)
async def test_sharded_pubsub_needs_redis_7_on_every_primary(
    versions: tuple[str | None, ...], supported: bool | None
) -> None:
    assert await sharded_pubsub_supported(FakeCluster(*versions)) is supported  # type: ignore[arg-type]


def test_every_move_of_the_ready_counter_publishes_on_cluster() -> None:
    """A script that INCRs `ready` by itself, not through ready_moved(), would leave fetches
    waiting on Cluster asleep until their block time."""
    from strego.backends.redis.scripts import NAMES, script, source

    for name in NAMES:
        assert "INCR', K.ready" not in source(name), name
        if "ready_moved()" in source(name):
            assert "local SHARDED_NOTIFY = false\n" in script(name).source
            assert "local SHARDED_NOTIFY = true\n" in script(name, 0, True).source


class DisagreeingNodes:
    """Two primaries just after a failover: until `agree_at`, each says the other serves every
    slot (MOVED), and CLUSTER SHARDS still names the old one; then the new one answers."""

    OLD, NEW = ("127.0.0.1", 1), ("127.0.0.1", 2)

    def __init__(self, agree_after_s: float) -> None:
        self.agree_at = anyio.current_time() + agree_after_s

    def node(self, address: tuple[str, int]) -> Any:
        world = self

        class Node:
            async def execute(self, command: Any) -> Any:  # CLUSTER SHARDS
                owner = world.NEW if anyio.current_time() >= world.agree_at else world.OLD
                port = owner[1]
                return [[b"slots", [0, 16383], b"nodes", [
                    [b"port", port, b"ip", b"127.0.0.1", b"role", b"master"]]]]  # fmt: skip

            async def pipeline(self, calls: Sequence[Any]) -> list[Any]:
                if address == world.NEW and anyio.current_time() >= world.agree_at:
                    return [b"OK" for _ in calls]
                other = world.OLD if address == world.NEW else world.NEW
                return [BackendError(f"MOVED 1 127.0.0.1:{other[1]}") for _ in calls]

            async def aclose(self) -> None:
                pass

        return Node()


async def test_calls_wait_while_the_nodes_disagree_after_a_failover() -> None:
    """MOVED back and forth (the nodes not yet agreeing on a slot's owner) is waited out with
    backoff until cluster_timeout, not raised after 16 rounds in a few milliseconds."""
    from strego.backends.redis.cluster import ClusterTransport
    from strego.backends.redis.transport import Command
    from strego.backends.redis.url import parse_url

    world = DisagreeingNodes(agree_after_s=0.5)
    transport = ClusterTransport(
        [world.OLD], parse_url("redis://127.0.0.1:1"), cluster_timeout=5, backoff_max=0.05
    )
    transport.node = world.node  # type: ignore[method-assign]
    with anyio.fail_after(5):
        assert await transport.execute(Command(("SET", "k", "v"))) == b"OK"
