"""A clock the tests control."""

from __future__ import annotations


class FakeClock:
    """Epoch milliseconds that move only when `advance` is called. Starts at a realistic time
    (2026-01-01T00:00:00Z) so backends that store absolute times see plausible values."""

    START_MS = 1_767_225_600_000

    def __init__(self, start_ms: int = START_MS) -> None:
        self.now_ms = start_ms

    def __call__(self) -> int:
        return self.now_ms

    def advance(self, ms: int) -> int:
        """Move forward by `ms` and return the new time."""
        if ms < 0:
            raise ValueError("a clock does not go back")
        self.now_ms += ms
        return self.now_ms
