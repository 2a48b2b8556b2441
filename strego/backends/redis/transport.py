"""The transport seam: the few operations RedisBackend needs from a Redis connection, behind one
small interface, so the same scripts run over redis-py (asyncio) or strego's anyio-native client
(asyncio and trio).

Replies are returned as hiredis/redis-py parse them with no decoding: bulk strings are `bytes`,
integers `int`, arrays `list`, nil `None`. Errors are raised as strego's typed errors
(`strego.errors`), with the Redis error text kept:

- a reply starting with OOM -> OutOfMemoryError; WRONGTYPE -> ForeignKeyError;
  any other error reply -> BackendError
- a connection that could not be made or dropped -> BackendConnectionError; a dropped connection
  after a non-idempotent command was written -> ReplyLostError; a timeout -> BackendTimeoutError
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Protocol

import attrs

from strego.errors import BackendClosedError

if TYPE_CHECKING:
    from strego.backends.redis.notify import PubSubConnection

#: One argument of a Redis command.
Arg = bytes | str | int | float


@attrs.frozen
class Script:
    """A Lua script, loaded once per server and called by SHA1. `source` is the full text after
    shared fragments were included."""

    name: str
    source: str
    sha: str = attrs.field(init=False)

    @sha.default
    def _sha(self) -> str:
        return hashlib.sha1(self.source.encode()).hexdigest()


@attrs.frozen
class ScriptCall:
    """One EVALSHA of `script` with KEYS and ARGV. `idempotent` calls (running the script twice has
    the effect of running it once) may be retried on a new connection when the reply was lost."""

    script: Script
    keys: Sequence[Arg]
    args: Sequence[Arg]
    idempotent: bool = False


@attrs.frozen
class Command:
    """One plain Redis command, e.g. Command(("SADD", key, member)). `idempotent` commands may be
    retried on a new connection when the reply was lost."""

    args: Sequence[Arg]
    idempotent: bool = False


def to_resend(calls: Sequence[ScriptCall | Command], noscript: Sequence[int]) -> list[int]:
    """The positions of a pipeline to send again when the calls at `noscript` got NOSCRIPT (they
    did not run): those, and every idempotent Command after the first of them, so that a command
    sent after a script still runs after it (enqueue registers its queue after its script:
    docs/redis.md, purge). Running an idempotent command once more changes nothing."""
    if not noscript:
        return []
    first = min(noscript)
    again = set(noscript)
    return [
        i
        for i, call in enumerate(calls)
        if i in again or (i > first and isinstance(call, Command) and call.idempotent)
    ]


class Transport(Protocol):
    async def run_script(self, call: ScriptCall) -> Any:
        """EVALSHA the script; on NOSCRIPT load it (SCRIPT LOAD) and call again."""
        ...

    async def execute(self, command: Command) -> Any:
        """Run one plain command."""
        ...

    async def pipeline(self, calls: Sequence[ScriptCall | Command]) -> list[Any]:
        """Send every call in one round trip (not a MULTI transaction) and return their replies in
        order. An error reply of one call is returned in its place as the typed strego exception
        instance (not raised); NOSCRIPT replies are handled by loading and re-sending those calls,
        followed by the idempotent commands that came after them (`to_resend`), so the order of a
        script and a command after it holds. A connection failure raises."""
        ...

    async def blocking(self, command: Command, timeout_ms: int) -> Any:
        """Run a blocking command (XREAD/XREADGROUP BLOCK, BLPOP...) on a connection of its own, so
        it never delays other calls. `timeout_ms` is the command's own block time; the transport
        allows that much plus a margin before it gives up on the reply."""
        ...

    async def ping(self) -> None: ...

    async def open_pubsub(self) -> PubSubConnection:
        """A new connection of its own in subscribe mode (for the backend's `Notifier`)."""
        ...

    async def aclose(self) -> None: ...


class ClosedTransport:
    """What a closed RedisBackend sends through: every call raises BackendClosedError (the
    transport it had may reconnect when used again, but the backend is closed for good)."""

    async def run_script(self, call: ScriptCall) -> Any:
        raise BackendClosedError("the backend is closed")

    async def execute(self, command: Command) -> Any:
        raise BackendClosedError("the backend is closed")

    async def pipeline(self, calls: Sequence[ScriptCall | Command]) -> list[Any]:
        raise BackendClosedError("the backend is closed")

    async def blocking(self, command: Command, timeout_ms: int) -> Any:
        raise BackendClosedError("the backend is closed")

    async def ping(self) -> None:
        raise BackendClosedError("the backend is closed")

    async def open_pubsub(self) -> PubSubConnection:
        raise BackendClosedError("the backend is closed")

    async def aclose(self) -> None:
        return None
