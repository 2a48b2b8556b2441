"""`Notifier`: the pub/sub side of `RedisBackend`. One connection per backend, opened on first
use and shared by every watch (`watch_ended`, `watch_cancel_requests`), carries the channels the
scripts publish to (`Keys.ended_channel`, `Keys.cancel_channel`).

No background task: whoever waits reads. The first watch that waits while nobody reads becomes
the reader: it reads messages and hands each to the watches of its channel until its own watch is
woken or its time is up; then another waiting watch takes over. Reads are cancel-safe, so a
reader cancelled mid-read (its caller's timeout) loses nothing.

Subscribe first. `listen` returns only once Redis confirmed the subscription, so a message
published after that reaches the watch: read the task after `listen`, then wait. A channel stays
subscribed for the connection's life (channels are few: two per queue).

Loss. When the connection fails, every watch is woken empty (its owner reads again, and a
notification sent meanwhile may be lost), and the next read reconnects and subscribes again,
at most once a second; when Redis cannot be reached the owner's wait is bounded by its timeout,
and the caller polls (docs/runtime.md, "Results")."""

from __future__ import annotations

import logging
import math
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Any, Protocol

import anyio

from strego.backends.redis.slots import key_slot
from strego.backends.watch import Watch
from strego.errors import BackendError

log = logging.getLogger("strego.backends.redis")

#: The longest `listen` waits for Redis to confirm a subscription before it goes on without
#: it (the caller's bounded poll then finds the task's end).
SUBSCRIBE_TIMEOUT_S = 5.0
#: How long after a failed connection attempt the next one is made.
RECONNECT_S = 1.0


class PubSubConnection(Protocol):
    """A connection in subscribe mode, as a transport opens it (`Transport.open_pubsub`)."""

    async def subscribe(self, channels: Sequence[bytes]) -> None:
        """Send SUBSCRIBE (the confirmations come back through `read`)."""
        ...

    async def read(self, timeout_s: float) -> list[Any] | None:
        """The next push ([kind, channel, data], bytes), or None when `timeout_s` passed first.
        Raises BackendError when the connection is lost. Cancel-safe."""
        ...

    async def aclose(self) -> None: ...


class _Channel:
    """A subscribed channel: the watches that listen to it, and how a message names tasks."""

    def __init__(self, queue: str, parse: Callable[[bytes], list[str]]) -> None:
        self.queue = queue
        self.parse = parse
        self.watches: dict[Watch, set[str] | None] = {}  # watch -> the ids it wants (None: all)


def split_ids(data: bytes) -> list[str]:
    """The ids of a message: space-separated (task ids have no spaces)."""
    return data.decode().split()


class Notifier:
    """`on_moved` is called when Redis refused or dropped a channel (sharded pub/sub on
    Cluster: MOVED to an SSUBSCRIBE, or an SUNSUBSCRIBE pushed when the slot moved away)."""

    def __init__(
        self,
        open_connection: Callable[[], Awaitable[PubSubConnection]],
        *,
        on_moved: Callable[[], None] | None = None,
    ) -> None:
        self._open = open_connection
        self._on_moved = on_moved
        self._conn: PubSubConnection | None = None
        self._channels: dict[bytes, _Channel] = {}
        #: channels Redis confirmed on the current connection
        self._confirmed: set[bytes] = set()
        self._reading = False
        self._reader_done: anyio.Event | None = None
        self._retry_at = -math.inf
        self._closed = False

    @asynccontextmanager
    async def listen(
        self, channels: Sequence[tuple[bytes, str]], task_id: str | None = None
    ) -> AsyncIterator[Watch]:
        """A watch of these (channel, queue) pairs, subscribed when this returns (or after
        SUBSCRIBE_TIMEOUT_S without Redis: see the module docstring). With `task_id`, only
        messages naming that task are kept."""
        watch = _NotifierWatch(self)
        async with self.join(watch, channels, None if task_id is None else {task_id}):
            yield watch

    @asynccontextmanager
    async def join(
        self,
        watch: Watch,
        channels: Sequence[tuple[bytes, str]],
        wanted: set[str] | None = None,
        timeout_s: float = SUBSCRIBE_TIMEOUT_S,
    ) -> AsyncIterator[bool]:
        """`listen` with a watch of the caller's (one watch may join several notifiers: wait
        on it with `pump` of each). Yields whether Redis confirmed every channel."""
        for name, queue in channels:
            channel = self._channels.get(name)
            if channel is None:
                channel = self._channels[name] = _Channel(queue, split_ids)
            channel.watches[watch] = wanted
        names = [name for name, _ in channels]
        try:
            await self._subscribed(names, watch, timeout_s)
            watch.take()  # confirmations woke it: not news for its owner
            yield set(names) <= self._confirmed
        finally:
            for name in names:
                channel = self._channels.get(name)
                if channel is not None:
                    channel.watches.pop(watch, None)

    def _unconfirmed(self, names: list[bytes]) -> bool:
        # a channel Redis refused or dropped is no longer in _channels: not waited for
        return any(n in self._channels and n not in self._confirmed for n in names)

    async def _subscribed(self, names: list[bytes], watch: Watch, timeout_s: float) -> None:
        deadline = anyio.current_time() + timeout_s
        sent = self._conn
        if sent is not None and self._unconfirmed(names):
            try:
                await sent.subscribe([n for n in names if n not in self._confirmed])
            except BackendError:
                await self._lost(sent)
        while self._unconfirmed(names):
            now = anyio.current_time()
            if now >= deadline:
                log.debug("no subscription to %s: waiting falls back on polling", names)
                return
            await self.pump(watch, deadline - now)
            watch.take()

    async def pump(self, watch: Watch, timeout_s: float) -> None:
        """Wait until `watch` is woken, reading the connection meanwhile if nobody else does,
        for `timeout_s` at most."""
        deadline = anyio.current_time() + timeout_s
        while not watch.woken:
            remaining = deadline - anyio.current_time()
            if remaining <= 0:
                return
            if self._reading:
                done = self._reader_done
                assert done is not None
                with anyio.move_on_after(remaining):
                    async with anyio.create_task_group() as tg:

                        async def woken() -> None:
                            await watch.wait_event(math.inf)
                            tg.cancel_scope.cancel()

                        tg.start_soon(woken)
                        await done.wait()
                        tg.cancel_scope.cancel()
                continue
            self._reading, self._reader_done = True, anyio.Event()
            try:
                await self._read_until(watch, deadline)
            finally:
                self._reading = False
                self._reader_done.set()

    async def _read_until(self, watch: Watch, deadline: float) -> None:
        conn = await self._connection(deadline)
        if conn is None:  # Redis cannot be reached: wait for the next attempt (or the deadline)
            await watch.wait_event(min(deadline, self._retry_at) - anyio.current_time())
            return
        while not watch.woken:
            remaining = deadline - anyio.current_time()
            if remaining <= 0:
                return
            try:
                reply = await conn.read(remaining)
            except BackendError as exc:
                log.debug("pub/sub connection lost: %s", exc)
                await self._lost(conn)
                return
            if reply is not None:
                self._dispatch(reply)

    def _dispatch(self, reply: Any) -> None:
        if isinstance(reply, Exception):  # a refused (S)SUBSCRIBE
            self._refused(str(reply))
            return
        if not isinstance(reply, list) or len(reply) < 3:
            return
        kind, name, data = reply[0], reply[1], reply[2]
        channel = self._channels.get(name)
        if kind in (b"subscribe", b"ssubscribe"):
            self._confirmed.add(name)
            for watch in channel.watches if channel is not None else ():
                watch.wake()
        elif kind == b"sunsubscribe":  # pushed by Redis: the channel's slot moved away
            self._drop([name])
        elif kind in (b"message", b"smessage") and channel is not None and isinstance(data, bytes):
            for task_id in channel.parse(data):
                for watch, wanted in channel.watches.items():
                    if wanted is None or task_id in wanted:
                        watch.put(channel.queue, task_id)

    def _refused(self, error: str) -> None:
        """Redis refused a subscription. MOVED <slot> (sharded, Cluster): the unconfirmed
        channels of that slot live on another node; anything else: every unconfirmed one."""
        log.debug("pub/sub subscription refused: %s", error)
        moved = error.split()[1] if error.startswith("MOVED ") else None
        self._drop(
            [
                name
                for name in self._channels
                if name not in self._confirmed and (moved is None or str(key_slot(name)) == moved)
            ]
        )

    def _drop(self, names: list[bytes]) -> None:
        """Forget these channels on this connection (their watches are woken: their owners
        listen again, on the node that serves them now)."""
        for name in names:
            self._confirmed.discard(name)
            channel = self._channels.pop(name, None)
            for watch in channel.watches if channel is not None else ():
                watch.wake()
        if names and self._on_moved is not None:
            self._on_moved()

    async def _connection(self, deadline: float) -> PubSubConnection | None:
        """The connection, opened if needed within the caller's `deadline` (an open that
        outlasts it is cancelled, which is safe, and tried again by the next waiter)."""
        if self._conn is not None:
            return self._conn
        if self._closed or anyio.current_time() < self._retry_at:
            return None
        limit = anyio.current_time() + SUBSCRIBE_TIMEOUT_S
        try:
            with anyio.fail_after(min(limit, deadline) - anyio.current_time()):
                conn = await self._open()
        except TimeoutError:
            if anyio.current_time() < limit:  # the caller's time is up, not the open's
                return None
            log.debug("pub/sub connection failed: opening took over %ss", SUBSCRIBE_TIMEOUT_S)
            self._retry_at = anyio.current_time() + RECONNECT_S
            return None
        except BackendError as exc:
            log.debug("pub/sub connection failed: %s", exc)
            self._retry_at = anyio.current_time() + RECONNECT_S
            return None
        self._conn, self._confirmed = conn, set()
        if self._channels:
            try:
                await conn.subscribe(list(self._channels))
            except BackendError:
                await self._lost(conn)
                return None
        return conn

    async def _lost(self, conn: PubSubConnection) -> None:
        if self._conn is conn:
            self._conn, self._confirmed = None, set()
            self._retry_at = anyio.current_time() + RECONNECT_S
            for channel in self._channels.values():
                for watch in channel.watches:
                    watch.wake()
        with anyio.CancelScope(shield=True):
            await conn.aclose()

    async def aclose(self) -> None:
        self._closed = True
        for channel in self._channels.values():
            for watch in channel.watches:
                watch.wake()
        conn, self._conn = self._conn, None
        if conn is not None:
            with anyio.CancelScope(shield=True):
                await conn.aclose()


class _NotifierWatch(Watch):
    """A watch whose wait reads the notifier's connection when nobody else does."""

    def __init__(self, notifier: Notifier) -> None:
        super().__init__()
        self._notifier = notifier

    async def wait(self, timeout_s: float) -> list[tuple[str, str]]:
        await self._notifier.pump(self, timeout_s)
        return self.take()
