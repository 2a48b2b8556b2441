"""When periodic ticks fall (strego/cron.py) and what the periodic loop fires (strego/periodic.py),
on a fake clock: daylight saving time in two zones both ways, as Debian's cron does it; three
missed ticks under each catch-up policy; a schedule's definition checked before anything is
written."""

from __future__ import annotations

from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

import strego
from conformance.clock import FakeClock
from strego.backends.memory import MemoryBackend
from strego.cron import MAX_CATCHUP, Step, Ticks, plan
from strego.errors import InvalidScheduleError
from strego.periodic import Periodic
from strego.task import TaskState

pytestmark = pytest.mark.anyio

MINUTE = 60_000


def ms(text: str, tz: str) -> int:
    """Epoch ms of a local time ("2026-03-29 01:00") in zone `tz` (the first of two, in a fold)."""
    return int(datetime.fromisoformat(text).replace(tzinfo=ZoneInfo(tz)).timestamp() * 1000)


def local(tick_ms: int, tz: str) -> str:
    return datetime.fromtimestamp(tick_ms / 1000, ZoneInfo(tz)).strftime("%m-%d %H:%M %Z")


# -- ticks ------------------------------------------------------------------------------------


def test_interval_ticks_are_whole_multiples_since_the_epoch() -> None:
    ticks = Ticks.parse(timedelta(seconds=5))
    assert ticks.spec == "every 5000ms"
    assert ticks.after(12_345) == 15_000
    assert ticks.after(15_000) == 20_000
    assert ticks.at_or_before(15_000) == 15_000
    assert ticks.at_or_before(19_999) == 15_000
    assert ticks.due(5_000, 21_000, 10) == [5_000, 10_000, 15_000, 20_000]
    assert ticks.due(5_000, 21_000, 2) == [15_000, 20_000]


def test_cron_ticks_after_and_at_or_before() -> None:
    ticks = Ticks.parse("*/15  * * * *")
    assert ticks.spec == "*/15 * * * *"
    t = ms("2026-05-01 10:15", "UTC")
    assert ticks.after(t) == t + 15 * MINUTE
    assert ticks.after(t - 1) == t
    assert ticks.at_or_before(t) == t
    assert ticks.at_or_before(t - 1) == t - 15 * MINUTE
    assert ticks.due(t - 30 * MINUTE, t + MINUTE, 10) == [t - 30 * MINUTE, t - 15 * MINUTE, t]


@pytest.mark.parametrize(
    ("schedule", "tz"),
    [
        ("61 * * * *", "UTC"),
        ("* * *", "UTC"),
        ("every 5ms", "UTC"),
        ("* * * * *", "Nowhere/City"),
        (timedelta(0), "UTC"),
        (timedelta(microseconds=1500), "UTC"),
        (timedelta(seconds=-1), "UTC"),
        (5, "UTC"),
    ],
)
def test_invalid_schedules_are_refused(schedule: object, tz: str) -> None:
    with pytest.raises(InvalidScheduleError):
        Ticks.parse(schedule, tz)  # type: ignore[arg-type]


# -- catch-up plans ---------------------------------------------------------------------------


def test_nothing_is_planned_before_the_tick() -> None:
    assert plan(Ticks.parse(timedelta(seconds=1)), "latest", 5_000, 4_999) == []


@pytest.mark.parametrize(
    ("catchup", "expected"),
    [
        ("latest", [Step(3_000, True, 4_000)]),
        ("all", [Step(1_000, True, 2_000), Step(2_000, True, 3_000), Step(3_000, True, 4_000)]),
        ("none", [Step(3_000, False, 4_000)]),
    ],
)
def test_three_missed_interval_ticks(catchup: str, expected: list[Step]) -> None:
    # next tick 1 s; found at 3.6 s: ticks 1, 2 and 3 s are due, the latest 0.6 s late
    assert plan(Ticks.parse(timedelta(seconds=1)), catchup, 1_000, 3_600) == expected  # type: ignore[arg-type]


def test_none_fires_a_tick_found_on_time() -> None:
    ticks = Ticks.parse(timedelta(seconds=1))
    assert plan(ticks, "none", 1_000, 1_400) == [Step(1_000, True, 2_000)]
    assert plan(ticks, "none", 1_000, 1_600) == [Step(1_000, False, 2_000)]
    # a daily job's grace is a minute, not half a day
    daily = Ticks.parse("0 3 * * *")
    three = ms("2026-05-01 03:00", "UTC")
    assert plan(daily, "none", three, three + 59_000)[0].fire
    assert not plan(daily, "none", three, three + 61_000)[0].fire


def test_all_is_bounded_to_the_latest_ticks() -> None:
    steps = plan(Ticks.parse(timedelta(seconds=1)), "all", 1_000, 1_000 + 150_000)
    assert len(steps) == MAX_CATCHUP
    assert steps[0].tick_ms == 52_000
    assert steps[-1] == Step(151_000, True, 152_000)


# -- the loop on a fake clock -----------------------------------------------------------------


def define(
    backend: MemoryBackend, schedule: str | timedelta, tz: str = "UTC", catchup: str = "latest"
) -> Periodic:
    server = strego.Server(backend)
    d = server.cron(schedule, strego.Task("tick"), id="s", tz=tz, catchup=catchup)  # type: ignore[arg-type]
    return Periodic(backend, [d], max_sleep=3600.0)


async def walk(clock: FakeClock, periodic: Periodic, until_ms: int, step_ms: int) -> list[int]:
    """Run the loop's passes while the clock moves on by `step_ms`; returns the ticks fired."""
    await periodic.put_definitions()
    while clock() < until_ms:
        clock.advance(step_ms)
        await periodic.fire_due()
    pending = await periodic.backend.list_tasks("default", TaskState.PENDING, limit=1000)
    return sorted(int(t.id.split(":")[1]) for t in pending.tasks)


DST = [
    # spring forward: 02:00-03:00 does not exist; a job in the gap runs as the gap ends (Debian)
    pytest.param(
        "Europe/Berlin", "30 2 * * *", "2026-03-28 00:00", "2026-03-31 00:00",
        ["03-28 02:30 CET", "03-29 03:00 CEST", "03-30 02:30 CEST"], id="berlin-spring",
    ),
    pytest.param(
        "America/New_York", "30 2 * * *", "2026-03-07 00:00", "2026-03-10 00:00",
        ["03-07 02:30 EST", "03-08 03:00 EDT", "03-09 02:30 EDT"], id="new-york-spring",
    ),
    # fall back: 02:00-03:00 (Berlin), 01:00-02:00 (New York) happen twice; a fixed-time job runs
    # once, a wildcard one in each real hour
    pytest.param(
        "Europe/Berlin", "30 2 * * *", "2026-10-24 00:00", "2026-10-27 00:00",
        ["10-24 02:30 CEST", "10-25 02:30 CEST", "10-26 02:30 CET"], id="berlin-fall",
    ),
    pytest.param(
        "America/New_York", "30 1 * * *", "2026-10-31 00:00", "2026-11-03 00:00",
        ["10-31 01:30 EDT", "11-01 01:30 EDT", "11-02 01:30 EST"], id="new-york-fall",
    ),
    pytest.param(
        "America/New_York", "0 * * * *", "2026-11-01 00:30", "2026-11-01 03:30",
        ["11-01 01:00 EDT", "11-01 01:00 EST", "11-01 02:00 EST", "11-01 03:00 EST"],
        id="new-york-fall-hourly",
    ),
    pytest.param(
        "Europe/Berlin", "0 * * * *", "2026-03-29 00:30", "2026-03-29 04:30",
        ["03-29 01:00 CET", "03-29 03:00 CEST", "03-29 04:00 CEST"], id="berlin-spring-hourly",
    ),
]  # fmt: skip


@pytest.mark.parametrize(("tz", "expr", "start", "end", "expected"), DST)
async def test_daylight_saving_time(
    tz: str, expr: str, start: str, end: str, expected: list[str]
) -> None:
    clock = FakeClock(ms(start, tz))
    backend = MemoryBackend(clock=clock)
    periodic = define(backend, expr, tz=tz)
    fired = await walk(clock, periodic, ms(end, tz), 5 * MINUTE)
    assert [local(t, tz) for t in fired] == expected
    assert periodic.fired == len(expected)


@pytest.mark.parametrize(
    ("catchup", "fired_at_return"),
    [("latest", [3]), ("all", [1, 2, 3]), ("none", [])],
)
@pytest.mark.parametrize("every", ["interval", "cron"])
async def test_three_missed_ticks(catchup: str, fired_at_return: list[int], every: str) -> None:
    """No server ran through ticks 1, 2 and 3 (of a one-minute schedule): on return the loop
    fires what the policy says, then the next tick on time, each once."""
    start = ms("2026-05-01 10:00", "UTC")
    clock = FakeClock(start)
    backend = MemoryBackend(clock=clock)
    schedule = timedelta(minutes=1) if every == "interval" else "* * * * *"
    periodic = define(backend, schedule, catchup=catchup)
    await periodic.put_definitions()
    clock.advance(3 * MINUTE + 40_000)  # the servers come back: tick 3 is 40 s old
    await periodic.fire_due()
    await periodic.fire_due()  # a second pass (another server) fires nothing more
    client = strego.Client(backend)
    [info] = await client.schedules()
    assert info.next_ms == start + 4 * MINUTE
    clock.advance(20_000)  # tick 4, on time
    await periodic.fire_due()
    pending = await backend.list_tasks("default", TaskState.PENDING)
    fired = sorted((int(t.id.split(":")[1]) - start) // MINUTE for t in pending.tasks)
    assert fired == [*fired_at_return, 4]
    [info] = await client.schedules()
    assert (info.last_fire_ms, info.last_task_id) == (start + 4 * MINUTE, f"s:{start + 4 * MINUTE}")


async def test_a_later_definition_replaces_the_stored_one_from_now() -> None:
    clock = FakeClock(ms("2026-05-01 10:00:30", "UTC"))
    backend = MemoryBackend(clock=clock)
    await define(backend, timedelta(minutes=1)).put_definitions()
    changed = define(backend, "*/5 * * * *")
    await changed.put_definitions()
    [info] = await strego.Client(backend).schedules()
    assert (info.revision, info.definition.spec) == (2, "*/5 * * * *")
    assert info.next_ms == ms("2026-05-01 10:05", "UTC")


def test_server_cron_refuses_invalid_input_before_writing() -> None:
    backend = MemoryBackend()
    server = strego.Server(backend)
    task = strego.Task("tick")
    with pytest.raises(InvalidScheduleError):
        server.cron("* * * * *", task, id="has:colon")
    with pytest.raises(InvalidScheduleError):
        server.cron("* * * * *", strego.Task("tick", id="fixed"), id="s")
    with pytest.raises(InvalidScheduleError):
        server.cron("* * * * *", strego.Task("tick", unique_key="k", unique_ttl=5), id="s")
    with pytest.raises(InvalidScheduleError):
        server.cron("* * * * *", strego.Task("tick", process_in=5), id="s")
    with pytest.raises(InvalidScheduleError):
        server.cron("* * * * *", task, id="s", catchup="sometimes")  # type: ignore[arg-type]
    with pytest.raises(InvalidScheduleError):
        server.cron("* * * * *", "tick", id="s")  # type: ignore[arg-type]
    server.cron("* * * * *", task, id="s")
    with pytest.raises(InvalidScheduleError):
        server.cron(timedelta(seconds=1), task, id="s")
    assert list(server.schedules) == ["s"]
    assert backend._schedules == {}
