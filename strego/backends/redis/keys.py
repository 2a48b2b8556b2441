"""Every Redis key strego uses, built in one place.

All keys of a queue share the hash tag ``{<queue>}`` (one Cluster slot, so each script touches one
slot) and carry the schema version ``v1``: a future incompatible layout uses ``v2`` keys, so old
data is never misread."""

from __future__ import annotations

from strego.task import MAX_PRIORITY, MIN_PRIORITY

SCHEMA_VERSION = "v1"
PRIORITIES = range(MIN_PRIORITY, MAX_PRIORITY + 1)


def queues_key(prefix: str) -> str:
    """The global registry: a set of every queue name."""
    return f"{prefix}:{SCHEMA_VERSION}:queues"


def schema_key(prefix: str) -> str:
    """The global hash holding the data's record version (field ``record``; see migrate.py)."""
    return f"{prefix}:{SCHEMA_VERSION}:schema"


class Keys:
    """The keys of one queue: ``<prefix>:v1:{<queue>}:<kind>``."""

    __slots__ = (
        "cancelled", "completed", "consumers", "dead", "leases", "paused", "queue", "ready",
        "retry", "scheduled", "signal", "streams", "tasks", "unique", "unique_exp",
    )  # fmt: skip

    def __init__(self, prefix: str, queue: str) -> None:
        base = f"{prefix}:{SCHEMA_VERSION}:{{{queue}}}:"
        self.queue = queue
        self.tasks = base + "tasks"  #: hash: task id -> record
        self.scheduled = base + "scheduled"  #: zset: task id -> due ms
        self.retry = base + "retry"  #: zset: task id -> due ms
        self.dead = base + "dead"  #: zset: task id -> died ms
        self.completed = base + "completed"  #: zset: task id -> completed ms (processed markers)
        self.cancelled = base + "cancelled"  #: zset: task id -> cancelled ms
        self.leases = base + "leases"  #: zset: active task id -> lease expiry ms
        self.unique = base + "unique"  #: hash: unique key -> holder task id
        self.unique_exp = base + "unique_exp"  #: zset: unique key -> expiry ms
        self.consumers = base + "consumers"  #: hash: consumer name -> last seen ms
        self.paused = base + "paused"  #: string: exists while the queue is paused
        self.signal = base + "signal"  #: capped stream: an earlier due time was added
        #: string: a counter INCRed whenever tasks become pending (or the queue is resumed), so a
        #: fetcher that found the queue idle can tell from one MGET whether to look at it again
        self.ready = base + "ready"
        #: one stream of task ids per priority (index = priority), with the consumer group
        self.streams: tuple[str, ...] = tuple(f"{base}p{p}" for p in PRIORITIES)

    def all(self) -> tuple[str, ...]:
        """Every key of the queue."""
        fixed = (
            self.tasks, self.scheduled, self.retry, self.dead, self.completed, self.cancelled,
            self.leases, self.unique, self.unique_exp, self.consumers, self.paused, self.signal,
            self.ready,
        )  # fmt: skip
        return fixed + self.streams
