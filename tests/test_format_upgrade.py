"""Data written by record format v1 (strego at fce8a0c, tests/fixtures/format_v1/generate.py)
is read and served by today's code with no migration: every task reads as it did then, every
transition works on it, and nothing is lost."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import attrs
import pytest
import redis

from conformance.clock import FakeClock
from conformance.helpers import list_all
from strego.backends.redis import RedisBackend
from strego.task import TaskInfo, TaskState

pytestmark = [pytest.mark.anyio, pytest.mark.redis]

FIXTURE = json.loads((Path(__file__).parent / "fixtures/format_v1/data.json").read_text())
IDS: dict[str, str] = FIXTURE["ids"]
QUEUES = ("q", "work", "held")
LEASE_MS = 60_000


def restore(url: str) -> None:
    """Every key of the fixture, as DUMPed by the v1 code, into an empty database."""
    client = redis.Redis.from_url(url)
    try:
        for key, value in FIXTURE["keys"].items():
            ttl = max(value["pttl"], 0)
            client.restore(key, ttl, bytes.fromhex(value["dump"]), replace=True)
    finally:
        client.close()


def as_fixture(info: TaskInfo) -> dict[str, Any]:
    """A TaskInfo as generate.py wrote it (bytes in hex, the state's value)."""
    out = attrs.asdict(info)
    out["payload"] = info.payload.hex()
    out["state"] = info.state.value
    return out


#: TaskInfo fields added since v1, as a v1 record reads: none of them set
ADDED_SINCE = {"result": None, "result_ttl_ms": None, "error": None, "cancel_requested": False}


def expected_of(name: str) -> dict[str, Any]:
    """What the v1 code read, with the one field renamed since: the end time of an ended task
    was `next_run_ms`, it is `ended_ms` now (next_run_ms is a waiting task's due time only);
    and the fields added since, at their defaults (`headers` empty for a task written without)."""
    out = dict(FIXTURE["expected"][name], headers={})
    ended = out["state"] in ("dead", "completed", "cancelled")
    out["ended_ms"] = out["next_run_ms"] if ended else None
    if ended:
        out["next_run_ms"] = None
    return out | ADDED_SINCE


@pytest.fixture
async def backend(clean_redis_url: str) -> Any:
    restore(clean_redis_url)
    clock = FakeClock(FIXTURE["now_ms"])
    # retention long enough that the hours the test moves the clock on end none
    b = RedisBackend.from_url(
        clean_redis_url, prefix=FIXTURE["prefix"], clock=clock, completed_ttl_ms=86_400_000
    )
    try:
        yield b
    finally:
        await b.aclose()


async def test_every_task_reads_as_it_did(backend: RedisBackend) -> None:
    for name, task_id in IDS.items():
        info = await backend.get_task(task_id)
        if name == "unreadable":
            assert info is None  # its header does not parse: not shown as a task
            continue
        assert info is not None, name
        assert as_fixture(info) == expected_of(name), name
    for queue in QUEUES:
        info = await backend.queue_info(queue)
        read = attrs.asdict(info)
        # a field the v1 code did not have: the age of the oldest pending task, by its stream
        # entry (whose id v1 wrote too), None exactly when nothing is pending
        age = read.pop("oldest_pending_age_ms")
        assert (age is None) == (info.counts[TaskState.PENDING] == 0), queue
        del read["ended_last_minute"]  # added since
        assert read == FIXTURE["queue_info"][queue]
    # listings show the same tasks, field for field
    for queue in QUEUES:
        for state in TaskState:
            for task in await list_all(backend, queue, state):
                name = next(n for n, i in IDS.items() if i == task.id)
                assert as_fixture(task) == expected_of(name), name


async def test_every_transition_runs_on_v1_data_and_nothing_is_lost(
    backend: RedisBackend,
) -> None:
    clock: FakeClock = backend.clock  # type: ignore[assignment]
    # pending tasks of "q" are fetched highest priority first; the unreadable one is buried
    got = await backend.fetch(["q"], 100, "new-worker", lease_ms=LEASE_MS)
    assert [t.id for t in got] == [
        IDS["custom_id"],
        IDS["options"],
        IDS["fresh"],
        IDS["raw_bytes"],
        IDS["empty_encoding"],
    ]
    by_id = {t.id: t for t in got}
    assert by_id[IDS["raw_bytes"]].payload == bytes(range(256)) + b";,\x00"
    assert by_id[IDS["raw_bytes"]].encoding == "raw"
    assert by_id[IDS["empty_encoding"]].encoding == ""
    opts = by_id[IDS["options"]]
    assert (opts.priority, opts.max_retry, opts.timeout_ms, opts.unique_key) == (
        7, 9, 45_000, "report:42"
    )  # fmt: skip
    assert opts.labels == {"tenant": "acme", "ü": "x,y;z"}
    dead = await list_all(backend, "q", TaskState.DEAD)
    assert [t.id for t in dead] == [IDS["unreadable"]]
    assert dead[0].last_error is not None and "unreadable" in dead[0].last_error
    # ack, fail to retry, fail to dead
    assert await backend.ack("q", IDS["fresh"], "new-worker")
    assert await backend.ack("q", IDS["options"], "new-worker")  # releases its unique key
    assert await backend.fail("q", IDS["raw_bytes"], "new-worker", "x", retry_in_ms=1000) is (
        TaskState.RETRY
    )
    assert await backend.fail("q", IDS["empty_encoding"], "new-worker", "x", retry_in_ms=None) is (
        TaskState.DEAD
    )
    assert await backend.release("q", [IDS["custom_id"]], "new-worker") == 1
    # the v1 active task: its lease runs out and another consumer claims it, then acks it
    clock.advance(LEASE_MS + 1)
    claimed = await backend.claim_stale(["work"], "claimer", 10, lease_ms=LEASE_MS,
                                        max_deliveries=10)  # fmt: skip
    assert [t.id for t in claimed] == [IDS["active"]]
    assert claimed[0].deliveries == 2 and claimed[0].labels == {"kind": "active"}
    assert await backend.ack("work", IDS["active"], "claimer")
    # the scheduled and retry tasks come due and run
    clock.advance(3_600_000)
    await backend.promote(list(QUEUES))
    got = await backend.fetch(["q", "work"], 100, "w2", lease_ms=LEASE_MS)
    assert {t.id for t in got} == {
        IDS["scheduled"], IDS["retry"], IDS["raw_bytes"], IDS["custom_id"]
    }  # fmt: skip
    for t in got:
        assert await backend.ack(t.queue, t.id, "w2")
    # the paused queue, resumed, serves its v1 task
    await backend.resume("held")
    got = await backend.fetch(["held"], 10, "w3", lease_ms=LEASE_MS)
    assert [t.id for t in got] == [IDS["paused_pending"]]
    # dead tasks requeue and run
    assert await backend.requeue_all_dead("work") == 2
    got = await backend.fetch(["work"], 10, "w3", lease_ms=LEASE_MS)
    assert {t.id for t in got} == {IDS["dead"], IDS["dead_retried"]}
    # nothing lost: every task is in one defined state, and the counts add up
    seen: dict[str, TaskState] = {}
    for queue in QUEUES:
        counts = (await backend.queue_info(queue)).counts
        for state in TaskState:
            listed = await list_all(backend, queue, state)
            assert len(listed) == counts[state], (queue, state)
            for t in listed:
                assert t.id not in seen
                seen[t.id] = t.state
    assert set(seen) == set(IDS.values())
    assert seen[IDS["unreadable"]] is TaskState.DEAD
    assert seen[IDS["cancelled"]] is TaskState.CANCELLED
    assert seen[IDS["completed"]] is TaskState.COMPLETED
    assert seen[IDS["paused_pending"]] is TaskState.ACTIVE
