"""Who closes the backend: a Client closes only a backend it created (`Client.from_url`), and any
call on a closed backend raises BackendClosedError."""

from __future__ import annotations

import pytest

import strego
from strego.backends.base import Backend
from strego.backends.redis import RedisBackend
from tests.runtime_support import ON_EVERY_BACKEND, backend

__all__ = ["backend"]  # the fixture, imported for pytest

pytestmark = pytest.mark.anyio


@ON_EVERY_BACKEND
async def test_a_client_leaves_open_the_backend_it_was_given(backend: Backend) -> None:
    async with strego.Client(backend) as client:
        first = await client.enqueue(strego.Task("t"))
    assert client.owns_backend is False
    await client.aclose()
    # still open: another client (or a server) sharing it goes on
    second = await strego.Client(backend).enqueue(strego.Task("t"))
    assert {t.id for t in (await client.list_tasks("default", strego.TaskState.PENDING)).tasks} == {
        first.id,
        second.id,
    }

    await backend.aclose()
    with pytest.raises(strego.BackendClosedError, match="closed"):
        await client.enqueue(strego.Task("t"))
    with pytest.raises(strego.BackendClosedError):
        await client.enqueue_many([strego.Task("t")])
    with pytest.raises(strego.BackendClosedError):
        await client.get_task(first.id)
    with pytest.raises(strego.BackendClosedError):
        await client.queues()


@pytest.mark.redis
async def test_a_client_from_url_closes_its_own_backend(clean_redis_url: str) -> None:
    async with strego.Client.from_url(clean_redis_url, prefix="own") as client:
        assert client.owns_backend is True
        assert isinstance(client.backend, RedisBackend) and client.backend.prefix == "own"
        info = await client.enqueue(strego.Task("t"))
    with pytest.raises(strego.BackendClosedError):
        await client.get_task(info.id)
    await client.aclose()  # closing again is harmless

    # the task was stored: a new client sees it
    again = strego.Client.from_url(clean_redis_url, prefix="own")
    try:
        found = await again.get_task(info.id)
        assert found is not None and found.state is strego.TaskState.PENDING
    finally:
        await again.aclose()
    with pytest.raises(strego.BackendClosedError):
        await again.queues()


def test_backend_closed_error_is_a_strego_error() -> None:
    assert issubclass(strego.BackendClosedError, strego.StregoError)
