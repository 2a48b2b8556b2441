"""The JSON API through httpx.ASGITransport, on the memory backend and on Redis (anyio transport),
under asyncio and trio: every endpoint, paging while tasks move, and the refusals (400, 404, 409,
503)."""

from __future__ import annotations

import base64
from typing import Any

import pytest
from starlette.routing import Mount, Route

from conformance.clock import FakeClock
from strego import Client, Task
from strego.backends.base import Backend
from strego.report import LIST_PAYLOAD_LIMIT, PAYLOAD_LIMIT
from strego.server import consumer_name
from strego.web import create_app
from tests.web.support import LEASE_MS, http, seed

pytestmark = pytest.mark.anyio

API = "/api/v1"


def app_on(backend: Backend, **options: Any) -> Any:
    return create_app(backend, readonly=False, **options)


async def test_queues_shows_counts_paused_oldest_pending_and_history(
    backend: Backend, clock: FakeClock
) -> None:
    ids = await seed(backend)
    await backend.pause("other")
    clock.advance(1500)
    async with http(app_on(backend)) as api:
        r = await api.get(f"{API}/queues")
    assert r.status_code == 200
    assert r.headers["content-type"] == "application/json"
    queues = {q["name"]: q for q in r.json()["queues"]}
    assert list(queues) == ["other", "work"]
    work = queues["work"]
    assert work["counts"] == {
        "scheduled": 1,
        "pending": 1,
        "active": 1,
        "retry": 1,
        "dead": 1,
        "completed": 1,
        "cancelled": 1,
    }
    assert work["paused"] is False and queues["other"]["paused"] is True
    assert work["oldest_pending_age_ms"] == 1500
    history = work["history"]
    assert len(history["completed"]) == len(history["failed"]) == len(history["dead"]) == 60
    assert history["total"] == {"completed": 1, "failed": 1, "dead": 1}
    assert history["start_ms"] % 60_000 == 0
    assert ids.other  # the pending task of "other"
    assert queues["other"]["counts"]["pending"] == 1


async def test_one_queue_and_an_unknown_one(backend: Backend) -> None:
    await seed(backend)
    async with http(app_on(backend)) as api:
        r = await api.get(f"{API}/queues/work")
        assert r.status_code == 200
        assert r.json()["name"] == "work" and r.json()["counts"]["dead"] == 1
        assert r.json()["history"]["total"]["completed"] == 1
        day = (await api.get(f"{API}/queues/work", params={"minutes": 1440})).json()["history"]
        assert len(day["completed"]) == 1440 and day["total"]["completed"] == 1
        typed = await api.get(f"{API}/queues/work", params={"type": "completed"})
        assert typed.json()["history"]["total"] == {"completed": 1, "failed": 0, "dead": 0}
        other = await api.get(f"{API}/queues/work", params={"type": "nope", "minutes": 5})
        assert other.json()["history"]["total"]["completed"] == 0
        assert len(other.json()["history"]["completed"]) == 5
        for bad in ("0", "1441", "x"):
            r = await api.get(f"{API}/queues/work", params={"minutes": bad})
            assert r.status_code == 400, bad
        for name in ("nope", "a%20b", "%3Cscript%3E"):
            missing = await api.get(f"{API}/queues/{name}")
            assert missing.status_code == 404, name
            assert missing.json()["error"] == "not_found"
        assert (await api.get(f"{API}/queues/nope/tasks")).status_code == 404


async def test_tasks_of_each_state(backend: Backend) -> None:
    ids = await seed(backend)
    async with http(app_on(backend)) as api:
        for state in ("scheduled", "pending", "active", "retry", "dead", "completed", "cancelled"):
            r = await api.get(f"{API}/queues/work/tasks", params={"state": state})
            assert r.status_code == 200
            page = r.json()
            assert page["state"] == state and page["next_cursor"] is None
            assert [t["id"] for t in page["tasks"]] == [getattr(ids, state)]
            assert page["tasks"][0]["state"] == state
        default = (await api.get(f"{API}/queues/work/tasks")).json()
        assert default["state"] == "pending"


async def test_paging_while_tasks_move_lists_each_staying_task_once(backend: Backend) -> None:
    client = Client(backend)
    first = [(await client.enqueue(Task("t", i, queue="q"))).id for i in range(30)]
    seen: list[str] = []
    moved: set[str] = set()
    async with http(app_on(backend)) as api:
        cursor = None
        pages = 0
        while True:
            params = {"state": "pending", "limit": 7}
            if cursor:
                params["cursor"] = cursor
            page = (await api.get(f"{API}/queues/q/tasks", params=params)).json()
            seen += [t["id"] for t in page["tasks"]]
            pages += 1
            cursor = page["next_cursor"]
            if cursor is None:
                break
            # between pages: the oldest pending tasks start (leave pending), new ones arrive
            for t in await backend.fetch(["q"], 2, "c", lease_ms=LEASE_MS):
                moved.add(t.id)
            await client.enqueue(Task("t", "late", queue="q"))
            assert pages < 50
    stayed = [i for i in first if i not in moved]
    assert len(seen) == len(set(seen))  # nothing listed twice
    assert set(stayed) <= set(seen)  # every task that stayed pending was listed


async def test_task_detail(backend: Backend, clock: FakeClock) -> None:
    ids = await seed(backend)
    async with http(app_on(backend)) as api:
        active = (await api.get(f"{API}/tasks/{ids.active}")).json()
        retry = (await api.get(f"{API}/tasks/{ids.retry}")).json()
        dead = (await api.get(f"{API}/tasks/{ids.dead}")).json()
        missing = await api.get(f"{API}/tasks/no-such-task")
    assert active["state"] == "active" and active["consumer"] == "host-a:4242:0badcafe"
    assert active["deliveries"] == 1 and active["started_ms"] == clock.now_ms
    assert active["labels"] == {"kind": "active"} and active["queue"] == "work"
    assert active["payload"] == {
        "encoding": "json",
        "size": len(b'{"n":"active"}'),
        "truncated": False,
        "text": '{"n":"active"}',
        "base64": None,
    }
    assert retry["retried"] == 1 and retry["last_error"] == "boom <b>"
    assert retry["next_run_ms"] == clock.now_ms + 3_600_000
    assert dead["ended_ms"] == clock.now_ms and dead["last_error"] == "fatal 'x'"
    assert missing.status_code == 404 and missing.json()["error"] == "not_found"


async def test_payload_is_truncated_past_the_limit_and_downloadable_whole(
    backend: Backend,
) -> None:
    client = Client(backend)
    big = await client.enqueue(Task("t", "é" * PAYLOAD_LIMIT, queue="q"))  # 2 bytes a character
    raw = await client.enqueue(Task("t", b"\xff\x00<b>" * 100, queue="q"))
    async with http(app_on(backend)) as api:
        shown = (await api.get(f"{API}/tasks/{big.id}")).json()["payload"]
        whole = await api.get(f"{API}/tasks/{big.id}/payload")
        listed = (await api.get(f"{API}/queues/q/tasks")).json()["tasks"]
        binary = (await api.get(f"{API}/tasks/{raw.id}")).json()["payload"]
        missing = await api.get(f"{API}/tasks/nope/payload")
    assert shown["truncated"] is True and shown["size"] == len(big.payload)
    # cut at the limit, without half a character
    assert shown["text"] == '"' + "é" * ((PAYLOAD_LIMIT - 1) // 2)
    assert whole.status_code == 200 and whole.content == big.payload
    assert whole.headers["content-type"] == "application/octet-stream"
    assert whole.headers["content-disposition"].startswith("attachment;")
    assert len(listed[0]["payload"]["text"]) <= LIST_PAYLOAD_LIMIT
    assert binary["encoding"] == "raw" and binary["text"] is None
    assert base64.b64decode(binary["base64"]) == raw.payload
    assert missing.status_code == 404


async def test_task_actions_and_their_refusals(backend: Backend) -> None:
    ids = await seed(backend)
    async with http(app_on(backend)) as api:

        async def act(method: str, path: str) -> tuple[int, dict[str, Any]]:
            r = await api.request(method, f"{API}/tasks/{path}")
            return r.status_code, r.json()

        assert await act("POST", f"{ids.dead}/requeue") == (
            200,
            {"id": ids.dead, "action": "requeue", "changed": True, "state": "pending"},
        )
        status, body = await act("POST", f"{ids.pending}/requeue")
        assert status == 409 and body["error"] == "wrong_state" and body["state"] == "pending"
        assert (await act("POST", f"{ids.scheduled}/run"))[1]["state"] == "pending"
        assert (await act("POST", f"{ids.retry}/run"))[1]["state"] == "pending"
        assert (await act("POST", f"{ids.pending}/run"))[0] == 409
        assert (await act("POST", f"{ids.other}/cancel"))[1]["state"] == "cancelled"
        # a running task: its cancel is requested, and the server holding it stops it
        status, body = await act("POST", f"{ids.active}/cancel")
        assert status == 200 and body["changed"] and body["state"] == "active"
        assert await act("DELETE", ids.completed) == (
            200,
            {"id": ids.completed, "action": "delete", "changed": True, "state": None},
        )
        assert (await act("DELETE", ids.active))[0] == 409
        for method, path in (
            ("POST", "nope/requeue"),
            ("POST", "nope/run"),
            ("POST", "nope/cancel"),
            ("DELETE", "nope"),
        ):
            status, body = await act(method, path)
            assert status == 404 and body["error"] == "not_found", path
        assert (await api.get(f"{API}/tasks/{ids.completed}")).status_code == 404
    assert (await backend.get_task(ids.dead)).state.value == "pending"  # type: ignore[union-attr]


async def test_queue_actions_show_at_once_and_report_counts(backend: Backend) -> None:
    await seed(backend)
    client = Client(backend)
    for _ in range(3):
        info = await client.enqueue(Task("t", queue="work"))
        (fetched,) = await backend.fetch(["work"], 1, "c", lease_ms=LEASE_MS, ordered=True)
        await backend.fail("work", fetched.id, "c", "x", retry_in_ms=None)
        assert info
    async with http(app_on(backend)) as api:
        assert (await api.get(f"{API}/queues")).json()["queues"][1]["paused"] is False
        r = await api.post(f"{API}/queues/work/pause")
        assert r.json() == {"queue": "work", "paused": True}
        # the shared overview was read just before: the pause shows at once all the same
        assert (await api.get(f"{API}/queues")).json()["queues"][1]["paused"] is True
        assert (await api.post(f"{API}/queues/work/resume")).json()["paused"] is False
        assert (await api.get(f"{API}/queues")).json()["queues"][1]["paused"] is False
        r = await api.post(f"{API}/queues/work/requeue-dead")
        assert r.json() == {"queue": "work", "action": "requeue-dead", "changed": 4}
        r = await api.post(f"{API}/queues/work/purge", params={"state": "completed,cancelled"})
        assert r.json()["changed"] == 2 and r.json()["states"] == ["completed", "cancelled"]
        r = await api.post(f"{API}/queues/work/purge?state=retry&state=scheduled")
        assert r.json()["changed"] == 2
        for bad in ("", "?state=active", "?state=bogus"):
            r = await api.post(f"{API}/queues/work/purge{bad}")
            assert r.status_code == 400 and r.json()["error"] == "invalid", bad
        for action in ("pause", "resume", "requeue-dead", "purge?state=dead"):
            assert (await api.post(f"{API}/queues/nope/{action}")).status_code == 404
        counts = (await api.get(f"{API}/queues/work")).json()["counts"]
    assert counts["pending"] == 5 and counts["active"] == 1 and counts["dead"] == 0


async def test_workers_with_host_and_pid_when_the_name_gives_them(backend: Backend) -> None:
    default = consumer_name()
    client = Client(backend)
    for queue in ("a", "b"):
        await client.enqueue(Task("t", queue=queue))
    (held,) = await backend.fetch(["a"], 1, default, lease_ms=LEASE_MS)
    await backend.fetch(["b"], 1, "hand-named", lease_ms=LEASE_MS)
    async with http(app_on(backend)) as api:
        workers = (await api.get(f"{API}/workers")).json()["workers"]
    host, pid, _ = default.split(":")
    assert [w["name"] for w in workers] == sorted([default, "hand-named"])  # by name
    by_name = {w["name"]: w for w in workers}
    assert by_name[default] == {
        "name": default, "queue": "a", "host": host, "pid": int(pid), "idle_ms": 0,
        "held": [held.id],
    }  # fmt: skip
    assert by_name["hand-named"]["host"] is None and by_name["hand-named"]["pid"] is None
    assert by_name["hand-named"]["queue"] == "b" and len(by_name["hand-named"]["held"]) == 1


async def test_bad_queries_are_400(backend: Backend) -> None:
    await seed(backend)
    async with http(app_on(backend)) as api:
        for query in ("limit=0", "limit=1001", "limit=x", "state=bogus", "cursor=garbage"):
            r = await api.get(f"{API}/queues/work/tasks?{query}")
            assert r.status_code == 400 and r.json()["error"] == "invalid", query
        other = (await api.get(f"{API}/queues/work/tasks?state=dead&limit=1")).json()
        assert other["next_cursor"] is None
        assert (await api.get(f"{API}/nowhere")).json()["error"] == "not_found"
        wrong = await api.put(f"{API}/queues")
        assert wrong.status_code == 405 and wrong.json()["error"] == "method_not_allowed"


async def test_a_failing_backend_is_503(backend: Backend) -> None:
    app = app_on(backend)
    await backend.aclose()
    async with http(app) as api:
        r = await api.get(f"{API}/queues")
        assert r.status_code == 503
        assert r.json()["error"] == "backend" and "BackendClosedError" in r.json()["message"]


def _paths(routes: list[Any], prefix: str = "") -> set[tuple[str, str]]:
    found = set()
    for route in routes:
        if isinstance(route, Mount):
            found |= _paths(route.routes, prefix + route.path)
        elif isinstance(route, Route):
            for method in route.methods or ():
                if method != "HEAD":
                    found.add((prefix + route.path, method.lower()))
    return found


async def test_openapi_document_names_every_route_and_only_them(backend: Backend) -> None:
    app = app_on(backend)
    async with http(app) as api:
        doc = (await api.get(f"{API}/openapi.json")).json()
    assert doc["openapi"].startswith("3.1") and doc["servers"] == [{"url": API}]
    documented = {(API + path, m) for path, item in doc["paths"].items() for m in item}
    # the API's routes (the web UI's pages beside it are not part of the API)
    assert documented == {(path, m) for path, m in _paths(app.routes) if path.startswith(API)}
    for item in doc["paths"].values():
        for operation in item.values():
            for ref in str(operation).split("'$ref': '")[1:]:
                assert ref.split("'")[0].rsplit("/", 1)[1] in doc["components"]["schemas"]
