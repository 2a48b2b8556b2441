"""The web UI through `httpx.ASGITransport` on the memory backend, under asyncio and trio: pages
render with task data as text, security headers, the CSRF token on mutations, read-only, a path
prefix, and one shared backend read for any number of live streams."""

from __future__ import annotations

import html
import re
from collections.abc import AsyncIterator
from html.parser import HTMLParser

import anyio
import httpx
import pytest
from markupsafe import escape
from starlette.applications import Starlette
from starlette.routing import Mount

from strego.backends.memory import MemoryBackend
from strego.web import create_app
from strego.web.live import compose
from strego.web.payload_view import SHOW_LIMIT, hex_dump, payload_view
from tests.web.seed import HOSTILE, HOSTILE_CONSUMER, seed

pytestmark = pytest.mark.anyio

ORIGIN = "http://ui.test"


@pytest.fixture
async def backend() -> AsyncIterator[MemoryBackend]:
    b = MemoryBackend()
    await seed(b)
    yield b
    await b.aclose()


def client(app: object, root: str = "") -> httpx.AsyncClient:
    return httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app),  # type: ignore[arg-type]
        base_url=ORIGIN + root,
    )


def token_of(page: httpx.Response) -> str:
    found = re.search(r'<meta name="strego-csrf" content="([^"]+)">', page.text)
    assert found is not None
    return found.group(1)


PAGES = [
    "/",
    "/queues/mail",
    "/queues/mail?state=dead",
    "/queues/mail?state=active",
    "/tasks/t-hostile",
    "/tasks/t-dead",
    "/tasks/t-active",
    "/workers",
]


@pytest.mark.parametrize("path", PAGES)
async def test_pages_render_task_data_as_text(backend: MemoryBackend, path: str) -> None:
    async with client(create_app(backend, readonly=False)) as http:
        page = await http.get(path)
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    csp = page.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "style-src 'self'" in csp and "unsafe" not in csp
    assert page.headers["x-content-type-options"] == "nosniff"
    for hostile in [*HOSTILE, HOSTILE_CONSUMER]:
        assert hostile not in page.text  # never raw markup
    assert inline_code(page.text) == []


class _Inline(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.found: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        names = {name for name, _ in attrs}
        if tag in ("script", "style") and "src" not in names and tag != "link":
            self.found.append(f"<{tag}> without src")
        self.found += [f"{tag} {name}=" for name in names if name == "style" or name[:2] == "on"]


def inline_code(text: str) -> list[str]:
    """Inline scripts, style elements, style and on* attributes: what the CSP would block."""
    parser = _Inline()
    parser.feed(text)
    return parser.found


async def test_hostile_strings_shown_escaped(backend: MemoryBackend) -> None:
    async with client(create_app(backend)) as http:
        task = (await http.get("/tasks/t-hostile")).text
        dead = (await http.get("/tasks/t-dead")).text
        workers = (await http.get("/workers")).text
    assert escape(HOSTILE[0]) in task  # the type
    assert escape(HOSTILE[1]) in task and escape(HOSTILE[2]) in task  # labels
    assert escape(HOSTILE[1]) in dead  # the last error
    assert escape(HOSTILE_CONSUMER) in workers


async def test_task_page_shows_payload_kinds(backend: MemoryBackend) -> None:
    async with client(create_app(backend)) as http:
        binary = (await http.get("/tasks/t-binary")).text
        long = (await http.get("/tasks/t-long")).text
        missing = await http.get("/tasks/no-such-task")
        jump = await http.get("/jump", params={"id": "t-dead"})
    assert "shown as hex" in binary and "00000000  00 01 02 03" in binary
    assert "Only the start is shown" in long and "40000 bytes" in long
    assert "/api/v1/tasks/t-long/payload" in long
    assert missing.status_code == 404
    assert jump.status_code == 303 and jump.headers["location"] == "/tasks/t-dead"


async def test_queue_page_filters_and_pages(backend: MemoryBackend) -> None:
    async with client(create_app(backend)) as http:
        act = await http.get("/queues/mail", params={"type": "act"})
        first = await http.get("/queues/mail", params={"state": "scheduled"})
        unknown = await http.get("/queues/nope")
    ids = re.findall(r'data-task="([^"]+)"', act.text)
    assert ids == ["t-act-0", "t-act-1", "t-act-2", "t-act-3"]
    assert re.findall(r'data-task="([^"]+)"', first.text) == ["t-sched-0", "t-sched-1", "t-sched-2"]
    assert unknown.status_code == 404


async def test_queue_page_cursor_paging(monkeypatch: pytest.MonkeyPatch) -> None:
    from strego.web import ui

    monkeypatch.setattr(ui, "PAGE_SIZE", 2)
    backend = MemoryBackend()
    await seed(backend)
    seen: list[str] = []
    async with client(create_app(backend)) as http:
        url: str | None = "/queues/mail?state=pending"
        while url is not None:
            page = await http.get(url)
            seen += re.findall(r'data-task="([^"]+)"', page.text)
            nxt = re.search(r'<a href="([^"]+)" rel="next">', page.text)
            url = None if nxt is None else "/queues/mail" + html.unescape(nxt.group(1))
    assert sorted(seen) == sorted(
        ["t-hostile", "t-binary", "t-long", "t-act-0", "t-act-1", "t-act-2", "t-act-3"]
    )
    assert len(seen) == len(set(seen))


async def test_mutation_from_a_browser_needs_the_csrf_token(backend: MemoryBackend) -> None:
    async with client(create_app(backend, readonly=False)) as http:
        page = await http.get("/")
        token = token_of(page)
        assert http.cookies["strego_csrf"] == token
        same = {"origin": ORIGIN}
        refused = await http.post("/api/v1/tasks/t-sched-0/cancel", headers=same)
        wrong = await http.post(
            "/api/v1/tasks/t-sched-0/cancel", headers={**same, "x-strego-csrf": "x" * 43}
        )
        assert (refused.status_code, wrong.status_code) == (403, 403)
        assert refused.json()["error"] == "csrf"
        assert (await backend.get_task("t-sched-0")).state.value == "scheduled"  # type: ignore[union-attr]
        done = await http.post(
            "/api/v1/tasks/t-sched-0/cancel", headers={**same, "x-strego-csrf": token}
        )
        assert done.status_code == 200
        assert (await backend.get_task("t-sched-0")).state.value == "cancelled"  # type: ignore[union-attr]
        # another origin is refused even with the token (the Origin check)
        cross = await http.post(
            "/api/v1/tasks/t-sched-1/cancel",
            headers={"origin": "http://evil.test", "x-strego-csrf": token},
        )
        assert cross.status_code == 403
    # a script (no Origin, no cookie) needs no token
    async with client(create_app(backend, readonly=False)) as script:
        assert (await script.post("/api/v1/tasks/t-sched-1/cancel")).status_code == 200


async def test_read_only_hides_actions_and_refuses_them(backend: MemoryBackend) -> None:
    async with client(create_app(backend)) as http:
        page = await http.get("/tasks/t-dead")
        assert "data-action" not in page.text and "read-only" in page.text
        answer = await http.post(
            "/api/v1/tasks/t-dead/requeue",
            headers={"origin": ORIGIN, "x-strego-csrf": token_of(page)},
        )
    assert answer.status_code == 405
    assert (await backend.get_task("t-dead")).state.value == "dead"  # type: ignore[union-attr]


@pytest.mark.parametrize("root", ["/a/b", "/strego"])
async def test_urls_under_a_prefix(backend: MemoryBackend, root: str) -> None:
    outer = Starlette(routes=[Mount(root, app=create_app(backend, readonly=False))])
    async with client(outer) as http:
        page = await http.get(root + "/queues/mail?state=dead")
        css = await http.get(root + "/static/app.css")
        jump = await http.get(root + "/jump", params={"id": "t-dead"})
    assert page.status_code == 200 and css.status_code == 200
    links = re.findall(r'(?:href|src|action|data-url)="(/[^"]*)"', page.text)
    assert links and all(link.startswith(root + "/") for link in links)
    assert f'content="{root}"' in page.text  # the script's base
    assert f"Path={root}/" in page.headers["set-cookie"]
    assert jump.headers["location"] == f"{root}/tasks/t-dead"


async def test_live_streams_share_one_backend_read(backend: MemoryBackend) -> None:
    app = create_app(backend, snapshot_interval_s=30.0)
    api = app.state.api
    events: list[bytes] = []

    async def tab() -> None:
        # each tab's stream as the /ui/events route serves it (httpx's ASGI transport waits for a
        # whole body, so the endless stream is read from its generator; the browser tests read
        # it over HTTP)
        stream = app.state.ui.live.events()
        async for chunk in stream:
            if b"event: overview" in chunk:
                events.append(chunk)
                break
        await stream.aclose()

    async with anyio.create_task_group() as tg:
        for _ in range(20):
            tg.start_soon(tab)
    assert len(events) == 20
    assert api.overview.reads == 1 and api.workers.reads == 1
    assert b'"name":"mail"' in events[0]
    async with client(app) as http:
        polled = (await http.get("/ui/overview.json")).json()
    assert api.overview.reads == 1
    [mail, reports] = polled["queues"]
    assert mail["counts"]["pending"] == 7 and not mail["no_workers"]
    assert reports["paused"] and reports["no_workers"]


def test_compose_no_workers_badge() -> None:
    counts = {"pending": 1, "active": 0, "retry": 0, "scheduled": 0, "dead": 0}
    idle = [{"name": "w", "queue": "q", "idle_ms": 120_000, "held": []}]
    fresh = [{"name": "w", "queue": "q", "idle_ms": 10, "held": []}]
    row = {"name": "q", "paused": False, "counts": counts}
    assert compose([row], idle)["queues"][0]["no_workers"]
    assert not compose([row], fresh)["queues"][0]["no_workers"]
    empty = {**row, "counts": {**counts, "pending": 0, "dead": 5}}
    assert not compose([empty], [])["queues"][0]["no_workers"]  # nothing waits for a worker


def test_payload_view() -> None:
    assert payload_view(b'{"a":[1,"<b>"]}').text == '{\n  "a": [\n    1,\n    "<b>"\n  ]\n}'
    assert payload_view(b"plain text").kind == "text"
    binary = payload_view(b"\x00\xffabc")
    assert binary.kind == "hex" and binary.text == hex_dump(b"\x00\xffabc")
    assert binary.text.startswith("00000000  00 ff 61 62 63") and binary.text.endswith("..abc")
    long = payload_view("é".encode() * SHOW_LIMIT)  # a character cut in two at the limit
    assert long.truncated and long.kind == "text" and long.size == 2 * SHOW_LIMIT
    assert long.text == "é" * (SHOW_LIMIT // 2)


async def test_time_filter(backend: MemoryBackend) -> None:
    async with client(create_app(backend)) as http:
        since_past = await http.get(
            "/queues/mail", params={"type": "act", "from": "2000-01-01T00:00:00"}
        )
        since_future = await http.get("/queues/mail", params={"from": "2999-01-01T00:00"})
        until_past = await http.get("/queues/mail", params={"to": "2000-01-01T00:00"})
    assert len(re.findall(r'data-task="', since_past.text)) == 4
    assert 'data-task="' not in since_future.text and 'data-task="' not in until_past.text
    assert 'value="2999-01-01T00:00"' in since_future.text  # the filter stays in its field


async def test_pages_are_behind_the_same_gate(backend: MemoryBackend) -> None:
    app = create_app(
        backend, basic_auth=("admin", "s3cret"), auth=lambda r: "x-no" not in r.headers
    )
    async with client(app) as http:
        assert (await http.get("/")).status_code == 401
        assert (await http.get("/ui/overview.json")).status_code == 401
        ok = await http.get("/", auth=("admin", "s3cret"))
        assert ok.status_code == 200
        refused = await http.get("/workers", auth=("admin", "s3cret"), headers={"x-no": "1"})
        assert refused.status_code == 403
