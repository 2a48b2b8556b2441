"""A queue that cannot be read (another program's key of another type under strego's prefix, on a
real redis-server, under asyncio and trio) does not hide the others: the API's queue and worker
lists, the UI's overview (page, poll and event stream) and its workers page show every other queue
as usual and that one as unreadable, with its error as text. An error text with markup or a
terminal escape stays text in JSON, HTML and the CLI's table; a backend out of reach still fails
the whole read (503)."""

from __future__ import annotations

import argparse
import html
import json
from collections.abc import AsyncIterator, Iterator

import pytest
import redis

from strego import Client, Task
from strego.backends.base import ConsumerInfo, QueueInfo
from strego.backends.memory import MemoryBackend
from strego.backends.redis import RedisBackend
from strego.backends.redis.keys import Keys
from strego.commands import operator
from strego.errors import BackendConnectionError, ForeignKeyError
from strego.web import create_app
from strego.web.api import Api
from strego.web.live import LiveOverview
from tests.faults.support import make_backend
from tests.web.support import LEASE_MS, http

pytestmark = pytest.mark.anyio

API = "/api/v1"
PREFIX = "unread"
CONSUMER = "host-a:4242:0badcafe"
WRONGTYPE = "ForeignKeyError: WRONGTYPE Operation against a key holding the wrong kind of value"
#: an error text as hostile as a message can be: markup, an entity, quotes, a terminal escape
HOSTILE = "<script>alert(1)</script>&amp;\"'\x1b[2J"


@pytest.fixture
def raw(clean_redis_url: str) -> Iterator[redis.Redis]:
    r = redis.Redis.from_url(clean_redis_url)
    try:
        yield r
    finally:
        r.close()


@pytest.fixture
async def backend(clean_redis_url: str, anyio_backend: object) -> AsyncIterator[RedisBackend]:
    b = make_backend(clean_redis_url, PREFIX, anyio_backend)
    try:
        yield b
    finally:
        await b.aclose()


async def foreign(backend: RedisBackend, raw: redis.Redis) -> str:
    """Queues "a", "b" and "c", each with an active task held by CONSUMER; then "b"'s leases
    key replaced by another program's string (which queue_info and consumers both read). Its
    key."""
    client = Client(backend)
    for queue in ("a", "b", "c"):
        await client.enqueue(Task("job", queue=queue))
        assert await backend.fetch([queue], 1, CONSUMER, lease_ms=LEASE_MS)
    key = Keys(PREFIX, "b").leases
    raw.delete(key)
    raw.set(key, "someone else's")
    return key


def readable(row: dict[str, object]) -> bool:
    counts = row["counts"]
    return row["error"] is None and isinstance(counts, dict) and counts["active"] == 1


@pytest.mark.redis
async def test_api_lists_the_other_queues_and_the_unreadable_one(
    backend: RedisBackend, raw: redis.Redis
) -> None:
    key = await foreign(backend, raw)
    async with http(create_app(backend)) as api:
        queues = await api.get(f"{API}/queues")
        workers = await api.get(f"{API}/workers")
        one = await api.get(f"{API}/queues/b")
    assert queues.status_code == 200
    a, b, c = queues.json()["queues"]
    assert readable(a) and readable(c) and a["history"] is not None
    assert b == {
        "name": "b",
        "error": WRONGTYPE,
        "paused": None,
        "counts": None,  # not zeros: nothing is known of them
        "oldest_pending_age_ms": None,
        "history": None,
    }
    assert workers.status_code == 200
    listed = workers.json()
    assert [(w["name"], w["queue"]) for w in listed["workers"]] == [
        (CONSUMER, "a"),
        (CONSUMER, "c"),
    ]
    assert listed["unreadable"] == [{"name": "b", "error": WRONGTYPE}]
    # the queue asked for by name: its read fails as a typed backend error
    assert one.status_code == 503 and one.json()["message"] == WRONGTYPE
    assert raw.get(key) == b"someone else's"  # never touched


@pytest.mark.redis
async def test_ui_shows_the_unreadable_queue_beside_the_others(
    backend: RedisBackend, raw: redis.Redis
) -> None:
    await foreign(backend, raw)
    async with http(create_app(backend, readonly=False)) as ui:
        page = await ui.get("/")
        poll = await ui.get("/ui/overview.json")
        workers = await ui.get("/workers")
    assert page.status_code == poll.status_code == workers.status_code == 200
    assert 'data-queue="b" data-error class="unreadable"' in page.text
    assert f'data-field="error">{WRONGTYPE}</td>' in page.text
    for queue in ("a", "c"):  # their rows as usual: counts, and the pause button
        assert f'<a href="/queues/{queue}?state=active" data-count="active">1</a>' in page.text
        assert f'data-url="/api/v1/queues/{queue}/pause"' in page.text
    assert 'href="/queues/b' not in page.text and "/queues/b/pause" not in page.text
    rows = {q["name"]: q for q in poll.json()["queues"]}
    assert rows["b"]["error"] == WRONGTYPE and rows["b"]["counts"] is None
    assert not rows["b"]["no_workers"]
    assert readable(rows["a"]) and readable(rows["c"]) and rows["a"]["consumers"] == 1
    assert f'Queue <span class="literal">b</span> could not be read: {WRONGTYPE}' in workers.text
    assert '<a href="/queues/a">a</a>' in workers.text

    # the event stream sends the same snapshot
    api = Api(backend)

    async def queues() -> list[dict[str, object]]:
        return (await api.overview.get()).data

    async def consumers() -> list[dict[str, object]]:
        return (await api.workers.get()).data

    events = LiveOverview(queues, consumers, 1.0).events()
    assert await events.__anext__() == b"retry: 3000\n\n"
    event = (await events.__anext__()).decode()
    await events.aclose()
    assert event.startswith("event: overview\ndata: ")
    streamed = json.loads(event.removeprefix("event: overview\ndata: "))["queues"]
    assert [(q["name"], q["error"]) for q in streamed] == [
        ("a", None),
        ("b", WRONGTYPE),
        ("c", None),
    ]


class Hostile(MemoryBackend):
    """Queue "b" fails every read with `error` (a foreign key's, with hostile text, or an
    outage)."""

    def __init__(self, error: Exception) -> None:
        super().__init__()
        self.error = error

    async def queue_info(self, queue: str) -> QueueInfo:
        if queue == "b":
            raise self.error
        return await super().queue_info(queue)

    async def consumers(self, queue: str) -> list[ConsumerInfo]:
        if queue == "b":
            raise self.error
        return await super().consumers(queue)


async def hostile(error: Exception) -> Hostile:
    backend = Hostile(error)
    client = Client(backend)
    for queue in ("a", "b", "c"):
        await client.enqueue(Task("job", queue=queue))
    return backend


async def test_hostile_error_text_is_text(capsys: pytest.CaptureFixture[str]) -> None:
    backend = await hostile(ForeignKeyError(HOSTILE))
    shown = f"ForeignKeyError: {HOSTILE}"
    try:
        async with http(create_app(backend, readonly=False)) as web:
            answers = [await web.get(f"{API}/queues"), await web.get(f"{API}/workers")]
            polled = await web.get("/ui/overview.json")
            pages = [await web.get("/"), await web.get("/workers")]
        for r in [*answers, polled]:
            assert r.status_code == 200 and r.content.isascii()
            for char in b"<>&":
                assert char not in r.content  # escaped as \u003c ... inside strings
        queues, workers = (r.json() for r in answers)
        assert [(q["name"], q["error"]) for q in queues["queues"]] == [
            ("a", None), ("b", shown), ("c", None),
        ]  # fmt: skip
        assert workers["unreadable"] == [{"name": "b", "error": shown}]
        assert polled.json()["queues"][1]["error"] == shown
        for page in pages:
            assert page.status_code == 200
            assert "<script>alert(1)</script>" not in page.text
            assert html.escape(shown, quote=False) in page.text.replace("&#34;", '"').replace(
                "&#39;", "'"
            )

        # the CLI: the others' rows, then the error with the escape shown, never sent
        args = argparse.Namespace(json=False)
        assert await operator.queues(backend, args) == 0
        assert await operator.workers(backend, args) == 0
        out = capsys.readouterr().out
        assert "\x1b" not in out
        line = "b: unreadable: ForeignKeyError: <script>alert(1)</script>&amp;\"'\\x1b[2J"
        assert out.count(line) == 2
        table = out.splitlines()
        assert [row.split()[0] for row in table[1:4]] == ["a", "b", "c"]
        assert table[2].split() == ["b", *["?"] * 10]  # no counts for b (not paused either)
        assert await operator.queues(backend, argparse.Namespace(json=True)) == 0
        printed = json.loads(capsys.readouterr().out)["queues"]
        assert printed[1] == {
            "name": "b",
            "error": shown,
            "paused": None,
            "counts": None,
            "oldest_pending_age_ms": None,
            "history": None,
        }
    finally:
        await backend.aclose()


async def test_a_backend_out_of_reach_still_fails_the_whole_read() -> None:
    backend = await hostile(BackendConnectionError("connection reset"))
    try:
        async with http(create_app(backend)) as api:
            for path in ("/queues", "/workers"):
                r = await api.get(API + path)
                assert r.status_code == 503, path
                assert r.json()["message"] == "BackendConnectionError: connection reset"
    finally:
        await backend.aclose()
