"""The task history (PostgreSQL) in the web app, through httpx.ASGITransport under asyncio and
trio, on a throwaway database: GET /api/v1/history and /api/v1/history/{id}, the History tab's
search and story pages; every filter finds what was stored, pages by cursor, each attempt with its
error, hostile task data as inert text, 400 for bad input, 503 when PostgreSQL cannot be reached,
and nothing of it without a history."""

from __future__ import annotations

import html
import json
import re
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from markupsafe import escape

from strego import Client, Task
from strego.backends.memory import MemoryBackend
from strego.history import PostgresHistory
from strego.web import create_app
from strego.web.history import MAX_LIMIT
from tests.redis_server import free_port
from tests.web.seed import HOSTILE, HOSTILE_CONSUMER, HistoryEvents
from tests.web.support import http
from tests.web.test_ui import inline_code

pytestmark = pytest.mark.anyio

API = "/api/v1"


def ms(text: str) -> int:
    return int(datetime.fromisoformat(text).timestamp() * 1000)


A_AT = ms("2026-03-01T12:00:00+00:00")
B_AT = ms("2026-03-05T12:00:00+00:00")
BULK_AT = ms("2026-02-20T12:00:00+00:00")


def ids_at(at: int, n: int = 1) -> list[str]:
    from strego.ids import new_task_id

    return [new_task_id(at + i) for i in range(n)]


@pytest.fixture
async def stored(history: PostgresHistory) -> dict[str, Any]:
    """Task a (mail, email.send, order=1234: a retry, then completed), b (reports, dead) and
    seven bulk.job tasks (pending), stored in the history."""
    story = HistoryEvents()
    [a] = ids_at(A_AT)
    [b] = ids_at(B_AT)
    bulk = ids_at(BULK_AT, 7)
    story.task(
        a, "mail", "email.send", A_AT,
        [("active", None, "w1"), ("retry", "SMTP 451 try later", None), ("pending", None, None),
         ("active", None, "w2"), ("completed", None, None)],
        labels={"order": "1234"}, payload=b'{"to": "a@example.com", "order": 1234}',
    )  # fmt: skip
    story.task(
        b, "reports", "report.build", B_AT,
        [("active", None, "w3"), ("dead", "no such report", None)],
    )  # fmt: skip
    for i, task_id in enumerate(bulk):
        story.task(task_id, "bulk", "bulk.job", BULK_AT + i, [], labels={"batch": "b1"})
    await history.store(story.events)
    return {"a": a, "b": b, "bulk": bulk}


def link(path: str, task_id: str) -> str:
    """The href of a task's page (its id quoted as one path segment)."""
    return f"{path}/{quote(task_id, safe='')}"


def found(answer: httpx.Response) -> set[str]:
    assert answer.status_code == 200, answer.text
    return {t["id"] for t in answer.json()["tasks"]}


def rows(page: httpx.Response) -> list[str]:
    """The task ids of a history page's results, in order."""
    return re.findall(r'<tr data-task="([^"]+)">', page.text)


async def test_search_by_each_filter(history: PostgresHistory, stored: dict[str, Any]) -> None:
    a, b, bulk = stored["a"], stored["b"], stored["bulk"]
    async with http(create_app(MemoryBackend(), history=history)) as web:

        async def api(**params: Any) -> set[str]:
            return found(await web.get(f"{API}/history", params=params))

        assert await api() == {a, b, *bulk}
        assert await api(queue="reports") == {b}
        assert await api(type="email.send") == {a}
        assert await api(state="dead") == {b}
        assert await api(state="pending") == set(bulk)
        assert await api(label="order=1234") == {a}
        assert await api(label=["batch=b1", "order=1234"]) == set()  # every pair must match
        assert await api(text="1234") == {a}
        assert await api(text="report") == {b}
        assert await api(text=bulk[3]) == {bulk[3]}  # a task id
        assert await api(since="2026-03-02T00:00:00Z") == {b}
        assert await api(since="2026-02-28T00:00:00+00:00", until="2026-03-02T00:00:00Z") == {a}
        assert await api(until=str(ms("2026-02-21T00:00:00+00:00"))) == set(bulk)  # epoch ms
        assert await api(queue="mail", type="email.send", state="completed") == {a}
        assert await api(queue="mail", state="dead") == set()

        # the UI's form: the same query string; its date-times have no zone and are UTC
        page = await web.get("/history")
        assert page.status_code == 200 and set(rows(page)) == {a, b, *bulk}
        assert rows(await web.get("/history", params={"since": "2026-03-02T00:00"})) == [b]
        assert rows(await web.get("/history", params={"state": "dead"})) == [b]
        assert rows(await web.get("/history", params={"label": "order=1234"})) == [a]
        assert rows(await web.get("/history", params={"text": "1234", "state": ""})) == [a]
        one = await web.get("/history", params={"type": "report.build"})
        assert rows(one) == [b] and "no such report" in one.text  # the last error's excerpt
        assert f'href="{link("/history", b)}"' in one.text
        assert '<option value="dead" >dead</option>' in page.text.replace("selected", "")


async def test_pages_by_cursor(history: PostgresHistory, stored: dict[str, Any]) -> None:
    newest_first = sorted(stored["bulk"], reverse=True)
    async with http(create_app(MemoryBackend(), history=history)) as web:
        seen: list[str] = []
        cursor = None
        for _ in range(5):
            params = {"type": "bulk.job", "limit": "3", **({"cursor": cursor} if cursor else {})}
            answer = (await web.get(f"{API}/history", params=params)).json()
            seen += [t["id"] for t in answer["tasks"]]
            cursor = answer["next_cursor"]
            if cursor is None:
                break
        assert seen == newest_first

        # the UI: "Next page" keeps the filters and carries the cursor
        shown: list[str] = []
        url: str | None = "/history?type=bulk.job&limit=3"
        while url is not None:
            page = await web.get(url)
            assert page.status_code == 200
            shown += rows(page)
            nxt = re.search(r'<a href="([^"]+)" rel="next">Next page</a>', page.text)
            url = "/history" + html.unescape(nxt.group(1)) if nxt else None
            if url:
                assert "type=bulk.job" in url and "limit=3" in url and "cursor=" in url
        assert shown == newest_first


async def test_next_page_keeps_every_label(history: PostgresHistory) -> None:
    """A search by two labels pages through the tasks with both, not with one of them only."""
    story = HistoryEvents()
    tagged = ids_at(BULK_AT, 10)
    for i, task_id in enumerate(tagged):
        labels = {"batch": "b2", "kind": "x"} if i % 2 else {"batch": "b2"}
        story.task(task_id, "bulk", "bulk.job", BULK_AT + i, [], labels=labels)
    await history.store(story.events)
    both = sorted(tagged[1::2], reverse=True)
    async with http(create_app(MemoryBackend(), history=history)) as web:
        shown: list[str] = []
        url: str | None = "/history?label=kind%3Dx&label=batch%3Db2&limit=2"
        while url is not None and len(shown) <= len(tagged):
            page = await web.get(url)
            assert page.status_code == 200
            shown += rows(page)
            nxt = re.search(r'<a href="([^"]+)" rel="next">Next page</a>', page.text)
            url = "/history" + html.unescape(nxt.group(1)) if nxt else None
        assert shown == both


async def test_story_lists_each_attempt_with_its_error(
    history: PostgresHistory, stored: dict[str, Any]
) -> None:
    a = stored["a"]
    async with http(create_app(MemoryBackend(), history=history)) as web:
        story = (await web.get(f"{API}/history/{a}")).json()
        events = story["events"]
        assert [e["state"] for e in events] == [
            "pending", "active", "retry", "pending", "active", "completed",
        ]  # fmt: skip
        assert [e["attempt"] for e in events] == [None, 1, 1, 1, 2, 2]
        assert [e["error"] for e in events][2] == "SMTP 451 try later"
        assert [e["consumer"] for e in events if e["state"] == "active"] == ["w1", "w2"]
        assert events[0]["at_ms"] == A_AT
        task = story["task"]
        assert (task["queue"], task["type"], task["state"], task["labels"]) == (
            "mail", "email.send", "completed", {"order": "1234"},
        )  # fmt: skip
        assert task["last_error"] == "SMTP 451 try later" and task["created_ms"] == A_AT
        assert json.loads(task["payload"]["text"]) == {"to": "a@example.com", "order": 1234}
        missing = await web.get(f"{API}/history/never-was")
        assert missing.status_code == 404 and missing.json()["error"] == "not_found"

        page = await web.get(f"/history/{a}")
        assert page.status_code == 200
        assert re.findall(r'<tr data-state="(\w+)">', page.text) == [
            "pending", "active", "retry", "pending", "active", "completed",
        ]  # fmt: skip
        assert page.text.count("SMTP 451 try later") == 2  # its event, and the last error
        assert "w1" in page.text and "w2" in page.text
        assert "&#34;order&#34;: 1234" in page.text  # the payload as pretty JSON, text only
        assert f'href="{link("/tasks", a)}"' in page.text  # the live task, while Redis keeps it
        assert (await web.get("/history/never-was")).status_code == 404


async def test_hostile_task_data_is_inert_text(history: PostgresHistory) -> None:
    story = HistoryEvents()
    [task_id] = ids_at(A_AT)
    error = "\n".join(HOSTILE)
    story.task(
        task_id, "mail", HOSTILE[0], A_AT,
        [("active", None, HOSTILE_CONSUMER), ("dead", error, None)],
        labels={HOSTILE[1]: HOSTILE[2]}, payload=json.dumps({"html": HOSTILE}).encode(),
    )  # fmt: skip
    await history.store(story.events)
    async with http(create_app(MemoryBackend(), history=history)) as web:
        pages = [
            await web.get("/history"),
            await web.get("/history", params={"text": HOSTILE[0], "label": HOSTILE[2]}),
            await web.get(f"/history/{task_id}"),
        ]
        answers = [await web.get(f"{API}/history"), await web.get(f"{API}/history/{task_id}")]
    for page in pages:
        assert page.status_code in (200, 400)
        assert page.headers["content-security-policy"].startswith("default-src 'none'")
        for hostile in [*HOSTILE, HOSTILE_CONSUMER]:
            assert hostile not in page.text
        assert inline_code(page.text) == []
    search, _, story_page = pages
    assert str(escape(HOSTILE[0])) in search.text
    for hostile in [*HOSTILE, HOSTILE_CONSUMER]:
        assert str(escape(hostile)) in story_page.text
    for answer in answers:
        assert answer.content.isascii() and not set(b"<>&") & set(answer.content)
    listed, told = (r.json() for r in answers)
    assert listed["tasks"][0]["type"] == HOSTILE[0]
    assert told["task"]["labels"] == {HOSTILE[1]: HOSTILE[2]}
    assert told["events"][-1]["error"] == error
    assert told["events"][1]["consumer"] == HOSTILE_CONSUMER
    assert json.loads(told["task"]["payload"]["text"]) == {"html": HOSTILE}


BAD = [
    ({"state": "sleeping"}, "unknown state"),
    ({"limit": "0"}, "limit"),
    ({"limit": str(MAX_LIMIT + 1)}, "limit"),
    ({"limit": "ten"}, "limit"),
    ({"cursor": "!!"}, "cursor"),
    ({"since": "2026-03-01T12:00:00"}, "time zone"),
    ({"until": "last tuesday"}, "ISO 8601"),
    ({"label": "no-equals"}, "key=value"),
    ({"text": "a\x00b"}, "NUL"),
]


@pytest.mark.parametrize(("params", "says"), BAD)
async def test_bad_input_is_400(
    history: PostgresHistory, params: dict[str, str], says: str
) -> None:
    async with http(create_app(MemoryBackend(), history=history)) as web:
        answer = await web.get(f"{API}/history", params=params)
        assert answer.status_code == 400, answer.text
        assert answer.json()["error"] == "invalid" and says in answer.json()["message"]
        if "since" not in params:  # the UI reads a date-time without a zone as UTC
            page = await web.get("/history", params=params)
            assert page.status_code == 400 and html.escape(says, quote=True) in page.text
            assert 'id="history-error"' in page.text


async def test_a_task_id_postgresql_refuses_is_400(history: PostgresHistory) -> None:
    async with http(create_app(MemoryBackend(), history=history)) as web:
        answer = await web.get(f"{API}/history/a%00b")
        assert answer.status_code == 400 and answer.json()["error"] == "invalid"
        assert (await web.get("/history/a%00b")).status_code == 400


async def test_postgresql_unreachable_is_503() -> None:
    closed = PostgresHistory(f"postgresql://postgres@127.0.0.1:{free_port()}/x", connect_timeout=2)
    backend = MemoryBackend()
    task = await Client(backend).enqueue(Task("t", queue="q"))
    try:
        async with http(create_app(backend, history=closed)) as web:
            for path in ("/history", "/history/some-task"):
                answer = await web.get(API + path)
                assert answer.status_code == 503, answer.text
                assert "PostgreSQL cannot be read" in answer.json()["message"]
                page = await web.get(path)
                assert page.status_code == 503 and "PostgreSQL cannot be read" in page.text
            # the rest of the UI does not need it
            assert (await web.get("/")).status_code == 200
            assert (await web.get(f"/tasks/{task.id}")).status_code == 200
            gone = await web.get("/tasks/expired-task")
            assert gone.status_code == 404 and 'id="history-note"' in gone.text
    finally:
        await closed.aclose()
        await backend.aclose()


async def test_without_history_there_is_no_tab_and_the_routes_404() -> None:
    async with http(create_app(MemoryBackend())) as web:
        overview = await web.get("/")
        assert overview.status_code == 200 and "nav-history" not in overview.text
        for path in ("/history", "/history/x"):
            answer = await web.get(API + path)
            assert answer.status_code == 404 and answer.json()["error"] == "not_configured"
            page = await web.get(path)
            assert page.status_code == 404 and "--postgres" in page.text
        gone = await web.get("/tasks/expired-task")
        assert gone.status_code == 404 and "history" not in gone.text.lower()


@pytest.fixture
async def hbackend() -> AsyncIterator[MemoryBackend]:
    backend = MemoryBackend(history=True)
    yield backend
    await backend.aclose()


async def test_the_live_task_links_its_story_and_a_gone_one_offers_it(
    history: PostgresHistory, hbackend: MemoryBackend
) -> None:
    """Real transitions with history on, drained: the live task page links the story; once
    Redis no longer has the task, its page offers the story instead of a bare 404."""
    info = await Client(hbackend).enqueue(Task("email.send", {"to": "a"}, queue="mail"))
    [fetched] = await hbackend.fetch(["mail"], 1, "w1", lease_ms=60_000)
    assert await hbackend.ack("mail", fetched.id, "w1")
    await history.drain(hbackend, until_idle=True)
    async with http(create_app(hbackend, history=history)) as web:
        overview = await web.get("/")
        assert 'id="nav-history"' in overview.text
        live = await web.get(f"/tasks/{info.id}")
        assert f'href="{link("/history", info.id)}" id="history-link"' in live.text
        assert await hbackend.delete(info.id, "mail")
        await history.drain(hbackend, until_idle=True)
        gone = await web.get(f"/tasks/{info.id}")
        assert gone.status_code == 404
        offer = re.search(r'<p id="history-offer">.*?<a href="([^"]+)"', gone.text)
        assert offer is not None and offer.group(1) == link("/history", info.id)
        story = await web.get(offer.group(1))
        states = re.findall(r'<tr data-state="(\w+)">', story.text)
        assert states == ["pending", "active", "completed", "deleted"]
        never = await web.get("/tasks/never-was")
        assert never.status_code == 404 and "no such task either" in never.text


def test_the_command_refuses_a_malformed_dsn() -> None:
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-m", "strego.cli", "web", "--postgres", "not a dsn", "--port", "0"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2 and "--postgres" in done.stderr


@pytest.mark.parametrize("postgres", [None, "postgresql://127.0.0.1:1/none"])
def test_the_command_turns_history_on_with_postgres(
    postgres: str | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With --postgres the UI's own changes (cancel, retry, ...) must reach the history too, so
    its backend writes the events; without it the URL decides (off here)."""
    import strego.web.serve
    from strego.cli import main

    seen: list[Any] = []

    async def serve(backend: Any, make_app: Any, **kwargs: Any) -> None:
        seen.append(backend)
        await backend.aclose()

    monkeypatch.setattr(strego.web.serve, "serve", serve)
    args = ["web", "--redis", "redis://127.0.0.1:1/0", "--port", "0"]
    assert main(args + (["--postgres", postgres] if postgres else [])) == 0
    assert (seen[0].history_cap > 0) is (postgres is not None)


async def test_under_a_path_prefix(history: PostgresHistory, hbackend: MemoryBackend) -> None:
    """Behind a proxy that strips /ops/strego: every history link carries the prefix."""
    info = await Client(hbackend).enqueue(Task("email.send", queue="mail"))
    assert await hbackend.delete(info.id, "mail")
    await history.drain(hbackend, until_idle=True)
    async with http(create_app(hbackend, history=history), root_path="/ops/strego") as web:
        assert found(await web.get(f"{API}/history")) == {info.id}
        search = await web.get("/history")
        assert f'href="{link("/ops/strego/history", info.id)}"' in search.text
        assert 'href="/ops/strego/history" id="nav-history"' in search.text
        gone = await web.get(f"/tasks/{info.id}")
        assert f'<a href="{link("/ops/strego/history", info.id)}">' in gone.text
        story = await web.get(f"/history/{info.id}")
        assert f'href="{link("/ops/strego/tasks", info.id)}"' in story.text


def test_the_limit_is_the_search_s() -> None:
    from strego.history.postgres import MAX_LIMIT as SEARCH_LIMIT

    assert MAX_LIMIT == SEARCH_LIMIT
