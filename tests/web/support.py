"""Helpers of the web API tests: an httpx client on the app through ASGITransport, and tasks
seeded in every state."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import attrs
import httpx
from starlette.types import ASGIApp

from strego import Client, Task
from strego.backends.base import Backend

LEASE_MS = 60_000
BASE = "http://testserver"


@contextlib.asynccontextmanager
async def http(app: ASGIApp, *, root_path: str = "", base: str = BASE) -> AsyncIterator[Any]:
    transport = httpx.ASGITransport(app=app, root_path=root_path)  # type: ignore[arg-type]
    async with httpx.AsyncClient(transport=transport, base_url=base) as client:
        yield client


@attrs.define
class Seeded:
    """One task id per state, in queue "work" (and a pending one in "other")."""

    scheduled: str
    pending: str
    active: str
    retry: str
    dead: str
    completed: str
    cancelled: str
    other: str


async def seed(backend: Backend, consumer: str = "host-a:4242:0badcafe") -> Seeded:
    """Tasks in every state, each made by the transitions a server would call."""
    client = Client(backend)

    async def add(name: str, **options: Any) -> str:
        info = await client.enqueue(
            Task(name, {"n": name}, queue="work", labels={"kind": name}, **options)
        )
        return info.id

    ids = {s: await add(s) for s in ("active", "retry", "dead", "completed")}
    fetched = await backend.fetch(["work"], 4, consumer, lease_ms=LEASE_MS)
    assert {t.id for t in fetched} == set(ids.values())
    await backend.fail("work", ids["retry"], consumer, "boom <b>", retry_in_ms=3_600_000)
    await backend.fail("work", ids["dead"], consumer, "fatal 'x'", retry_in_ms=None)
    assert await backend.ack("work", ids["completed"], consumer)
    ids["cancelled"] = await add("cancelled")
    assert await backend.cancel(ids["cancelled"])
    ids["scheduled"] = await add("scheduled", process_in=3600)
    ids["pending"] = await add("pending")
    other = await client.enqueue(Task("other", queue="other"))
    return Seeded(other=other.id, **ids)


async def csrf_headers(client: Any, page: str = "/") -> dict[str, str]:
    """What the web UI's script sends with a mutation: the CSRF token of a UI page, in the header
    and in its cookie (set explicitly: behind a prefix-stripping proxy the client's URLs miss the
    cookie's path)."""
    answer = await client.get(page)
    token = answer.cookies["strego_csrf"]
    return {"x-strego-csrf": token, "cookie": f"strego_csrf={token}"}
