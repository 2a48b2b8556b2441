"""A runner no handler can crash, on every backend, under asyncio and trio: whatever user code does
(exceptions whose str/repr raise, BaseExceptions, a retry_delay that raises or returns garbage,
payloads that fail to structure, sync handlers in threads) is a failure of that task, with a
readable last_error, and the server keeps serving. The runtime's own cancellation (timeouts,
shutdown) keeps its meaning."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import anyio
import attrs
import pytest

import strego
from strego.backends.base import Backend
from strego.message import TaskMessage
from strego.serializers import JsonSerializer
from strego.task import TaskState
from tests.runtime_support import ON_EVERY_BACKEND, backend, eventually, make_server, wait_for_state

__all__ = ["backend"]  # the fixture, imported for pytest

pytestmark = [
    pytest.mark.anyio,
    ON_EVERY_BACKEND,
]


class StrRaises(ValueError):
    def __str__(self) -> str:
        raise RuntimeError("no str for you")

    def __repr__(self) -> str:
        raise RuntimeError("no repr either")


class StrNotAString(ValueError):
    def __str__(self) -> str:
        return 42  # type: ignore[return-value]


class StrExits(ValueError):
    def __str__(self) -> str:
        raise SystemExit(3)


class CustomBase(BaseException):
    pass


async def serves_afterwards(server: strego.Server, backend: Backend) -> None:
    """The server still runs tasks: one more completes."""
    after = await strego.Client(backend).enqueue(strego.Task("fine"))
    await wait_for_state(backend, after.id, TaskState.COMPLETED)


def add_fine(server: strego.Server) -> None:
    @server.handler("fine")
    async def fine(task: strego.Task) -> None: ...


@pytest.mark.parametrize(
    ("exc_type", "expected"),
    [
        (StrRaises, "<unprintable StrRaises>"),
        (StrNotAString, "<unprintable StrNotAString>"),
        (StrExits, "<unprintable StrExits>"),
    ],
)
async def test_an_unprintable_exception_is_a_failure_with_a_readable_error(
    backend: Backend, exc_type: type[BaseException], expected: str
) -> None:
    server = make_server(backend)
    add_fine(server)
    runs = 0

    @server.handler("poison")
    async def poison(task: strego.Task) -> None:
        nonlocal runs
        runs += 1
        raise exc_type()

    info = await strego.Client(backend).enqueue(strego.Task("poison", max_retry=2))
    async with server:
        dead = await wait_for_state(backend, info.id, TaskState.DEAD)
        await serves_afterwards(server, backend)
    assert runs == 3  # its retries, then dead: never a loop
    assert dead.last_error is not None
    assert dead.last_error.startswith(expected)
    assert "in poison" in dead.last_error  # the frames are still there
    assert server.stats.dead == 1


@pytest.mark.parametrize(
    "raised",
    [SystemExit(1), KeyboardInterrupt(), GeneratorExit(), CustomBase("odd"), StopIteration()],
    ids=["SystemExit", "KeyboardInterrupt", "GeneratorExit", "CustomBase", "StopIteration"],
)
@pytest.mark.parametrize("kind", ["async", "sync"])
async def test_a_base_exception_from_a_handler_is_a_failure(
    backend: Backend, raised: BaseException, kind: str
) -> None:
    server = make_server(backend)
    add_fine(server)
    runs = 0

    def count_and_raise() -> None:
        nonlocal runs
        runs += 1
        raise raised

    if kind == "async":

        @server.handler("poison")
        async def poison(task: strego.Task) -> None:
            count_and_raise()

    else:

        @server.handler("poison")
        def poison_sync(task: strego.Task) -> None:
            count_and_raise()

    info = await strego.Client(backend).enqueue(strego.Task("poison", max_retry=1))
    async with server:
        dead = await wait_for_state(backend, info.id, TaskState.DEAD)
        await serves_afterwards(server, backend)
    assert runs == 2
    assert dead.last_error is not None
    # StopIteration crossing a thread comes back as the RuntimeError that replaces it
    assert type(raised).__name__ in dead.last_error


async def test_a_cancelled_error_raised_by_the_handler_itself_is_a_failure(
    backend: Backend,
) -> None:
    # not the runtime's cancellation: nothing cancelled the handler's scope
    server = make_server(backend)
    add_fine(server)

    @server.handler("poison")
    async def poison(task: strego.Task) -> None:
        raise asyncio.CancelledError("made up")

    info = await strego.Client(backend).enqueue(strego.Task("poison", max_retry=0))
    async with server:
        dead = await wait_for_state(backend, info.id, TaskState.DEAD)
        await serves_afterwards(server, backend)
    assert dead.last_error is not None and dead.last_error.startswith("CancelledError: made up")


@pytest.mark.parametrize(
    "policy",
    ["raises", "raises-base", None, float("nan"), float("inf"), 1e300, "1", -5.0, True],
    ids=repr,
)
async def test_a_retry_delay_that_raises_or_returns_garbage_falls_back(
    backend: Backend, policy: object, caplog: pytest.LogCaptureFixture
) -> None:
    def retry_delay(retried: int, exc: BaseException, info: strego.TaskInfo) -> Any:
        if policy == "raises":
            raise StrRaises()
        if policy == "raises-base":
            raise SystemExit(2)
        return policy

    server = make_server(backend, retry_delay=retry_delay)
    add_fine(server)
    runs = 0

    @server.handler("flaky")
    async def flaky(task: strego.Task) -> None:
        nonlocal runs
        runs += 1
        raise ValueError("boom")

    # one retry, after the default backoff's first delay (at most 1 s)
    info = await strego.Client(backend).enqueue(strego.Task("flaky", max_retry=1))
    async with server:
        dead = await wait_for_state(backend, info.id, TaskState.DEAD)
        await serves_afterwards(server, backend)
    assert runs == 2
    assert dead.last_error is not None and dead.last_error.startswith("ValueError: boom")
    fallbacks = [r for r in caplog.records if "using the default backoff" in r.getMessage()]
    # a negative delay is taken as no delay; anything else is logged and replaced, at each
    # failure (the policy is asked even when the backend then finds no retry left)
    assert len(fallbacks) == (0 if policy == -5.0 else runs)


@attrs.define
class Checked:
    value: int = attrs.field()

    @value.validator
    def _check(self, attribute: object, value: int) -> None:
        if value < 0:
            raise StrRaises()
        if value == 0:
            raise SystemExit(4)


@pytest.mark.parametrize("value", [-1, 0])
async def test_a_payload_whose_structuring_fails_badly_goes_dead(
    backend: Backend, value: int
) -> None:
    server = make_server(backend)
    add_fine(server)
    got: list[Checked] = []

    @server.handler("checked")
    async def checked(payload: Checked) -> None:
        got.append(payload)

    client = strego.Client(backend)
    bad = await client.enqueue(strego.Task("checked", {"value": value}, max_retry=3))
    good = await client.enqueue(strego.Task("checked", {"value": 7}))
    async with server:
        dead = await wait_for_state(backend, bad.id, TaskState.DEAD)
        await wait_for_state(backend, good.id, TaskState.COMPLETED)
        await serves_afterwards(server, backend)
    assert got == [Checked(7)]
    assert dead.retried == 0
    assert dead.last_error is not None
    assert dead.last_error.startswith("payload does not structure as Checked")


class ExplodingSerializer:
    name = "boom"

    def dumps(self, payload: Any) -> bytes:
        return b"x"

    def loads(self, data: bytes) -> Any:
        if data == b"exit":
            raise SystemExit(5)
        raise StrRaises()


@pytest.mark.parametrize("payload", [b"exit", b"str"])
async def test_a_serializer_that_fails_badly_sends_the_task_dead(
    backend: Backend, payload: bytes
) -> None:
    server = make_server(backend, serializers=[JsonSerializer(), ExplodingSerializer()])
    add_fine(server)

    @server.handler("job")
    async def job(task: strego.Task) -> None: ...

    await backend.enqueue(
        TaskMessage(id="odd", type="job", queue="default", payload=payload, encoding="boom")
    )
    async with server:
        dead = await wait_for_state(backend, "odd", TaskState.DEAD)
        await serves_afterwards(server, backend)
    assert dead.last_error is not None
    assert dead.last_error.startswith("payload cannot be decoded as boom")


async def test_a_handler_that_swallows_its_timeout_still_times_out(backend: Backend) -> None:
    server = make_server(backend)
    add_fine(server)
    outcomes: list[str] = []

    @server.handler("stubborn")
    async def stubborn(task: strego.Task) -> None:
        try:
            await anyio.sleep(30)
        except anyio.get_cancelled_exc_class() as cancelled:
            outcomes.append(task.payload)
            if task.payload == "exit":
                raise SystemExit(6) from None
            if task.payload == "unprintable":
                raise StrRaises() from None
            if task.payload == "group":
                raise BaseExceptionGroup("mixed", [ValueError("late"), cancelled]) from None
            return  # swallowed: returns as if it had finished

    client = strego.Client(backend)
    infos = [
        await client.enqueue(strego.Task("stubborn", how, timeout=0.2, max_retry=0))
        for how in ("return", "exit", "unprintable", "group")
    ]
    async with server:
        deads = [await wait_for_state(backend, info.id, TaskState.DEAD) for info in infos]
        await serves_afterwards(server, backend)
    assert sorted(outcomes) == ["exit", "group", "return", "unprintable"]
    assert [dead.last_error for dead in deads] == ["timed out after 0.2s"] * 4


async def test_a_sync_handler_timing_out_in_its_thread_is_a_timeout(backend: Backend) -> None:
    server = make_server(backend)
    add_fine(server)

    @server.handler("slow")
    def slow(task: strego.Task) -> None:
        time.sleep(0.5)
        raise SystemExit(7)  # after the server abandoned the thread: nobody sees it

    info = await strego.Client(backend).enqueue(strego.Task("slow", timeout=0.1, max_retry=0))
    async with server:
        dead = await wait_for_state(backend, info.id, TaskState.DEAD)
        await serves_afterwards(server, backend)
    assert dead.last_error == "timed out after 0.1s"


@pytest.mark.parametrize("how", ["exit", "return", "group"])
async def test_a_handler_that_fights_the_shutdown_does_not_crash_it(
    backend: Backend, how: str
) -> None:
    # the shutdown cancels the handler (shutdown_timeout passed): it catches the cancellation
    # and raises SystemExit, or returns; the server stops cleanly either way
    server = make_server(backend, shutdown_timeout=0.1)
    started = anyio.Event()
    caught: list[str] = []

    @server.handler("fighter")
    async def fighter(task: strego.Task) -> None:
        started.set()
        try:
            await anyio.sleep(30)
        except anyio.get_cancelled_exc_class() as cancelled:
            caught.append(how)
            if how == "exit":
                raise SystemExit(8) from None
            if how == "group":  # as from a task group of its own: an error beside the cancel
                raise BaseExceptionGroup("mixed", [ValueError("late"), cancelled]) from None

    info = await strego.Client(backend).enqueue(strego.Task("fighter", max_retry=3))
    with anyio.fail_after(20):
        async with anyio.create_task_group() as group:
            group.start_soon(lambda: server.run(handle_signals=False))
            await started.wait()
            server.stop()
    assert caught == [how]
    after = await backend.get_task(info.id)
    assert after is not None
    # released, retried, or completed: never left active under a stopped server's name
    assert after.state is not TaskState.ACTIVE


async def test_cancelling_the_server_from_outside_still_cancels_it(backend: Backend) -> None:
    server = make_server(backend)
    started = anyio.Event()

    @server.handler("long")
    async def long(task: strego.Task) -> None:
        started.set()
        await anyio.sleep(30)

    info = await strego.Client(backend).enqueue(strego.Task("long"))
    with anyio.fail_after(20):
        async with anyio.create_task_group() as group:
            group.start_soon(lambda: server.run(handle_signals=False))
            await started.wait()
            group.cancel_scope.cancel()
    after = await backend.get_task(info.id)
    # not a failure of the task: given back (or, when a fetch in flight took it again as the
    # server was torn down, left active until its lease expires)
    assert after is not None and after.state in (TaskState.PENDING, TaskState.ACTIVE)
    assert after.retried == 0 and after.last_error is None
    assert server.stats.failed == 0


async def test_a_poison_task_never_loops(backend: Backend) -> None:
    # every way of failing at once, with retries: the task ends dead after exactly its retries
    server = make_server(backend, concurrency=2)
    add_fine(server)
    runs = 0

    @server.handler("poison")
    async def poison(task: strego.Task) -> None:
        nonlocal runs
        runs += 1
        raise (StrRaises() if runs % 2 else SystemExit(9))

    info = await strego.Client(backend).enqueue(strego.Task("poison", max_retry=4))
    async with server:
        await wait_for_state(backend, info.id, TaskState.DEAD)
        await serves_afterwards(server, backend)
        await eventually(lambda: server.stats.dead == 1, "the dead count")
    assert runs == 5


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_an_asyncio_cancel_of_the_server_task_still_cancels_it(backend: Backend) -> None:
    # a cancel() of the task running the server, outside any cancel scope (asyncio.wait_for, a
    # framework stopping its tasks): the handler sees CancelledError and the server must end
    server = make_server(backend)
    started = anyio.Event()

    @server.handler("long")
    async def long(task: strego.Task) -> None:
        started.set()
        await anyio.sleep(30)

    await strego.Client(backend).enqueue(strego.Task("long"))
    running = asyncio.ensure_future(server.run(handle_signals=False))
    with anyio.fail_after(20):
        await started.wait()
        running.cancel()
        with pytest.raises(asyncio.CancelledError):
            await running
    assert server.stats.failed == 0
