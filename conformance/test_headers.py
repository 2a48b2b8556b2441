"""A task's propagation headers (trace context, baggage) are stored once at enqueue and come
back unchanged on every read, through a retry, a dead-letter requeue and a claim."""

from __future__ import annotations

import attrs
import pytest

from conformance.clock import FakeClock
from conformance.helpers import LEASE_MS, message
from strego.backends.base import Backend
from strego.errors import InvalidTaskError
from strego.task import TaskState

pytestmark = pytest.mark.anyio

HEADERS = {
    "traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
    "tracestate": "congo=t61rcWkgMzE,rojo=00f067aa0ba902b7",
    "baggage": "tenant=acme,ünï=%C3%A9",
    "": "an empty name and value are kept too",
    "empty": "",
}


async def test_headers_round_trip(backend: Backend) -> None:
    info = await backend.enqueue(attrs.evolve(message("h"), headers=HEADERS))
    assert info.headers == HEADERS
    [fetched] = await backend.fetch(["q"], 1, "c1", lease_ms=LEASE_MS)
    assert fetched.headers == HEADERS
    stored = await backend.get_task("h", "q")
    assert stored is not None and stored.headers == HEADERS
    [listed] = (await backend.list_tasks("q", TaskState.ACTIVE)).tasks
    assert listed.headers == HEADERS


async def test_no_headers_reads_as_empty(backend: Backend) -> None:
    info = await backend.enqueue(message("n", payload=b'{"a":1}'))
    assert info.headers == {}
    [fetched] = await backend.fetch(["q"], 1, "c1", lease_ms=LEASE_MS)
    assert fetched.headers == {} and fetched.payload == b'{"a":1}'


async def test_headers_survive_retry_dead_and_requeue(backend: Backend, clock: FakeClock) -> None:
    await backend.enqueue(attrs.evolve(message("h", max_retry=1), headers=HEADERS))
    [first] = await backend.fetch(["q"], 1, "c1", lease_ms=LEASE_MS)
    assert first.headers == HEADERS
    assert await backend.fail("q", "h", "c1", "boom", retry_in_ms=10) == TaskState.RETRY
    clock.advance(10)
    await backend.promote(["q"])
    [second] = await backend.fetch(["q"], 1, "c1", lease_ms=LEASE_MS)
    assert second.retried == 1 and second.headers == HEADERS
    assert await backend.fail("q", "h", "c1", "boom", retry_in_ms=10) == TaskState.DEAD
    dead = await backend.get_task("h", "q")
    assert dead is not None and dead.headers == HEADERS
    assert await backend.requeue_dead("q", "h")
    [third] = await backend.fetch(["q"], 1, "c2", lease_ms=LEASE_MS)
    assert third.headers == HEADERS
    # a claim by another server after the lease ran out
    clock.advance(LEASE_MS + 1)
    [claimed] = await backend.claim_stale(["q"], "c3", 1, lease_ms=LEASE_MS, max_deliveries=9)
    assert claimed.id == "h" and claimed.headers == HEADERS


def test_headers_that_are_not_strings_are_refused() -> None:
    with pytest.raises(InvalidTaskError):
        attrs.evolve(message("h"), headers={"traceparent": 1})
    with pytest.raises(InvalidTaskError):
        attrs.evolve(message("h"), headers=[("a", "b")])
