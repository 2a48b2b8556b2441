"""The pieces of results on their own: Task.result_ttl, how a return value is stored, a dead
task's error detail, and what `Client.result` says of an ended task."""

from __future__ import annotations

from datetime import timedelta

import pytest

import strego
from conformance.clock import FakeClock
from strego.backends.memory import MemoryBackend
from strego.execution import MAX_TRACEBACK_CHARS, error_detail
from strego.message import TaskMessage
from strego.server import Server

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def test_result_ttl_is_checked_and_stored_only_when_not_the_default() -> None:
    assert strego.Task("t").result_ttl is None
    assert strego.Task("t", result_ttl=0).result_ttl == 0
    assert strego.Task("t", result_ttl=timedelta(minutes=2)).result_ttl == 120
    for bad in (-1, "1", float("nan"), True):
        with pytest.raises(strego.InvalidTaskError):
            strego.Task("t", result_ttl=bad)  # type: ignore[arg-type]
    client = strego.Client(MemoryBackend())
    assert client.message(strego.Task("t")).result_ttl_ms is None
    assert client.message(strego.Task("t", result_ttl=3600)).result_ttl_ms is None  # default
    assert client.message(strego.Task("t", result_ttl=1.5)).result_ttl_ms == 1500
    assert client.message(strego.Task("t", result_ttl=0)).result_ttl_ms == 0


def _info(encoding: str) -> strego.TaskInfo:
    message = TaskMessage(id="a", type="t", queue="q", payload=b"", encoding=encoding)
    return message.info(strego.TaskState.ACTIVE)


def test_a_return_value_is_stored_by_the_tasks_serializer() -> None:
    server = Server(MemoryBackend())
    assert server._encode_result(_info("json"), {"a": [1]}) == b'json\n{"a":[1]}'
    assert server._encode_result(_info("json"), b"\x00") == b"raw\n\x00"
    # a task of raw bytes has no serializer of its own: JSON
    assert server._encode_result(_info("raw"), 5) == b"json\n5"
    with pytest.raises(strego.SerializationError):
        server._encode_result(_info("json"), object())


def test_error_detail_keeps_the_end_of_a_long_traceback() -> None:
    def fail() -> None:
        raise ValueError("x" * 5000 + "END")

    try:
        fail()
    except ValueError as exc:
        detail = error_detail(exc)
    assert detail.type == "ValueError" and detail.message.startswith("xxx")
    assert len(detail.message) == 2000  # as last_error
    assert len(detail.traceback) == MAX_TRACEBACK_CHARS
    assert detail.traceback.rstrip().endswith("xEND")

    class Unprintable(Exception):
        def __str__(self) -> str:
            raise RuntimeError("no")

    detail = error_detail(Unprintable())
    assert detail.type.endswith("Unprintable") and "unprintable" in detail.message


async def test_a_result_past_its_ttl_is_not_found() -> None:
    clock = FakeClock()
    backend = MemoryBackend(clock=clock)
    client = strego.Client(backend)
    info = await client.enqueue(strego.Task("t", result_ttl=10))
    await backend.fetch(["default"], 1, "c", lease_ms=60_000)
    await backend.ack("default", info.id, "c", result=b"json\n1")
    assert await client.result(info.id) == 1
    clock.advance(9_999)
    assert await client.result(info.id) == 1
    clock.advance(1)
    with pytest.raises(strego.TaskNotFoundError):
        await client.result(info.id)


async def test_a_result_of_an_unknown_encoding_raises_decode_error() -> None:
    backend = MemoryBackend()
    client = strego.Client(backend)
    info = await client.enqueue(strego.Task("t"))
    await backend.fetch(["default"], 1, "c", lease_ms=60_000)
    await backend.ack("default", info.id, "c", result=b"pickle\n...")
    with pytest.raises(strego.errors.DecodeError):
        await client.result(info.id)
