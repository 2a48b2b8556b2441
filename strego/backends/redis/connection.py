"""One Redis connection over an anyio byte stream (TCP, TLS or Unix socket), speaking RESP through
hiredis, with automatic pipelining and no background task.

Requests from any number of tasks are queued on the connection. The task that finds nobody driving
the connection becomes the driver: it writes every queued request in one send, reads replies and
hands them out in FIFO order, and keeps writing whatever was queued meanwhile. When its own reply
has arrived it hands the driver role to the oldest task still waiting and returns. So concurrent
calls share writes and reads, and the connection needs no task group of its own.

Over plain TCP and Unix sockets the driver does its I/O on the non-blocking socket itself: it sends
and receives directly and waits for the socket (`anyio.wait_readable`) only when the kernel has
nothing for it. A call that need not wait costs one send, a schedule point and one receive: no
event, no cancel scope. Over TLS it goes through the anyio stream.

A connection that fails is failed whole: every waiting request gets a `ConnectionLost` that says
whether its bytes may have reached the server, and the connection is never used again.
"""

from __future__ import annotations

import contextlib
import math
import select
import socket
import ssl
from collections import deque
from collections.abc import Sequence
from itertools import chain
from typing import Any, cast

import anyio
import anyio.abc
import anyio.lowlevel
import attrs
import hiredis
from anyio.streams.tls import TLSAttribute

from strego.backends.redis.url import ConnectionSettings
from strego.errors import (
    BackendCertificateError,
    BackendConnectionError,
    BackendError,
    BackendTimeoutError,
)

_NOT_ENOUGH_DATA = object()
_RECEIVE_SIZE = 65536
#: Sentinel: use the connection's own read timeout.
DEFAULT_TIMEOUT: Any = object()


class ConnectionLost(Exception):
    """The connection failed before this request's replies all arrived. `written` tells whether the
    request may have reached the server; `timeout` that the failure was a read timeout."""

    def __init__(self, message: str, *, written: bool, timeout: bool = False) -> None:
        super().__init__(message)
        self.written = written
        self.timeout = timeout


@attrs.define
class ConnectionStats:
    """Counters shared by the connections of one transport (for tests and benchmarks)."""

    connections_opened: int = 0
    #: Socket writes: one per batch of requests sent together.
    writes: int = 0
    #: Requests sent (a pipeline of many commands is one request).
    requests: int = 0


class _Request:
    __slots__ = (
        "abandoned",
        "count",
        "done",
        "error",
        "event",
        "lead",
        "payload",
        "read_timeout",
        "replies",
        "written",
    )

    def __init__(self, payload: bytes, count: int, read_timeout: float | None) -> None:
        self.payload = payload
        self.count = count
        self.read_timeout = read_timeout
        self.replies: list[Any] = []
        self.error: ConnectionLost | None = None
        self.done = False
        self.written = False
        # The caller was cancelled after the request was sent: its replies are read and dropped.
        self.abandoned = False
        # The caller was handed the driver role.
        self.lead = False
        # Made only when the caller has to wait for another driver.
        self.event: anyio.Event | None = None

    def finish(self, error: ConnectionLost | None = None) -> None:
        self.done = True
        self.error = error
        if self.event is not None:
            self.event.set()


class Connection:
    """A connected, logged-in Redis connection. Use `open_connection` to make one."""

    def __init__(
        self,
        stream: anyio.abc.ByteStream,
        *,
        address: str,
        read_timeout: float | None,
        write_timeout: float | None,
        stats: ConnectionStats,
    ) -> None:
        self._stream = stream
        self._address = address
        self._read_timeout = read_timeout
        self._write_timeout = write_timeout
        self._stats = stats
        self._reader = hiredis.Reader(notEnoughData=_NOT_ENOUGH_DATA)
        # A socket object of our own for the connection, made once (asyncio hands out a wrapper
        # that refuses recv): a dup, so that closing it never closes a descriptor the stream owns.
        # It is checked for a server close and, unless the stream is TLS, carries all the I/O.
        self._sock: socket.socket | None = None
        raw: socket.socket | None = stream.extra(anyio.abc.SocketAttribute.raw_socket, None)
        if raw is not None:
            self._sock = raw.dup()
            self._sock.setblocking(False)
        # For the idle check: poll(2), cheaper than a MSG_PEEK receive (Windows has no poll).
        self._idle_poll: select.poll | None = None
        if self._sock is not None and hasattr(select, "poll"):
            self._idle_poll = select.poll()
            self._idle_poll.register(self._sock, select.POLLIN)
        self._direct = (
            self._sock is not None and stream.extra(TLSAttribute.ssl_object, None) is None
        )
        self._queued: deque[_Request] = deque()
        self._inflight: deque[_Request] = deque()
        self._driving = False
        self._writes = 0
        self.broken = False

    @property
    def load(self) -> int:
        """Requests queued or awaiting replies."""
        return len(self._queued) + len(self._inflight)

    async def request(
        self, payload: bytes, count: int, *, read_timeout: float | None = DEFAULT_TIMEOUT
    ) -> list[Any]:
        """Send `payload` (`count` packed commands) and return its `count` replies, error replies
        included as `hiredis.ReplyError` values. Raises ConnectionLost if the connection fails."""
        if self.broken:
            raise ConnectionLost(f"connection to {self._address} is closed", written=False)
        if read_timeout is DEFAULT_TIMEOUT:
            read_timeout = self._read_timeout
        req = _Request(payload, count, read_timeout)
        self._queued.append(req)
        if self._driving:
            req.event = anyio.Event()
            try:
                await req.event.wait()
            except BaseException:
                self._forget(req)
                if req.lead:
                    self._pass_lead()
                raise
            if not req.done:  # woken to take over as the driver
                await self._drive(req)
        else:
            self._driving = True
            await self._drive(req)
        if req.error is not None:
            raise req.error
        return req.replies

    def has_unread(self) -> bool:
        """Whether the server sent bytes nobody asked for, or closed: on a subscribed connection,
        that a message came (it is not read: the caller reacts to the news alone)."""
        return self.broken or self._closed_while_idle()

    async def aclose(self) -> None:
        if not self.broken:
            await self._fail(f"connection to {self._address} was closed", timed_out=False)

    # -- the driver -----------------------------------------------------------------------------

    async def _drive(self, req: _Request) -> None:
        try:
            if self._direct:
                await self._drive_socket(req)
            else:
                await self._drive_stream(req)
        except BaseException:
            # Cancelled (or a bug): the replies already requested are still read by the next driver.
            self._forget(req)
            raise
        finally:
            self._pass_lead()

    def _pass_lead(self) -> None:
        if not self.broken and (self._inflight or self._queued):
            for other in chain(self._inflight, self._queued):
                if not other.done and not other.abandoned and other.event is not None:
                    other.lead = True
                    other.event.set()
                    return
        self._driving = False

    def _forget(self, req: _Request) -> None:
        """The caller of `req` is gone: drop it if unsent, else read and drop its replies."""
        if req.done:
            return
        if req.written:
            req.abandoned = True
        else:
            self._queued.remove(req)

    async def _drive_socket(self, req: _Request) -> None:
        """Drive over the raw non-blocking socket: send and receive without waiting when the
        kernel allows, and wait for the socket (with a deadline) only when it does not."""
        sock = self._sock
        assert sock is not None
        yielded = False
        while not req.done:
            if self._queued:
                data = await self._take_queued()
                if data is None:
                    return
                try:
                    sent = sock.send(data)
                except BlockingIOError:
                    sent = 0
                except OSError as exc:
                    await self._fail(self._dropped(exc), False)
                    return
                if sent < len(data):
                    await self._send_rest(sock, memoryview(data)[sent:])
                if not yielded:
                    # Every call is a checkpoint (the shielded send was not); meanwhile, the reply
                    # may well arrive.
                    await anyio.lowlevel.checkpoint()
                    yielded = True
                continue
            try:
                data = sock.recv(_RECEIVE_SIZE)
            except BlockingIOError:
                await self._wait_readable(sock, self._inflight[0].read_timeout)
                yielded = True
                continue
            except OSError as exc:
                await self._fail(self._dropped(exc), False)
                return
            if not data:
                await self._fail(
                    f"connection to {self._address} dropped: closed by the server", False
                )
                return
            error = self._dispatch(data)
            if error is not None:
                await self._fail(error, False)
                return

    async def _send_rest(self, sock: socket.socket, rest: memoryview) -> None:
        """Finish a send the kernel took only part of."""
        failure: BaseException | None = None
        # Shielded: a send cut short by cancellation would leave half a command on the wire.
        with anyio.CancelScope(shield=True, deadline=_deadline(self._write_timeout)) as scope:
            try:
                while rest:
                    await anyio.wait_writable(sock)
                    with contextlib.suppress(BlockingIOError):
                        rest = rest[sock.send(rest) :]
            except (OSError, anyio.ClosedResourceError) as exc:
                failure = exc
        if failure is not None:
            await self._fail(self._dropped(failure), False)
        elif scope.cancelled_caught:
            await self._fail(f"write to {self._address} timed out", timed_out=True)

    async def _wait_readable(self, sock: socket.socket, read_timeout: float | None) -> None:
        try:
            if read_timeout is None:
                await anyio.wait_readable(sock)
                return
            with anyio.CancelScope(deadline=anyio.current_time() + read_timeout) as scope:
                await anyio.wait_readable(sock)
        except (OSError, anyio.ClosedResourceError) as exc:  # closed by `aclose` meanwhile
            await self._fail(self._dropped(exc), False)
            return
        if scope.cancelled_caught:
            await self._fail(
                f"no reply from {self._address} within {read_timeout}s", timed_out=True
            )

    async def _drive_stream(self, req: _Request) -> None:
        """Drive through the anyio stream (TLS)."""
        while not req.done:
            if self._queued:
                data = await self._take_queued()
                if data is not None:
                    await self._send_stream(data)
            else:
                await self._read_stream()

    async def _send_stream(self, data: bytes) -> None:
        try:
            # Shielded: a send cut short by cancellation would leave half a command on the wire.
            with anyio.CancelScope(shield=True, deadline=_deadline(self._write_timeout)) as scope:
                await self._stream.send(data)
        except (OSError, anyio.BrokenResourceError, anyio.ClosedResourceError) as exc:
            await self._fail(self._dropped(exc), False)
            return
        if scope.cancelled_caught:
            await self._fail(f"write to {self._address} timed out", timed_out=True)

    async def _read_stream(self) -> None:
        head = self._inflight[0]
        data = b""
        try:
            with anyio.CancelScope(deadline=_deadline(head.read_timeout)) as scope:
                data = await self._stream.receive(_RECEIVE_SIZE)
        except (
            OSError,
            anyio.EndOfStream,
            anyio.BrokenResourceError,
            anyio.ClosedResourceError,
        ) as exc:
            await self._fail(self._dropped(exc), False)
            return
        if scope.cancelled_caught:
            await self._fail(
                f"no reply from {self._address} within {head.read_timeout}s", timed_out=True
            )
            return
        error = self._dispatch(data)
        if error is not None:
            await self._fail(error, False)

    async def _take_queued(self) -> bytes | None:
        """Move the queued requests in flight and return their bytes to send, or None if the
        connection turned out to be closed (then they count as never sent)."""
        # (Skipped for the first write: over TLS, session tickets may be waiting until then.)
        if not self._inflight and self._writes and self._closed_while_idle():
            await self._fail(f"connection to {self._address} was closed by the server", False)
            return None
        queued = self._queued
        if len(queued) == 1:
            r = queued.popleft()
            r.written = True
            self._inflight.append(r)
            data = r.payload
            count = 1
        else:
            for r in queued:
                r.written = True
            self._inflight.extend(queued)
            data = b"".join([r.payload for r in queued])
            count = len(queued)
            queued.clear()
        self._stats.writes += 1
        self._stats.requests += count
        self._writes += 1
        return data

    def _dispatch(self, data: bytes) -> str | None:
        """Hand out the replies in `data`; a description of what went wrong, if anything did."""
        self._reader.feed(data)
        inflight = self._inflight
        while True:
            try:
                reply = self._reader.gets()
            except hiredis.ProtocolError as exc:
                return f"protocol error from {self._address}: {exc}"
            if reply is _NOT_ENOUGH_DATA:
                return None
            if not inflight:
                return f"unexpected reply from {self._address}"
            r = inflight[0]
            r.replies.append(reply)
            if len(r.replies) == r.count:
                inflight.popleft()
                r.finish()

    async def _fail(self, message: str, timed_out: bool) -> None:
        if self.broken:
            return
        self.broken = True
        for r in self._inflight:
            r.finish(ConnectionLost(message, written=True, timeout=timed_out))
        for r in self._queued:
            r.finish(ConnectionLost(message, written=False, timeout=timed_out))
        self._inflight.clear()
        self._queued.clear()
        if self._sock is not None:
            # Wakes a driver waiting on the socket, and unregisters it from the event loop.
            anyio.notify_closing(self._sock)
            self._sock.close()
        await anyio.aclose_forcefully(self._stream)

    def _dropped(self, exc: BaseException) -> str:
        return f"connection to {self._address} dropped: {_describe(exc)}"

    def _closed_while_idle(self) -> bool:
        """Whether the server closed this idle connection (restart, CLIENT KILL, idle timeout).
        Checked before a write so that such a request counts as never sent and can be retried."""
        # Readable means EOF, an error, or bytes nobody asked for: RESP sends nothing unasked, and
        # TLS session tickets were read with the reply to the login PING. Over TLS, this is the
        # server's close_notify.
        if self._idle_poll is not None:
            return bool(self._idle_poll.poll(0))
        if self._sock is None:
            return False
        try:
            self._sock.recv(1, socket.MSG_PEEK)
        except (BlockingIOError, InterruptedError):
            return False
        except OSError:
            return True
        return True


async def open_connection(
    settings: ConnectionSettings,
    stats: ConnectionStats,
    *,
    write_timeout: float | None = None,
) -> Connection:
    """Connect, log in (AUTH), select the database and name the client. Raises
    BackendConnectionError if the server cannot be reached, BackendTimeoutError if it does not
    answer within `settings.connect_timeout`, BackendError if it refuses the login."""
    address = settings.describe()
    try:
        with anyio.fail_after(settings.connect_timeout):
            stream = await _connect_stream(settings)
            try:
                conn = Connection(
                    stream,
                    address=address,
                    read_timeout=settings.read_timeout,
                    write_timeout=write_timeout,
                    stats=stats,
                )
            except BaseException:  # e.g. out of file descriptors for the dup
                await anyio.aclose_forcefully(stream)
                raise
            try:
                replies = await conn.request(*_handshake(settings))
            except BaseException:
                await conn.aclose()
                raise
    except TimeoutError:
        raise BackendTimeoutError(
            f"could not connect to {address} within {settings.connect_timeout}s"
        ) from None
    except ConnectionLost as exc:
        raise BackendConnectionError(f"could not connect to {address}: {exc}") from None
    except (OSError, anyio.BrokenResourceError) as exc:
        if isinstance(exc, ssl.SSLCertVerificationError) or isinstance(
            exc.__cause__, ssl.SSLCertVerificationError
        ):
            raise BackendCertificateError(
                f"could not connect to {address}: {_describe(exc)}"
            ) from None
        raise BackendConnectionError(f"could not connect to {address}: {_describe(exc)}") from None
    for reply in replies:
        if isinstance(reply, hiredis.ReplyError):
            await conn.aclose()
            raise BackendError(f"{address} refused the connection setup: {reply}")
    stats.connections_opened += 1
    return conn


async def _connect_stream(settings: ConnectionSettings) -> anyio.abc.ByteStream:
    if settings.unix_path is not None:
        return await anyio.connect_unix(settings.unix_path)
    assert settings.host is not None
    if settings.ssl_context is None:
        return await anyio.connect_tcp(settings.host, settings.port)
    return await anyio.connect_tcp(
        settings.host,
        settings.port,
        ssl_context=settings.ssl_context,
        tls_hostname=settings.tls_hostname or settings.host,
        # Redis servers often close without a TLS close_notify: treat that as a plain EOF.
        tls_standard_compatible=False,
    )


def _handshake(settings: ConnectionSettings) -> tuple[bytes, int]:
    commands: list[tuple[Any, ...]] = []
    if settings.password is not None:
        if settings.username is not None:
            commands.append(("AUTH", settings.username, settings.password))
        else:
            commands.append(("AUTH", settings.password))
    if settings.db:
        commands.append(("SELECT", settings.db))
    if settings.client_name:
        commands.append(("CLIENT", "SETNAME", settings.client_name))
    # One round trip always: proves the server speaks RESP and, over TLS, reads session tickets.
    commands.append(("PING",))
    return b"".join(pack_command(c) for c in commands), len(commands)


def _deadline(timeout: float | None) -> float:
    return math.inf if timeout is None else anyio.current_time() + timeout


def pack_command(args: Sequence[Any]) -> bytes:
    """RESP for one command. (hiredis's stub types the argument as a 1-tuple, hence the cast.)"""
    packed: bytes = hiredis.pack_command(cast(Any, tuple(args)))
    return packed


def _describe(exc: BaseException) -> str:
    text = str(exc)
    if isinstance(exc, anyio.EndOfStream):
        return "closed by the server"
    if not text and exc.__cause__ is not None:
        text = str(exc.__cause__)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
