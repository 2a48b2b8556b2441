"""`Watch`: what a subscription to notifications (`Backend.watch_ended`,
`Backend.watch_cancel_requests`) hands its owner: the (queue, task id) pairs that arrived since
its last `wait`. The backend's side puts them in (or only wakes it); the owner takes them out.
A notification is a hint to read the task again, never a state by itself."""

from __future__ import annotations

import anyio


class Watch:
    """The notifications of one subscription, and the event its owner waits on."""

    def __init__(self) -> None:
        self._items: list[tuple[str, str]] = []
        self._event = anyio.Event()

    def put(self, queue: str, task_id: str) -> None:
        self._items.append((queue, task_id))
        self._event.set()

    def wake(self) -> None:
        """Wake the owner with nothing (the notifications may have been lost: read again)."""
        self._event.set()

    @property
    def woken(self) -> bool:
        return self._event.is_set()

    async def wait_event(self, timeout_s: float) -> None:
        """Wait up to `timeout_s` for a notification or a wake-up (none taken)."""
        if not self._event.is_set():
            with anyio.move_on_after(max(0.0, timeout_s)):
                await self._event.wait()

    def take(self) -> list[tuple[str, str]]:
        items, self._items = self._items, []
        self._event = anyio.Event()
        return items

    async def wait(self, timeout_s: float) -> list[tuple[str, str]]:
        await self.wait_event(timeout_s)
        return self.take()
