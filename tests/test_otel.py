"""strego[otel]: producer and consumer spans joined across processes (a test process enqueues, a
`strego worker` subprocess runs), through a retry and a dead-letter requeue; baggage arrives."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import anyio
import pytest
from opentelemetry import baggage, context, trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

import strego
from strego.backends.memory import MemoryBackend
from strego.otel import SEMCONV_VERSION, TracingMiddleware
from strego.task import TaskState
from tests.obs_support import worker
from tests.runtime_support import PATIENCE, eventually, make_server, wait_for_state


def in_memory() -> tuple[TracerProvider, InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider, exporter


def read_spans(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def hex_id(value: int, width: int) -> str:
    return f"0x{value:0{width}x}"


@pytest.mark.redis
@pytest.mark.slow
@pytest.mark.parametrize("loop", ["asyncio", "trio"])
def test_spans_join_across_processes_retry_and_requeue(
    clean_redis_url: str, loop: str, tmp_path: Path
) -> None:
    provider, exporter = in_memory()
    tracing = TracingMiddleware(tracer_provider=provider)
    spans_file = tmp_path / "spans.jsonl"
    ids: dict[str, str] = {}

    async def enqueue() -> None:
        token = context.attach(baggage.set_baggage("tenant", "acme"))
        try:
            async with strego.Client.from_url(clean_redis_url, middleware=[tracing]) as client:
                for kind, max_retry in (("ok", 3), ("flaky", 3), ("bad", 1)):
                    info = await client.enqueue(strego.Task(kind, {}, max_retry=max_retry))
                    ids[kind] = info.id
        finally:
            context.detach(token)

    async def requeue_when_dead() -> None:
        async with strego.Client.from_url(clean_redis_url) as client:
            await wait_for_state(client.backend, ids["bad"], TaskState.DEAD)
            assert await client.requeue_dead("default", ids["bad"])

    anyio.run(enqueue, backend=loop)
    with worker(loop, redis_url=clean_redis_url, spans=spans_file):
        anyio.run(requeue_when_dead, backend=loop)
        # ok 1, flaky 2, bad 2 before the requeue and 2 after
        deadline = time.monotonic() + PATIENCE
        while len(read_spans(spans_file)) < 7 and time.monotonic() < deadline:
            time.sleep(0.05)
    consumed = read_spans(spans_file)
    assert len(consumed) == 7
    produced = {s.attributes["messaging.message.id"]: s for s in exporter.get_finished_spans()}
    assert set(produced) == set(ids.values())
    for span in produced.values():
        assert span.name == "send default" and span.kind is trace.SpanKind.PRODUCER
        assert span.attributes["messaging.system"] == "strego"
        assert span.attributes["messaging.operation.type"] == "send"
        assert span.instrumentation_scope.schema_url.endswith(SEMCONV_VERSION)
    by_task: dict[str, list[dict[str, Any]]] = {}
    for span in consumed:
        by_task.setdefault(span["attributes"]["messaging.message.id"], []).append(span)
    assert {k: len(v) for k, v in by_task.items()} == {ids["ok"]: 1, ids["flaky"]: 2, ids["bad"]: 4}
    for task_id, spans in by_task.items():
        producer = produced[task_id].get_span_context()
        for span in spans:
            assert span["name"] == "process default" and span["kind"] == "SpanKind.CONSUMER"
            a = span["attributes"]
            assert a["messaging.system"] == "strego"
            assert a["messaging.operation.type"] == "process"
            assert a["messaging.destination.name"] == "default"
            assert a["messaging.consumer.group.name"] == "strego"
            # linked, not a child: a trace of its own
            [link] = span["links"]
            assert link["context"]["trace_id"] == hex_id(producer.trace_id, 32)
            assert link["context"]["span_id"] == hex_id(producer.span_id, 16)
            assert span["context"]["trace_id"] != hex_id(producer.trace_id, 32)
            assert span["parent_id"] is None
    flaky = sorted(by_task[ids["flaky"]], key=lambda s: s["attributes"]["strego.task.attempt"])
    assert [s["attributes"]["strego.task.outcome"] for s in flaky] == ["retried", "completed"]
    assert flaky[0]["attributes"]["error.type"] == "RuntimeError"
    bad = [s["attributes"]["strego.task.outcome"] for s in by_task[ids["bad"]]]
    assert sorted(bad) == ["dead", "dead", "retried", "retried"]
    # the producer's baggage is the handler's
    assert by_task[ids["ok"]][0]["attributes"]["test.baggage.tenant"] == "acme"


@pytest.mark.anyio
async def test_parent_mode_and_nested_spans(anyio_backend: Any) -> None:
    provider, exporter = in_memory()
    tracing = TracingMiddleware(tracer_provider=provider, parent=True)
    backend = MemoryBackend()
    client = strego.Client(backend, middleware=[tracing])
    server = make_server(backend, middleware=[tracing])
    tracer = provider.get_tracer("test")
    seen: list[object] = []

    @server.handler("t")
    async def handle(task: strego.Task) -> None:
        with tracer.start_as_current_span("inside"):
            seen.append(baggage.get_baggage("k"))
        # a task enqueued by a handler: its producer span is a child of the consumer span
        if task.payload == "first":
            await client.enqueue(strego.Task("t", "second"))

    token = context.attach(baggage.set_baggage("k", "v"))
    try:
        first = await client.enqueue(strego.Task("t", "first"))
    finally:
        context.detach(token)
    async with server:
        await eventually(lambda: len(exporter.get_finished_spans()) == 6, "six spans")
    spans: dict[str, list[ReadableSpan]] = {}
    for span in exporter.get_finished_spans():
        spans.setdefault(span.name, []).append(span)
    send1 = next(
        s for s in spans["send default"] if s.attributes["messaging.message.id"] == first.id
    )
    process1 = next(
        s for s in spans["process default"] if s.attributes["messaging.message.id"] == first.id
    )
    assert process1.parent is not None and process1.parent.span_id == send1.context.span_id
    assert process1.context.trace_id == send1.context.trace_id
    assert not process1.links
    # every span of the chain is in one trace
    assert {s.context.trace_id for s in exporter.get_finished_spans()} == {send1.context.trace_id}
    inside = spans["inside"]
    assert {s.parent.span_id for s in inside if s.parent} == {
        s.context.span_id for s in spans["process default"]
    }
    assert seen == ["v", "v"]  # baggage passed on through the second task too


@pytest.mark.anyio
async def test_enqueue_refused_marks_the_span(anyio_backend: Any) -> None:
    provider, exporter = in_memory()
    client = strego.Client(
        MemoryBackend(), middleware=[TracingMiddleware(tracer_provider=provider)]
    )
    await client.enqueue(strego.Task("t", id="same"))
    with pytest.raises(strego.errors.TaskIdConflictError):
        await client.enqueue(strego.Task("t", id="same"))
    ok, refused = exporter.get_finished_spans()
    assert ok.status.is_ok and "error.type" not in (ok.attributes or {})
    assert refused.attributes["error.type"] == "strego.errors.TaskIdConflictError"


@pytest.mark.anyio
async def test_without_an_sdk_baggage_still_travels(anyio_backend: Any) -> None:
    assert isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider)  # no SDK set
    tracing = TracingMiddleware()
    backend = MemoryBackend()
    client = strego.Client(backend, middleware=[tracing])
    server = make_server(backend, middleware=[tracing])
    seen: dict[str, object] = {}

    @server.handler("t")
    async def handle(task: strego.Task) -> None:
        assert task.id is not None
        seen[task.id] = baggage.get_baggage("k")

    token = context.attach(baggage.set_baggage("k", "v"))
    try:
        carried = await client.enqueue(strego.Task("t"))
    finally:
        context.detach(token)
    bare = await client.enqueue(strego.Task("t"))
    assert set(carried.headers) == {"baggage"}  # no span to name without an SDK
    assert bare.headers == {}
    async with server:
        await eventually(lambda: len(seen) == 2, "both tasks")
    assert seen == {carried.id: "v", bare.id: None}
