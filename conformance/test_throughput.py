"""throughput: completed, failed (to retry) and dead tasks per queue and minute, counted by the
transitions themselves, per task type too, kept for `stats_retention_ms`."""

from __future__ import annotations

import anyio
import pytest

from conformance.clock import FakeClock
from conformance.conftest import SHORT_STATS_RETENTION_MS
from conformance.helpers import LEASE_MS, message, start
from strego.backends.base import MAX_MINUTES, MINUTE_MS, Backend, MinuteCount
from strego.errors import InvalidTaskError
from strego.task import TaskState

pytestmark = pytest.mark.anyio


def minute(ms: int) -> int:
    return ms - ms % MINUTE_MS


def counts(history: list[MinuteCount]) -> list[tuple[int, int, int]]:
    return [(m.completed, m.failed, m.dead) for m in history]


async def test_an_idle_queue_has_minutes_of_zeros_ending_with_the_current_one(
    backend: Backend, clock: FakeClock
) -> None:
    clock.advance(12_345)  # mid-minute
    history = await backend.throughput("nothing-here", minutes=3)
    now_minute = minute(clock())
    assert [m.minute_ms for m in history] == [
        now_minute - 2 * MINUTE_MS,
        now_minute - MINUTE_MS,
        now_minute,
    ]
    assert counts(history) == [(0, 0, 0)] * 3
    assert len(await backend.throughput("q")) == 60  # the default: the last hour


@pytest.mark.parametrize("minutes", [0, -1, MAX_MINUTES + 1, True, 2.0, "5"])
async def test_a_length_outside_1_to_1440_is_refused(backend: Backend, minutes: object) -> None:
    with pytest.raises(InvalidTaskError):
        await backend.throughput("q", minutes=minutes)  # type: ignore[arg-type]


async def test_the_longest_history_is_a_day(backend: Backend, clock: FakeClock) -> None:
    await start(backend, "a")
    assert await backend.ack("q", "a", "c1")
    history = await backend.throughput("q", minutes=MAX_MINUTES)
    assert len(history) == MAX_MINUTES
    assert history[-1].minute_ms == minute(clock())
    assert history[0].minute_ms == minute(clock()) - (MAX_MINUTES - 1) * MINUTE_MS
    assert counts(history)[-1] == (1, 0, 0)
    assert sum(m.completed for m in history) == 1


async def test_counts_are_the_real_outcomes(backend: Backend, clock: FakeClock) -> None:
    # minute 1: two completed (ack, ack_many), a second ack of one of them counts nothing, one
    # failure to retry, one to dead because its retries are used up, one to dead asked for
    await start(backend, "ok1")
    assert await backend.ack("q", "ok1", "c1")
    assert not await backend.ack("q", "ok1", "c1")
    await start(backend, "ok2")
    assert await backend.ack_many([("q", "ok2"), ("q", "ok1"), ("q", "ghost")], "c1") == [
        True,
        False,
        False,
    ]
    await start(backend, "again")
    assert await backend.fail("q", "again", "c1", "x", retry_in_ms=1_000) == TaskState.RETRY
    assert await backend.fail("q", "again", "c1", "x", retry_in_ms=1_000) is None  # not active
    await start(backend, "spent", max_retry=0)
    assert await backend.fail("q", "spent", "c1", "x", retry_in_ms=1_000) == TaskState.DEAD
    await start(backend, "fatal")
    assert await backend.fail("q", "fatal", "c1", "x", retry_in_ms=None) == TaskState.DEAD
    first = minute(clock())

    # minute 2: the retried task completes; a task whose consumer died goes to dead by claim
    clock.advance(MINUTE_MS)
    await backend.promote(["q"])
    got = await backend.fetch(["q"], 1, "c2", lease_ms=LEASE_MS)
    assert [t.id for t in got] == ["again"]
    assert await backend.ack("q", "again", "c2")
    await start(backend, "orphan")
    clock.advance(LEASE_MS)
    assert await backend.claim_stale(["q"], "c2", 10, lease_ms=LEASE_MS, max_deliveries=1) == []
    assert (await backend.get_task("orphan", "q")).state == TaskState.DEAD  # type: ignore[union-attr]
    second = minute(clock())
    assert second == first + 2 * MINUTE_MS  # the lease ran into a third minute

    history = await backend.throughput("q", minutes=4)
    assert [m.minute_ms for m in history] == [first - MINUTE_MS, first, first + MINUTE_MS, second]
    assert counts(history) == [(0, 0, 0), (2, 1, 2), (1, 0, 0), (0, 0, 1)]
    # another queue counts nothing of it
    assert counts(await backend.throughput("other", minutes=4)) == [(0, 0, 0)] * 4


async def test_a_claimed_task_counts_once_when_it_completes(
    backend: Backend, clock: FakeClock
) -> None:
    await start(backend, "slow")
    clock.advance(LEASE_MS)
    claimed = await backend.claim_stale(["q"], "c2", 10, lease_ms=LEASE_MS, max_deliveries=5)
    assert [t.id for t in claimed] == ["slow"]
    # the first holder's ack completes it; the second's counts nothing
    assert await backend.ack("q", "slow", "c1")
    assert not await backend.ack("q", "slow", "c2")
    assert counts(await backend.throughput("q", minutes=1)) == [(1, 0, 0)]


async def test_counts_per_task_type(backend: Backend, clock: FakeClock) -> None:
    # types that a naive field encoding would confuse: a prefix of another, digits, separators
    types = ["send", "send:1c", "1", "e\u00e9 <x>"]
    for i, task_type in enumerate(types):
        for j in range(i + 1):
            await start(backend, f"{i}-{j}", task_type=task_type)
            assert await backend.ack("q", f"{i}-{j}", "c1")
    await start(backend, "f", task_type="send")
    assert await backend.fail("q", "f", "c1", "x", retry_in_ms=5_000) == TaskState.RETRY
    await start(backend, "d", task_type="1")
    assert await backend.fail("q", "d", "c1", "x", retry_in_ms=None) == TaskState.DEAD

    assert counts(await backend.throughput("q", minutes=2)) == [(0, 0, 0), (10, 1, 1)]
    assert counts(await backend.throughput("q", minutes=1, task_type="send")) == [(1, 1, 0)]
    assert counts(await backend.throughput("q", minutes=1, task_type="send:1c")) == [(2, 0, 0)]
    assert counts(await backend.throughput("q", minutes=1, task_type="1")) == [(3, 0, 1)]
    assert counts(await backend.throughput("q", minutes=1, task_type="e\u00e9 <x>")) == [(4, 0, 0)]
    assert counts(await backend.throughput("q", minutes=1, task_type="nope")) == [(0, 0, 0)]


async def test_concurrent_acks_are_each_counted(backend: Backend, clock: FakeClock) -> None:
    await backend.enqueue_many([message(f"t{i}") for i in range(60)])
    got = await backend.fetch(["q"], 60, "c1", lease_ms=LEASE_MS)
    assert len(got) == 60

    async def ack_some(ids: list[str]) -> None:
        assert all(await backend.ack_many([("q", i) for i in ids], "c1"))

    async with anyio.create_task_group() as tg:
        for k in range(6):
            tg.start_soon(ack_some, [t.id for t in got[k::6]])
    assert counts(await backend.throughput("q", minutes=1)) == [(60, 0, 0)]


async def test_a_minute_ends_at_its_last_millisecond(backend: Backend, clock: FakeClock) -> None:
    clock.advance(MINUTE_MS - 1 - clock() % MINUTE_MS)  # the last ms of a minute
    await start(backend, "a")
    assert await backend.ack("q", "a", "c1")
    clock.advance(1)  # the next minute
    await start(backend, "b")
    assert await backend.ack("q", "b", "c1")
    assert counts(await backend.throughput("q", minutes=3)) == [(0, 0, 0), (1, 0, 0), (1, 0, 0)]


async def test_minutes_past_the_retention_window_read_as_zero(
    short_stats_backend: Backend, clock: FakeClock
) -> None:
    backend = short_stats_backend
    start_minute = minute(clock())
    clock.advance(start_minute + 30_000 - clock())
    await start(backend, "old", task_type="t")
    assert await backend.ack("q", "old", "c1")
    window = SHORT_STATS_RETENTION_MS // MINUTE_MS  # five minutes

    # kept while the minute's start is less than the retention ago
    clock.advance(start_minute + SHORT_STATS_RETENTION_MS - 1 - clock())
    history = await backend.throughput("q", minutes=window)
    assert history[0].minute_ms == start_minute
    assert counts(history)[0] == (1, 0, 0)
    assert counts(await backend.throughput("q", minutes=window, task_type="t"))[0] == (1, 0, 0)

    # then dropped, with no other call in between
    clock.advance(1)
    history = await backend.throughput("q", minutes=window + 1)
    assert history[0].minute_ms == start_minute
    assert counts(history) == [(0, 0, 0)] * (window + 1)
    assert counts(await backend.throughput("q", minutes=10, task_type="t")) == [(0, 0, 0)] * 10

    # new counts after it (which prune the old minutes) start afresh; the old ones stay gone
    for i in range(3):
        await start(backend, f"new{i}", task_type="t")
        assert await backend.fail("q", f"new{i}", "c1", "x", retry_in_ms=None) == TaskState.DEAD
        clock.advance(MINUTE_MS)
    history = await backend.throughput("q", minutes=MAX_MINUTES)
    assert sum(m.completed for m in history) == 0
    assert counts(history)[-4:] == [(0, 0, 1), (0, 0, 1), (0, 0, 1), (0, 0, 0)]
    history = await backend.throughput("q", minutes=MAX_MINUTES, task_type="t")
    assert (sum(m.completed for m in history), sum(m.dead for m in history)) == (0, 3)

    # long after, everything has left the window
    clock.advance(SHORT_STATS_RETENTION_MS)
    assert counts(await backend.throughput("q", minutes=MAX_MINUTES)) == [(0, 0, 0)] * MAX_MINUTES
