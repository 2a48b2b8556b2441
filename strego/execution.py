"""The execution of one task by a runner: decode its payload, call its handler under the task's
timeout, and classify the outcome: success (None), or a `Failure` with its error text and whether
it may be retried; and the delay before that retry, from the server's `retry_delay` policy. Run
by `Server._process` (strego/server.py), which acks or fails the task with the backend.
"""

from __future__ import annotations

import contextlib
import logging
import math
import numbers
import os
import traceback
from collections.abc import Callable
from typing import Any

import anyio
import attrs

from strego.error_text import exception_message, exception_text
from strego.errors import DecodeError, SkipRetry
from strego.handlers import Handler
from strego.logs import task_extra
from strego.retry import ExponentialBackoff, RetryDelay
from strego.serializers import RAW_ENCODING, Serializer
from strego.task import MAX_SECONDS, TaskError, TaskInfo

# the server's logger: what a run logs is configured in one place
log = logging.getLogger("strego.server")

#: Longest error text stored with a failed task.
MAX_ERROR_CHARS = 2000


#: Longest traceback kept with a dead task (`TaskInfo.error`).
MAX_TRACEBACK_CHARS = 4000


def error_detail(exc: BaseException) -> TaskError:
    """The type, message and traceback (its last MAX_TRACEBACK_CHARS) of an exception, for a
    dead task. Never raises."""
    try:
        lines = traceback.format_exception(exc)
        text = "".join(lines)[-MAX_TRACEBACK_CHARS:]
    except BaseException:  # user code (str of the exception) may raise anything
        text = ""
    try:
        name = str(type(exc).__qualname__)
    except BaseException:
        name = "exception"
    return TaskError(name, exception_message(exc)[:MAX_ERROR_CHARS], text)


def describe_exception(exc: BaseException) -> str:
    """`Type: message`, then the innermost frames (where it was raised), for last_error. Never
    raises, whatever the exception's str() does."""
    text = exception_text(exc)
    try:
        frames = traceback.extract_tb(exc.__traceback__)[-3:]
    except Exception:  # a traceback that cannot be read: the first line says enough
        frames = traceback.StackSummary()
    if frames:
        text += "\n" + "\n".join(
            f"  {os.path.basename(f.filename)}:{f.lineno} in {f.name}" for f in frames
        )
    return text[:MAX_ERROR_CHARS]


def _cancelled_by_runtime(exc: BaseException) -> bool:
    """Whether `exc`, raised out of a handler, is the runtime cancelling it (a timeout, the
    shutdown, the server itself cancelled): it must go on up to its cancel scope. Anything else,
    even a cancellation exception the handler raised itself, is a failure of the task."""
    cancelled = anyio.get_cancelled_exc_class()
    if isinstance(exc, BaseExceptionGroup):
        # from a task group of the handler: cancellations only, else a failure (the scope stays
        # cancelled, so the cancellation comes again at the runner's next checkpoint)
        if exc.split(cancelled)[1] is not None:
            return False
    elif not isinstance(exc, cancelled):
        return False
    # an enclosing cancel scope was cancelled (a cancel() of the task running the server
    # reaches the handler's task through its task group's scope, too)
    return anyio.current_effective_deadline() == -math.inf


def _call_in_thread(func: Callable[[Any], Any], argument: Any) -> tuple[BaseException | None, Any]:
    """Call a sync handler (in its worker thread); hand back what it raised (or returned) rather
    than raise it: some exceptions (GeneratorExit) cannot be thrown back into the event loop's
    task."""
    try:
        return None, func(argument)
    except BaseException as exc:
        return exc, None


def _safe_repr(value: object) -> str:
    try:
        return repr(value)[:200]
    except BaseException:
        return f"<unprintable {type(value).__name__}>"


@attrs.frozen
class Failure:
    """What went wrong in one run of a handler."""

    error: str
    retry: bool
    exception: BaseException


class TaskExecution:
    """Part of `Server`: running one task's handler and judging the outcome. Uses the server's
    options below (set by `Server.__init__`, the limiter by each run)."""

    serializers: dict[str, Serializer]
    default_timeout: float | None
    retry_delay: RetryDelay
    _limiter: anyio.CapacityLimiter

    async def _execute(self, info: TaskInfo, handler: Handler | None) -> tuple[Failure | None, Any]:
        """Run the handler; (None, its return value) on success, else (what went wrong, None)."""
        if handler is None:
            message = f"no handler for task type {info.type!r}"
            return Failure(message, retry=True, exception=LookupError(message)), None
        try:
            argument = handler.argument(info, self._decode(info))
        except DecodeError as exc:
            return Failure(exception_message(exc), retry=False, exception=exc), None
        timeout = info.timeout if info.timeout is not None else self.default_timeout
        if timeout is None:  # no deadline: spare the hot path a second cancel scope
            return await self._call(handler, argument)
        with anyio.move_on_after(timeout) as deadline:
            outcome = await self._call(handler, argument)
        if deadline.cancel_called:
            # even when the handler swallowed the cancellation, returned or raised instead
            message = f"timed out after {timeout:g}s"
            return Failure(message, retry=True, exception=TimeoutError(message)), None
        return outcome

    async def _call(self, handler: Handler, argument: Any) -> tuple[Failure | None, Any]:
        try:
            if handler.is_async:
                return None, await handler.func(argument)
            # a thread cannot be interrupted: on timeout or shutdown it is abandoned (a cancel
            # request waits for it: see Server._request_cancel)
            raised, value = await anyio.to_thread.run_sync(
                _call_in_thread,
                handler.func,
                argument,
                limiter=self._limiter,
                abandon_on_cancel=True,
            )
            if raised is None:
                return None, value
        except BaseException as exc:
            # any exception of user code (even SystemExit, KeyboardInterrupt or a cancellation
            # exception it made up) fails the task, never the server
            if _cancelled_by_runtime(exc):
                raise
            raised = exc
        retry = not isinstance(raised, SkipRetry)
        return Failure(describe_exception(raised), retry=retry, exception=raised), None

    def _encode_result(self, info: TaskInfo, value: Any) -> bytes:
        """A return value as `ack` stores it: `<encoding>` NL `<bytes>`, by the task's serializer
        (JSON for a task of raw bytes); `bytes` as they are. Raises what the serializer raises."""
        if isinstance(value, bytes | bytearray | memoryview):
            return RAW_ENCODING.encode() + b"\n" + bytes(value)
        serializer = self.serializers.get(info.encoding) or self.serializers.get("json")
        if serializer is None:
            raise DecodeError(f"no serializer {info.encoding!r} for the result")
        return serializer.name.encode() + b"\n" + serializer.dumps(value)

    def _decode(self, info: TaskInfo) -> Any:
        if info.encoding == RAW_ENCODING:
            return info.payload
        serializer = self.serializers.get(info.encoding)
        if serializer is None:
            raise DecodeError(f"unknown payload encoding {info.encoding!r}")
        try:
            return serializer.loads(info.payload)
        except DecodeError:
            raise
        except BaseException as exc:  # a serializer is user code: even SystemExit
            text = exception_text(exc)
            raise DecodeError(f"payload cannot be decoded as {info.encoding}: {text}") from exc

    def _retry_delay_of(self, info: TaskInfo, failure: Failure) -> float:
        """The `retry_delay` policy's delay; the default backoff's when the policy (user code)
        raises or returns something else than a number of seconds (at most 100 years, as any
        duration of a task)."""
        try:
            delay = self.retry_delay(info.retried, failure.exception, info)
        except BaseException as exc:  # a sync call: no cancellation can come from it
            log.warning(
                "retry_delay raised %s; using the default backoff",
                describe_exception(exc),
                extra=task_extra(info),
            )
        else:
            seconds = math.nan
            if isinstance(delay, numbers.Real) and not isinstance(delay, bool):
                with contextlib.suppress(BaseException):  # its __float__ is user code too
                    seconds = float(delay)
            if seconds <= MAX_SECONDS:  # a negative delay is no delay; NaN fails this test
                return max(0.0, seconds)
            log.warning(
                "retry_delay returned %s, not a number of seconds up to 100 years; using the"
                " default backoff",
                _safe_repr(delay),
                extra=task_extra(info),
            )
        return ExponentialBackoff()(info.retried, failure.exception, info)
