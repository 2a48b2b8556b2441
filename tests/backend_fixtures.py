"""Pytest plugin: the `make_backend` fixture that runs the conformance suite (and any test that
asks for it) against each of our backends.

To add a backend, add a row to BACKENDS: a name (the test id) and a `BackendKind` whose `factory`
gets the fixture request (to reach fixtures such as `redis_url`) and returns the `make_backend`
factory. Event loops a backend cannot run on are deselected, not skipped."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AbstractAsyncContextManager
from typing import TYPE_CHECKING, Any, Protocol

import attrs
import pytest

from strego.backends.base import STATS_RETENTION_MS, Backend, Clock
from strego.backends.memory import MemoryBackend

if TYPE_CHECKING:
    from tests.cluster_setup import ClusterSetup


class BackendFactory(Protocol):
    """What `make_backend` returns: a fresh, empty backend on `clock`, closed on exit."""

    def __call__(
        self,
        *,
        clock: Clock,
        completed_ttl_ms: int = ...,
        dead_ttl_ms: int = ...,
        stats_retention_ms: int = ...,
    ) -> AbstractAsyncContextManager[Backend]: ...


@attrs.frozen
class BackendKind:
    factory: Callable[[pytest.FixtureRequest], BackendFactory]
    #: anyio backends ("asyncio", "trio") this backend runs on; other combinations are deselected
    event_loops: frozenset[str] = frozenset({"asyncio", "trio"})


def _memory(request: pytest.FixtureRequest) -> BackendFactory:
    @contextlib.asynccontextmanager
    async def factory(
        *,
        clock: Clock,
        completed_ttl_ms: int = 3_600_000,
        dead_ttl_ms: int = 604_800_000,
        stats_retention_ms: int = STATS_RETENTION_MS,
        **options: Any,  # history=True, ...
    ) -> AsyncIterator[Backend]:
        backend = MemoryBackend(
            clock=clock,
            completed_ttl_ms=completed_ttl_ms,
            dead_ttl_ms=dead_ttl_ms,
            stats_retention_ms=stats_retention_ms,
            **options,
        )
        try:
            yield backend
        finally:
            await backend.aclose()

    return factory


def _redis_factory(connect: Callable[[], Any]) -> BackendFactory:
    """Backends on a RedisBackend whose client `connect` makes; each gets a prefix of its own."""

    @contextlib.asynccontextmanager
    async def factory(
        *,
        clock: Clock,
        completed_ttl_ms: int = 3_600_000,
        dead_ttl_ms: int = 604_800_000,
        stats_retention_ms: int = STATS_RETENTION_MS,
        **options: Any,  # history=True, ...
    ) -> AsyncIterator[Backend]:
        from strego.backends.redis import RedisBackend

        backend = RedisBackend(
            connect(),
            prefix=f"t{uuid.uuid4().hex[:12]}",
            clock=clock,
            completed_ttl_ms=completed_ttl_ms,
            dead_ttl_ms=dead_ttl_ms,
            stats_retention_ms=stats_retention_ms,
            **options,
        )
        try:
            yield backend
        finally:
            await backend.aclose()

    return factory


def _redis(request: pytest.FixtureRequest) -> BackendFactory:
    import redis.asyncio

    url = request.getfixturevalue("redis_url")
    return _redis_factory(lambda: redis.asyncio.Redis.from_url(url))


def _anyio_redis(request: pytest.FixtureRequest) -> BackendFactory:
    from strego.backends.redis.anyio_transport import AnyioTransport

    url = request.getfixturevalue("redis_url")
    return _redis_factory(lambda: AnyioTransport.from_url(url))


@pytest.fixture(scope="session")
def redis_cluster() -> Iterator[ClusterSetup]:
    """A 6-node Redis Cluster (3 primaries, 3 replicas) for this session."""
    from tests.cluster_setup import running_cluster

    with running_cluster() as cluster:
        yield cluster


def _cluster_redis(request: pytest.FixtureRequest) -> BackendFactory:
    from strego.backends.redis.cluster import ClusterTransport

    url = request.getfixturevalue("redis_cluster").url()
    return _redis_factory(lambda: ClusterTransport.from_url(url))


def _fakeredis(request: pytest.FixtureRequest) -> BackendFactory:
    import fakeredis

    server = fakeredis.FakeServer()
    return _redis_factory(lambda: fakeredis.FakeAsyncRedis(server=server))


BACKENDS: dict[str, BackendKind] = {
    "memory": BackendKind(_memory),
    # redis-py runs on asyncio only
    "redis": BackendKind(_redis, event_loops=frozenset({"asyncio"})),
    "fakeredis": BackendKind(_fakeredis, event_loops=frozenset({"asyncio"})),
    # RedisBackend over strego's own anyio transport: asyncio and trio
    "anyio-redis": BackendKind(_anyio_redis),
    # the same over ClusterTransport, on a 6-node Redis Cluster
    "cluster-redis": BackendKind(_cluster_redis),
}


@pytest.fixture(params=list(BACKENDS))
def make_backend(request: pytest.FixtureRequest) -> BackendFactory:
    return BACKENDS[request.param].factory(request)


def _event_loop_name(param: Any) -> str:
    return param[0] if isinstance(param, tuple) else str(param)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    kept: list[pytest.Item] = []
    deselected: list[pytest.Item] = []
    for item in items:
        params = getattr(getattr(item, "callspec", None), "params", {})
        kind = BACKENDS.get(params.get("make_backend", ""))
        loop = params.get("anyio_backend")
        if kind is not None and loop is not None and _event_loop_name(loop) not in kind.event_loops:
            deselected.append(item)
        else:
            kept.append(item)
    if deselected:
        config.hook.pytest_deselected(items=deselected)
        items[:] = kept
