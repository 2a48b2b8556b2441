"""Payload bytes and task fields round-trip exactly."""

from __future__ import annotations

import pytest

from conformance.helpers import LEASE_MS
from strego.backends.base import Backend
from strego.message import TaskMessage

pytestmark = pytest.mark.anyio

PAYLOADS = [
    b"",
    b"[]",
    b"{}",
    b"null",
    b"0",
    b"3.141592653589793",
    b"\x00",
    b"\xff\xfe\xfd",  # not UTF-8
    b"\xed\xa0\x80",  # an encoded lone surrogate: not valid UTF-8 either
    bytes(range(256)),
    "héllo ✓ 😀".encode(),
    b"x" * 200_000,
]


@pytest.mark.parametrize("payload", PAYLOADS, ids=range(len(PAYLOADS)))
async def test_payload_round_trips(backend: Backend, payload: bytes) -> None:
    info = await backend.enqueue(
        TaskMessage(id="p", type="t", queue="q", payload=payload, encoding="raw")
    )
    assert info.payload == payload
    stored = await backend.get_task("p", "q")
    assert stored is not None and stored.payload == payload
    [fetched] = await backend.fetch(["q"], 1, "c1", lease_ms=LEASE_MS)
    assert fetched.payload == payload and type(fetched.payload) is bytes


async def test_fields_round_trip(backend: Backend) -> None:
    msg = TaskMessage(
        id="f",
        type="email.send:v2",
        queue="mail.out-1",
        payload=b'{"to":"a@b"}',
        encoding="msgpack",
        max_retry=7,
        priority=4,
        timeout_ms=30_000,
        labels={"tenant": "acme", "ünï": "cödé"},
        unique_key="user:1 / mail",
        unique_ttl_ms=60_000,
        created_ms=1_700_000_000_123,
    )
    await backend.enqueue(msg)
    [task] = await backend.fetch(["mail.out-1"], 1, "c1", lease_ms=LEASE_MS)
    stored = await backend.get_task("f")
    for info in (task, stored):
        assert info is not None
        assert (info.id, info.type, info.queue) == ("f", "email.send:v2", "mail.out-1")
        assert (info.encoding, info.max_retry, info.priority) == ("msgpack", 7, 4)
        assert (info.timeout_ms, info.labels) == (30_000, {"tenant": "acme", "ünï": "cödé"})
        assert (info.unique_key, info.created_ms) == ("user:1 / mail", 1_700_000_000_123)
