"""The Redis backend: Lua-scripted state transitions over a `Transport`."""

from strego.backends.redis.anyio_transport import AnyioTransport
from strego.backends.redis.backend import RedisBackend

__all__ = ["AnyioTransport", "RedisBackend"]
