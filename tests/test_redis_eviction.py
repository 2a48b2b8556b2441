"""The eviction check: a RedisBackend on a Redis whose maxmemory-policy may evict keys logs one
WARNING naming the policy, once per process; it never fails a call, and reads the policy with
CONFIG GET where INFO is refused."""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from typing import Any

import pytest

import strego
from strego.backends.redis import RedisBackend, eviction
from strego.backends.redis.transport import Command, ScriptCall
from strego.errors import BackendConnectionError, BackendError
from tests.redis_server import RedisServer, running_redis_server

pytestmark = [
    pytest.mark.anyio,
    pytest.mark.redis,
    pytest.mark.parametrize(
        ("anyio_backend", "transport"),
        [("asyncio", "redis-py"), ("asyncio", "anyio"), ("trio", "anyio")],
    ),
]

LOGGER = "strego.backends.redis"


@pytest.fixture(autouse=True)
def fresh_process_memory(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test starts as a new process would: nothing warned yet."""
    monkeypatch.setattr(eviction, "_warned", set())


@pytest.fixture(scope="module")
def evicting_redis() -> Iterator[RedisServer]:
    with running_redis_server(["--maxmemory-policy", "allkeys-lru"]) as server:
        yield server


@pytest.fixture(scope="module")
def evicting_redis_without_info() -> Iterator[RedisServer]:
    # as some managed Redis services do: INFO refused, CONFIG still there
    args = ["--maxmemory-policy", "volatile-lfu", "--rename-command", "INFO", ""]
    with running_redis_server(args) as server:
        yield server


def make_backend(url: str, transport: str) -> RedisBackend:
    if transport == "redis-py":
        import redis.asyncio

        return RedisBackend(redis.asyncio.Redis.from_url(url), prefix="evict")
    return RedisBackend.from_url(url, prefix="evict")


def warnings_of(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == LOGGER and r.levelno == logging.WARNING and "maxmemory-policy" in r.message
    ]


async def test_an_evicting_redis_is_named_once_per_process(
    evicting_redis: RedisServer, transport: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, LOGGER)
    for _ in range(2):  # a second backend in the same process: no second warning
        backend = make_backend(evicting_redis.url, transport)
        try:
            client = strego.Client(backend)
            info = await client.enqueue(strego.Task("job"))  # the check never fails a call
            await client.enqueue(strego.Task("job"))
            assert (await backend.get_task(info.id)) is not None
        finally:
            await backend.aclose()
    (warning,) = warnings_of(caplog)
    assert "'allkeys-lru'" in warning
    assert "lost" in warning and "noeviction" in warning


async def test_a_server_checks_before_its_first_fetch(
    evicting_redis: RedisServer, transport: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, LOGGER)
    backend = make_backend(evicting_redis.url, transport)
    try:
        assert await backend.fetch(["nothing-here"], 1, "c1", lease_ms=1000) == []
    finally:
        await backend.aclose()
    assert len(warnings_of(caplog)) == 1


async def test_the_policy_is_read_with_config_where_info_is_refused(
    evicting_redis_without_info: RedisServer, transport: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, LOGGER)
    backend = make_backend(evicting_redis_without_info.url, transport)
    try:
        await strego.Client(backend).enqueue(strego.Task("job"))
    finally:
        await backend.aclose()
    (warning,) = warnings_of(caplog)
    assert "'volatile-lfu'" in warning


async def test_a_noeviction_redis_is_not_warned_about(
    clean_redis_url: str, transport: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, LOGGER)
    backend = make_backend(clean_redis_url, transport)
    try:
        await strego.Client(backend).enqueue(strego.Task("job"))
        assert backend._first_call_checked
    finally:
        await backend.aclose()
    assert warnings_of(caplog) == []


class ScriptedTransport:
    """A transport whose plain commands reply from a list (an exception is raised), and whose
    scripts all succeed: to watch the check's calls."""

    def __init__(self, replies: list[Any]) -> None:
        self.replies = replies
        self.commands: list[tuple[Any, ...]] = []

    async def execute(self, command: Command) -> Any:
        if command.args[0] == "HGET":  # the schema version check (migrate.py): none stored
            return None
        self.commands.append(tuple(command.args))
        reply = self.replies.pop(0)
        if isinstance(reply, BaseException):
            raise reply
        return reply

    async def run_script(self, call: ScriptCall) -> Any:
        return [[0, b""]] * len(call.args)

    async def pipeline(self, calls: Sequence[ScriptCall | Command]) -> list[Any]:
        return [await self.run_script(c) if isinstance(c, ScriptCall) else 1 for c in calls]

    async def blocking(self, command: Command, timeout_ms: int) -> Any:
        return None

    async def ping(self) -> None: ...

    async def aclose(self) -> None: ...


async def test_an_unreachable_redis_is_checked_again_on_a_later_call(
    transport: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, LOGGER)
    scripted = ScriptedTransport(
        [
            BackendConnectionError("connection refused"),
            b"# Memory\r\nmaxmemory_policy:allkeys-random\r\n",
            b"# Server\r\nrun_id:abc\r\n",
        ]
    )
    backend = RedisBackend(scripted, prefix="evict")
    await backend._run("ack", ["k"], ["a"])  # the check could not reach Redis: not a failure
    assert not backend._first_call_checked
    assert warnings_of(caplog) == []
    await backend._run("ack", ["k"], ["a"])
    await backend._run("ack", ["k"], ["a"])
    assert [c[:2] for c in scripted.commands] == [("INFO", "memory")] * 2 + [("INFO", "server")]
    (warning,) = warnings_of(caplog)
    assert "'allkeys-random'" in warning


async def test_a_redis_refusing_both_commands_is_left_alone(
    transport: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, LOGGER)
    scripted = ScriptedTransport(
        [BackendError("ERR unknown command 'INFO'"), BackendError("ERR unknown command 'CONFIG'")]
    )
    backend = RedisBackend(scripted, prefix="evict")
    await backend._run("ack", ["k"], ["a"])
    await backend._run("ack", ["k"], ["a"])
    assert backend._first_call_checked
    assert len(scripted.commands) == 2  # asked once
    assert warnings_of(caplog) == []
