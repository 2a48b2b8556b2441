"""Clocks: callables returning the current time in epoch milliseconds. Backends judge every expiry
by one of these, so tests can inject a clock they control."""

from __future__ import annotations

import time


def wall_clock_ms() -> int:
    """The system's wall-clock time in epoch milliseconds."""
    return time.time_ns() // 1_000_000
