"""Middleware: hooks that the `Client` calls around each enqueue and the `Server` around each
attempt of a task. Metrics (strego.prometheus) and traces (strego.otel) are built on them, and so
can users.

A middleware is any object with some of these four methods (subclass `Middleware` to get no-op
defaults); each may be a plain function or a coroutine function::

    before_enqueue(call: EnqueueCall)    # may add propagation headers: call.headers[...] = ...
    after_enqueue(call: EnqueueCall)     # call.info (stored) or call.error (refused), duration
    before_attempt(attempt: Attempt)     # in the runner's task, just before the handler
    after_attempt(attempt: Attempt)      # attempt.outcome, error, duration

Hooks run in order for `before_*` and in reverse order for `after_*` (the first middleware wraps
all the others), in the task that runs the enqueue or the handler, so a hook may set a context
variable in `before_*` and reset it in `after_*`. Sync hooks run on the event loop: keep them
short. `after_*` is called exactly once for each `before_*` call.

A hook that raises is logged (logger ``strego.middleware``) and skipped: the task is still
enqueued, run, acked or failed exactly as without it, never lost nor run twice. Only the
runtime's cancellation passes through a hook.
"""

from __future__ import annotations

import enum
import inspect
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

import anyio
import attrs

from strego.logs import task_extra
from strego.message import TaskMessage
from strego.task import TaskInfo

log = logging.getLogger("strego.middleware")

__all__ = ["Attempt", "EnqueueCall", "Middleware", "MiddlewareChain", "Outcome"]


class Outcome(enum.StrEnum):
    """How an attempt ended."""

    COMPLETED = "completed"  #: the handler returned (the task is acked)
    RETRIED = "retried"  #: it failed and waits for its next attempt
    DEAD = "dead"  #: it failed for good
    #: the handler was cancelled (shutdown, or the task cancelled while running); at shutdown
    #: the task is released to pending and runs again
    CANCELLED = "cancelled"
    #: it failed but the failure could not be recorded (the backend was unreachable, or the task
    #: was no longer held): it runs again once its lease expires
    LOST = "lost"


@attrs.define(eq=False)
class EnqueueCall:
    """One task being enqueued (`Client.enqueue`, or one task of `enqueue_many`)."""

    message: TaskMessage
    #: propagation headers; `before_enqueue` hooks may add to them, the task stores them
    headers: dict[str, str]
    #: `time.perf_counter()` when the enqueue began
    started: float
    #: after: what the backend stored, or None when refused
    info: TaskInfo | None = None
    #: after: why it was refused (the task was not enqueued)
    error: BaseException | None = None
    #: after: seconds the enqueue took
    duration: float = 0.0
    #: for middleware to keep what it needs between its two hooks (use yourself as the key)
    scratch: dict[object, Any] = attrs.field(factory=dict)


@attrs.define(eq=False)
class Attempt:
    """One run of a task's handler by a server."""

    info: TaskInfo
    #: the server's consumer name
    consumer: str
    #: `time.perf_counter()` when the attempt began
    started: float
    #: seconds from its creation to this start, for a first attempt (None for later ones, whose
    #: due time the server does not see). A scheduled task's wait includes its delay.
    wait: float | None = None
    #: after: how it ended
    outcome: Outcome | None = None
    #: after: what the handler raised (or the failure's exception: timeout, no handler...)
    error: BaseException | None = None
    #: after: seconds from the start to the outcome (the handler's run, and recording a failure)
    duration: float = 0.0
    scratch: dict[object, Any] = attrs.field(factory=dict)

    @property
    def attempt(self) -> int:
        """1 for the first run, 2 for the first retry..."""
        return self.info.retried + 1


class Middleware:
    """A middleware with every hook a no-op: override the ones you need (sync or async)."""

    def before_enqueue(self, call: EnqueueCall) -> Any:
        return None

    def after_enqueue(self, call: EnqueueCall) -> Any:
        return None

    def before_attempt(self, attempt: Attempt) -> Any:
        return None

    def after_attempt(self, attempt: Attempt) -> Any:
        return None


_HOOKS = ("before_enqueue", "after_enqueue", "before_attempt", "after_attempt")
Hook = Callable[[Any], Any]
#: A hook, and whether it is a coroutine function (else its result is awaited if awaitable).
Bound = tuple[Hook, bool]


def _hooks(items: Iterable[object], name: str) -> tuple[Bound, ...]:
    """The bound `name` hooks of `items` that do something (no-op defaults left out)."""
    found = []
    for item in items:
        hook = getattr(item, name, None)
        if hook is None or getattr(type(item), name, None) is getattr(Middleware, name):
            continue
        if not callable(hook):
            raise TypeError(f"middleware {item!r}: {name} is not callable")
        found.append((hook, inspect.iscoroutinefunction(hook)))
    return tuple(found)


class MiddlewareChain:
    """The middleware of a client or server, in order, and the calls of its hooks."""

    def __init__(self, items: Iterable[object] = ()) -> None:
        self.items = tuple(items)
        for item in self.items:
            if not any(hasattr(item, name) for name in _HOOKS):
                raise TypeError(f"{item!r} has none of the middleware hooks {', '.join(_HOOKS)}")
        self.before_enqueue = _hooks(self.items, "before_enqueue")
        self.after_enqueue = _hooks(reversed(self.items), "after_enqueue")
        self.before_attempt = _hooks(self.items, "before_attempt")
        self.after_attempt = _hooks(reversed(self.items), "after_attempt")
        self.enqueues = bool(self.before_enqueue or self.after_enqueue)
        self.attempts = bool(self.before_attempt or self.after_attempt)

    def __bool__(self) -> bool:
        return bool(self.items)

    def with_(self, *more: object) -> MiddlewareChain:
        """This chain with `more` middleware after its own."""
        return MiddlewareChain((*self.items, *more))

    # -- the client's side --------------------------------------------------------------------

    async def start_enqueue(self, message: TaskMessage) -> EnqueueCall:
        call = EnqueueCall(message, dict(message.headers), time.perf_counter())
        await _run(self.before_enqueue, call)
        if call.headers != message.headers:
            call.message = attrs.evolve(message, headers=_clean_headers(call.headers))
        return call

    async def end_enqueue(
        self, call: EnqueueCall, info: TaskInfo | None, error: BaseException | None
    ) -> None:
        call.info, call.error = info, error
        call.duration = time.perf_counter() - call.started
        await _run(self.after_enqueue, call)

    async def enqueue(
        self, message: TaskMessage, store: Callable[[TaskMessage], Awaitable[TaskInfo]]
    ) -> TaskInfo:
        """Run `store(message)` between the enqueue hooks."""
        call = await self.start_enqueue(message)
        try:
            info = await store(call.message)
        except BaseException as exc:
            # a cancelled enqueue too: every before_enqueue gets its after_enqueue
            with anyio.CancelScope(shield=True):
                await self.end_enqueue(call, None, exc)
            raise
        await self.end_enqueue(call, info, None)
        return info

    # -- the server's side --------------------------------------------------------------------

    async def start_attempt(self, info: TaskInfo, consumer: str) -> Attempt:
        wait = None
        if info.retried == 0 and info.started_ms is not None:
            wait = max(0.0, (info.started_ms - info.created_ms) / 1000)
        attempt = Attempt(info, consumer, time.perf_counter(), wait)
        await _run(self.before_attempt, attempt)
        return attempt

    async def end_attempt(
        self, attempt: Attempt, outcome: Outcome, error: BaseException | None
    ) -> None:
        attempt.outcome, attempt.error = outcome, error
        attempt.duration = time.perf_counter() - attempt.started
        await _run(self.after_attempt, attempt)


def _clean_headers(headers: dict[str, str]) -> dict[str, str]:
    """Only str to str pairs reach a stored task (a hook's mistake is logged, not stored)."""
    clean = {k: v for k, v in headers.items() if isinstance(k, str) and isinstance(v, str)}
    if len(clean) != len(headers):
        log.error("middleware set headers that are not str to str; dropped them")
    return clean


async def _run(hooks: tuple[Bound, ...], argument: EnqueueCall | Attempt) -> None:
    for hook, is_async in hooks:
        try:
            if is_async:
                await hook(argument)
                continue
            result = hook(argument)
            if result is not None and inspect.isawaitable(result):
                await result
        except anyio.get_cancelled_exc_class():
            raise  # the runtime cancelling the enqueue or the attempt: as without middleware
        except Exception:
            task = argument.message if isinstance(argument, EnqueueCall) else argument.info
            log.exception("middleware hook %s raised; ignored", _name(hook), extra=task_extra(task))


def _name(hook: Hook) -> str:
    return getattr(hook, "__qualname__", repr(hook))
