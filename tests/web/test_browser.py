"""The web UI in a real browser: Debian's Chromium driven by Playwright (sync API, never
`playwright install`), against `strego web` subprocesses (under asyncio and under trio) on a
throwaway redis-server. One browser for the module; each test opens pages in a shared context.

Proves: every page renders from Redis data; hostile task data shows as literal text and no dialog
fires; each action changes the task's state (checked through the API); read-only refuses on the
server; a cross-site form post is refused; live updates arrive without a reload (SSE, and the
polling fallback); no console error and no CSP violation; all of it under a path prefix too; the
task history's search box (with --postgres) finds a task and opens its story.
Screenshots of each page, light and dark, go to $STREGO_SCREENSHOTS (docs/screenshots to refresh
the README's), else to the test run's temporary directory."""

from __future__ import annotations

import contextlib
import http.server
import json
import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
import redis

from strego.backends.redis import RedisBackend
from strego.backends.redis.keys import Keys
from strego.clock import wall_clock_ms
from tests.redis_server import free_port, unavailable
from tests.web.seed import (
    HOSTILE,
    HOSTILE_CONSUMER,
    HistoryEvents,
    message,
    seed,
    seed_history,
)

pytestmark = [pytest.mark.redis, pytest.mark.slow]

CHROMIUM = os.environ.get("STREGO_CHROMIUM", "/usr/bin/chromium")
#: Bound on any wait in a browser (never a timing assertion).
WAIT_MS = 15_000

try:
    import playwright.sync_api as playwright_api
except ImportError:  # in the test extra: missing only where strego[test] is not installed
    unavailable("Playwright for Python is not installed (pip install 'strego[test]')")


def run_async(
    fn: Callable[[RedisBackend], Any], url: str, key_prefix: str, *, movable_clock: bool = False
) -> Any:
    """Call `fn(backend)` on the Redis backend, under trio (Playwright's sync API keeps an asyncio
    loop of its own in this thread). With `movable_clock`, the backend's clock (which its scripts
    then use) reads `backend.clock_at[0]`, starting at now."""

    async def main() -> Any:
        clock_at = [wall_clock_ms()]
        clock = (lambda: clock_at[0]) if movable_clock else None
        backend = RedisBackend.from_url(url, prefix=key_prefix, clock=clock)
        backend.clock_at = clock_at  # type: ignore[attr-defined]
        try:
            return await fn(backend)
        finally:
            await backend.aclose()

    return anyio.run(main, backend="trio")


class Server:
    """`strego web` in a subprocess, on its own key prefix of the session's redis-server."""

    def __init__(
        self,
        redis_url: str,
        *,
        loop: str,
        readonly: bool = False,
        root_path: str = "",
        postgres: str | None = None,
    ) -> None:
        self.redis_url = redis_url
        self.loop = loop
        self.key_prefix = f"ui-{loop}-{uuid.uuid4().hex[:8]}"
        self.port = free_port()
        self.root_path = root_path
        self.origin = f"http://127.0.0.1:{self.port}"
        self.base = self.origin + root_path
        args = [
            *("--redis", redis_url, "--prefix", self.key_prefix),
            *("--port", str(self.port), "--interval", "0.3"),
        ]
        if loop == "trio":
            args.append("--trio")
        if not readonly:
            args.append("--no-readonly")
        if root_path:
            args += ["--root-path", root_path]
        if postgres:
            args += ["--postgres", postgres]
        run_async(seed, redis_url, self.key_prefix)
        run_async(seed_history, redis_url, self.key_prefix, movable_clock=True)
        self.process = subprocess.Popen(
            [sys.executable, "-m", "strego.cli", "web", *args],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        self.api = httpx.Client(base_url=self.base + "/api/v1", timeout=10)
        self._wait_ready()

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                err = self.process.stderr.read().decode() if self.process.stderr else ""
                raise RuntimeError(f"strego web exited: {err}")
            try:
                if self.api.get("/queues").status_code == 200:
                    return
            except httpx.TransportError:
                time.sleep(0.05)
        raise RuntimeError("strego web did not answer within 20 s")

    def state(self, task_id: str) -> str | None:
        """The task's state through the API (None once it is gone)."""
        answer = self.api.get(f"/tasks/{task_id}")
        return None if answer.status_code == 404 else str(answer.json()["state"])

    def queue(self, name: str) -> dict[str, Any]:
        answer: dict[str, Any] = self.api.get(f"/queues/{name}").json()
        return answer

    def enqueue(self, task_id: str, queue: str) -> None:
        async def add(backend: RedisBackend) -> None:
            await backend.enqueue(message(task_id, queue, "late"))

        run_async(add, self.redis_url, self.key_prefix)

    def stop(self) -> None:
        self.api.close()
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


@contextlib.contextmanager
def serving(redis_url: str, **options: Any) -> Iterator[Server]:
    server = Server(redis_url, **options)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not os.path.exists(CHROMIUM):
        unavailable(f"no Chromium at {CHROMIUM} (apt-get install chromium)")
    with playwright_api.sync_playwright() as pw:
        # the sandbox needs user namespaces, which a container running as root may not have
        args = ["--no-sandbox"] if os.geteuid() == 0 else []
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=args)
        yield browser
        browser.close()


@pytest.fixture(scope="module", params=["asyncio", "trio"])
def server(request: pytest.FixtureRequest, redis_url: str) -> Iterator[Server]:
    with serving(redis_url, loop=request.param) as s:
        yield s


@pytest.fixture(scope="module")
def context(browser: Any) -> Iterator[Any]:
    ctx = browser.new_context(viewport={"width": 1280, "height": 720})
    ctx.set_default_timeout(WAIT_MS)
    # records CSP violations (an init script runs outside the page's CSP)
    ctx.add_init_script(
        "document.addEventListener('securitypolicyviolation', e => "
        "(window.__csp = window.__csp || []).push(e.violatedDirective + ' ' + e.blockedURI));"
    )
    yield ctx
    ctx.close()


class Watched:
    """A page with everything that must not happen recorded: console errors, page errors,
    dialogs (alert/confirm/prompt: an injected script's first move)."""

    def __init__(self, page: Any) -> None:
        self.page = page
        self.problems: list[str] = []
        page.on("console", lambda m: m.type == "error" and self.problems.append(m.text))
        page.on("pageerror", lambda e: self.problems.append(f"page error: {e}"))
        page.on("dialog", self._dialog)

    def _dialog(self, dialog: Any) -> None:
        self.problems.append(f"dialog: {dialog.message}")
        dialog.dismiss()

    def check(self) -> None:
        csp = self.page.evaluate("window.__csp || []")
        assert self.problems == [] and csp == []


@pytest.fixture
def page(context: Any) -> Iterator[Watched]:
    watched = Watched(context.new_page())
    yield watched
    watched.check()
    watched.page.close()


def confirm(page: Any, button: Any) -> None:
    """Click an action button and confirm in the page's own dialog."""
    button.click()
    page.locator("#confirm-yes").click()


def expect(locator: Any) -> Any:
    return playwright_api.expect(locator)


@pytest.fixture(scope="module")
def screenshots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    chosen = os.environ.get("STREGO_SCREENSHOTS")
    folder = Path(chosen) if chosen else tmp_path_factory.mktemp("screenshots")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def shoot(page: Any, folder: Path, name: str, loop: str) -> None:
    """Light and dark screenshots of the page (from the asyncio run only: one set)."""
    if loop != "asyncio":
        return
    for scheme in ("light", "dark"):
        page.emulate_media(color_scheme=scheme)
        page.screenshot(path=str(folder / f"{name}-{scheme}.png"))
        assert (folder / f"{name}-{scheme}.png").stat().st_size > 0
    page.emulate_media(color_scheme="light")


def test_pages_render_with_hostile_data_as_text(
    server: Server, page: Watched, screenshots: Path
) -> None:
    p = page.page
    p.goto(server.base + "/")
    rows = p.locator("#queues tbody tr")
    expect(rows).to_have_count(3)
    mail = p.locator('tr[data-queue="mail"]')
    expect(mail.locator('[data-count="pending"]')).to_have_text("7")
    expect(mail.locator('[data-count="dead"]')).to_have_text("2")
    expect(p.locator('tr[data-queue="reports"] [data-field="no_workers"]')).to_be_visible()
    expect(p.locator('tr[data-queue="reports"] [data-field="paused"]')).to_be_visible()
    expect(p.locator("#live")).to_contain_text("updated")  # the live stream arrived
    # the chart of an hour's history: a processed bar for every minute seeded (the oldest one
    # slides out of the hour if a minute began since), failed bars in seven
    chart = p.locator('tr[data-queue="images"] svg[data-chart]')
    expect(chart.locator("rect.failed")).to_have_count(7)
    assert chart.locator("rect.processed").count() in (59, 60)
    shoot(p, screenshots, "overview", server.loop)

    p.goto(server.base + "/queues/mail?state=dead")
    dead_row = p.locator('tr[data-task="t-dead"]')
    expect(dead_row.locator("td").nth(2)).to_have_text(HOSTILE[1])  # the type, as text
    expect(dead_row.locator("td").last).to_contain_text(HOSTILE[0])  # the error
    shoot(p, screenshots, "queue", server.loop)

    p.goto(server.base + "/tasks/t-hostile")
    fields = p.locator("dl.fields")
    expect(fields).to_contain_text(HOSTILE[0])
    expect(fields.locator(".labels")).to_have_text(f"{HOSTILE[1]} = {HOSTILE[2]}")
    expect(p.locator("pre.payload")).to_contain_text("\"<script>alert('script')</script>\"")
    shoot(p, screenshots, "task", server.loop)

    p.goto(server.base + "/tasks/t-active")
    expect(p.locator("dl.fields")).to_contain_text(HOSTILE_CONSUMER)
    p.goto(server.base + "/tasks/t-binary")
    expect(p.locator("pre.payload")).to_contain_text("00000000  00 01 02 03")

    p.goto(server.base + "/workers")
    expect(p.locator("table.workers")).to_contain_text(HOSTILE_CONSUMER)
    shoot(p, screenshots, "workers", server.loop)
    # nothing hostile became an element anywhere
    for visited in ("/", "/queues/mail?state=active", "/tasks/t-hostile", "/workers"):
        p.goto(server.base + visited)
        assert p.locator("main img, main svg[onload], main script").count() == 0


def test_actions_change_state(server: Server, page: Watched) -> None:
    p = page.page
    for task_id, action, label, after in [
        ("t-sched-0", "cancel", "Cancel", "cancelled"),
        ("t-sched-1", "run", "Run now", "pending"),
        ("t-dead", "requeue", "Requeue", "pending"),
        ("t-sched-2", "delete", "Delete", None),
    ]:
        p.goto(f"{server.base}/tasks/{task_id}")
        confirm(p, p.locator(f'button[data-action="{action}"]'))
        # each result names its action: an earlier one still shown cannot pass for it
        expect(p.locator("#result")).to_contain_text(f"{label}: done")
        assert server.state(task_id) == after, (task_id, action)

    # a confirmation dismissed (Escape) changes nothing
    p.goto(f"{server.base}/tasks/t-long")
    p.locator('button[data-action="cancel"]').click()
    p.keyboard.press("Escape")
    expect(p.locator("#confirm")).not_to_be_visible()
    assert server.state("t-long") == "pending"

    p.goto(f"{server.base}/queues/mail")
    confirm(p, p.locator('button[data-action="pause"]'))
    expect(p.locator("#result")).to_contain_text("Pause queue: done")
    assert server.queue("mail")["paused"] is True
    confirm(p, p.locator('button[data-action="resume"]'))
    expect(p.locator("#result")).to_contain_text("Resume queue: done")
    assert server.queue("mail")["paused"] is False

    confirm(p, p.locator('button[data-action="requeue-dead"]'))  # t-dead2
    expect(p.locator("#result")).to_contain_text(
        "Requeue all dead: done (queue: mail, action: requeue-dead, changed: 1)"
    )
    assert server.state("t-dead2") == "pending"

    p.goto(f"{server.base}/queues/mail?state=cancelled")
    confirm(p, p.locator('button[data-action="purge"]'))
    expect(p.locator("#result")).to_contain_text("Purge cancelled: done")
    assert server.state("t-sched-0") is None

    # a selection: the "act" tasks of the pending tab, cancelled together
    p.goto(f"{server.base}/queues/mail?state=pending&type=act")
    p.locator('input[value="t-act-0"]').check()
    p.locator('input[value="t-act-1"]').check()
    confirm(p, p.locator('button[data-bulk="cancel"]'))
    expect(p.locator("#result")).to_contain_text("cancel: 2 of 2 done")
    assert [server.state(f"t-act-{i}") for i in range(4)] == [
        "cancelled",
        "cancelled",
        "pending",
        "pending",
    ]

    # a refusal is shown, not hidden: run now on a pending task is 409
    p.goto(f"{server.base}/queues/mail?state=pending&type=act")
    p.locator('input[value="t-act-2"]').check()
    assert p.locator('button[data-bulk="run"]').count() == 0  # not offered for pending tasks


def test_keyboard_and_narrow_screen(server: Server, page: Watched, screenshots: Path) -> None:
    p = page.page
    p.goto(server.base + "/")
    p.keyboard.press("/")
    p.keyboard.type("t-binary")
    p.keyboard.press("Enter")
    expect(p.locator("h1")).to_contain_text("t-binary")
    p.set_viewport_size({"width": 390, "height": 844})
    for visited in ("/", "/queues/mail", "/tasks/t-hostile", "/workers"):
        p.goto(server.base + visited)
        # the page itself never scrolls sideways: wide tables scroll in their own box
        assert p.evaluate("document.documentElement.scrollWidth <= window.innerWidth"), visited
    p.goto(server.base + "/")
    shoot(p, screenshots, "overview-narrow", server.loop)


def test_live_updates_without_reload(server: Server, page: Watched) -> None:
    p = page.page
    for path, source in (("/", "events"), ("/?poll=1", "polling")):
        p.goto(server.base + path)
        cell = p.locator('tr[data-queue="reports"] [data-count="pending"]')
        expect(cell).not_to_have_text("")
        before = int(cell.text_content())
        p.evaluate("window.__same_document = true")
        server.enqueue(f"late-{source}", "reports")
        expect(cell).to_have_text(str(before + 1))
        assert p.evaluate("window.__same_document === true")  # no reload happened
        assert ("polling" in (p.locator("#live").get_attribute("class") or "")) == (
            source == "polling"
        )


def test_an_unreadable_queue_beside_live_ones(redis_url: str, page: Watched) -> None:
    """Another program's key under one queue: the overview shows that queue's error as text, and
    the others keep updating live (events, and polling) with no script error."""
    with serving(redis_url, loop="asyncio") as server:
        raw = redis.Redis.from_url(redis_url)
        try:
            raw.set(Keys(server.key_prefix, "images").leases, "someone else's")
        finally:
            raw.close()
        error = "ForeignKeyError: WRONGTYPE Operation against a key holding the wrong kind of value"
        deadline = time.monotonic() + 10  # the server's shared read is refreshed every 0.3 s
        while error not in [q["error"] for q in server.api.get("/queues").json()["queues"]]:
            assert time.monotonic() < deadline, "the API never showed the unreadable queue"
            time.sleep(0.05)
        p = page.page
        for path, source in (("/", "events"), ("/?poll=1", "polling")):
            p.goto(server.base + path)
            shown = p.locator('tr[data-queue="images"] [data-field="error"]')
            expect(shown).to_have_text(error)
            cell = p.locator('tr[data-queue="reports"] [data-count="pending"]')
            before = int(cell.text_content())
            server.enqueue(f"late-{source}", "reports")
            expect(cell).to_have_text(str(before + 1))
            expect(p.locator("#live")).not_to_contain_text("reload")
            expect(shown).to_have_text(error)


def test_csp_blocks_inline_script(server: Server, context: Any) -> None:
    """The positive control of the CSP checks: an inline script put in the page is refused."""
    p = context.new_page()
    p.goto(server.base + "/")
    p.evaluate(
        "() => { const s = document.createElement('script');"
        " s.textContent = 'window.__ran = true'; document.body.appendChild(s); }"
    )
    p.wait_for_function("(window.__csp || []).length > 0")
    assert p.evaluate("window.__ran === undefined")
    assert "script-src" in p.evaluate("window.__csp[0]")
    p.close()


class _Attacker(http.server.BaseHTTPRequestHandler):
    target = ""

    def do_GET(self) -> None:
        body = (
            "<!doctype html><title>win a prize</title>"
            f'<form method="post" action="{self.target}"><button id="go">Claim</button></form>'
        ).encode()
        self.send_response(200)
        self.send_header("content-type", "text/html")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


def test_cross_site_form_post_is_refused(server: Server, context: Any) -> None:
    handler = type("Handler", (_Attacker,), {"target": f"{server.base}/api/v1/tasks/t-long/cancel"})
    site = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=site.serve_forever, daemon=True)
    thread.start()
    p = context.new_page()
    try:
        p.goto(server.base + "/")  # the victim has the UI open: its cookie is set
        p.goto(f"http://localhost:{site.server_address[1]}/")  # another origin
        with p.expect_response(lambda r: "/api/v1/tasks/" in r.url) as answer:
            p.locator("#go").click()
        assert answer.value.status == 403
        assert server.state("t-long") == "pending"
    finally:
        p.close()
        site.shutdown()
        site.server_close()


def test_read_only_refuses_on_the_server(redis_url: str, page: Watched) -> None:
    with serving(redis_url, loop="asyncio", readonly=True) as server:
        p = page.page
        p.goto(server.base + "/tasks/t-dead")
        expect(p.locator(".badge.ro")).to_be_visible()
        assert p.locator("button[data-action]").count() == 0
        # the page's own script, token and all, calling the API as a button would
        status = p.evaluate(
            """async () => {
                const token = document.querySelector('meta[name="strego-csrf"]').content;
                const r = await fetch('/api/v1/tasks/t-dead/requeue',
                    {method: 'POST', headers: {'X-Strego-CSRF': token}});
                return r.status;
            }"""
        )
        assert status == 405
        assert server.state("t-dead") == "dead"
    page.problems = [m for m in page.problems if "405" not in m]  # the refused fetch, logged


def test_under_a_prefix(redis_url: str, page: Watched) -> None:
    with serving(redis_url, loop="trio", root_path="/ops/strego") as server:
        p = page.page
        p.goto(server.base + "/")
        expect(p.locator("#live")).to_contain_text("updated")  # events under the prefix
        p.locator('tr[data-queue="mail"] th a').click()
        assert p.url.startswith(server.base + "/queues/mail")
        p.goto(server.base + "/queues/mail?state=dead")
        p.locator('tr[data-task="t-dead"] a').click()
        assert p.url == server.base + "/tasks/t-dead"
        confirm(p, p.locator('button[data-action="requeue"]'))
        expect(p.locator("#result")).to_contain_text("Requeue: done")
        assert server.state("t-dead") == "pending"
        links = p.eval_on_selector_all(
            "a[href], link[href], script[src]",
            "els => els.map(e => e.getAttribute('href') || e.getAttribute('src'))",
        )
        assert all(link.startswith("/ops/strego/") for link in links if link.startswith("/"))


def store_history(dsn: str) -> dict[str, str]:
    """A week of history in PostgreSQL: an email that failed once then completed (order 1234),
    a dead report with a hostile type, labels, payload, error and consumer, and a dozen more."""
    from strego.history import PostgresHistory
    from strego.ids import new_task_id

    now = wall_clock_ms()
    day = 86_400_000
    events = HistoryEvents()
    ids = {"email": new_task_id(now - 2 * day), "hostile": new_task_id(now - 3 * day)}
    events.task(
        ids["email"], "mail", "email.send", now - 2 * day,
        [("active", None, "web-1:4242:0badcafe"), ("retry", "SMTPServerDisconnected: 451", None),
         ("pending", None, None), ("active", None, "web-2:4243:0badcafe"),
         ("completed", None, None)],
        labels={"order": "1234", "tenant": "acme"},
        payload=b'{"to": "ops@example.com", "order": 1234, "template": "receipt"}',
    )  # fmt: skip
    events.task(
        ids["hostile"], "reports", HOSTILE[0], now - 3 * day,
        [("active", None, HOSTILE_CONSUMER), ("dead", "\n".join(HOSTILE), None)],
        labels={HOSTILE[1]: HOSTILE[2]}, payload=json.dumps({"html": HOSTILE}).encode(),
    )  # fmt: skip
    for i in range(12):
        at = now - (i % 6) * day - i * 60_000
        steps: list[tuple[str, str | None, str | None]] = [("active", None, "web-1:4242:0badcafe")]
        steps.append(("completed", None, None) if i % 4 else ("dead", "TimeoutError", None))
        events.task(new_task_id(at), "images", "thumbnail", at, steps, labels={"size": "128"})

    async def main() -> None:
        history = PostgresHistory(dsn)
        try:
            await history.store(events.events)
        finally:
            await history.aclose()

    anyio.run(main, backend="trio")
    return ids


@pytest.mark.parametrize("loop", ["asyncio", "trio"])
def test_history_search_box(
    redis_url: str, pg_dsn: str, page: Watched, screenshots: Path, loop: str
) -> None:
    ids = store_history(pg_dsn)
    with serving(redis_url, loop=loop, postgres=pg_dsn) as server:
        p = page.page
        p.goto(server.base + "/")
        p.locator("#nav-history").click()
        assert p.url == server.base + "/history"
        expect(p.locator("#history-results tbody tr")).to_have_count(14)
        # the hostile task's type and error show as text in its row
        hostile = p.locator(f'tr[data-task="{ids["hostile"]}"]')
        expect(hostile.locator("td").nth(2)).to_have_text(HOSTILE[0])
        expect(hostile.locator("td").last).to_have_text(HOSTILE[0])  # the error's first line
        shoot(p, screenshots, "history", loop)

        form = p.locator("#history-search")
        form.locator('input[name="text"]').fill("1234")
        form.locator('select[name="state"]').select_option("completed")
        form.locator('button[type="submit"]').click()
        expect(p.locator("#history-results tbody tr")).to_have_count(1)
        assert "text=1234" in p.url and "state=completed" in p.url
        row = p.locator(f'tr[data-task="{ids["email"]}"]')
        expect(row.locator("td").nth(1)).to_have_text("mail")
        row.locator("a").click()

        assert p.url.startswith(server.base + "/history/")
        events = p.locator("#history-events tbody tr")
        expect(events).to_have_count(6)
        expect(events.nth(2)).to_contain_text("SMTPServerDisconnected: 451")
        expect(events.nth(4).locator("td").nth(2)).to_have_text("2")  # the second attempt
        expect(p.locator("pre.payload")).to_contain_text('"template": "receipt"')
        shoot(p, screenshots, "history-task", loop)

        # the story of the hostile task: every string as text, no dialog (checked by `page`)
        p.goto(f"{server.base}/history/{ids['hostile']}")
        expect(p.locator("dl.fields .labels")).to_have_text(f"{HOSTILE[1]} = {HOSTILE[2]}")
        expect(p.locator("#history-events")).to_contain_text(HOSTILE_CONSUMER)
