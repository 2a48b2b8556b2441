"""`Transport` over redis-py's asyncio client (asyncio only: redis-py does not run under trio).

Commands go straight to pooled connections, so replies come back as the parser produced them
(bytes, ints, lists), untouched by redis-py's per-command response callbacks or its
`decode_responses` setting. Blocking commands use a pool of their own."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import anyio
import redis.asyncio as aioredis
from redis import exceptions as rx

from strego.backends.redis.connection import pack_command
from strego.backends.redis.pubsub import RedisPyPubSub
from strego.backends.redis.transport import Arg, Command, ScriptCall, to_resend
from strego.errors import (
    BackendConnectionError,
    BackendError,
    BackendTimeoutError,
    ForeignKeyError,
    OutOfMemoryError,
    ReplyLostError,
)

#: How much longer than its own block time a blocking command may take before we give up on it.
BLOCKING_MARGIN_S = 5.0
#: How many times calls that got NOSCRIPT are loaded and sent again.
NOSCRIPT_RETRIES = 3


def map_error(exc: BaseException) -> BackendError:
    """A strego error for a redis-py error, keeping the Redis text."""
    text = str(exc)
    if isinstance(exc, rx.OutOfMemoryError) or text.startswith("OOM") or "\nOOM " in text:
        return OutOfMemoryError(text)
    if "WRONGTYPE" in text:
        return ForeignKeyError(text)
    if isinstance(exc, rx.TimeoutError | TimeoutError):
        return BackendTimeoutError(text or "Redis did not answer in time")
    if isinstance(exc, rx.ConnectionError | ConnectionError | OSError):
        return BackendConnectionError(text or "connection to Redis failed")
    return BackendError(text)


def _is_noscript(exc: BaseException) -> bool:
    return isinstance(exc, rx.NoScriptError) or str(exc).startswith("NOSCRIPT")


def _evalsha(call: ScriptCall) -> tuple[Arg, ...]:
    return ("EVALSHA", call.script.sha, len(call.keys), *call.keys, *call.args)


class RedisPyTransport:
    """Sends strego's scripts and commands through a `redis.asyncio.Redis` client's pool."""

    def __init__(self, client: aioredis.Redis) -> None:
        self.client = client
        pool = client.connection_pool
        # a pool of its own for blocking reads, so they never hold up other calls
        self._blocking_pool = aioredis.ConnectionPool(
            connection_class=pool.connection_class, **pool.connection_kwargs
        )

    async def _roundtrip(
        self,
        pool: aioredis.ConnectionPool,
        commands: Sequence[Sequence[Arg]],
        read_timeout_s: float | None,
    ) -> list[Any]:
        """Send commands in one write and read every reply; error replies come back in place."""
        try:
            conn = await pool.get_connection()  # type: ignore[no-untyped-call]
        except (rx.RedisError, OSError) as exc:
            raise map_error(exc) from exc
        sent = False
        try:
            # hiredis packs RESP in C: redis-py's pure-Python packer cost more than the round trip
            await conn.send_packed_command(b"".join(pack_command(c) for c in commands))
            sent = True
            replies: list[Any] = []
            for _ in commands:
                try:
                    if read_timeout_s is None:
                        replies.append(await conn.read_response(disable_decoding=True))
                    else:
                        with anyio.fail_after(read_timeout_s):
                            replies.append(await conn.read_response(disable_decoding=True))
                except rx.ResponseError as exc:
                    replies.append(exc)
            return replies
        except BaseException as exc:
            await conn.disconnect()  # a half-read connection must not go back to the pool
            if isinstance(exc, TimeoutError):
                raise BackendTimeoutError("Redis did not answer in time") from exc
            if isinstance(exc, rx.RedisError | OSError):
                if sent and isinstance(exc, rx.ConnectionError | OSError):
                    raise ReplyLostError(f"connection lost before the reply: {exc}") from exc
                raise map_error(exc) from exc
            raise
        finally:
            await pool.release(conn)

    async def run_script(self, call: ScriptCall) -> Any:
        reply = (await self.pipeline([call]))[0]
        if isinstance(reply, BaseException):
            raise reply
        return reply

    async def execute(self, command: Command) -> Any:
        reply = (await self._roundtrip(self.client.connection_pool, [command.args], None))[0]
        if isinstance(reply, BaseException):
            raise map_error(reply)
        return reply

    async def pipeline(self, calls: Sequence[ScriptCall | Command]) -> list[Any]:
        commands = [_evalsha(c) if isinstance(c, ScriptCall) else c.args for c in calls]
        replies = await self._roundtrip(self.client.connection_pool, commands, None)
        for _ in range(NOSCRIPT_RETRIES):
            noscript = [
                i for i, r in enumerate(replies) if isinstance(r, BaseException) and _is_noscript(r)
            ]
            missing = to_resend(calls, noscript)
            if not missing:
                break
            # the server lost its script cache (restart, failover, SCRIPT FLUSH): load and resend
            # in one round trip, and again if another flush came between the load and the call
            scripts = {
                c.script.sha: c.script for i in missing if isinstance(c := calls[i], ScriptCall)
            }
            loads = [("SCRIPT", "LOAD", s.source) for s in scripts.values()]
            again = await self._roundtrip(
                self.client.connection_pool, [*loads, *(commands[i] for i in missing)], None
            )
            for reply in again[: len(loads)]:
                if isinstance(reply, BaseException):
                    raise map_error(reply)
            for i, reply in zip(missing, again[len(loads) :], strict=True):
                replies[i] = reply
        return [map_error(r) if isinstance(r, BaseException) else r for r in replies]

    async def blocking(self, command: Command, timeout_ms: int) -> Any:
        replies = await self._roundtrip(
            self._blocking_pool, [command.args], timeout_ms / 1000 + BLOCKING_MARGIN_S
        )
        if isinstance(replies[0], BaseException):
            raise map_error(replies[0])
        return replies[0]

    async def ping(self) -> None:
        await self.execute(Command(("PING",), idempotent=True))

    async def open_pubsub(self) -> RedisPyPubSub:
        return RedisPyPubSub(self.client)

    async def aclose(self) -> None:
        await self._blocking_pool.disconnect()
        await self.client.aclose()
