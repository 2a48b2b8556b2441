"""Sentinel and Cluster over TLS with AUTH, end to end, under asyncio and trio: a Sentinel setup
and a 6-node cluster that listen on TLS alone (servers, sentinels, replication and the cluster bus
all TLS, client certificates required), started once per session (tests.sentinel_setup,
tests.cluster_setup with `tls=`), reached through the URL forms of docs/deploy.md:

    rediss+sentinel://:<password>@h1,h2,h3/<service>/<db>?ssl_ca_certs=…&sentinel_password=…
    rediss+cluster://:<password>@h1,h2,h3/0?ssl_ca_certs=…

A Client enqueues, a Server runs the tasks, the results are read back; through SENTINEL FAILOVER
and a slot moved to another primary (MOVED). A wrong CA or a wrong password fails at once with an
error that says so, instead of being retried for the failover window."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
import pytest

import strego
from strego.backends.redis import RedisBackend
from strego.backends.redis.cluster import ClusterTransport
from strego.backends.redis.sentinel import SentinelTransport
from strego.backends.redis.slots import key_slot
from strego.backends.redis.transport import Command
from strego.errors import BackendCertificateError, BackendError
from tests.cluster_setup import ClusterSetup, running_cluster
from tests.redis_server import TlsFiles, make_certificate
from tests.runtime_support import eventually, make_server
from tests.sentinel_setup import SentinelSetup, running_sentinel_setup

pytestmark = [pytest.mark.anyio, pytest.mark.redis]

MASTER_PASSWORD = "master-secret"
SENTINEL_PASSWORD = "sentinel-secret"
CLUSTER_PASSWORD = "cluster-secret"
TASKS = 40
#: A wrong CA or password must fail well within this (the failover windows are 30 s).
PROMPT_S = 10.0


@pytest.fixture(scope="session")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    return TlsFiles(make_certificate(tmp_path_factory.mktemp("ha-tls")))


@pytest.fixture(scope="session")
def other_ca(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A CA that did not sign the servers' certificate."""
    return make_certificate(tmp_path_factory.mktemp("ha-tls-other"), "other")


@pytest.fixture(scope="session")
def tls_sentinel(tls_files: TlsFiles) -> Iterator[SentinelSetup]:
    with running_sentinel_setup(
        tls=tls_files, password=MASTER_PASSWORD, sentinel_password=SENTINEL_PASSWORD
    ) as setup:
        yield setup


@pytest.fixture(scope="session")
def tls_cluster(tls_files: TlsFiles) -> Iterator[ClusterSetup]:
    with running_cluster(tls=tls_files, password=CLUSTER_PASSWORD) as cluster:
        yield cluster


@asynccontextmanager
async def _backend(url: str) -> AsyncIterator[RedisBackend]:
    backend = RedisBackend.from_url(url, prefix=f"t{uuid.uuid4().hex[:8]}")
    try:
        yield backend
    finally:
        await backend.aclose()


def _server(backend: RedisBackend, queues: list[str]) -> strego.Server:
    server = make_server(backend, queues=queues, concurrency=4)

    @server.handler("square")
    async def square(task: strego.Task) -> int:
        return int(task.payload) ** 2

    return server


async def _run_all(client: strego.Client, queues: list[str], start: int = 0) -> None:
    """Enqueue TASKS tasks over `queues` and wait for every result."""
    infos = [
        await client.enqueue(strego.Task("square", n, queue=queues[n % len(queues)]))
        for n in range(start, start + TASKS)
    ]
    for n, info in enumerate(infos, start):
        assert await client.result(info.id, timeout=20) == n * n


def _switch_url(url: str, old: str, new: str) -> str:
    assert old in url
    return url.replace(old, new, 1)


# -- Sentinel ------------------------------------------------------------------------------------


def test_sentinel_url_is_tls_with_both_passwords(tls_sentinel: SentinelSetup) -> None:
    url = tls_sentinel.url()
    assert url.startswith(f"rediss+sentinel://:{MASTER_PASSWORD}@")
    assert f"sentinel_password={SENTINEL_PASSWORD}" in url


async def test_sentinel_tls_runs_tasks(tls_sentinel: SentinelSetup) -> None:
    queue = f"q{uuid.uuid4().hex[:8]}"
    async with _backend(tls_sentinel.url(db=2)) as backend:
        client = strego.Client(backend)
        async with _server(backend, [queue]):
            await _run_all(client, [queue])
        assert backend.transport.settings.ssl_context is not None  # type: ignore[attr-defined]
    # The tasks are on the master, in database 2, over TLS with the password.
    master = tls_sentinel.client(tls_sentinel.master_port())
    master.select(2)  # type: ignore[no-untyped-call]
    assert master.dbsize() > 0


async def test_sentinel_tls_work_resumes_after_sentinel_failover(
    tls_sentinel: SentinelSetup,
) -> None:
    await anyio.to_thread.run_sync(lambda: tls_sentinel.wait_healthy(replicas=1))
    old = tls_sentinel.master_port()
    queue = f"q{uuid.uuid4().hex[:8]}"
    async with _backend(tls_sentinel.url()) as backend:
        client = strego.Client(backend)
        async with _server(backend, [queue]):
            await _run_all(client, [queue])
            await anyio.to_thread.run_sync(tls_sentinel.fail_over)

            transport = backend.transport
            assert isinstance(transport, SentinelTransport)

            async def followed() -> bool:
                # A call reads the sentinels' news (+failover-state-reconf-slaves, over TLS with
                # the sentinel password) and moves to the new master.
                await transport.execute(Command(("PING",), idempotent=True))
                return transport.settings.port != old

            await eventually(followed, "the transport to follow the new master")
            assert transport.switches >= 1
            assert transport.settings.port == await anyio.to_thread.run_sync(
                tls_sentinel.master_port
            )
            # Enqueued after the switch: they run, and their results are read, on the new master.
            await _run_all(client, [queue], start=TASKS)


async def test_sentinel_wrong_ca_fails_at_once(
    tls_sentinel: SentinelSetup, tls_files: TlsFiles, other_ca: Path
) -> None:
    url = _switch_url(
        tls_sentinel.url(), f"ssl_ca_certs={tls_files.cert}", f"ssl_ca_certs={other_ca}"
    )
    async with strego.Client.from_url(url) as client:
        with anyio.fail_after(PROMPT_S), pytest.raises(BackendCertificateError) as caught:
            await client.enqueue(strego.Task("square", 1))
    assert "certificate verify failed" in str(caught.value)


async def test_sentinel_wrong_passwords_fail_at_once(tls_sentinel: SentinelSetup) -> None:
    url = tls_sentinel.url()
    for wrong, kind in (
        (_switch_url(url, f":{MASTER_PASSWORD}@", ":wrong@"), "WRONGPASS"),
        (_switch_url(url, f"={SENTINEL_PASSWORD}", "=wrong"), "WRONGPASS"),
        (_switch_url(url, f"&sentinel_password={SENTINEL_PASSWORD}", ""), "NOAUTH"),
    ):
        async with strego.Client.from_url(wrong) as client:
            with anyio.fail_after(PROMPT_S), pytest.raises(BackendError, match=kind):
                await client.enqueue(strego.Task("square", 1))


# -- Cluster -------------------------------------------------------------------------------------


def _queues_on_every_primary(transport: ClusterTransport, per_node: int = 2) -> list[str]:
    """Fresh queue names, `per_node` owned by each primary."""
    owned: dict[object, list[str]] = {}
    while len(owned) < 3 or min(len(q) for q in owned.values()) < per_node:
        queue = f"q{uuid.uuid4().hex[:8]}"
        names = owned.setdefault(transport.owner(key_slot(queue)), [])
        if len(names) < per_node:
            names.append(queue)
    return [q for names in owned.values() for q in names]


async def test_cluster_tls_runs_tasks_on_every_node(tls_cluster: ClusterSetup) -> None:
    url = tls_cluster.url()
    assert url.startswith(f"rediss+cluster://:{CLUSTER_PASSWORD}@")
    async with _backend(url) as backend:
        transport = backend.transport
        assert isinstance(transport, ClusterTransport)
        await transport.refresh()
        queues = _queues_on_every_primary(transport)
        client = strego.Client(backend)
        async with _server(backend, queues):
            await _run_all(client, queues)
        assert len({transport.owner(key_slot(q)) for q in queues}) == 3


async def test_cluster_tls_follows_moved(tls_cluster: ClusterSetup) -> None:
    async with _backend(tls_cluster.url()) as backend:
        transport = backend.transport
        assert isinstance(transport, ClusterTransport)
        await transport.refresh()
        queue = f"q{uuid.uuid4().hex[:8]}"
        slot = key_slot(queue)
        source = transport.owner(slot)
        assert source is not None
        target = next(p for p in tls_cluster.primaries() if p != source[1])
        # The slot (empty: nothing was written to this queue) moves; the transport's map is
        # stale, so its first call for the queue is answered MOVED.
        await anyio.to_thread.run_sync(lambda: tls_cluster.migrate_slot(slot, source[1], target))
        moved = transport.stats.moved
        client = strego.Client(backend)
        async with _server(backend, [queue]):
            await _run_all(client, [queue])
        assert transport.stats.moved > moved
        assert transport.owner(slot) == ("127.0.0.1", target)


async def test_cluster_with_plain_ports_too_is_reached_on_its_tls_ports(
    tls_cluster: ClusterSetup,
) -> None:
    """A cluster with plain ports as well (tls-cluster yes, as while moving to TLS) lists both
    ports of each node in CLUSTER SHARDS: a rediss+cluster:// client uses the TLS ones (it
    used the plain ones, and its TLS handshakes there waited for the connect timeout)."""
    await anyio.to_thread.run_sync(tls_cluster.open_plain_ports)
    try:
        url = tls_cluster.url(query="connect_timeout=1&cluster_timeout=2")
        async with _backend(url) as backend:
            transport = backend.transport
            assert isinstance(transport, ClusterTransport)
            # Only the map read is bounded (a hang guard, not a timing): calls through the
            # plain ports would fail their TLS handshakes, and the ports are checked below.
            with anyio.fail_after(PROMPT_S):
                await transport.refresh()
            queues = _queues_on_every_primary(transport, per_node=1)
            client = strego.Client(backend)
            async with _server(backend, queues):
                await _run_all(client, queues)
            tls_ports = {s.port for s in tls_cluster.servers}
            assert {transport.owner(key_slot(q))[1] for q in queues} <= tls_ports  # type: ignore[index]
    finally:
        await anyio.to_thread.run_sync(tls_cluster.close_plain_ports)


async def test_cluster_wrong_ca_fails_at_once(
    tls_cluster: ClusterSetup, tls_files: TlsFiles, other_ca: Path
) -> None:
    url = _switch_url(
        tls_cluster.url(), f"ssl_ca_certs={tls_files.cert}", f"ssl_ca_certs={other_ca}"
    )
    async with strego.Client.from_url(url) as client:
        with anyio.fail_after(PROMPT_S), pytest.raises(BackendError) as caught:
            await client.enqueue(strego.Task("square", 1))
    assert "certificate verify failed" in str(caught.value)


async def test_cluster_wrong_password_fails_at_once(tls_cluster: ClusterSetup) -> None:
    url = _switch_url(tls_cluster.url(), f":{CLUSTER_PASSWORD}@", ":wrong@")
    async with strego.Client.from_url(url) as client:
        with anyio.fail_after(PROMPT_S), pytest.raises(BackendError, match="WRONGPASS"):
            await client.enqueue(strego.Task("square", 1))
