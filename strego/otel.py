"""OpenTelemetry traces (`strego[otel]`, opentelemetry-api only): a middleware that makes a
``send {queue}`` PRODUCER span at each enqueue and a ``process {queue}`` CONSUMER span per
attempt.

Attributes follow the messaging semantic conventions of OpenTelemetry Semantic Conventions
**v1.28.0** (`SEMCONV_VERSION`, also the tracer's schema URL): ``messaging.system`` is
``"strego"``, ``messaging.destination.name`` the queue, ``messaging.message.id`` the task id,
``messaging.operation.type``/``.name`` ``send`` or ``process``, ``messaging.consumer.group.name``
the consumer group (``strego``, the Redis backend's default `group`), ``messaging.client.id``
the server's consumer name, and ``error.type`` the exception's class on a failed attempt.
strego adds ``strego.task.type``, ``strego.task.attempt`` and ``strego.task.outcome``.

The producer's context (``traceparent``, ``tracestate``, ``baggage``, by the globally configured
propagator) is stored in the task's headers once, at enqueue, never in its payload: every attempt,
a retry, a dead-letter requeue or a claim by another server, finds the same one. The consumer span
*links* to the producer span by default (one trace per attempt, as the conventions advise for
work that may run long after, and more than once); `parent=True` makes it a child instead, in the
producer's trace. Either way the producer's baggage is the current baggage while the handler runs,
and the consumer span is the current span (so spans the handler makes are its children).
"""

from __future__ import annotations

from typing import Any

from opentelemetry import context, propagate, trace

from strego import __version__
from strego.middleware import Attempt, EnqueueCall, Middleware, Outcome

__all__ = ["SEMCONV_VERSION", "TracingMiddleware"]

#: The version of the semantic conventions these spans follow.
SEMCONV_VERSION = "1.28.0"
SCHEMA_URL = f"https://opentelemetry.io/schemas/{SEMCONV_VERSION}"
#: The global tracer providers of an application that configured no SDK.
_NO_SDK = (trace.ProxyTracerProvider, trace.NoOpTracerProvider)
#: The consumer group every strego server of a queue reads through.
CONSUMER_GROUP = "strego"


class TracingMiddleware(Middleware):
    """Producer and consumer spans; give the same instance (or two alike) to `Client` and
    `Server`. `tracer_provider` defaults to the global one; `parent=True` makes consumer spans
    children of the producer span instead of linking to it; `consumer_group` is the Redis
    backend's `group` option when it is not the default."""

    def __init__(
        self,
        *,
        tracer_provider: trace.TracerProvider | None = None,
        parent: bool = False,
        consumer_group: str = CONSUMER_GROUP,
    ) -> None:
        self.tracer = trace.get_tracer(
            "strego", __version__, tracer_provider=tracer_provider, schema_url=SCHEMA_URL
        )
        self.parent = parent
        self.consumer_group = consumer_group
        self._explicit = tracer_provider is not None

    def before_enqueue(self, call: EnqueueCall) -> None:
        m = call.message
        span = self.tracer.start_span(
            f"send {m.queue}",
            kind=trace.SpanKind.PRODUCER,
            attributes={
                "messaging.system": "strego",
                "messaging.operation.type": "send",
                "messaging.operation.name": "send",
                "messaging.destination.name": m.queue,
                "messaging.message.id": m.id,
                "strego.task.type": m.type,
            },
        )
        # the stored context names the producer span, with the caller's baggage
        propagate.inject(call.headers, context=trace.set_span_in_context(span))
        call.scratch[self] = span

    def after_enqueue(self, call: EnqueueCall) -> None:
        span: trace.Span | None = call.scratch.pop(self, None)
        if span is None:
            return
        if call.error is not None:
            span.set_attribute("error.type", _error_type(call.error))
            span.set_status(trace.StatusCode.ERROR, str(call.error))
        span.end()

    def _no_sdk(self) -> bool:
        """No tracer provider given and no SDK configured globally: spans would record nothing."""
        return not self._explicit and isinstance(trace.get_tracer_provider(), _NO_SDK)

    def before_attempt(self, attempt: Attempt) -> None:
        info = attempt.info
        if not info.headers and self._no_sdk():
            return  # nothing to record and no context to pass on: spare the attempt the work
        carried = propagate.extract(info.headers) if info.headers else context.Context()
        producer = trace.get_current_span(carried).get_span_context()
        links: list[trace.Link] = []
        if self.parent:
            start_in = carried
        else:
            # a new trace, with the producer's baggage but not its span
            start_in = trace.set_span_in_context(trace.INVALID_SPAN, carried)
            if producer.is_valid:
                links.append(trace.Link(producer))
        span = self.tracer.start_span(
            f"process {info.queue}",
            context=start_in,
            kind=trace.SpanKind.CONSUMER,
            links=links,
            attributes={
                "messaging.system": "strego",
                "messaging.operation.type": "process",
                "messaging.operation.name": "process",
                "messaging.destination.name": info.queue,
                "messaging.message.id": info.id,
                "messaging.consumer.group.name": self.consumer_group,
                "messaging.client.id": attempt.consumer,
                "strego.task.type": info.type,
                "strego.task.attempt": attempt.attempt,
            },
        )
        token = context.attach(trace.set_span_in_context(span, start_in))
        attempt.scratch[self] = (span, token)

    def after_attempt(self, attempt: Attempt) -> None:
        held: tuple[trace.Span, Any] | None = attempt.scratch.pop(self, None)
        if held is None:
            return
        span, token = held
        try:
            assert attempt.outcome is not None
            span.set_attribute("strego.task.outcome", str(attempt.outcome))
            if attempt.outcome is not Outcome.COMPLETED:
                error = attempt.error
                span.set_attribute(
                    "error.type", _error_type(error) if error else str(attempt.outcome)
                )
                span.set_status(trace.StatusCode.ERROR, str(error) if error else None)
            span.end()
        finally:
            context.detach(token)


def _error_type(exc: BaseException) -> str:
    kind = type(exc)
    return (
        kind.__qualname__
        if kind.__module__ == "builtins"
        else f"{kind.__module__}.{kind.__qualname__}"
    )
