"""ClusterTransport on a real 6-node cluster: replies in the caller's order whatever node each
call went to, MGET over several slots, NOSCRIPT per node; and, on a slot map set by hand, how a
pipeline is split in waves."""

from __future__ import annotations

import uuid

import pytest
import redis

from strego.backends.redis.cluster import ClusterTransport
from strego.backends.redis.scripts import script
from strego.backends.redis.slots import key_slot
from strego.backends.redis.transport import Command, Script, ScriptCall
from strego.errors import ForeignKeyError
from tests.cluster_setup import ClusterSetup

pytestmark = pytest.mark.anyio


async def test_replies_in_the_callers_order(redis_cluster: ClusterSetup) -> None:
    tag = uuid.uuid4().hex[:6]
    keys = [f"{{{tag}{i}}}k" for i in range(30)]
    async with ClusterTransport.from_url(redis_cluster.url()) as t:
        await t.refresh()
        assert len({t.owner(key_slot(k)) for k in keys}) == 3  # spread over every primary
        calls = [Command(("SET", k, str(i))) for i, k in enumerate(keys)]
        calls += [Command(("GET", k), idempotent=True) for k in reversed(keys)]
        replies = await t.pipeline(calls)
        assert replies[:30] == [b"OK"] * 30
        assert replies[30:] == [str(i).encode() for i in reversed(range(30))]
        assert await t.execute(Command(("MGET", *keys), idempotent=True)) == [
            str(i).encode() for i in range(30)
        ]


async def test_noscript_is_loaded_on_each_node(redis_cluster: ClusterSetup) -> None:
    tag = uuid.uuid4().hex[:6]
    echo = Script("echo", "return KEYS[1]")
    keys = [f"{{{tag}{i}}}k" for i in range(12)]
    async with ClusterTransport.from_url(redis_cluster.url()) as t:
        calls = [ScriptCall(echo, [k], []) for k in keys]
        assert await t.pipeline(calls) == [k.encode() for k in keys]
        for port in redis_cluster.primaries():
            redis.Redis(port=port).script_flush()
        assert await t.pipeline(calls) == [k.encode() for k in keys]
        assert await t.run_script(calls[0]) == keys[0].encode()


def test_a_command_after_a_script_on_another_node_waits_for_it() -> None:
    a, b = ("127.0.0.1", 1), ("127.0.0.1", 2)
    t = ClusterTransport([a], ClusterTransport.from_url("redis+cluster://h:1/0")._settings)
    on_b = "{b}x"
    t._slots = [a] * len(t._slots)
    t._slots[key_slot(on_b)] = b
    enqueue = script("enqueue")
    calls = [
        Command(("SADD", "registry", "q"), idempotent=True),  # on a
        ScriptCall(enqueue, [on_b], []),  # on b
        ScriptCall(enqueue, ["{a}y"], []),  # on a: scripts need no order among themselves
        Command(("SADD", "registry", "q"), idempotent=True),  # on a, after the script on b
        Command(("WAIT", 1, 100), idempotent=True),  # keyless: where the last script went
    ]
    assert t._waves(calls, list(range(5)), {}) == [{a: [0, 2], b: [1]}, {a: [3, 4]}]


async def test_a_blocking_read_over_slots_raises_the_typed_error(
    redis_cluster: ClusterSetup,
) -> None:
    tag = uuid.uuid4().hex[:6]
    good, bad = f"{{{tag}a}}s", f"{{{tag}b}}s"
    async with ClusterTransport.from_url(redis_cluster.url()) as t:
        await t.execute(Command(("SET", bad, "not a stream")))
        with pytest.raises(ForeignKeyError):
            await t.blocking(Command(("XREAD", "BLOCK", 100, "STREAMS", good, bad, "$", "$")), 100)
        # and a wait on good streams in several slots ends with its block time
        other = f"{{{tag}c}}s"
        assert key_slot(good) != key_slot(other)
        reply = await t.blocking(
            Command(("XREAD", "BLOCK", 50, "STREAMS", good, other, "$", "$"), idempotent=True), 50
        )
        assert reply is None
