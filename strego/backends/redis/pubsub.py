"""The pub/sub connections the transports open for `Notifier` (strego/backends/redis/notify.py):
`AnyioPubSub` on an anyio byte stream (asyncio and trio), `RedisPyPubSub` on redis-py's PubSub.
Both give pushes as [kind, channel, data] with bytes, and raise BackendConnectionError when the
connection is lost."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import anyio
import anyio.abc
import hiredis

from strego.backends.redis.connection import _connect_stream, _handshake, pack_command
from strego.backends.redis.slots import key_slot
from strego.backends.redis.url import ConnectionSettings
from strego.errors import BackendConnectionError, BackendError

if TYPE_CHECKING:
    import redis.asyncio as aioredis

_LOST = (anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError, OSError)


class AnyioPubSub:
    """A connection of its own in subscribe mode. Reads are cancel-safe: a receive cut short
    takes no bytes, and a reply read in part stays in the parser."""

    def __init__(self, stream: anyio.abc.ByteStream, address: str, sharded: bool = False) -> None:
        self._stream = stream
        self._address = address
        #: SSUBSCRIBE (sharded pub/sub, Cluster) instead of SUBSCRIBE
        self.sharded = sharded
        self._reader = hiredis.Reader()
        self._send_lock = anyio.Lock()

    @classmethod
    async def open(cls, settings: ConnectionSettings, *, sharded: bool = False) -> AnyioPubSub:
        address = settings.describe()
        try:
            with anyio.fail_after(settings.connect_timeout):
                stream = await _connect_stream(settings)
                conn = cls(stream, address, sharded)
                try:
                    payload, count = _handshake(settings)
                    await stream.send(payload)
                    for _ in range(count):
                        reply = await conn.read(math.inf)
                        if isinstance(reply, hiredis.ReplyError):
                            raise BackendError(f"{address} refused the connection setup: {reply}")
                except BaseException:
                    await anyio.aclose_forcefully(stream)
                    raise
        except TimeoutError:
            raise BackendConnectionError(f"could not connect to {address} in time") from None
        except _LOST as exc:
            raise BackendConnectionError(f"could not connect to {address}: {exc}") from None
        return conn

    async def subscribe(self, channels: Sequence[bytes]) -> None:
        async with self._send_lock:
            try:
                await self._stream.send(self._subscribe_commands(channels))
            except _LOST as exc:
                raise BackendConnectionError(
                    f"pub/sub connection to {self._address}: {exc}"
                ) from None

    def _subscribe_commands(self, channels: Sequence[bytes]) -> bytes:
        if not self.sharded:
            return pack_command(("SUBSCRIBE", *channels))
        # one SSUBSCRIBE per slot: the channels of one command must share a slot (CROSSSLOT)
        by_slot: dict[int, list[bytes]] = {}
        for channel in channels:
            by_slot.setdefault(key_slot(channel), []).append(channel)
        return b"".join(pack_command(("SSUBSCRIBE", *names)) for names in by_slot.values())

    async def read(self, timeout_s: float) -> Any:
        reply = self._reader.gets()
        deadline = anyio.current_time() + timeout_s
        while reply is False:
            with anyio.move_on_after(deadline - anyio.current_time()):
                try:
                    data = await self._stream.receive()
                except _LOST as exc:
                    raise BackendConnectionError(
                        f"pub/sub connection to {self._address} lost: {exc!r}"
                    ) from None
                self._reader.feed(data)
                reply = self._reader.gets()
                continue
            return None
        return reply

    async def aclose(self) -> None:
        await anyio.aclose_forcefully(self._stream)


class RedisPyPubSub:
    """redis-py's PubSub (asyncio only), on a connection of its own from the client's pool."""

    def __init__(self, client: aioredis.Redis) -> None:
        self._pubsub = client.pubsub()

    async def subscribe(self, channels: Sequence[bytes]) -> None:
        from strego.backends.redis.redispy_transport import map_error

        try:
            await self._pubsub.subscribe(*channels)
        except Exception as exc:
            raise map_error(exc) from None

    async def read(self, timeout_s: float) -> Any:
        from strego.backends.redis.redispy_transport import map_error

        try:
            reply = await self._pubsub.parse_response(block=False, timeout=max(0.0, timeout_s))
        except Exception as exc:
            error = map_error(exc)
            raise BackendConnectionError(str(error) or "pub/sub connection lost") from None
        if reply is None:
            return None
        return [r.encode() if isinstance(r, str) else r for r in reply]

    async def aclose(self) -> None:
        await self._pubsub.aclose()  # type: ignore[no-untyped-call]
