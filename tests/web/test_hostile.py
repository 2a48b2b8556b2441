"""Hostile task data through the API, on memory and Redis under asyncio and trio: task types,
payloads, errors, labels and consumer names with markup, quotes and invalid UTF-8 come back intact
as JSON (never interpreted), and the JSON text holds no raw markup character to inject."""

from __future__ import annotations

import base64
import json

import pytest

from strego import Client, Task
from strego.backends.base import Backend
from strego.web import create_app
from tests.web.support import LEASE_MS, http

pytestmark = pytest.mark.anyio

API = "/api/v1"
MARKUP = "<script>alert(1)</script><img src=x onerror=alert(2)>\"'`&amp;</textarea>"
#: what a JSON payload or a text holds that breaks naive UTF-8 handling: a lone surrogate is
#: stored escaped (the serializer's way), a NUL and a bidi override as they are
ODD = "\x00\u202e\U0001f4a3\\u0000"


async def test_hostile_data_comes_back_intact_and_inert(backend: Backend) -> None:
    client = Client(backend)
    consumer = f"{MARKUP}:1:deadbeef"
    raw = b"\xff\xfe\x00<script>\xc3("  # not UTF-8
    typed = await client.enqueue(
        Task(MARKUP + ODD, {MARKUP: [MARKUP, ODD, "\udcff"]}, queue="q", labels={MARKUP: ODD})
    )
    binary = await client.enqueue(Task("raw", raw, queue="q"))
    (active,) = await backend.fetch(["q"], 1, consumer, lease_ms=LEASE_MS)
    assert active.id == typed.id
    await backend.fail("q", typed.id, consumer, MARKUP + ODD, retry_in_ms=None)
    await backend.fetch(["q"], 1, consumer, lease_ms=LEASE_MS)  # the raw one: held by consumer

    async with http(create_app(backend)) as api:
        answers = [
            await api.get(f"{API}/tasks/{typed.id}"),
            await api.get(f"{API}/tasks/{binary.id}"),
            await api.get(f"{API}/queues/q/tasks?state=dead"),
            await api.get(f"{API}/workers"),
            await api.get(f"{API}/queues"),
            await api.get(f"{API}/queues/%3Cscript%3E"),
        ]
        download = await api.get(f"{API}/tasks/{binary.id}/payload")
    for r in answers:
        assert r.headers["content-type"] == "application/json"
        assert r.content.isascii()
        for char in b"<>&":
            assert char not in r.content  # escaped as \u003c ... inside strings
    dead, shown_raw, page, workers, _, refused = (r.json() for r in answers)
    assert dead["type"] == MARKUP + ODD
    assert dead["last_error"] == MARKUP + ODD
    assert dead["labels"] == {MARKUP: ODD}
    payload = dead["payload"]
    assert payload["text"] is not None and payload["truncated"] is False
    assert payload["text"].encode() == typed.payload  # the stored bytes, not evaluated
    assert json.loads(payload["text"]) == {MARKUP: [MARKUP, ODD, "\udcff"]}
    assert page["tasks"][0]["type"] == MARKUP + ODD
    assert shown_raw["payload"]["text"] is None
    assert base64.b64decode(shown_raw["payload"]["base64"]) == raw
    assert shown_raw["consumer"] == consumer
    assert [w["name"] for w in workers["workers"]] == [consumer]
    assert workers["workers"][0]["host"] == MARKUP and workers["workers"][0]["pid"] == 1
    assert refused["error"] == "not_found"
    assert download.content == raw
    assert download.headers["x-content-type-options"] == "nosniff"
