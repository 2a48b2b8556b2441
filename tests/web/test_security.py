"""The security gate, enforced by the server: read-only answers 405 to every mutation, a mutation
from another origin is 403, the auth hook and HTTP Basic refuse (403, 401), no CORS header is
ever sent. Backend-independent: on the memory backend, under asyncio and trio."""

from __future__ import annotations

from typing import Any

import pytest
from starlette.requests import Request
from starlette.routing import Mount, Route

from strego.backends.base import Backend
from strego.backends.memory import MemoryBackend
from strego.task import TaskState
from strego.web import create_app
from strego.web import security as security_module
from strego.web.security import basic_credentials_match
from tests.web.support import csrf_headers, http, seed

pytestmark = pytest.mark.anyio

API = "/api/v1"
SAME_ORIGIN = {"origin": "http://testserver"}


@pytest.fixture
async def memory() -> Any:
    backend = MemoryBackend()
    yield backend
    await backend.aclose()


def mutations(app: Any, ids: Any) -> list[tuple[str, str]]:
    """Every mutating route of the app, with a real task or queue in its path."""
    found: list[tuple[str, str]] = []

    def walk(routes: list[Any], prefix: str) -> None:
        for route in routes:
            if isinstance(route, Mount):
                walk(route.routes, prefix + route.path)
            elif isinstance(route, Route):
                path = (prefix + route.path).format(queue="work", id=ids.dead)
                found.extend((m, path) for m in route.methods or () if m not in ("GET", "HEAD"))

    walk(app.routes, "")
    return found


async def states(backend: Backend) -> dict[str, Any]:
    infos = [await backend.queue_info(q) for q in await backend.queues()]
    return {i.name: (i.paused, dict(i.counts)) for i in infos}


async def test_read_only_by_default_refuses_every_mutation_with_405(memory: Backend) -> None:
    ids = await seed(memory)
    app = create_app(memory)
    routes = mutations(app, ids)
    assert len(routes) == 8  # pause, resume, requeue-dead, purge, requeue, cancel, run, delete
    before = await states(memory)
    async with http(app) as api:
        for method, path in routes:
            r = await api.request(method, path + "?state=dead", headers=SAME_ORIGIN)
            assert r.status_code == 405, (method, path)
            assert r.json()["error"] == "read_only" and r.headers["allow"] == "GET, HEAD"
        # a method no route has is refused the same way, before routing
        assert (await api.put(f"{API}/queues")).status_code == 405
        assert (await api.get(f"{API}/queues")).status_code == 200
    assert await states(memory) == before
    assert (await memory.get_task(ids.dead)).state is TaskState.DEAD  # type: ignore[union-attr]


@pytest.mark.parametrize(
    "headers",
    [
        {"origin": "http://evil.example"},
        {"origin": "http://testserver.evil.example"},
        {"origin": "http://testserver:8080"},
        {"origin": "null"},
        {"origin": "garbage"},
        {"sec-fetch-site": "cross-site"},
        {"sec-fetch-site": "same-site", "origin": "http://testserver"},
    ],
)
async def test_a_mutation_from_another_origin_is_403(
    memory: Backend, headers: dict[str, str]
) -> None:
    await seed(memory)
    app = create_app(memory, readonly=False)
    async with http(app) as api:
        r = await api.post(f"{API}/queues/work/pause", headers=headers)
        assert r.status_code == 403 and r.json()["error"] == "cross_origin"
        # reads are not mutations
        assert (await api.get(f"{API}/queues", headers=headers)).status_code == 200
    assert not (await memory.queue_info("work")).paused


@pytest.mark.parametrize(
    "headers",
    [
        {},  # curl, scripts, the CLI: no browser
        {"origin": "http://testserver"},
        {"origin": "http://TESTSERVER:80"},
        {"origin": "http://testserver", "sec-fetch-site": "same-origin"},
        {"sec-fetch-site": "none"},
    ],
)
async def test_a_same_origin_mutation_goes_through(
    memory: Backend, headers: dict[str, str]
) -> None:
    await seed(memory)
    async with http(create_app(memory, readonly=False)) as api:
        if headers:  # a browser's request carries the UI page's CSRF token (tests/web/test_ui.py)
            headers = {**headers, **await csrf_headers(api)}
        assert (await api.post(f"{API}/queues/work/pause", headers=headers)).status_code == 200
    assert (await memory.queue_info("work")).paused


async def test_listed_origins_are_accepted(memory: Backend) -> None:
    await seed(memory)
    app = create_app(memory, readonly=False, origins=["https://ops.example"])
    async with http(app) as api:
        listed = {"origin": "https://ops.example", **await csrf_headers(api)}
        ok = await api.post(f"{API}/queues/work/pause", headers=listed)
        assert ok.status_code == 200
        evil = {"origin": "https://evil.example"}
        assert (await api.post(f"{API}/queues/work/resume", headers=evil)).status_code == 403


async def test_http_basic(memory: Backend, monkeypatch: pytest.MonkeyPatch) -> None:
    compared: list[tuple[bytes, bytes]] = []
    real = security_module.hmac.compare_digest

    def recording(a: bytes, b: bytes) -> bool:
        compared.append((a, b))
        return real(a, b)

    monkeypatch.setattr(security_module.hmac, "compare_digest", recording)
    app = create_app(memory, basic_auth=("ops", "s3cret é"))
    async with http(app) as api:
        r = await api.get(f"{API}/queues")
        assert r.status_code == 401 and r.headers["www-authenticate"].startswith("Basic ")
        assert (await api.get(f"{API}/queues", auth=("ops", "wrong"))).status_code == 401
        assert (await api.get(f"{API}/queues", auth=("nobody", "s3cret é"))).status_code == 401
        assert (await api.get(f"{API}/openapi.json")).status_code == 401
        compared.clear()
        assert (await api.get(f"{API}/queues", auth=("ops", "s3cret é"))).status_code == 200
        assert compared == [(b"ops", b"ops"), ("s3cret é".encode(), "s3cret é".encode())]
        # the password is compared even when the user is wrong: the time tells nothing
        compared.clear()
        await api.get(f"{API}/queues", auth=("x", "y"))
        assert len(compared) == 2
        # unauthenticated and read-only: 401 first, nothing about the app leaks
        assert (await api.post(f"{API}/queues/a/pause")).status_code == 401


@pytest.mark.parametrize(
    "header",
    [None, "Bearer abc", "Basic !!!", "Basic b3Bz", "basic b3BzOnMzY3JldA=="],
)
def test_basic_credentials_parsing(header: str | None) -> None:
    expected = header == "basic b3BzOnMzY3JldA=="  # ops:s3cret, the scheme in any case
    assert basic_credentials_match(header, "ops", "s3cret") is expected


@pytest.mark.parametrize("asynchronous", [False, True])
async def test_auth_hook(memory: Backend, asynchronous: bool) -> None:
    seen: list[str] = []

    def decide(request: Request) -> bool:
        seen.append(request.url.path)
        return request.headers.get("x-team") == "ops"

    async def decide_async(request: Request) -> bool:
        return decide(request)

    app = create_app(memory, auth=decide_async if asynchronous else decide)
    async with http(app) as api:
        refused = await api.get(f"{API}/queues")
        assert refused.status_code == 403 and refused.json()["error"] == "forbidden"
        assert (await api.get(f"{API}/queues", headers={"x-team": "ops"})).status_code == 200
    assert seen == [f"{API}/queues"] * 2


async def test_no_cors_header_ever(memory: Backend) -> None:
    await seed(memory)
    evil = {"origin": "http://evil.example"}
    async with http(create_app(memory, readonly=False)) as api:
        preflight = {**evil, "access-control-request-method": "POST"}
        answers = [
            await api.get(f"{API}/queues", headers=evil),
            await api.options(f"{API}/queues/work/pause", headers=preflight),
            await api.post(f"{API}/queues/work/pause", headers=evil),
            await api.get(f"{API}/nowhere", headers=evil),
        ]
    for r in answers:
        assert not [h for h in r.headers if h.lower().startswith("access-control-")]
        assert r.headers["x-content-type-options"] == "nosniff"
        assert r.headers["x-frame-options"] == "DENY"


@pytest.mark.parametrize("bad", [("ops",), ("", "x"), ("ops", ""), ["ops", "pw"], ("ops", 1)])
def test_basic_auth_must_be_a_pair_of_strings(bad: Any) -> None:
    with pytest.raises(ValueError, match="basic_auth"):
        create_app(MemoryBackend(), basic_auth=bad)


async def test_allowed_hosts_refuse_another_host_header(memory: Backend) -> None:
    app = create_app(memory, allowed_hosts=["testserver", "localhost"])
    async with http(app) as api:
        assert (await api.get(f"{API}/queues")).status_code == 200
        rebound = await api.get(f"{API}/queues", headers={"host": "evil.example"})
        assert rebound.status_code == 400
    async with http(create_app(memory)) as api:  # by default any Host is answered
        assert (await api.get(f"{API}/queues", headers={"host": "any.example"})).status_code == 200
