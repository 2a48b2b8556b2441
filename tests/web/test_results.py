"""Results, errors, cancel requests, headers and periodic schedules through the JSON API and the
web UI, on memory and Redis under asyncio and trio: hostile data comes back intact as JSON and is
shown as text; a result is never deserialized, and hidden once its result_ttl has passed."""

from __future__ import annotations

import base64
import json
from typing import Any

import attrs
import pytest
from markupsafe import escape

from conformance.clock import FakeClock
from strego.backends.base import Backend, ScheduleDefinition
from strego.report import LIST_PAYLOAD_LIMIT
from strego.task import TaskError
from strego.web import create_app
from tests.web.seed import HOSTILE, message
from tests.web.support import LEASE_MS, http

pytestmark = pytest.mark.anyio

API = "/api/v1"
CONSUMER = "c"
MARKUP = "".join(HOSTILE) + "</pre>&amp;"
#: a result's value that would run code if a UI or client evaluated it
HOSTILE_RESULT = {"html": MARKUP, "odd": "\x00\u202e\U0001f4a3", "long": "x" * 600}
TRACEBACK = f'Traceback (most recent call last):\n  File "<{MARKUP}>", line 1\nValueError: {MARKUP}'


async def ended(backend: Backend, clock: FakeClock) -> dict[str, str]:
    """Tasks in queue "r": completed with a hostile JSON result, with raw (non UTF-8) bytes,
    with none, with a result kept 1 s; dead with a hostile error; active with a cancel request
    and trace headers."""
    headers = {"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"}
    names = ("json", "raw", "none", "short", "dead", "active")
    for name in names:
        fields: dict[str, Any] = {"max_retry": 0}
        if name == "short":
            fields["result_ttl_ms"] = 1000
        if name == "active":
            fields["headers"] = {**headers, "baggage": MARKUP}
        await backend.enqueue(message(f"t-{name}", "r", f"type {MARKUP}", **fields))
    fetched = await backend.fetch(["r"], len(names), CONSUMER, lease_ms=LEASE_MS)
    assert len(fetched) == len(names)
    value = json.dumps(HOSTILE_RESULT).encode()
    assert await backend.ack("r", "t-json", CONSUMER, result=b"json\n" + value)
    assert await backend.ack("r", "t-raw", CONSUMER, result=b"raw\n\xff\xfe<script>\x00")
    assert await backend.ack("r", "t-none", CONSUMER)
    assert await backend.ack("r", "t-short", CONSUMER, result=b'json\n"brief"')
    detail = TaskError(f"Error{MARKUP}", MARKUP, TRACEBACK)
    state = await backend.fail("r", "t-dead", CONSUMER, MARKUP, retry_in_ms=None, detail=detail)
    assert state is not None and state.value == "dead"
    assert await backend.cancel("t-active")  # running: a request its server acts on
    return {name: f"t-{name}" for name in names}


def assert_inert(body: bytes) -> None:
    assert body.isascii()
    for char in b"<>&":
        assert char not in body  # escaped inside the JSON strings


async def test_task_json_has_result_error_cancel_request_and_headers(
    backend: Backend, clock: FakeClock
) -> None:
    ids = await ended(backend, clock)
    async with http(create_app(backend)) as api:
        answers = {name: await api.get(f"{API}/tasks/{id_}") for name, id_ in ids.items()}
        page = await api.get(f"{API}/queues/r/tasks", params={"state": "completed"})
        clock.advance(1000)  # "short"'s result_ttl passes (the record stays)
        later = await api.get(f"{API}/tasks/{ids['short']}")
    for answer in [*answers.values(), page, later]:
        assert answer.status_code == 200
        assert_inert(answer.content)
    views = {name: answer.json() for name, answer in answers.items()}

    result = views["json"]["result"]
    assert result["encoding"] == "json" and result["truncated"] is False
    assert result["base64"] is None
    assert json.loads(result["text"]) == HOSTILE_RESULT  # the stored text, never evaluated
    assert result["size"] == len(json.dumps(HOSTILE_RESULT).encode())
    assert views["json"]["result_ttl_ms"] == 3_600_000  # the default, filled in
    assert views["json"]["error"] is None and views["json"]["cancel_requested"] is False

    raw = views["raw"]["result"]
    assert raw["encoding"] == "raw" and raw["text"] is None
    assert base64.b64decode(raw["base64"]) == b"\xff\xfe<script>\x00"
    assert views["none"]["result"] is None
    assert views["short"]["result"]["text"] == '"brief"'
    assert views["short"]["result_ttl_ms"] == 1000
    assert later.json()["result"] is None  # its result_ttl passed: gone, as Client.result says

    dead = views["dead"]
    assert dead["state"] == "dead" and dead["result"] is None
    assert dead["error"] == {"type": f"Error{MARKUP}", "message": MARKUP, "traceback": TRACEBACK}
    assert dead["last_error"] == MARKUP

    active = views["active"]
    assert active["state"] == "active" and active["cancel_requested"] is True
    assert active["headers"]["baggage"] == MARKUP
    assert active["headers"]["traceparent"].startswith("00-0af7651916cd43dd")

    listed = {t["id"]: t for t in page.json()["tasks"]}
    shown = listed[ids["json"]]["result"]
    assert shown["truncated"] is True and shown["size"] > LIST_PAYLOAD_LIMIT
    assert len(shown["text"].encode()) <= LIST_PAYLOAD_LIMIT


def schedule(schedule_id: str, queue: str, spec: str = "every 60000ms") -> ScheduleDefinition:
    template = attrs.evolve(message(schedule_id, queue, f"report {MARKUP}"), labels={})
    return ScheduleDefinition(schedule_id, spec, "Europe/Paris", "latest", template)


async def test_schedules_endpoint(backend: Backend, clock: FakeClock) -> None:
    async with http(create_app(backend)) as api:
        empty = await api.get(f"{API}/schedules")
        assert empty.json() == {"now_ms": clock(), "schedules": []}
        first = await backend.put_schedule(schedule("nightly", "reports", "0 3 * * *"), clock())
        await backend.put_schedule(schedule("beat", "ping"), clock() + 60_000)
        assert await backend.fire_schedule(first, clock(), clock() + 86_400_000) == "fired"
        answer = await api.get(f"{API}/schedules")
    assert answer.status_code == 200
    assert_inert(answer.content)
    listed = answer.json()
    assert listed["now_ms"] == clock()
    beat, nightly = listed["schedules"]
    assert beat == {
        "id": "beat",
        "queue": "ping",
        "type": f"report {MARKUP}",
        "spec": "every 60000ms",
        "tz": "Europe/Paris",
        "catchup": "latest",
        "revision": 1,
        "next_ms": clock() + 60_000,
        "last_fire_ms": None,
        "last_task_id": None,
    }
    assert nightly["spec"] == "0 3 * * *" and nightly["next_ms"] == clock() + 86_400_000
    assert nightly["last_fire_ms"] == clock()
    assert nightly["last_task_id"] == f"nightly:{clock()}"


async def test_task_page_shows_result_error_and_cancel_request_as_text(
    backend: Backend, clock: FakeClock
) -> None:
    ids = await ended(backend, clock)
    async with http(create_app(backend)) as ui:
        pages = {name: (await ui.get(f"/tasks/{id_}")).text for name, id_ in ids.items()}
        clock.advance(1000)
        later = (await ui.get(f"/tasks/{ids['short']}")).text
    for page in pages.values():
        for hostile in HOSTILE:
            assert hostile not in page  # never markup
    shown = pages["json"]
    assert "Result" in shown and "shown as json" in shown
    # pretty JSON of the stored text, escaped
    assert str(escape(json.dumps(HOSTILE_RESULT["html"]))) in shown
    assert "shown as hex" in pages["raw"] and "ff fe 3c 73" in pages["raw"]
    assert "none kept" in pages["none"]
    assert "&#34;brief&#34;" in pages["short"] and "none kept" in later
    dead = pages["dead"]
    assert 'id="task-error"' in dead
    assert str(escape(TRACEBACK)) in dead and str(escape(f"Error{MARKUP}")) in dead
    assert 'id="cancel-requested"' in pages["active"]
    assert 'id="cancel-requested"' not in pages["json"]


async def test_schedules_page(backend: Backend, clock: FakeClock) -> None:
    async with http(create_app(backend)) as ui:
        empty = await ui.get("/schedules")
        assert empty.status_code == 200 and "No periodic schedule" in empty.text
        info = await backend.put_schedule(schedule("nightly", "reports", "0 3 * * *"), clock())
        await backend.fire_schedule(info, clock(), clock() + 3_600_000)
        page = await ui.get("/schedules")
    assert page.status_code == 200
    assert page.headers["content-security-policy"].startswith("default-src 'none'")
    for hostile in HOSTILE:
        assert hostile not in page.text
    assert str(escape(f"report {MARKUP}")) in page.text
    assert "0 3 * * * (Europe/Paris)" in page.text
    assert f'href="/tasks/nightly%3A{clock()}"' in page.text
    assert "in 1h 00m" in page.text
