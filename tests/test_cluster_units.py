"""Cluster pieces that need no server: hash slots, which arguments are keys, redis+cluster://
URLs, reading CLUSTER SHARDS, MGET split per slot."""

from __future__ import annotations

import anyio
import pytest

from strego.backends.redis.cluster import (
    ClusterTransport,
    _merge,
    _redirect,
    _split_multi_slot,
    parse_cluster_url,
    parse_shards,
)
from strego.backends.redis.keys import Keys
from strego.backends.redis.slots import command_keys, crc16, key_slot
from strego.backends.redis.transport import Command
from strego.backends.redis.url import ConnectionSettings
from strego.errors import BackendCertificateError, BackendConnectionError, BackendError


def test_crc16_and_slots() -> None:
    assert crc16(b"123456789") == 0x31C3  # the XMODEM check value
    assert key_slot("foo") == 12182  # as CLUSTER KEYSLOT foo
    assert key_slot("{user1000}.following") == key_slot("user1000")
    assert key_slot("foo{}{bar}") == key_slot("foo{}{bar}")  # empty tag: the whole key
    assert key_slot("foo{}{bar}") != key_slot("bar")
    assert key_slot(b"{bar}x") == key_slot("bar")


def test_every_key_of_a_queue_is_in_one_slot() -> None:
    keys = Keys("strego", "emails")
    assert len({key_slot(k) for k in keys.all()}) == 1


def test_command_keys() -> None:
    assert command_keys(("GET", "k")) == ["k"]
    assert command_keys(("MGET", "a", "b")) == ["a", "b"]
    assert command_keys(("TIME",)) == []
    assert command_keys(("WAIT", 1, 100)) == []
    assert command_keys(("XREAD", "COUNT", 1, "BLOCK", 5, "STREAMS", "s1", "s2", "0", "$")) == [
        "s1",
        "s2",
    ]
    grouped = ("XREADGROUP", "GROUP", "streams", "streams", "STREAMS", "s1", ">")
    assert command_keys(grouped) == ["s1"]
    # the key after a subcommand (the task history's drainer creates its group so)
    assert command_keys(("XGROUP", "CREATE", "h", "g", "0", "MKSTREAM")) == ["h"]
    assert command_keys(("XINFO", "GROUPS", "s")) == ["s"]


def test_cluster_url() -> None:
    seeds, settings, timeout = parse_cluster_url(
        "redis+cluster://u:pw@h1:7000,h2:7001/0?cluster_timeout=5&client_name=w"
    )
    assert seeds == [("h1", 7000), ("h2", 7001)]
    assert (settings.username, settings.password, settings.client_name) == ("u", "pw", "w")
    assert timeout == 5.0
    _, tls, _ = parse_cluster_url("rediss+cluster://h1:7000?ssl_cert_reqs=none")
    assert tls.ssl_context is not None


@pytest.mark.parametrize(
    "url",
    [
        "redis+cluster://h1:7000/1",
        "redis+cluster:///0",
        "redis+cluster://h1:x/0",
        "redis+cluster://h1:7000/0?cluster_timeout=0",
        "redis+cluster://h1:7000/0?bogus=1",
        "redis://h1:7000/0",
    ],
)
def test_bad_cluster_urls(url: str) -> None:
    with pytest.raises(ValueError):
        parse_cluster_url(url)


def _node(port: int, role: bytes, health: bytes = b"online") -> list[object]:
    return [
        b"id", b"x", b"port", port, b"ip", b"127.0.0.1", b"endpoint", b"127.0.0.1",
        b"role", role, b"replication-offset", 1, b"health", health,
    ]  # fmt: skip


def test_parse_shards_takes_the_online_primary() -> None:
    reply = [
        [b"slots", [0, 100, 200, 300], b"nodes", [_node(1, b"master"), _node(2, b"replica")]],
        [
            b"slots",
            [101, 199],
            b"nodes",
            [_node(3, b"master", b"fail"), _node(4, b"master")],
        ],
        [b"slots", [], b"nodes", [_node(5, b"master")]],
    ]
    assert parse_shards(reply) == {
        ("127.0.0.1", 1): [(0, 100), (200, 300)],
        ("127.0.0.1", 4): [(101, 199)],
    }


def test_parse_shards_picks_the_port_of_the_connection_kind() -> None:
    # A node with a plain and a TLS port (tls-cluster yes) lists both; a TLS-only node only
    # tls-port.
    both = {b"port": 7000, b"tls-port": 7100, b"ip": b"127.0.0.1", b"role": b"master"}
    tls_only = {b"tls-port": 7101, b"ip": b"127.0.0.1", b"role": b"master"}
    reply = [
        [b"slots", [0, 9], b"nodes", [[x for kv in both.items() for x in kv]]],
        [b"slots", [10, 19], b"nodes", [[x for kv in tls_only.items() for x in kv]]],
    ]
    assert set(parse_shards(reply)) == {("127.0.0.1", 7000), ("127.0.0.1", 7101)}
    assert set(parse_shards(reply, tls=True)) == {("127.0.0.1", 7100), ("127.0.0.1", 7101)}


def test_redirects() -> None:
    assert _redirect(BackendError("MOVED 3999 127.0.0.1:6381")) == (
        "MOVED",
        3999,
        ("127.0.0.1", 6381),
    )
    assert _redirect(BackendError("ASK 1 h:2")) == ("ASK", 1, ("h", 2))
    assert _redirect(BackendError("TRYAGAIN Multiple keys request during rehashing"))
    assert _redirect(BackendError("CLUSTERDOWN The cluster is down"))
    assert _redirect(BackendError("ERR other")) is None
    assert _redirect(BackendConnectionError("MOVED 1 h:2")) is None
    assert _redirect(b"MOVED 1 h:2") is None


def test_mget_split_per_slot_and_merged_in_order() -> None:
    keys = ["{a}1", "{b}1", "{a}2", "{c}1"]
    calls = [Command(("GET", "x")), Command(("MGET", *keys), idempotent=True)]
    flat, merges = _split_multi_slot(calls)
    assert len(flat) == 4  # GET, then one MGET per slot
    assert all(len({key_slot(k) for k in c.args[1:]}) == 1 for c in flat[1:])
    replies: list[object] = [b"gx"] + [[f"v{k}".encode() for k in c.args[1:]] for c in flat[1:]]
    assert _merge(replies, merges) == [b"gx", [f"v{k}".encode() for k in keys]]
    error = BackendError("CLUSTERDOWN")
    assert _merge([b"gx", error, [b"v"], [b"w"]], merges)[1] is error


class _RefusingNode:
    """A node whose slot map reads fine (as from a seed whose certificate names it) but whose
    calls fail certificate verification (as on an address the certificate does not name)."""

    def __init__(self) -> None:
        self.calls = 0

    async def execute(self, command: Command) -> object:
        return [[b"slots", [0, 16383], b"nodes", [_node(1, b"master")]]]

    async def pipeline(self, calls: object) -> list[object]:
        self.calls += 1
        raise BackendCertificateError("could not connect: certificate verify failed")

    async def blocking(self, command: Command, timeout_ms: int) -> object:
        return await self.pipeline([command])

    async def aclose(self) -> None:
        pass


@pytest.mark.anyio
async def test_a_refused_certificate_is_raised_at_once() -> None:
    # Not retried for cluster_timeout: the same certificate is refused every time.
    transport = ClusterTransport([("127.0.0.1", 1)], ConnectionSettings(), cluster_timeout=30)
    node = _RefusingNode()
    transport._nodes[("127.0.0.1", 1)] = node  # type: ignore[assignment]
    with anyio.fail_after(5):
        with pytest.raises(BackendCertificateError):
            await transport.execute(Command(("GET", "k")))
        with pytest.raises(BackendCertificateError):
            await transport.blocking(Command(("BLPOP", "k", 1)), 1000)
    assert node.calls == 2
