"""Handlers: the functions a server runs for each task type, and what each one receives.

A handler's first parameter's annotation decides its argument: `strego.Task` (or no annotation)
gives the task itself, with its payload decoded; any other type gives the decoded payload
structured into that type with cattrs (attrs classes, dataclasses, dict, list, ...). `def`
handlers run in a worker thread, `async def` handlers on the event loop.

`current_task()` tells a running handler which task (and which attempt) it is running.
"""

from __future__ import annotations

import contextvars
import inspect
from collections.abc import Callable, Iterator
from typing import Any

import attrs

from strego.error_text import exception_text
from strego.errors import DecodeError, HandlerSignatureError
from strego.serializers import converter
from strego.task import Task, TaskInfo

#: A handler: `async def` or `def`, taking one argument (the task or its typed payload).
HandlerFunc = Callable[[Any], Any]

_current: contextvars.ContextVar[TaskInfo] = contextvars.ContextVar("strego_current_task")


def current_task() -> TaskInfo:
    """The TaskInfo of the task the calling handler is running: its id, queue, `retried` (the
    attempt is retried + 1), `deliveries`, `started_ms`... Raises LookupError outside a handler."""
    try:
        return _current.get()
    except LookupError:
        raise LookupError("current_task() is only available inside a running handler") from None


def set_current_task(info: TaskInfo) -> contextvars.Token[TaskInfo]:
    return _current.set(info)


def reset_current_task(token: contextvars.Token[TaskInfo]) -> None:
    _current.reset(token)


def _is_async(func: Callable[..., Any]) -> bool:
    if inspect.iscoroutinefunction(func):
        return True
    call = getattr(func, "__call__", None)  # noqa: B004  # an object with an async __call__
    return call is not None and inspect.iscoroutinefunction(call)


#: What a handler looks like, for the errors that refuse one.
_EXPECTED = (
    "a handler takes exactly one positional argument, the task or its payload:"
    " `async def handle(task: strego.Task) -> None` or `def handle(payload: MyType) -> None`"
)


def _argument_type(func: Callable[..., Any], task_type: str) -> Any:
    """The annotation of the handler's first parameter (resolved), or Task when it has none.
    Refuses a handler that cannot be called with one positional argument: checked once here,
    not by a failure of every task it runs."""
    try:
        signature = inspect.signature(func)
    except (TypeError, ValueError) as exc:
        raise HandlerSignatureError(
            f"handler for {task_type!r} has no inspectable signature; {_EXPECTED}"
        ) from exc
    try:
        signature.bind(None)
    except TypeError:
        raise HandlerSignatureError(
            f"handler for {task_type!r} cannot be called with one argument: its signature is"
            f" {signature}; {_EXPECTED}"
        ) from None
    params = list(signature.parameters.values())
    first = params[0]
    if first.annotation is inspect.Parameter.empty:
        return Task
    annotation = first.annotation
    if isinstance(annotation, str):
        try:  # through a callable object's __call__ or a partial's function, too
            annotation = inspect.signature(func, eval_str=True).parameters[first.name].annotation
        except Exception as exc:
            raise TypeError(
                f"cannot resolve the annotation {annotation!r} of the handler for {task_type!r}:"
                f" {exc} (define the payload type at module level)"
            ) from exc
    return annotation


@attrs.frozen
class Handler:
    """A registered handler: the function, whether it is async, and what it takes."""

    task_type: str
    func: HandlerFunc
    argument_type: Any
    is_async: bool

    @classmethod
    def of(cls, task_type: str, func: HandlerFunc) -> Handler:
        if not callable(func):
            raise TypeError(f"handler for {task_type!r} is not callable: {func!r}")
        return cls(task_type, func, _argument_type(func, task_type), _is_async(func))

    def argument(self, info: TaskInfo, payload: Any) -> Any:
        """The value to call the handler with. Raises DecodeError when the task cannot be given
        to this handler (the payload does not structure into its type)."""
        if self.argument_type is Task:
            # the TaskInfo came from a message the client validated: skip checking it again
            try:
                return Task._trusted(
                    info.type,
                    payload,
                    queue=info.queue,
                    max_retry=info.max_retry,
                    timeout=info.timeout,
                    priority=info.priority,
                    labels=info.labels,
                    id=info.id,
                )
            except Exception as exc:  # labels of a tampered record that are not a mapping
                raise DecodeError(f"stored task is not a valid Task: {exc}") from exc
        if self.argument_type is Any:
            return payload
        try:
            return converter.structure(payload, self.argument_type)
        except BaseException as exc:  # user code (validators, hooks): even SystemExit
            name = getattr(self.argument_type, "__qualname__", repr(self.argument_type))
            raise DecodeError(f"payload does not structure as {name}: {_describe(exc)}") from exc


def _describe(exc: BaseException) -> str:
    """One line per leaf error of a cattrs error group."""
    if isinstance(exc, BaseExceptionGroup):
        return "; ".join(_describe(e) for e in exc.exceptions)
    return exception_text(exc)


class Registry:
    """Handlers by task type."""

    def __init__(self) -> None:
        self._handlers: dict[str, Handler] = {}

    def add(self, task_type: str, func: HandlerFunc) -> Handler:
        if not isinstance(task_type, str) or not task_type:
            raise TypeError(f"task type must be a non-empty string, not {task_type!r}")
        if task_type in self._handlers:
            raise ValueError(f"a handler for {task_type!r} is already registered")
        handler = Handler.of(task_type, func)
        self._handlers[task_type] = handler
        return handler

    def get(self, task_type: str) -> Handler | None:
        return self._handlers.get(task_type)

    def __iter__(self) -> Iterator[str]:
        return iter(self._handlers)

    def __len__(self) -> int:
        return len(self._handlers)
