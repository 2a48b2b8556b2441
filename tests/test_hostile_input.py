"""Property-based hostile input over the public API (Client, Server's decode path) on the memory
backend and on Redis (anyio transport, asyncio and trio): arbitrary types, queue names, payloads
(bytes, deep JSON, large, non-UTF-8), labels and option values. Each task either round-trips
exactly (payload bytes identical after a failed run's retry and after a DLQ requeue) or is refused
with a typed StregoError, writing nothing."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

import strego
from conformance.clock import FakeClock
from strego.backends.base import Backend
from strego.errors import StregoError
from strego.task import TaskState
from tests.backend_fixtures import BACKENDS

pytestmark = pytest.mark.anyio

CLOCK = FakeClock()
LEASE_MS = 60_000

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=30,
)
payloads = st.one_of(
    json_values,
    st.binary(max_size=2000),  # raw bytes: non-UTF-8 included
    st.builds(lambda n: "x" * n, st.integers(0, 3000)),
    st.builds(lambda d: [[[[[d]]]]] * 3, json_values),  # deep
    st.just(float("nan")),  # not JSON: refused
    st.builds(object),  # not serializable: refused
    st.builds(lambda n: b"\xff" * n, st.integers(0, (1 << 20) + 10)),  # around the size limit
)
anything = st.one_of(st.none(), st.integers(), st.floats(), st.text(max_size=120), st.booleans())
options = st.fixed_dictionaries(
    {},
    optional={
        "queue": st.one_of(
            st.text(max_size=120), st.sampled_from(["a{b}", "a:b", "a b", "q" * 101, "ok"])
        ),
        "max_retry": st.one_of(st.integers(-2, 5), anything),
        "priority": st.one_of(st.integers(-2, 12), anything),
        "timeout": st.one_of(st.floats(), anything),
        "labels": st.one_of(st.dictionaries(st.text(), st.text(), max_size=3), anything,
                            st.dictionaries(st.text(), st.integers(), min_size=1, max_size=2)),
        "id": st.one_of(st.text(max_size=140), anything),
        "process_in": st.one_of(st.floats(), anything),
    },
)  # fmt: skip
types = st.one_of(st.text(max_size=300), anything)
#: options that are all valid: most of these tasks must be accepted and round-trip
valid_options = st.fixed_dictionaries(
    {
        "queue": st.from_regex(r"[A-Za-z0-9_.\-]{1,100}", fullmatch=True),
        "max_retry": st.integers(0, 3),
        "priority": st.integers(0, 10),
        "labels": st.dictionaries(st.text(), st.text(), max_size=3),
    }
)


@pytest.fixture(params=["memory", "anyio-redis"])
async def backend(request: pytest.FixtureRequest) -> AsyncIterator[Backend]:
    async with BACKENDS[request.param].factory(request)(clock=CLOCK) as b:
        yield b


async def snapshot(backend: Backend) -> dict[str, Any]:
    queues = await backend.queues()
    return {q: (await backend.queue_info(q)).counts for q in queues}


@settings(
    max_examples=100,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    task_type=st.one_of(types, st.text(min_size=1, max_size=256)),
    payload=payloads,
    opts=st.one_of(options, valid_options),
)
async def test_any_task_round_trips_or_is_refused_writing_nothing(
    backend: Backend, task_type: Any, payload: Any, opts: dict[str, Any]
) -> None:
    client = strego.Client(backend)
    if isinstance(opts.get("id"), str):
        opts["id"] = f"{opts['id']}{uuid.uuid4().hex[:8]}"  # unique per example
    before = await snapshot(backend)
    try:
        task = strego.Task(task_type, payload, **opts)
        info = await client.enqueue(task)
    except StregoError as exc:
        event(f"refused: {type(exc).__name__}")
        assert await snapshot(backend) == before
        if isinstance(opts.get("id"), str):
            assert await backend.get_task(opts["id"]) is None
        return
    event("accepted")
    expected = client.message(task).payload  # what was serialized
    assert info.payload == expected
    queue = task.queue
    consumer = f"c{uuid.uuid4().hex[:6]}"

    async def take() -> strego.TaskInfo:
        for _ in range(100):
            got = [t for t in await backend.fetch([queue], 100, consumer, lease_ms=LEASE_MS)]
            mine = [t for t in got if t.id == info.id]
            for other in got:
                if other.id != info.id:
                    await backend.ack(queue, other.id, consumer)
            if mine:
                return mine[0]
            # not due yet: move the clock to its due time (process_in may be years away)
            now = await backend.get_task(info.id, queue)
            due = now.next_run_ms if now is not None and now.next_run_ms is not None else 0
            CLOCK.advance(max(1000, due - CLOCK()))
            await backend.promote([queue])
        raise AssertionError("the task never came back")

    first = await take()
    assert (first.type, first.payload, first.labels) == (task.type, expected, task.labels)
    state = await backend.fail(queue, info.id, consumer, "boom", retry_in_ms=1)
    if state is TaskState.RETRY:
        second = await take()
        assert second.payload == expected
        await backend.fail(queue, info.id, consumer, "boom", retry_in_ms=None)
    assert await backend.requeue_dead(queue, info.id)
    third = await take()
    assert third.payload == expected and third.retried == 0
    if first.encoding == "json":  # what a handler gets decodes to the same value
        assert json.loads(third.payload) == json.loads(expected)
    assert await backend.ack(queue, info.id, consumer)
