"""The app under any path prefix: at /, mounted at /a/b in another ASGI app, and behind a proxy
that sets root_path (passing the prefix on in the path, or stripping it). Every route answers
under the prefix and the OpenAPI document names the API's URL there."""

from __future__ import annotations

from typing import Any

import pytest
from starlette.applications import Starlette
from starlette.routing import Mount

from strego.backends.base import Backend
from strego.web import create_app
from tests.web.support import csrf_headers, http, seed

pytestmark = pytest.mark.anyio

#: (how the app is reached, the ASGI app given to the client, root_path, the path prefix a
#: client uses, the API's public URL)
LAYOUTS = {
    "root": ("", "", "/api/v1"),
    "mounted at /a/b": ("", "/a/b", "/a/b/api/v1"),
    "proxy, prefix kept": ("/proxy/x", "/proxy/x", "/proxy/x/api/v1"),
    "proxy, prefix stripped": ("/proxy/x", "", "/proxy/x/api/v1"),
}


@pytest.mark.parametrize("layout", list(LAYOUTS))
async def test_every_route_works_under_the_prefix(backend: Backend, layout: str) -> None:
    root_path, path_prefix, public = LAYOUTS[layout]
    ids = await seed(backend)
    app: Any = create_app(backend, readonly=False)
    if layout == "mounted at /a/b":
        app = Starlette(routes=[Mount("/a/b", app=app)])
    api_path = f"{path_prefix}/api/v1"
    async with http(app, root_path=root_path) as api:
        doc = (await api.get(f"{api_path}/openapi.json")).json()
        assert doc["servers"] == [{"url": public}]
        queues = (await api.get(f"{api_path}/queues")).json()["queues"]
        assert [q["name"] for q in queues] == ["other", "work"]
        assert (await api.get(f"{api_path}/queues/work")).status_code == 200
        page = (await api.get(f"{api_path}/queues/work/tasks?state=dead")).json()
        assert [t["id"] for t in page["tasks"]] == [ids.dead]
        assert (await api.get(f"{api_path}/tasks/{ids.dead}")).json()["id"] == ids.dead
        assert (await api.get(f"{api_path}/workers")).status_code == 200
        same_origin = {"origin": "http://testserver", **await csrf_headers(api, f"{path_prefix}/")}
        r = await api.post(f"{api_path}/tasks/{ids.dead}/requeue", headers=same_origin)
        assert r.status_code == 200 and r.json()["state"] == "pending"
        r = await api.post(f"{api_path}/queues/work/pause", headers={"origin": "http://evil"})
        assert r.status_code == 403
        missing = await api.get(f"{api_path}/tasks/nope")
        assert missing.status_code == 404 and missing.json()["error"] == "not_found"
