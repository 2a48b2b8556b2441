"""The middleware hooks (strego/middleware.py): order, sync and async hooks, headers, timings, and
a hook that raises never loses a task nor runs it twice."""

from __future__ import annotations

import json
import logging
from typing import Any

import anyio
import pytest

import strego
from strego.backends.memory import MemoryBackend
from strego.logs import JsonFormatter
from strego.middleware import Attempt, EnqueueCall, Middleware, MiddlewareChain, Outcome
from strego.task import TaskState
from tests.runtime_support import eventually, make_server, wait_for_state

pytestmark = pytest.mark.anyio


class Recorder(Middleware):
    def __init__(self, name: str, log: list[str], *, is_async: bool = False) -> None:
        self.name, self.log, self.is_async = name, log, is_async

    def _note(self, what: str) -> Any:
        self.log.append(f"{self.name}.{what}")
        if self.is_async:
            return anyio.lowlevel.checkpoint()  # an awaitable: run as an async hook
        return None

    def before_enqueue(self, call: EnqueueCall) -> Any:
        call.headers[self.name] = "set"
        return self._note("before_enqueue")

    def after_enqueue(self, call: EnqueueCall) -> Any:
        return self._note(f"after_enqueue:{'ok' if call.info else type(call.error).__name__}")

    def before_attempt(self, attempt: Attempt) -> Any:
        return self._note(f"before_attempt:{attempt.attempt}")

    def after_attempt(self, attempt: Attempt) -> Any:
        return self._note(f"after_attempt:{attempt.outcome}")


class Raiser(Middleware):
    """Every hook raises; async ones after a checkpoint."""

    def before_enqueue(self, call: EnqueueCall) -> None:
        raise RuntimeError("before_enqueue")

    async def after_enqueue(self, call: EnqueueCall) -> None:
        await anyio.lowlevel.checkpoint()
        raise RuntimeError("after_enqueue")

    async def before_attempt(self, attempt: Attempt) -> None:
        await anyio.lowlevel.checkpoint()
        raise RuntimeError("before_attempt")

    def after_attempt(self, attempt: Attempt) -> None:
        raise RuntimeError("after_attempt")


async def test_hooks_run_in_order_sync_and_async(anyio_backend: Any) -> None:
    log: list[str] = []
    chain = [Recorder("a", log), Recorder("b", log, is_async=True)]
    backend = MemoryBackend()
    client = strego.Client(backend, middleware=chain)
    server = make_server(backend, middleware=chain)
    runs: list[int] = []

    @server.handler("t")
    async def handle(task: strego.Task) -> None:
        runs.append(strego.current_task().retried)
        log.append("handler")
        if len(runs) == 1:
            raise ValueError("once")

    info = await client.enqueue(strego.Task("t"))
    assert info.headers == {"a": "set", "b": "set"}
    assert log == [
        "a.before_enqueue",
        "b.before_enqueue",
        "b.after_enqueue:ok",
        "a.after_enqueue:ok",
    ]
    log.clear()
    async with server:
        await wait_for_state(backend, info.id, TaskState.COMPLETED)
        await eventually(lambda: len(log) == 10, "both attempts' hooks")
    assert log == [
        "a.before_attempt:1", "b.before_attempt:1", "handler",
        "b.after_attempt:retried", "a.after_attempt:retried",
        "a.before_attempt:2", "b.before_attempt:2", "handler",
        "b.after_attempt:completed", "a.after_attempt:completed",
    ]  # fmt: skip


async def test_enqueue_many_hooks_each_task(anyio_backend: Any) -> None:
    log: list[str] = []
    client = strego.Client(MemoryBackend(), middleware=[Recorder("a", log)])
    await client.enqueue(strego.Task("t", id="taken"))
    log.clear()
    results = await client.enqueue_many([strego.Task("t", id="new"), strego.Task("t", id="taken")])
    assert isinstance(results[0], strego.TaskInfo) and results[0].headers == {"a": "set"}
    assert log == [
        "a.before_enqueue", "a.before_enqueue",
        "a.after_enqueue:ok", "a.after_enqueue:TaskIdConflictError",
    ]  # fmt: skip


async def test_raising_hooks_lose_nothing_and_run_nothing_twice(
    anyio_backend: Any, caplog: pytest.LogCaptureFixture
) -> None:
    backend = MemoryBackend()
    log: list[str] = []
    chain = [Raiser(), Recorder("r", log)]
    client = strego.Client(backend, middleware=chain)
    server = make_server(backend, middleware=chain, concurrency=3)
    runs: dict[str, int] = {}

    @server.handler("t")
    async def handle(task: strego.Task) -> None:
        assert task.id is not None
        runs[task.id] = runs.get(task.id, 0) + 1
        if task.payload == "fail" and strego.current_task().retried == 0:
            raise ValueError("retry me")

    with caplog.at_level(logging.ERROR, logger="strego.middleware"):
        ok = [await client.enqueue(strego.Task("t", "ok")) for _ in range(10)]
        fail = [await client.enqueue(strego.Task("t", "fail")) for _ in range(5)]
        async with server:
            for info in ok + fail:
                await wait_for_state(backend, info.id, TaskState.COMPLETED)
    assert runs == {**{i.id: 1 for i in ok}, **{i.id: 2 for i in fail}}
    assert server.stats.processed == 15 and server.stats.retried == 5
    # the well-behaved middleware after the raiser saw everything
    assert log.count("r.after_attempt:completed") == 15
    assert log.count("r.after_attempt:retried") == 5
    raised = {r.getMessage() for r in caplog.records}
    assert {f"middleware hook Raiser.{h} raised; ignored" for h in (
        "before_enqueue", "after_enqueue", "before_attempt", "after_attempt"
    )} <= raised  # fmt: skip
    assert all(r.exc_info for r in caplog.records)
    assert all(r.task_type == "t" for r in caplog.records)  # type: ignore[attr-defined]
    attempts = {r.attempt for r in caplog.records}  # type: ignore[attr-defined]
    assert attempts == {0, 1, 2}  # enqueue, first and second attempts


async def test_attempt_timings_and_outcomes(anyio_backend: Any) -> None:
    attempts: list[Attempt] = []

    class Keep(Middleware):
        async def after_attempt(self, attempt: Attempt) -> None:
            attempts.append(attempt)

    backend = MemoryBackend()
    server = make_server(backend, middleware=[Keep()])

    @server.handler("t")
    async def handle(task: strego.Task) -> None:
        await anyio.sleep(0.01)
        raise strego.SkipRetry("no")

    info = await strego.Client(backend).enqueue(strego.Task("t"))
    async with server:
        await wait_for_state(backend, info.id, TaskState.DEAD)
        await eventually(lambda: len(attempts) == 1, "the attempt's end")
    [attempt] = attempts
    assert attempt.outcome is Outcome.DEAD and isinstance(attempt.error, strego.SkipRetry)
    assert attempt.duration >= 0.01 and attempt.wait is not None and attempt.wait >= 0
    assert attempt.consumer == server.name and attempt.attempt == 1


async def test_cancelled_attempt_ends_as_cancelled(anyio_backend: Any) -> None:
    outcomes: list[Outcome | None] = []

    class Keep(Middleware):
        def after_attempt(self, attempt: Attempt) -> None:
            outcomes.append(attempt.outcome)

    backend = MemoryBackend()
    server = make_server(backend, middleware=[Keep()], shutdown_timeout=0)
    started = anyio.Event()

    @server.handler("t")
    async def handle(task: strego.Task) -> None:
        started.set()
        await anyio.sleep_forever()

    info = await strego.Client(backend).enqueue(strego.Task("t"))
    async with server:
        await started.wait()
    assert outcomes == [Outcome.CANCELLED]
    assert (await backend.get_task(info.id)).state is TaskState.PENDING  # type: ignore[union-attr]


def test_chain_refuses_what_is_not_middleware() -> None:
    with pytest.raises(TypeError):
        MiddlewareChain([object()])
    assert not MiddlewareChain([]).attempts
    assert not MiddlewareChain([Middleware()]).attempts  # no-op hooks are skipped


async def test_log_lines_carry_the_task(
    anyio_backend: Any, caplog: pytest.LogCaptureFixture
) -> None:
    backend = MemoryBackend()
    server = make_server(backend)

    @server.handler("t")
    async def handle(task: strego.Task) -> None:
        raise ValueError("boom")

    info = await strego.Client(backend).enqueue(strego.Task("t", queue="default", max_retry=0))
    with caplog.at_level(logging.DEBUG, logger="strego.server"):
        async with server:
            await wait_for_state(backend, info.id, TaskState.DEAD)
    about = [r for r in caplog.records if getattr(r, "task_id", None) == info.id]
    assert {r.levelname for r in about} == {"DEBUG", "WARNING"}  # start (DEBUG), failure
    assert all((r.task_type, r.queue, r.attempt) == ("t", "default", 1) for r in about)  # type: ignore[attr-defined]
    assert not [r for r in caplog.records if r.levelno == logging.INFO and hasattr(r, "task_id")]
    line = JsonFormatter().format(next(r for r in about if r.levelname == "WARNING"))
    assert json.loads(line)["task_id"] == info.id and json.loads(line)["attempt"] == 1
