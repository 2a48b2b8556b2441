"""`SentinelTransport`: the anyio transport in front of a Redis master that Redis Sentinel watches,
following the master through failovers. URLs:

    redis+sentinel://[[user]:password@]h1[:26379],h2[:26379]/<service>[/db][?option=value...]
    rediss+sentinel://...              (TLS, to the sentinels and the master)

The user and password (and every option of a plain redis:// URL: db, client_name, timeouts,
ssl_*) are for the master; the sentinels' own are the options sentinel_username and
sentinel_password. failover_timeout (seconds, default 30) is how long a call keeps retrying while
the master cannot be reached or refuses writes.

How the master is found and followed:

- a connection is opened to the address the first sentinel that answers gives for the service
  (SENTINEL GET-MASTER-ADDR-BY-NAME), and is used only if that server says ROLE master;
- the address is asked again after any lost connection, after a reply READONLY, UNBLOCKED,
  LOADING or MASTERDOWN (a demoted master or a replica: the command did not run, so it is sent
  again), and when any sentinel publishes +switch-master or +failover-state-reconf-slaves (a
  subscription to each sentinel, checked at every call, with no task of its own);
- when the address changes, every pooled connection to the old master is closed at once.

Scripts are not replicated: the new master answers NOSCRIPT, and the transport loads the script
and calls it again (as for any server that restarted).
"""

from __future__ import annotations

import logging
import ssl
import time
from collections.abc import Sequence
from typing import Any
from urllib.parse import parse_qs, unquote, urlencode

import anyio
import attrs
import hiredis

from strego.backends.redis.anyio_transport import AnyioTransport, _Attempts
from strego.backends.redis.connection import (
    Connection,
    ConnectionLost,
    open_connection,
    pack_command,
)
from strego.backends.redis.pubsub import AnyioPubSub
from strego.backends.redis.transport import Command, ScriptCall, to_resend
from strego.backends.redis.url import ConnectionSettings, parse_url
from strego.errors import (
    BackendCertificateError,
    BackendConnectionError,
    BackendError,
    BackendTimeoutError,
)

log = logging.getLogger("strego.backends.redis")

SENTINEL_PORT = 26379
#: Replies of a server that is not the master (or is no longer it): the command did not run.
REFUSED = ("READONLY", "UNBLOCKED", "LOADING", "MASTERDOWN")
#: Sentinel events after which the master is asked for again: the leader of a failover publishes
#: +failover-state-reconf-slaves as soon as the replica is promoted (its GET-MASTER-ADDR-BY-NAME
#: names the new master from then on); the others publish +switch-master when they learn of it.
WATCHED = ("+switch-master", "+failover-state-reconf-slaves")
WATCH_CONNECT_S = 0.5
_OPTIONS = {"sentinel_username", "sentinel_password", "failover_timeout"}


@attrs.frozen
class SentinelSettings:
    """The sentinels to ask, the service (master name) to ask for, and how to log in to the
    master (`master`: host and port are replaced by the address the sentinels give)."""

    sentinels: tuple[tuple[str, int], ...]
    service: str
    master: ConnectionSettings
    sentinel_username: str | None = None
    sentinel_password: str | None = attrs.field(default=None, repr=False)
    #: Seconds a failed call keeps being retried while the master is being replaced.
    failover_timeout: float = 30.0

    def for_sentinel(self, host: str, port: int) -> ConnectionSettings:
        return attrs.evolve(
            self.master,
            host=host,
            port=port,
            db=0,
            username=self.sentinel_username,
            password=self.sentinel_password,
            tls_hostname=None,
        )

    def for_master(self, host: str, port: int) -> ConnectionSettings:
        return attrs.evolve(self.master, host=host, port=port)


def is_sentinel_url(url: str) -> bool:
    return url.split("://", 1)[0].lower() in {"redis+sentinel", "rediss+sentinel"}


def parse_sentinel_url(url: str, *, ssl_context: ssl.SSLContext | None = None) -> SentinelSettings:
    """Settings from a redis+sentinel:// or rediss+sentinel:// URL (see the module docstring).
    Raises ValueError on a malformed URL or an unknown option."""
    scheme, sep, rest = url.partition("://")
    if not sep or not is_sentinel_url(url):
        raise ValueError(f"not a Sentinel URL: {_safe(url)}")
    end = min((i for i in (rest.find("/"), rest.find("?")) if i >= 0), default=len(rest))
    netloc, tail = rest[:end], rest[end:]
    userinfo, at, hosts = netloc.rpartition("@")
    sentinels = tuple(_address(part, url) for part in hosts.split(",") if part)
    if not sentinels:
        raise ValueError(f"a Sentinel URL needs at least one sentinel: {_safe(url)}")
    path, _, query_text = tail.partition("?")
    segments = [unquote(s) for s in path.strip("/").split("/") if s]
    if not segments or len(segments) > 2:
        raise ValueError(f"a Sentinel URL's path is /<service>[/db]: {_safe(url)}")
    query = parse_qs(query_text, keep_blank_values=True)
    own = {name: query.pop(name)[-1] for name in _OPTIONS if name in query}
    plain = "rediss" if scheme.lower().startswith("rediss") else "redis"
    db = f"/{segments[1]}" if len(segments) == 2 else ""
    master_url = f"{plain}://{userinfo}{at}sentinel-master{db}"
    if query:
        master_url += "?" + urlencode(query, doseq=True)
    master = parse_url(master_url, ssl_context=ssl_context)
    failover_timeout = 30.0
    if "failover_timeout" in own:
        try:
            failover_timeout = float(own["failover_timeout"])
        except ValueError:
            raise ValueError(
                f"failover_timeout must be a number of seconds: {_safe(url)}"
            ) from None
        if failover_timeout <= 0:
            raise ValueError(f"failover_timeout must be positive: {_safe(url)}")
    return SentinelSettings(
        sentinels=sentinels,
        service=segments[0],
        master=master,
        sentinel_username=own.get("sentinel_username") or None,
        sentinel_password=own.get("sentinel_password") or None,
        failover_timeout=failover_timeout,
    )


def _address(text: str, url: str) -> tuple[str, int]:
    host, port = text, SENTINEL_PORT
    if text.startswith("["):  # [IPv6]:port
        close = text.find("]")
        host, rest = text[1:close], text[close + 1 :]
        if rest:
            port = _port(rest.removeprefix(":"), url)
    elif ":" in text:
        host, port_text = text.rsplit(":", 1)
        port = _port(port_text, url)
    if not host:
        raise ValueError(f"a sentinel address needs a host: {_safe(url)}")
    return unquote(host), port


def _port(text: str, url: str) -> int:
    try:
        port = int(text)
    except ValueError:
        raise ValueError(f"bad port {text!r} in Sentinel URL {_safe(url)}") from None
    if not 0 < port < 65536:
        raise ValueError(f"bad port {text!r} in Sentinel URL {_safe(url)}")
    return port


def _safe(url: str) -> str:
    """The URL without credentials or options, for error messages."""
    scheme, _, rest = url.partition("://")
    return repr(f"{scheme}://{rest.rpartition('@')[2].split('?', 1)[0]}")


class _Refusal(BackendError):
    """A sentinel's own error reply (to the login or to the question): flagged by `_ask`."""


def _lasting(error: BackendError) -> bool:
    """Whether a sentinel's error stays until the settings change: it refused the login (or
    the question), or its certificate was refused. Not a connection that failed or a sentinel
    that did not answer in time (BackendTimeoutError): asking again may help those."""
    return isinstance(error, BackendCertificateError | _Refusal)


def _refused(reply: Any) -> bool:
    return isinstance(reply, BackendError) and str(reply).startswith(REFUSED)


class SentinelTransport(AnyioTransport):
    """`AnyioTransport` to whichever server the sentinels name master (see the module
    docstring). Options are AnyioTransport's; backoff_max defaults to 0.5 s so that a call
    notices a new master soon after the sentinels do."""

    def __init__(self, sentinel: SentinelSettings, **options: Any) -> None:
        options.setdefault("backoff_max", 0.5)
        super().__init__(sentinel.master, **options)
        self.sentinel = sentinel
        self.retry_window = sentinel.failover_timeout
        #: The sentinels in the order they are asked: the last one that answered first.
        self._sentinels = list(sentinel.sentinels)
        self._stale = True
        self._discovery_lock: anyio.Lock | None = None
        self._discoveries = 0
        # Per sentinel, a connection subscribed to WATCHED.
        self._watches: dict[tuple[str, int], Connection] = {}
        #: How many times the master's address changed.
        self.switches = 0

    @classmethod
    def from_url(
        cls, url: str, *, ssl_context: ssl.SSLContext | None = None, **options: Any
    ) -> SentinelTransport:
        return cls(parse_sentinel_url(url, ssl_context=ssl_context), **options)

    # -- the Transport protocol, following the master ----------------------------------------

    async def run_script(self, call: ScriptCall) -> Any:
        attempts = _Attempts()
        while True:
            await self._check_watch()
            try:
                return await super().run_script(call)
            except BackendError as exc:
                if not _refused(exc):
                    raise
                await self._refused(exc, attempts)

    async def execute(self, command: Command) -> Any:
        attempts = _Attempts()
        while True:
            await self._check_watch()
            try:
                return await super().execute(command)
            except BackendError as exc:
                if not _refused(exc):
                    raise
                await self._refused(exc, attempts)

    async def blocking(self, command: Command, timeout_ms: int) -> Any:
        attempts = _Attempts()
        while True:
            await self._check_watch()
            try:
                return await super().blocking(command, timeout_ms)
            except BackendError as exc:
                if not _refused(exc):
                    raise
                await self._refused(exc, attempts)

    async def pipeline(self, calls: Sequence[ScriptCall | Command]) -> list[Any]:
        await self._check_watch()
        replies = await super().pipeline(calls)
        attempts = _Attempts()
        while True:
            refused = [i for i, reply in enumerate(replies) if _refused(reply)]
            if not refused:
                return replies
            await self._refused(replies[refused[0]], attempts)
            # Those did not run: send them again, with the idempotent commands that came after
            # the first of them, so that order holds (as for NOSCRIPT).
            positions = to_resend(calls, refused)
            again = await super().pipeline([calls[i] for i in positions])
            for position, reply in zip(positions, again, strict=True):
                replies[position] = reply

    async def open_pubsub(self) -> AnyioPubSub:
        """A subscription on the master (found first if need be). When the master moves, the
        sentinels kill the old one's pub/sub clients and the notifier opens another here."""
        await self._check_watch()
        if self._stale:
            await self._discover()
        return await super().open_pubsub()

    async def aclose(self) -> None:
        watches, self._watches = list(self._watches.values()), {}
        self._discovery_lock = None
        self._stale = True
        for watch in watches:
            await watch.aclose()
        await super().aclose()

    # -- following the master ----------------------------------------------------------------

    async def _refused(self, error: BaseException, attempts: _Attempts) -> None:
        """The server is not the master (any more): ask the sentinels again (which drops the
        pooled connections if the master moved), back off, or give up after the window."""
        attempts.count += 1
        if attempts.count == 1:
            attempts.first = time.monotonic()
        elif time.monotonic() - attempts.first > self.sentinel.failover_timeout:
            raise BackendConnectionError(
                f"{error} (no master of {self.sentinel.service!r} took writes within "
                f"{self.sentinel.failover_timeout}s)"
            ) from None
        self._stale = True
        try:
            await self._discover()
        except BackendError as exc:
            log.warning("asking the sentinels for the master failed: %s", exc)
        if attempts.count > 1:
            await anyio.sleep(self._backoff(attempts.count - 1))

    async def _connection_failed(self) -> None:
        self._stale = True

    async def _check_watch(self) -> None:
        """Ask for the master again if a watched sentinel published (or hung up), that one
        first: it knows the news."""
        if not self._watches:
            return
        fired = [sentinel for sentinel, watch in self._watches.items() if watch.has_unread()]
        if not fired:
            return
        # Taken out before any await: concurrent calls see the same news and must not both act.
        closing = [self._watches.pop(sentinel) for sentinel in fired]
        for sentinel in fired:
            self._sentinels.remove(sentinel)
            self._sentinels.insert(0, sentinel)
        for watch in closing:
            await watch.aclose()
        self._stale = True
        try:
            await self._discover()
        except BackendError as exc:
            log.warning("asking the sentinels for the master failed: %s", exc)

    async def _open(self) -> Connection:
        if self._stale:
            await self._discover()
        settings = self.settings
        conn = await open_connection(settings, self.stats, write_timeout=self._write_timeout)
        try:
            (role,) = await conn.request(pack_command(("ROLE",)), 1)
        except ConnectionLost as lost:
            await conn.aclose()
            raise BackendConnectionError(f"{settings.describe()}: {lost}") from None
        if isinstance(role, hiredis.ReplyError) or not role or role[0] != b"master":
            await conn.aclose()
            self._stale = True
            shown = role[0] if isinstance(role, list) and role else role
            raise BackendConnectionError(
                f"{settings.describe()} is not the master of {self.sentinel.service!r} "
                f"(ROLE says {shown!r})"
            )
        return conn

    async def _discover(self) -> None:
        """Ask the sentinels where the master is; on a new address, drop every pooled
        connection to the old one. Concurrent callers share one round of questions."""
        if self._discovery_lock is None:
            self._discovery_lock = anyio.Lock()
        seen = self._discoveries
        async with self._discovery_lock:
            if self._discoveries != seen and not self._stale:
                return  # another task just asked
            errors: list[str] = []
            # Refusals that asking again cannot change: a login refused, a certificate refused.
            lasting: list[BackendError] = []
            for host, port in list(self._sentinels):
                try:
                    address = await self._ask(host, port)
                except BackendError as exc:
                    errors.append(str(exc))
                    if _lasting(exc):
                        lasting.append(exc)
                    continue
                if address is None:
                    errors.append(f"{host}:{port} knows no master {self.sentinel.service!r}")
                    continue
                self._sentinels.remove((host, port))
                self._sentinels.insert(0, (host, port))
                settings = self.sentinel.for_master(*address)
                if settings != self.settings or not self._discoveries:
                    if self._discoveries:
                        log.warning(
                            "master of %r moved from %s to %s",
                            self.sentinel.service,
                            self.settings.describe(),
                            settings.describe(),
                        )
                        self.switches += 1
                    await self._drop_connections()
                    self.settings = settings
                self._stale = False
                self._discoveries += 1
                await self._watch_all()
                return
            message = f"no sentinel named the master of {self.sentinel.service!r}: "
            if len(lasting) == len(errors):
                # Every sentinel refused us for good: raised as is, not retried for the window.
                certificates = all(isinstance(e, BackendCertificateError) for e in lasting)
                raise (BackendCertificateError if certificates else BackendError)(
                    message + "; ".join(errors)
                )
            raise BackendConnectionError(message + "; ".join(errors))

    async def _ask(self, host: str, port: int) -> tuple[str, int] | None:
        """The master's address by one sentinel (None if it knows no such master)."""
        settings = self.sentinel.for_sentinel(host, port)
        try:
            conn = await open_connection(settings, self.stats, write_timeout=self._write_timeout)
        except (BackendConnectionError, BackendTimeoutError):
            raise
        except BackendError as exc:  # its reply refused the login (AUTH, SELECT)
            raise _Refusal(str(exc)) from None
        try:
            ask = pack_command(("SENTINEL", "GET-MASTER-ADDR-BY-NAME", self.sentinel.service))
            (reply,) = await conn.request(ask, 1)
        except ConnectionLost as lost:
            raise BackendConnectionError(f"{settings.describe()}: {lost}") from None
        finally:
            await conn.aclose()
        if isinstance(reply, hiredis.ReplyError):
            raise _Refusal(f"{settings.describe()}: {reply}")
        if reply is None:
            return None
        return reply[0].decode(), int(reply[1])

    async def _watch_all(self) -> None:
        """Subscribe to WATCHED on every sentinel not watched yet (one that cannot be reached
        within WATCH_CONNECT_S is tried again at the next discovery). Every sentinel, because
        only the one leading a failover publishes its progress at once."""
        for sentinel in self._sentinels:
            if sentinel in self._watches:
                continue
            settings = attrs.evolve(
                self.sentinel.for_sentinel(*sentinel), connect_timeout=WATCH_CONNECT_S
            )
            try:
                conn = await open_connection(settings, self.stats)
            except BackendError:
                continue
            try:
                replies = await conn.request(pack_command(("SUBSCRIBE", *WATCHED)), len(WATCHED))
            except ConnectionLost:
                continue
            if any(isinstance(reply, hiredis.ReplyError) for reply in replies):
                await conn.aclose()
                continue
            self._watches[sentinel] = conn
