"""The Lua scripts: each has its KEYS/ARGV header, touches only keys handed to it in KEYS (watched
with MONITOR on a real redis-server), and survives SCRIPT FLUSH (NOSCRIPT -> load -> retry)."""

from __future__ import annotations

import asyncio
import re
import uuid
from collections.abc import AsyncIterator
from importlib import resources
from typing import Any

import pytest
import redis.asyncio

from conformance.clock import FakeClock
from conformance.helpers import LEASE_MS, message
from strego.backends.base import FireResult, ScheduleDefinition
from strego.backends.cursor import encode_cursor
from strego.backends.redis import RedisBackend
from strego.backends.redis.keys import HISTORY_SCRIPTS, SCRIPT_KEYS, STREAMS, Keys
from strego.backends.redis.scripts import NAMES, _compact, _expand, script, source
from strego.history.events import RedisHistorySource
from strego.task import TaskState

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # redis-py runs on asyncio only


def _lua_files() -> list[str]:
    root = resources.files("strego.lua")
    return sorted(p.name[: -len(".lua")] for p in root.iterdir() if p.name.endswith(".lua"))


def test_every_script_file_is_loaded() -> None:
    assert sorted(NAMES) == _lua_files()


def _header(name: str) -> str:
    lines = []
    for line in source(name).splitlines():
        if not line.startswith("--") or line.startswith("--#include"):
            break
        lines.append(line)
    return "\n".join(lines)


@pytest.mark.parametrize("name", NAMES)
def test_script_header_lists_keys_and_argv(name: str) -> None:
    text = _header(name)
    assert re.match(rf"-- {name}\b", text), "the first line names the transition"
    assert "-- ARGV:" in text
    # the header's KEYS are the table's, in its order (keys declared once: SCRIPT_KEYS)
    described = re.search(r"-- KEYS:(.*?)-- ARGV:", text, re.S)
    assert described is not None, "the header lists the KEYS"
    names = [n.strip() for n in described.group(1).replace("--", " ").split(",")]
    assert tuple(names) == SCRIPT_KEYS[name]


@pytest.mark.parametrize("name", NAMES)
def test_scripts_use_keys_by_name_and_streams_at_one_place(name: str) -> None:
    """Every key a script names is in its row of SCRIPT_KEYS; the only KEYS it indexes are the
    priority streams, at KEYS[1 + priority] in every script (1..11 in peek's loop over them)."""
    body = _compact(_expand(source(name), set()))
    named = set(re.findall(r"\bK\.(\w+)", body))
    # (a script that takes only the streams names them as KEYS[i], below)
    assert named or SCRIPT_KEYS[name] == (STREAMS,), "every key comes from KEYS"
    assert named <= set(SCRIPT_KEYS[name]) - {STREAMS}
    for index in re.findall(r"KEYS\[([^\]]+)\]", body):
        assert STREAMS in SCRIPT_KEYS[name], f"{name} indexes KEYS[{index}] without streams"
        assert index == "i" or re.fullmatch(r"1( \+ .+)?", index), index


def test_streams_come_first_in_every_row() -> None:
    """The loader numbers a script's named keys from 12 when it takes the streams: only true
    when they are its first KEYS."""
    for name, kinds in SCRIPT_KEYS.items():
        assert STREAMS not in kinds[1:], name


def test_loaded_scripts_name_their_keys_at_their_place() -> None:
    assert script("renew").source.startswith(
        "local K = {tasks = KEYS[1], leases = KEYS[2], consumers = KEYS[3]}\n"
    )
    assert script("ack").source.startswith("local K = {tasks = KEYS[12], leases = KEYS[13],")


def test_call_sites_build_keys_from_the_table() -> None:
    k = Keys("p", "q")
    assert k.script_keys("ack") == (*k.streams, k.tasks, k.leases, k.completed, k.unique,
                                    k.unique_exp, k.consumers, k.cancelled, k.minutes,
                                    k.minutes_index)  # fmt: skip
    assert k.script_keys("list_sorted", listed=k.dead) == (k.tasks, k.dead)
    assert k.script_keys("ack") is k.script_keys("ack")  # built once


@pytest.mark.parametrize("name", NAMES)
def test_includes_are_resolved(name: str) -> None:
    assert "--#include" not in script(name).source
    assert script(name) is script(name), "each Script is built once"


@pytest.mark.parametrize("name", NAMES)
def test_scripts_fit_one_read_of_redis(name: str) -> None:
    # Redis reads 16 KB of a connection at once: a bigger SCRIPT LOAD sent with the EVALSHA that
    # needs it can be split by another client's SCRIPT FLUSH (tests/faults), so included
    # fragments lose their comment lines and every script stays under that size
    assert len(script(name).source.encode()) < 16 * 1024


@pytest.mark.parametrize("name", [*NAMES, "lib/record", "lib/minutes"])
def test_no_key_is_built_inside_a_script(name: str) -> None:
    text = resources.files("strego.lua").joinpath(f"{name}.lua").read_text()
    code = "\n".join(line.split("--", 1)[0] for line in text.splitlines())
    # the first argument of every redis.call is a key from KEYS or a variable holding one,
    # never a literal or a concatenation
    for call in re.finditer(r"redis\.p?call\(\s*'(\w+)'\s*,\s*([^,)]+)", code):
        command, first = call.group(1), call.group(2).strip()
        if command in {"XGROUP", "XREADGROUP", "XINFO"}:  # subcommand / GROUP first; MONITOR
            # checks them
            continue
        assert ".." not in first, f"{name}: {call.group(0)} builds a key"
        assert not first.startswith(("'", '"')), f"{name}: {call.group(0)} names a literal key"
    if name.startswith("lib/"):
        assert "KEYS[" not in code and "K." not in code, (
            "the shared library takes keys as arguments"
        )
    else:
        assert "KEYS[" in code or "K." in code, "every key comes from KEYS"


# -- MONITOR: every key a script touches was passed in KEYS ---------------------------------------

_QUOTED = re.compile(r'"((?:[^"\\]|\\.)*)"')


class Monitor:
    """Reads MONITOR lines from a raw connection."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.lines: list[str] = []

    async def __aenter__(self) -> Monitor:
        self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        self.writer.write(b"MONITOR\r\n")
        await self.writer.drain()
        assert (await self.reader.readline()).startswith(b"+OK")
        return self

    async def read_until(self, marker: str) -> list[str]:
        while True:
            line = (await asyncio.wait_for(self.reader.readline(), 10)).decode()
            self.lines.append(line)
            if marker in line:
                return self.lines

    async def __aexit__(self, *exc: object) -> None:
        self.writer.close()


def _commands(lines: list[str]) -> list[tuple[str, list[str]]]:
    """(source, args) per MONITOR line; source is "lua" for commands run by a script."""
    out = []
    for line in lines:
        m = re.match(r"^\+?[\d.]+ \[\d+ ([^\]]+)\] (.*)$", line.strip())
        if m:
            out.append((m.group(1), [a.encode().decode("unicode_escape") for a in
                                     _QUOTED.findall(m.group(2))]))  # fmt: skip
    return out


@pytest.mark.parametrize("history", [False, True], ids=["history-off", "history-on"])
async def test_scripts_touch_only_keys_passed_in_keys(redis_url: str, history: bool) -> None:
    """With history on too: the history stream is passed in KEYS like every other key."""
    prefix = f"mon{uuid.uuid4().hex[:8]}"
    clock = FakeClock()
    client = redis.asyncio.Redis.from_url(redis_url)
    host, port = (
        client.connection_pool.connection_kwargs["host"],
        client.connection_pool.connection_kwargs["port"],
    )
    backend = RedisBackend(client, prefix=prefix, clock=clock, completed_ttl_ms=1_000,
                           dead_ttl_ms=2_000, history=history, history_cap=500)  # fmt: skip
    try:
        async with Monitor(host, port) as mon:
            await _every_script(backend, clock)
            await client.echo("monitor-end")
            lines = await mon.read_until("monitor-end")
    finally:
        await backend.aclose()
    commands = _commands(lines)
    shas_seen: set[str] = set()
    keys: set[str] = set()
    for src, args in commands:
        if src != "lua":
            if args and args[0].upper() == "EVALSHA":
                shas_seen.add(args[1])
                n = int(args[2])
                keys = set(args[3 : 3 + n])
            elif prefix in " ".join(args):
                keys = set()
            continue
        if args[0].upper() == "PUBLISH":
            continue  # a pub/sub channel (Keys.ended_channel...) is no key: it holds no data
        for arg in args[1:]:
            if arg.startswith(prefix):
                assert arg in keys, f"{args[0]} touched {arg}, not in the script's KEYS"
    cap = 500 if history else 0
    expected = {script(n, cap if n in HISTORY_SCRIPTS else 0).sha for n in NAMES}
    assert shas_seen == expected, "the workload ran every script"
    assert any(src == "lua" for src, _ in commands)
    appended = {a[1] for src, a in commands if src == "lua" and a[0].upper() == "XADD"}
    assert (f"{prefix}:v1:{{q}}:history" in appended) == history


async def _every_script(backend: RedisBackend, clock: FakeClock) -> None:
    """A workload that runs every script at least once."""
    t0 = clock()
    await backend.enqueue_many(
        [message("a"), message("b", priority=5), message("s", process_at_ms=t0 + 10),
         message("u", unique_key="k", unique_ttl_ms=5)]
    )  # fmt: skip
    await backend.list_tasks("q", TaskState.PENDING)
    after_a = encode_cursor(TaskState.SCHEDULED, (t0, "a"))
    await backend.list_tasks("q", TaskState.SCHEDULED, cursor=after_a)
    got = await backend.fetch(["q"], 3, "c1", lease_ms=LEASE_MS)
    assert len(got) == 3
    await backend.list_tasks("q", TaskState.ACTIVE)
    await backend.renew("q", [got[0].id], "c1", lease_ms=LEASE_MS)
    await backend.ack("q", got[0].id, "c1")
    await backend.fail("q", got[1].id, "c1", "boom", retry_in_ms=None)
    await backend.release("q", [got[2].id], "c1")
    await backend.requeue_dead("q", got[1].id)
    await backend.cancel("s", "q")
    await backend.delete("s", "q")
    clock.advance(100)
    await backend.fetch(["q", "q2"], 5, "c2", lease_ms=10)  # several queues: peek runs too
    clock.advance(100)
    await backend.claim_stale(["q"], "c3", 10, lease_ms=LEASE_MS, max_deliveries=5)
    await backend.promote(["q"])
    await backend.remove_idle_consumers("q", 0)
    await RedisHistorySource(backend, "d1")._claim_idle(["q"])  # remove_idle_drainers
    await backend.requeue_all_dead("q")
    await backend.enqueue(message("later", process_at_ms=clock() + 60_000))
    assert await backend.run_now("later", "q")
    assert (await backend.queue_info("q")).oldest_pending_age_ms is not None  # oldest_pending
    await backend.purge("q", [TaskState.COMPLETED, TaskState.CANCELLED, TaskState.PENDING])
    # a day later, a count in a new minute removes the minutes past the history's retention
    clock.advance(2 * 86_400_000)
    await backend.enqueue(message("late"))
    [late] = await backend.fetch(["q"], 1, "c1", lease_ms=LEASE_MS)
    assert await backend.ack("q", late.id, "c1")
    cron = ScheduleDefinition("s", "every 1000ms", "UTC", "latest", message("s"))
    info = await backend.put_schedule(cron, clock())
    assert await backend.fire_schedule(info, clock(), clock() + 1000) is FireResult.FIRED
    await backend.list_schedules()
    await backend.remove_schedule("s")


# -- NOSCRIPT ------------------------------------------------------------------------------------


@pytest.fixture(params=["redis", "fakeredis"])
async def backend_and_client(
    request: pytest.FixtureRequest,
) -> AsyncIterator[tuple[RedisBackend, Any]]:
    if request.param == "redis":
        client: Any = redis.asyncio.Redis.from_url(request.getfixturevalue("redis_url"))
    else:
        import fakeredis

        client = fakeredis.FakeAsyncRedis()
    backend = RedisBackend(client, prefix=f"t{uuid.uuid4().hex[:8]}", clock=FakeClock())
    try:
        yield backend, client
    finally:
        await backend.aclose()


async def test_script_flush_mid_run_changes_nothing_visible(
    backend_and_client: tuple[RedisBackend, Any],
) -> None:
    backend, client = backend_and_client
    await backend.enqueue(message("a"))
    await client.script_flush()
    # single calls and pipelines both load the scripts again and retry
    results = await backend.enqueue_many([message("b"), message("c", queue="other")])
    assert [r.id for r in results if not isinstance(r, Exception)] == ["b", "c"]
    got = await backend.fetch(["q", "other"], 3, "c1", lease_ms=LEASE_MS)
    assert [t.id for t in got] == ["a", "b", "c"]
    await client.script_flush()
    assert await backend.ack_many([("q", "a"), ("q", "b"), ("other", "c")], "c1") == [True] * 3
    await client.script_flush()
    assert (await backend.queue_info("q")).counts[TaskState.COMPLETED] == 2


# -- canonical records ---------------------------------------------------------------------------


async def test_every_record_a_script_writes_is_canonical(
    backend_and_client: tuple[RedisBackend, Any],
) -> None:
    """enqueue, fetch and ack write the records of fresh tasks on fast paths of their own; each
    record must be exactly what lib/record.lua's general build() makes of it (parse, then build
    gives the same bytes), in every state a task passes through."""
    backend, client = backend_and_client
    lib = source("lib/record")
    canonical = client.register_script(lib + "\nreturn build(parse(ARGV[1]))")
    tasks_key = backend.keys("q").tasks
    clock = backend.clock
    assert isinstance(clock, FakeClock)
    seen: set[bytes] = set()

    async def check() -> None:
        for record in (await client.hgetall(tasks_key)).values():
            assert await canonical(args=[record]) == record
            seen.add(record[:1])

    await backend.enqueue_many([message("a"), message("b"), message("c", priority=4)])
    await backend.enqueue(message("u", unique_key="k", unique_ttl_ms=60_000, max_retry=1))
    await check()  # fresh (short header), prioritized, unique
    got = await backend.fetch(["q"], 4, "a-consumer-name", lease_ms=LEASE_MS)
    assert len(got) == 4
    await check()  # active: fresh ones on fetch's fast path, the others through build()
    await backend.ack_many([("q", "a"), ("q", "c"), ("q", "u")], "a-consumer-name")
    assert await backend.fail("q", "b", "x", "boom", retry_in_ms=5) == TaskState.RETRY
    await check()  # completed (ack's fast path), retry
    clock.advance(5)
    await backend.promote(["q"])
    [again] = await backend.fetch(["q"], 1, "c2", lease_ms=LEASE_MS)
    await check()  # active again after a retry: not a fresh record
    await backend.ack("q", again.id, "c2")
    await check()
    assert seen >= {b"P", b"a", b"c"}
