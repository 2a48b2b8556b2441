"""Foreign-key isolation: a queue key that holds another type (written by something else) makes
a script fail with WRONGTYPE before it writes. `ForeignKeys` names the queue and its wrong keys,
and lets a call over several queues skip such a queue and serve the others (logged at a bounded
rate), raising only when every queue asked failed."""

from __future__ import annotations

import time

from strego.backends.redis.core import RedisCore, _str, log
from strego.backends.redis.transport import Command
from strego.errors import ForeignKeyError, StregoError

#: A queue whose keys hold another type is logged at most once per this many seconds.
FOREIGN_LOG_INTERVAL_S = 60.0
#: The Redis type of each kind of queue key (the priority streams p0..p10 are streams too).
_KEY_TYPES = {"tasks": "hash", "unique": "hash", "consumers": "hash", "paused": "string",
              "ready": "string", "signal": "stream", "minutes": "hash", "crons": "hash",
              "cron_defs": "hash"}  # fmt: skip


class ForeignKeys(RedisCore):
    """Part of `RedisBackend`: naming and skipping queues with foreign keys (the attribute
    below is set by its constructor)."""

    _foreign_logged: dict[str, float]

    async def _foreign(self, queue: str, exc: ForeignKeyError) -> ForeignKeyError:
        """`exc` (a WRONGTYPE reply, which names no key) again, naming the queue and which of its
        keys hold another type (found with TYPE)."""
        names = self.keys(queue).all()
        try:
            types = await self._pipeline([Command(("TYPE", n), idempotent=True) for n in names])
        except StregoError:
            types = []
        wrong = []
        for name, kind in zip(names, types, strict=False):
            suffix = name.rsplit(":", 1)[1]
            expected = _KEY_TYPES.get(suffix, "stream" if suffix[0] == "p" else "zset")
            if _str(kind) not in ("none", expected):
                wrong.append(f"its {suffix} key {name!r} is a {_str(kind)}, not a {expected}")
        what = "; ".join(wrong) or "one of its keys holds another type"
        return ForeignKeyError(f"queue {queue!r}: {what} (written by something else): {exc}")

    async def _skip_foreign(
        self, queue: str, error: BaseException, errors: list[tuple[str, ForeignKeyError]]
    ) -> None:
        """A call on `queue`, one of several, failed: a foreign key only skips the queue (noted
        in `errors`, for `_isolate` to report); anything else is raised."""
        if not isinstance(error, ForeignKeyError):
            raise error
        errors.append((queue, await self._foreign(queue, error)))

    def _isolate(self, asked: int, errors: list[tuple[str, ForeignKeyError]], what: str) -> None:
        """Queues with foreign keys are skipped so the others are served: raise only when every
        queue asked failed, else log each (at most once per FOREIGN_LOG_INTERVAL_S a queue)."""
        if not errors:
            return
        if len(errors) >= asked:
            raise errors[0][1]
        now = time.monotonic()
        for queue, error in errors:
            last = self._foreign_logged.get(queue)
            if last is None or now - last >= FOREIGN_LOG_INTERVAL_S:
                self._foreign_logged[queue] = now
                log.error("%s skipped a queue: %s", what, error)
