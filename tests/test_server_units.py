"""Units of the runtime without a backend: backoff policies, queue order, handler registration,
server options."""

from __future__ import annotations

import functools
import random
from collections import Counter
from collections.abc import Sequence
from typing import Any

import anyio
import attrs
import pytest

import strego
from strego.backends.memory import MemoryBackend
from strego.error_text import exception_message, exception_text
from strego.handlers import Registry
from strego.queue_order import QueueOrder
from strego.server import consumer_name, describe_exception, parse_consumer_name
from strego.task import TaskInfo, TaskState

INFO = TaskInfo(
    id="x", type="t", queue="default", state=TaskState.ACTIVE, payload=b"", encoding="json",
    max_retry=3,
)  # fmt: skip
ERR = RuntimeError("boom")


def test_full_jitter_stays_under_the_exponential_ceiling_and_the_cap() -> None:
    backoff = strego.ExponentialBackoff(base=1.0, cap=30.0, rng=random.Random(1))
    for retried in range(12):
        ceiling = min(30.0, 2.0**retried)
        delays = [backoff(retried, ERR, INFO) for _ in range(200)]
        assert all(0 <= d <= ceiling for d in delays)
        assert max(delays) > ceiling / 2  # spread over the range, not stuck at 0
    assert backoff(10_000, ERR, INFO) <= 30.0  # no overflow for huge counts


def test_decorrelated_jitter_stays_between_base_and_cap() -> None:
    backoff = strego.ExponentialBackoff(base=0.5, cap=10.0, jitter="decorrelated")
    for retried in range(20):
        assert all(0.5 <= backoff(retried, ERR, INFO) <= 10.0 for _ in range(100))
    late = [backoff(15, ERR, INFO) for _ in range(200)]
    assert sum(late) / len(late) > 2.0  # it grows with the retries


def test_backoff_options_are_checked() -> None:
    with pytest.raises(ValueError, match="base"):
        strego.ExponentialBackoff(base=0)


def test_round_robin_rotates() -> None:
    order = QueueOrder(["a", "b", "c"])
    assert [order.next()[0] for _ in range(4)] == ["a", "b", "c", "a"]
    assert order.next() == ["b", "c", "a"]


def test_weighted_order_is_proportional() -> None:
    order = QueueOrder({"a": 6, "b": 3, "c": 1}, rng=random.Random(7))
    first = Counter(order.next()[0] for _ in range(10_000))
    assert 5500 < first["a"] < 6500
    assert 2500 < first["b"] < 3500
    assert 700 < first["c"] < 1300
    assert sorted(order.next()) == ["a", "b", "c"]


def test_strict_order_is_by_weight_or_list() -> None:
    assert QueueOrder({"low": 1, "high": 9, "mid": 5}, strict=True).next() == [
        "high", "mid", "low"
    ]  # fmt: skip
    assert QueueOrder(["x", "y"], strict=True).next() == ["x", "y"]


@pytest.mark.parametrize("queues", [[], {"a": 0}, {"a": -1}, ["a", "a"], ["bad name"], {"a": True}])
def test_bad_queue_specs_are_refused(queues: Any) -> None:
    with pytest.raises(ValueError):
        QueueOrder(queues)


def test_handlers_are_registered_once_with_their_argument_type() -> None:
    registry = Registry()

    async def raw(task: strego.Task) -> None: ...

    def untyped(task):  # type: ignore[no-untyped-def]
        ...

    async def typed(payload: dict[str, int]) -> None: ...

    assert registry.add("raw", raw).argument_type is strego.Task
    assert registry.add("untyped", untyped).argument_type is strego.Task
    handler = registry.add("typed", typed)
    assert handler.argument_type == dict[str, int]
    assert handler.is_async
    assert not registry.get("untyped").is_async  # type: ignore[union-attr]
    with pytest.raises(ValueError, match="already registered"):
        registry.add("raw", raw)
    with pytest.raises(TypeError, match="one positional argument"):
        registry.add("none", lambda: None)


async def _no_argument() -> None: ...


def _two_required(task: strego.Task, other: int) -> None: ...


async def _keyword_only(*, task: strego.Task) -> None: ...


def _keywords(**kwargs: Any) -> None: ...


class _CallableWithoutArgument:
    async def __call__(self) -> None: ...


@pytest.mark.parametrize(
    "func",
    [_no_argument, _two_required, _keyword_only, _keywords, _CallableWithoutArgument()],
    ids=["no-argument", "two-required", "keyword-only", "kwargs", "callable-object"],
)
def test_a_handler_that_cannot_take_one_argument_is_refused_at_registration(func: Any) -> None:
    server = strego.Server(MemoryBackend())
    with pytest.raises(strego.HandlerSignatureError) as caught:
        server.handler("job")(func)
    assert isinstance(caught.value, TypeError)
    assert isinstance(caught.value, strego.StregoError)
    message = str(caught.value)
    assert "'job'" in message
    assert "takes exactly one positional argument, the task or its payload" in message
    assert "async def handle(task: strego.Task) -> None" in message
    assert server.registry.get("job") is None  # nothing half registered


def _optional_second(task: strego.Task, retries: int = 3) -> None: ...


async def _star_args(*args):  # type: ignore[no-untyped-def]
    ...


async def _with_options(task: strego.Task, *, verbose: bool = False) -> None: ...


class _CallableWithArgument:
    async def __call__(self, task: strego.Task) -> None: ...


@pytest.mark.parametrize(
    "func",
    [
        _optional_second,
        _star_args,
        _with_options,
        _CallableWithArgument(),
        functools.partial(_two_required, other=1),
    ],
    ids=["optional-second", "star-args", "keyword-options", "callable-object", "partial"],
)
def test_a_handler_taking_one_argument_with_extras_is_accepted(func: Any) -> None:
    server = strego.Server(MemoryBackend())
    assert server.handler("job")(func) is func
    handler = server.registry.get("job")
    assert handler is not None and handler.argument_type is strego.Task


def test_a_handler_whose_annotation_cannot_be_resolved_is_refused() -> None:
    @attrs.define
    class Local:  # not reachable from the module's globals: its string annotation cannot resolve
        x: int

    async def handle(payload: Local) -> None: ...

    with pytest.raises(TypeError, match="define the payload type at module level"):
        strego.Server(MemoryBackend()).handler("job")(handle)


class _StrRaises(ValueError):
    def __str__(self) -> str:
        raise RuntimeError("no str")


class _StrExits(ValueError):
    def __str__(self) -> str:
        raise SystemExit(1)


def test_an_exception_text_never_raises() -> None:
    assert exception_text(_StrRaises()) == "<unprintable _StrRaises>"
    assert exception_text(_StrExits()) == "<unprintable _StrExits>"
    assert exception_message(_StrExits()) == "<unprintable _StrExits>"
    assert exception_text(ValueError("\ud800 lone")) == "ValueError: \\ud800 lone"
    assert exception_text(KeyboardInterrupt()) == "KeyboardInterrupt"
    assert describe_exception(_StrRaises()) == "<unprintable _StrRaises>"


def test_current_task_outside_a_handler() -> None:
    with pytest.raises(LookupError, match="inside a running handler"):
        strego.current_task()


@pytest.mark.parametrize(
    "options",
    [
        {"concurrency": 0},
        {"concurrency": 1.5},
        {"claim_stale_after": 0},
        {"shutdown_timeout": -1},
        {"max_deliveries": 0},
        {"default_timeout": 0},
        {"queues": []},
    ],
)
def test_bad_server_options_are_refused(options: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        strego.Server(MemoryBackend(), **options)


def test_server_defaults() -> None:
    server = strego.Server(MemoryBackend())
    assert server.queues == ["default"]
    assert server.concurrency == 10
    assert server.lease_ms == 30_000
    assert server.recovery_interval == 5.0
    assert server.max_deliveries == 5
    assert set(server.serializers) >= {"json"}
    assert server.name != strego.Server(MemoryBackend()).name


def test_client_options_are_checked() -> None:
    with pytest.raises(ValueError, match="positive"):
        strego.Client(MemoryBackend(), max_payload_bytes=0)


class FetchSpy(MemoryBackend):
    """Notes the `ordered` of every fetch."""

    def __init__(self) -> None:
        super().__init__()
        self.ordered: set[bool] = set()

    async def fetch(self, *args: Any, ordered: bool = True, **kwargs: Any) -> list[TaskInfo]:
        self.ordered.add(ordered)
        return await super().fetch(*args, ordered=ordered, **kwargs)


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("options", "ordered"),
    [({"queues": ["a", "b"]}, False), ({"queues": {"a": 1, "b": 2}}, False),
     ({"queues": ["a", "b"], "strict": True}, True)],
)  # fmt: skip
async def test_only_a_strict_server_asks_for_its_queue_order_exactly(
    options: dict[str, Any], ordered: bool
) -> None:
    # round-robin and weighted orders are preferences: the backend may save a round trip
    backend = FetchSpy()
    await strego.Client(backend).enqueue(strego.Task("t", queue="b"))
    server = strego.Server(backend, **options)
    ran = anyio.Event()

    @server.handler("t")
    async def t(task: strego.Task) -> None:
        ran.set()

    async with server:
        with anyio.fail_after(10):
            await ran.wait()
    assert backend.ordered == {ordered}


class HeldBySpy(MemoryBackend):
    """Notes every `held_by` and `consumers` call."""

    def __init__(self) -> None:
        super().__init__()
        self.held_by_calls: list[tuple[list[str], str]] = []
        self.consumers_calls = 0

    async def held_by(self, queues: Sequence[str], consumer: str) -> dict[str, list[str]]:
        self.held_by_calls.append((list(queues), consumer))
        return await super().held_by(queues, consumer)

    async def consumers(self, queue: str) -> list[Any]:
        self.consumers_calls += 1
        return await super().consumers(queue)


@pytest.mark.anyio
async def test_shutdown_looks_for_stray_tasks_in_every_queue_with_one_call() -> None:
    # a call per queue would cost a server of many queues a round trip each to stop
    backend = HeldBySpy()
    queues = [f"q{i}" for i in range(30)]
    server = strego.Server(backend, queues=queues)
    async with server:
        pass
    assert backend.held_by_calls == [(queues, server.name)]
    assert backend.consumers_calls == 0


def test_a_default_consumer_name_gives_its_host_and_pid() -> None:
    import os
    import socket

    assert parse_consumer_name(consumer_name()) == (socket.gethostname(), os.getpid())
    assert parse_consumer_name("web-1.example:42:0a1b2c3d") == ("web-1.example", 42)


@pytest.mark.parametrize(
    "name",
    ["", "worker-a", "host:42", "host:pid:0a1b2c3d", ":42:0a1b2c3d", "host:42:0A1B2C3D",
     "host:42:0a1b2c3", "a:b:42:0a1b2c3d", "host:42:0a1b2c3d\n", "<b>:1:0a1b2c3d:"],
)  # fmt: skip
def test_another_consumer_name_is_not_guessed_at(name: str) -> None:
    assert parse_consumer_name(name) is None
