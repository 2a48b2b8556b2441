"""The Redis backend: Lua-scripted state transitions over a `Transport`."""

from strego.backends.redis.backend import RedisBackend

__all__ = ["RedisBackend"]
