"""/metrics of the web app through httpx.ASGITransport on the memory backend, under asyncio and
trio: the Prometheus exposition of the app's backend, behind the same gate as every page, and
off with `metrics=False`."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.parser import text_string_to_metric_families

from strego import Client, Task
from strego.backends.memory import MemoryBackend
from strego.web import create_app
from tests.web.support import http

pytestmark = pytest.mark.anyio


@pytest.fixture
async def backend() -> AsyncIterator[MemoryBackend]:
    b = MemoryBackend()
    client = Client(b)
    for n in range(3):
        await client.enqueue(Task("t", n, queue="mail"))
    await b.pause("mail")
    yield b
    await b.aclose()


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


async def test_metrics_exposes_the_backend(backend: MemoryBackend) -> None:
    async with http(create_app(backend, snapshot_interval_s=0)) as web:
        answer = await web.get("/metrics")
        assert answer.status_code == 200
        assert answer.headers["content-type"] == CONTENT_TYPE_LATEST
        found = samples(answer.text)
        assert found[("strego_queue_tasks", (("queue", "mail"), ("state", "pending")))] == 3
        assert found[("strego_queue_paused", (("queue", "mail"),))] == 1
        assert found[("strego_collector_queues", ())] == 1
        await Client(backend).enqueue(Task("t", queue="mail"))
        again = samples((await web.get("/metrics")).text)  # interval 0: read again
        assert again[("strego_queue_tasks", (("queue", "mail"), ("state", "pending")))] == 4
        assert (await web.head("/metrics")).status_code == 200


async def test_metrics_behind_the_gate(backend: MemoryBackend) -> None:
    app = create_app(backend, readonly=False, basic_auth=("admin", "pw"))
    async with http(app) as web:
        refused = await web.get("/metrics")
        assert refused.status_code == 401 and "strego_queue" not in refused.text
        allowed = await web.get("/metrics", auth=("admin", "pw"))
        assert allowed.status_code == 200 and "strego_queue_tasks" in allowed.text
        posted = await web.post("/metrics", auth=("admin", "pw"))
        assert posted.status_code == 405  # only a GET
    hooked = create_app(backend, auth=lambda request: request.headers.get("x-ok") == "1")
    async with http(hooked) as web:
        assert (await web.get("/metrics")).status_code == 403
        assert (await web.get("/metrics", headers={"x-ok": "1"})).status_code == 200


async def test_metrics_off(backend: MemoryBackend) -> None:
    async with http(create_app(backend, metrics=False)) as web:
        assert (await web.get("/metrics")).status_code == 404
