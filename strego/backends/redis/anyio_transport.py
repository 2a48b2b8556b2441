"""`AnyioTransport`: the Redis transport on anyio alone, so RedisBackend runs on asyncio and trio.

Calls share a few long-lived connections with automatic pipelining (see `connection.py`): many
tasks calling at once cost a few round trips, not one each. Blocking commands get connections of
their own from a bounded pool. No background task is needed, so a transport made outside any
`async with` works as it is; `aclose()` closes its connections (the next call reconnects).

Retries. A call whose connection failed before its request was written is retried on a new
connection. After it was written, only idempotent calls (PING, `Command(idempotent=True)`,
`ScriptCall(idempotent=True)`) are retried; any other raises ReplyLostError, since it may or may not
have taken effect. Connecting again backs off exponentially (with jitter) between failed attempts.
A server certificate that does not verify (BackendCertificateError) or a refused login is raised at
once: trying again cannot help.
"""

from __future__ import annotations

import random
import ssl
import time
from collections.abc import Sequence
from types import TracebackType
from typing import Any, Self

import anyio
import hiredis

from strego.backends.redis.connection import (
    Connection,
    ConnectionLost,
    ConnectionStats,
    open_connection,
    pack_command,
)
from strego.backends.redis.pubsub import AnyioPubSub
from strego.backends.redis.transport import Command, Script, ScriptCall, to_resend
from strego.backends.redis.url import ConnectionSettings, parse_url
from strego.errors import (
    BackendCertificateError,
    BackendConnectionError,
    BackendError,
    BackendTimeoutError,
    ForeignKeyError,
    OutOfMemoryError,
    ReplyLostError,
)

_PING = pack_command(("PING",))


def typed_error(error: hiredis.ReplyError) -> BackendError:
    """The strego error for a Redis error reply, keeping the Redis text."""
    text = str(error)
    if text.startswith("OOM"):
        return OutOfMemoryError(text)
    if text.startswith("WRONGTYPE"):
        return ForeignKeyError(text)
    return BackendError(text)


class _Attempts:
    """The failures of one call so far, and when the first happened (for a time-bounded retry)."""

    __slots__ = ("count", "first")

    def __init__(self) -> None:
        self.count = 0
        self.first = 0.0


def _is_noscript(reply: Any) -> bool:
    return isinstance(reply, hiredis.ReplyError) and str(reply).startswith("NOSCRIPT")


def _pack(call: ScriptCall | Command) -> bytes:
    if isinstance(call, Command):
        return pack_command(call.args)
    return pack_command(("EVALSHA", call.script.sha, len(call.keys), *call.keys, *call.args))


def _pack_load(script: Script) -> bytes:
    return pack_command(("SCRIPT", "LOAD", script.source))


class AnyioTransport:
    """The `Transport` protocol over anyio sockets (TCP, TLS, Unix), for asyncio and trio.

    - `shared_connections`: connections that pipelined calls are spread over (1 is usually
      fastest: Redis runs one command at a time, and one connection batches best).
    - `max_blocking_connections`: bound on connections held by concurrent `blocking` calls; more
      blocking calls wait for one to be free.
    - `retries`: how many times a failed call is tried again (see the module docstring).
    - `connect_attempts`, `backoff_base`, `backoff_max`: reconnecting after a drop.
    - `blocking_margin`: extra seconds allowed for a blocking command's reply beyond its own block
      time.
    """

    def __init__(
        self,
        settings: ConnectionSettings,
        *,
        shared_connections: int = 1,
        max_blocking_connections: int = 16,
        retries: int = 3,
        connect_attempts: int = 4,
        backoff_base: float = 0.05,
        backoff_max: float = 2.0,
        blocking_margin: float = 5.0,
        write_timeout: float | None = 30.0,
    ) -> None:
        if shared_connections < 1 or max_blocking_connections < 1:
            raise ValueError("a transport needs at least one connection of each kind")
        if connect_attempts < 1 or retries < 0:
            raise ValueError("connect_attempts must be >= 1 and retries >= 0")
        self.settings = settings
        self.stats = ConnectionStats()
        self._retries = retries
        self._connect_attempts = connect_attempts
        self._backoff_base = backoff_base
        self._backoff_max = backoff_max
        self._blocking_margin = blocking_margin
        self._write_timeout = write_timeout
        #: Seconds a failed call keeps being retried after its first failure (None: `retries`
        #: times); set by transports that wait out a failover.
        self.retry_window: float | None = None
        self._shared: list[Connection | None] = [None] * shared_connections
        # Bumped when pooled connections are dropped: a blocking connection of an older
        # generation is not put back in the pool.
        self._generation = 0
        self._next_shared = 0
        # Per shared slot: how many times it was (re)connected, and the last attempt's failure.
        self._connect_failures: list[tuple[int, BackendError | None]] = [
            (0, None) for _ in self._shared
        ]
        self._max_blocking = max_blocking_connections
        self._idle_blocking: list[Connection] = []
        # anyio primitives need a running event loop: made on first use, so that a transport can be
        # built in synchronous code.
        self._shared_locks: list[anyio.Lock] | None = None
        self._blocking_slots: anyio.Semaphore | None = None

    @classmethod
    def from_url(
        cls, url: str, *, ssl_context: ssl.SSLContext | None = None, **options: Any
    ) -> AnyioTransport:
        """A transport for a redis://, rediss:// or unix:// URL (see `strego.backends.redis.url`);
        `options` are the constructor's keyword arguments."""
        return cls(parse_url(url, ssl_context=ssl_context), **options)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    # -- the Transport protocol ------------------------------------------------------------------

    async def run_script(self, call: ScriptCall) -> Any:
        (reply,) = await self._shared_request(_pack(call), 1, idempotent=call.idempotent)
        if _is_noscript(reply):
            # Not run: load the script and call it again in one round trip.
            loaded, reply = await self._shared_request(
                _pack_load(call.script) + _pack(call), 2, idempotent=call.idempotent
            )
            if isinstance(loaded, hiredis.ReplyError):
                raise typed_error(loaded)
        if isinstance(reply, hiredis.ReplyError):
            raise typed_error(reply)
        return reply

    async def execute(self, command: Command) -> Any:
        (reply,) = await self._shared_request(_pack(command), 1, idempotent=command.idempotent)
        if isinstance(reply, hiredis.ReplyError):
            raise typed_error(reply)
        return reply

    async def pipeline(self, calls: Sequence[ScriptCall | Command]) -> list[Any]:
        if not calls:
            return []
        replies = await self._shared_request(
            b"".join(_pack(call) for call in calls),
            len(calls),
            idempotent=all(call.idempotent for call in calls),
        )
        missing = to_resend(
            calls,
            [i for i, reply in enumerate(replies) if _is_noscript(reply) and _is_script(calls[i])],
        )
        if missing:
            await self._reload_and_resend([calls[i] for i in missing], missing, replies)
        return [typed_error(r) if isinstance(r, hiredis.ReplyError) else r for r in replies]

    async def blocking(self, command: Command, timeout_ms: int) -> Any:
        # Block time 0 means "forever" to Redis: then so does the wait for the reply.
        read_timeout = None if timeout_ms <= 0 else timeout_ms / 1000 + self._blocking_margin
        payload = _pack(command)
        attempts = _Attempts()
        while True:
            try:
                (reply,) = await self._blocking_request(payload, read_timeout)
                break
            except ConnectionLost as lost:
                await self._after_failure(lost, attempts, command.idempotent)
        if isinstance(reply, hiredis.ReplyError):
            raise typed_error(reply)
        return reply

    async def ping(self) -> None:
        (reply,) = await self._shared_request(_PING, 1, idempotent=True)
        if isinstance(reply, hiredis.ReplyError):
            raise typed_error(reply)

    async def open_pubsub(self) -> AnyioPubSub:
        return await AnyioPubSub.open(self.settings)

    async def aclose(self) -> None:
        connections = [c for c in self._shared if c is not None] + self._idle_blocking
        self._shared = [None] * len(self._shared)
        self._idle_blocking = []
        # Locks belong to one event loop: a closed transport may next be used under another.
        self._shared_locks = None
        self._blocking_slots = None
        for conn in connections:
            await conn.aclose()

    # -- internals ---------------------------------------------------------------------------------

    async def _reload_and_resend(
        self, calls: list[ScriptCall | Command], positions: list[int], replies: list[Any]
    ) -> None:
        scripts = {c.script.sha: c.script for c in calls if isinstance(c, ScriptCall)}
        payload = b"".join(_pack_load(s) for s in scripts.values())
        payload += b"".join(_pack(c) for c in calls)
        again = await self._shared_request(
            payload, len(scripts) + len(calls), idempotent=all(c.idempotent for c in calls)
        )
        load_errors = {
            sha: reply
            for sha, reply in zip(scripts, again, strict=False)
            if isinstance(reply, hiredis.ReplyError)
        }
        for call, position, reply in zip(calls, positions, again[len(scripts) :], strict=True):
            if isinstance(call, ScriptCall):
                reply = load_errors.get(call.script.sha, reply)
            replies[position] = reply

    async def _shared_request(self, payload: bytes, count: int, *, idempotent: bool) -> list[Any]:
        attempts = _Attempts()
        while True:
            index = self._next_shared
            self._next_shared = (index + 1) % len(self._shared)
            conn = self._shared[index]
            try:
                if conn is None or conn.broken:
                    conn = await self._reconnect_shared_or_lost(index)
                return await conn.request(payload, count)
            except ConnectionLost as lost:
                await self._after_failure(lost, attempts, idempotent)

    async def _reconnect_shared_or_lost(self, index: int) -> Connection:
        """`_reconnect_shared`; within a retry window, a failed connect counts as a lost call
        that was never sent (so it is tried again until the window closes)."""
        if self.retry_window is None:
            return await self._reconnect_shared(index)
        try:
            return await self._reconnect_shared(index)
        except BackendCertificateError:
            raise  # trying again cannot help
        except BackendConnectionError as exc:
            raise ConnectionLost(str(exc), written=False) from None

    async def _blocking_request(self, payload: bytes, read_timeout: float | None) -> list[Any]:
        async with self._blocking_slots_():
            generation = self._generation
            if self._idle_blocking:
                conn = self._idle_blocking.pop()
            elif self.retry_window is None:
                conn = await self._connect()
            else:
                try:
                    conn = await self._connect()
                except BackendCertificateError:
                    raise
                except BackendConnectionError as exc:
                    raise ConnectionLost(str(exc), written=False) from None
            reusable = False
            try:
                replies = await conn.request(payload, 1, read_timeout=read_timeout)
                reusable = True
            finally:
                # A blocking call cut short leaves its reply coming: never reuse that one; nor one
                # to a server the transport has since left (`_drop_connections`).
                if reusable and not conn.broken and generation == self._generation:
                    self._idle_blocking.append(conn)
                else:
                    await conn.aclose()
            return replies

    async def _after_failure(
        self, lost: ConnectionLost, attempts: _Attempts, idempotent: bool
    ) -> None:
        """Raise the error for `lost` if the call must not be tried again; else back off if this
        is not the first retry. A call is tried again `retries` times, or, with a
        `retry_window`, for that many seconds after its first failure."""
        await self._connection_failed()
        if lost.timeout:
            raise BackendTimeoutError(str(lost)) from None
        if lost.written and not idempotent:
            raise ReplyLostError(
                f"{lost}; the command was sent but its reply was lost, so it may or may "
                "not have taken effect (not retried: the call is not idempotent)"
            ) from None
        attempts.count += 1
        if attempts.count == 1:
            attempts.first = time.monotonic()
        if self.retry_window is None:
            give_up = attempts.count > self._retries
        else:
            give_up = time.monotonic() - attempts.first > self.retry_window
        if give_up:
            raise BackendConnectionError(
                f"{lost} (gave up after {attempts.count} attempts)"
            ) from None
        if attempts.count > 1:
            await anyio.sleep(self._backoff(attempts.count - 1))

    async def _connection_failed(self) -> None:
        """Called on every lost connection, before deciding on a retry (a hook for subclasses
        that must look for another server)."""

    async def _drop_connections(self) -> None:
        """Close every pooled connection now (the server they reach is no longer the one to
        use); blocking connections in use are closed when their call returns."""
        self._generation += 1
        connections = [c for c in self._shared if c is not None] + self._idle_blocking
        self._shared = [None] * len(self._shared)
        self._idle_blocking = []
        for conn in connections:
            await conn.aclose()

    async def _reconnect_shared(self, index: int) -> Connection:
        if self._shared_locks is None:
            self._shared_locks = [anyio.Lock() for _ in self._shared]
        # One task reconnects a slot; the others wait for it and share the new connection, or its
        # failure: a hundred waiting calls must not each retry with backoff, one after another.
        attempts_seen = self._connect_failures[index][0]
        async with self._shared_locks[index]:
            conn = self._shared[index]
            if conn is not None and not conn.broken:
                return conn
            attempts, failure = self._connect_failures[index]
            if attempts != attempts_seen and failure is not None:
                raise type(failure)(*failure.args)
            try:
                conn = await self._connect()
            except BackendError as exc:
                self._connect_failures[index] = (attempts + 1, exc)
                raise
            self._connect_failures[index] = (attempts + 1, None)
            self._shared[index] = conn
            return conn

    async def _connect(self) -> Connection:
        for attempt in range(self._connect_attempts):
            if attempt:
                await anyio.sleep(self._backoff(attempt))
            try:
                return await self._open()
            except BackendCertificateError:
                raise
            except BackendConnectionError:
                if attempt == self._connect_attempts - 1:
                    raise
        raise AssertionError("unreachable")

    async def _open(self) -> Connection:
        """One attempt to open a connection to the server (a hook for subclasses)."""
        return await open_connection(self.settings, self.stats, write_timeout=self._write_timeout)

    def _backoff(self, attempt: int) -> float:
        """Seconds to wait before retry number `attempt` (1-based): exponential, with jitter."""
        ceiling = min(self._backoff_max, self._backoff_base * 2 ** (attempt - 1))
        return random.uniform(ceiling / 2, ceiling)

    def _blocking_slots_(self) -> anyio.Semaphore:
        if self._blocking_slots is None:
            self._blocking_slots = anyio.Semaphore(self._max_blocking)
        return self._blocking_slots


def _is_script(call: ScriptCall | Command) -> bool:
    return isinstance(call, ScriptCall)
