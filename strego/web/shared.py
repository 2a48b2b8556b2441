"""A read shared by every caller: one backend call per interval, whatever the number of callers.

Fifty browser tabs or scripts polling the overview cost the backend what one does: a caller
within `max_age_s` of the last result gets it; callers arriving while a read is under way wait for
that read instead of starting their own. A mutation calls `invalidate`, so the next caller reads
anew and sees its effect."""

from __future__ import annotations

import math
import time
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

import anyio
import attrs

T = TypeVar("T")


@attrs.define
class _Run(Generic[T]):
    """One read under way, and how it ended."""

    done: anyio.Event = attrs.Factory(anyio.Event)
    value: T | None = None
    error: Exception | None = None
    #: cut short (its caller was cancelled): a waiter reads anew
    abandoned: bool = False


class Shared(Generic[T]):
    def __init__(self, read: Callable[[], Awaitable[T]], max_age_s: float) -> None:
        self._read = read
        self.max_age_s = max_age_s
        self._value: T | None = None
        self._at = -math.inf
        self._run: _Run[T] | None = None
        #: how many reads were made, and how many callers wait for one now (test facilities: how
        #: much backend work the callers caused)
        self.reads = 0
        self.waiting = 0

    def invalidate(self) -> None:
        self._at = -math.inf
        self._run = None  # a read under way may predate the change: later callers do not wait

    async def get(self) -> T:
        while True:
            if self._value is not None and time.monotonic() - self._at <= self.max_age_s:
                return self._value
            run = self._run
            if run is None:
                return await self._read_now()
            self.waiting += 1
            try:
                await run.done.wait()
            finally:
                self.waiting -= 1
            if run.error is not None:
                raise run.error
            if not run.abandoned:
                return run.value  # type: ignore[return-value]  # set when not abandoned

    async def _read_now(self) -> T:
        run: _Run[T] = _Run()
        self._run = run
        self.reads += 1
        try:
            value = await self._read()
        except Exception as exc:
            run.error = exc
            raise
        except BaseException:
            run.abandoned = True
            raise
        else:
            run.value = value
            if self._run is run:  # not invalidated meanwhile: fresh for the next callers
                self._value, self._at = value, time.monotonic()
            return value
        finally:
            if self._run is run:
                self._run = None
            run.done.set()
