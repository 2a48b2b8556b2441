"""Periodic schedules in running servers, on every backend under asyncio and trio: ticks fired
once each by two servers with no leader, listed by `Client.schedules()`; a schedule removed or
changed while the servers run."""

from __future__ import annotations

from collections import Counter
from datetime import timedelta

import anyio.lowlevel
import pytest

import strego
from strego.backends.base import Backend
from strego.task import TaskState
from tests.runtime_support import ON_EVERY_BACKEND, backend, eventually, make_server

__all__ = ["backend"]  # the fixture, imported for pytest

pytestmark = [
    pytest.mark.anyio,
    ON_EVERY_BACKEND,
]

EVERY = timedelta(milliseconds=100)


def ticking_server(
    backend: Backend, runs: Counter[str], *schedules: tuple[str, object]
) -> strego.Server:
    server = make_server(backend, concurrency=4)

    @server.handler("tick")
    async def tick(task: strego.Task) -> None:
        runs[task.id] += 1

    for schedule_id, every in schedules:
        # "all": a loaded machine that stalls both servers past a tick fires it late, not never,
        # so "no tick skipped" below holds however slow the machine
        server.cron(every, strego.Task("tick"), id=schedule_id, catchup="all")  # type: ignore[arg-type]
    return server


def ticks_of(runs: Counter[str], schedule_id: str) -> list[int]:
    """The ticks of a schedule whose task ran."""
    return sorted(int(i.split(":")[1]) for i in runs if i.split(":")[0] == schedule_id)


async def fired(backend: Backend, schedule_id: str) -> list[int]:
    """The ticks of a schedule whose task was enqueued (run or not yet: a tick fired late may run
    after a later one)."""
    ids: list[str] = []
    for state in (TaskState.PENDING, TaskState.ACTIVE, TaskState.COMPLETED):
        ids += [t.id for t in (await backend.list_tasks("default", state, limit=1000)).tasks]
    return sorted(int(i.split(":")[1]) for i in ids if i.split(":")[0] == schedule_id)


async def test_two_servers_fire_each_tick_once(backend: Backend) -> None:
    runs: Counter[str] = Counter()
    a = ticking_server(backend, runs, ("t", EVERY))
    b = ticking_server(backend, runs, ("t", EVERY))
    async with a, b:
        await eventually(lambda: len(runs) >= 6, "six ticks")
    assert a.periodic is not None and b.periodic is not None
    ticks = await fired(backend, "t")
    # consecutive ticks, none skipped, on whole multiples of the interval, each run once
    assert all(t % 100 == 0 for t in ticks)
    assert ticks == list(range(ticks[0], ticks[-1] + 1, 100))
    assert set(ticks_of(runs, "t")) <= set(ticks)
    assert set(runs.values()) == {1}, runs
    assert a.periodic.fired + b.periodic.fired == len(ticks)
    [info] = await strego.Client(backend).schedules()
    assert info.id == "t"
    assert info.definition.spec == "every 100ms"
    assert info.last_fire_ms == ticks[-1]
    assert info.last_task_id == f"t:{ticks[-1]}"
    assert info.next_ms == ticks[-1] + 100


async def test_a_schedule_removed_or_changed_while_servers_run(backend: Backend) -> None:
    """`marker` ticks throughout, so "nothing fired" is judged after ticks that did fire."""
    runs: Counter[str] = Counter()
    client = strego.Client(backend)
    a = ticking_server(backend, runs, ("s", EVERY), ("marker", EVERY))
    b = ticking_server(backend, runs, ("s", EVERY), ("marker", EVERY))
    async with a, b:
        await eventually(lambda: len(ticks_of(runs, "s")) >= 3, "three ticks of s")

        # removed: no tick after the removal, on either server (the one seen next just before
        # it may have fired in between, no later one)
        [seen] = [i for i in await client.schedules() if i.id == "s"]
        assert await client.remove_schedule("s") is True
        await eventually(lambda: max(ticks_of(runs, "marker")) >= seen.next_ms + 500, "markers")
        before = await fired(backend, "s")
        assert before == list(range(before[0], before[-1] + 1, 100))
        assert before[-1] <= seen.next_ms
        assert [i.id for i in await client.schedules()] == ["marker"]

        # changed (a third server defines it anew, every 300 ms): the running ones follow
        c = ticking_server(backend, runs, ("s", timedelta(milliseconds=300)), ("marker", EVERY))
        async with c:
            await eventually(lambda: len(ticks_of(runs, "s")) >= len(before) + 4, "new ticks")
        changed = [s for s in await client.schedules() if s.id == "s"]
        assert changed[0].revision == 1  # removed, then stored anew
        assert changed[0].definition.spec == "every 300ms"
    after = [t for t in await fired(backend, "s") if t > before[-1]]
    assert len(after) >= 4
    assert all(t % 300 == 0 for t in after), after
    assert after == list(range(after[0], after[-1] + 1, 300))
    assert set(runs.values()) == {1}, runs


async def test_a_server_without_schedules_fires_stored_ones_when_asked(backend: Backend) -> None:
    runs: Counter[str] = Counter()
    definer = ticking_server(backend, runs, ("t", EVERY))
    async with definer:
        await eventually(lambda: len(runs) >= 1, "a tick")
    definer_ticks = len(runs)
    plain = make_server(backend)
    assert plain.fire_schedules is None
    firer = make_server(backend, fire_schedules=True)

    @firer.handler("tick")
    async def tick(task: strego.Task) -> None:
        runs[task.id] += 1

    async with plain:
        await anyio.lowlevel.checkpoint()
    assert plain.periodic is None
    async with firer:
        await eventually(lambda: len(runs) >= definer_ticks + 3, "ticks fired by the other")
    assert firer.periodic is not None and firer.periodic.fired >= 1
    assert set(runs.values()) == {1}
