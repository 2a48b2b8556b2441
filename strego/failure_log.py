"""Logging for the failures of a loop that retries forever (fetch, lease renewal, scheduler,
recovery): an outage that lasts an hour must not write a line a second."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

#: While failures go on, at most one line per this many seconds.
REPEAT_INTERVAL_S = 60.0


class FailureLog:
    """The first failure is logged at once; while failures go on, at most one line per
    `interval` seconds, saying how many were not shown; the first success after failures logs
    that the loop works again."""

    def __init__(
        self,
        logger: logging.Logger,
        what: str,
        *,
        interval: float = REPEAT_INTERVAL_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._log = logger
        self._what = what
        self._interval = interval
        self._clock = clock
        self._failures = 0  # since the last success
        self._unshown = 0  # failures not logged since the last line
        self._last_line = 0.0

    def failed(self, exc: BaseException) -> None:
        self._failures += 1
        now = self._clock()
        if self._failures > 1 and now - self._last_line < self._interval:
            self._unshown += 1
            return
        more = f" ({self._unshown} more failures not shown)" if self._unshown else ""
        self._log.warning("%s failed: %s%s", self._what, exc, more)
        self._unshown = 0
        self._last_line = now

    def succeeded(self) -> None:
        if self._failures:
            self._log.warning("%s works again after %d failures", self._what, self._failures)
            self._failures = 0
            self._unshown = 0
