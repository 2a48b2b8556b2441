"""Logging for the failures of a loop that retries forever (fetch, lease renewal, scheduler,
recovery): each line gives the cause (the exception's type and message) and when the loop tries
again, but an outage that lasts an hour must not write a line a second."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from strego.error_text import exception_text

#: While failures go on, at most one line per this many seconds for each loop.
REPEAT_INTERVAL_S = 10.0


class FailureLog:
    """The first failure is logged at once; while failures go on, at most one line per
    `interval` seconds (REPEAT_INTERVAL_S by default), saying how many were not shown; the first
    success after failures logs that the loop works again."""

    def __init__(
        self,
        logger: logging.Logger,
        what: str,
        *,
        interval: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._log = logger
        self._what = what
        self._interval = REPEAT_INTERVAL_S if interval is None else interval
        self._clock = clock
        self._failures = 0  # since the last success
        self._unshown = 0  # failures not logged since the last line
        self._last_line = 0.0

    def failed(self, exc: BaseException, *, retry_in: float | None = None) -> None:
        """Count a failure; log it (its cause, and `retry_in`: the seconds until the loop's next
        try) unless a line was written less than `interval` seconds ago."""
        self._failures += 1
        now = self._clock()
        if self._failures > 1 and now - self._last_line < self._interval:
            self._unshown += 1
            return
        retry = f"; retrying in {retry_in:g}s" if retry_in is not None else ""
        more = f" ({self._unshown} more failures not shown)" if self._unshown else ""
        self._log.warning("%s failed: %s%s%s", self._what, exception_text(exc), retry, more)
        self._unshown = 0
        self._last_line = now

    def succeeded(self) -> None:
        if self._failures:
            self._log.warning("%s works again after %d failures", self._what, self._failures)
            self._failures = 0
            self._unshown = 0
