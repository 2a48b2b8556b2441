"""Every Redis key strego uses, built in one place.

All keys of a queue share the hash tag ``{<queue>}`` (one Cluster slot, so each script touches one
slot) and carry the key-layout version ``v1``: a future incompatible layout uses ``v2`` keys, so
old data is never misread. (The record format has a version of its own, in the data: see
`schema_key` and migrate.py.)"""

from __future__ import annotations

from strego.history.events import DEFAULT_HISTORY_CAP
from strego.task import MAX_PRIORITY, MIN_PRIORITY

__all__ = ["DEFAULT_HISTORY_CAP"]

LAYOUT_VERSION = "v1"
PRIORITIES = range(MIN_PRIORITY, MAX_PRIORITY + 1)


def queues_key(prefix: str) -> str:
    """The global registry: a set of every queue name. No script can write it (another Cluster
    slot): a script that stores a task sets the queue's own `registered` flag when it is unset and
    tells its caller, who then SADDs the queue (docs/redis.md, "Registry")."""
    return f"{prefix}:{LAYOUT_VERSION}:queues"


def history_queues_key(prefix: str) -> str:
    """The global set of queues a purge took out of the registry while history is on: their
    history streams may still hold events not stored, and a drainer finds a stream only through
    the registry or this set. A drainer takes a queue out again once its stream is empty
    (docs/history.md, "Purged queues")."""
    return f"{prefix}:{LAYOUT_VERSION}:history_queues"


def schedules_key(prefix: str) -> str:
    """The global index of periodic schedules: a hash, schedule id -> its queue (whose `crons`
    and `cron_defs` hold it)."""
    return f"{prefix}:{LAYOUT_VERSION}:schedules"


def schema_key(prefix: str) -> str:
    """The global hash holding the data's record version (field ``record``; see migrate.py)."""
    return f"{prefix}:{LAYOUT_VERSION}:schema"


#: The 11 priority streams p0..p10: KEYS[1..11] of every script that takes them, so a script
#: finds priority p's stream at KEYS[1 + p].
STREAMS = "streams"
#: A key the caller names at each call (list_sorted: the sorted set being listed).
LISTED = "listed"

#: Every script's KEYS in order, declared once: call sites build them with `Keys.script_keys`,
#: the script loader gives each script its keys by name (`K.tasks`, ...), and a test checks
#: every script's header against this table.
SCRIPT_KEYS: dict[str, tuple[str, ...]] = {
    "enqueue": (STREAMS, "tasks", "scheduled", "retry", "unique", "unique_exp", "signal",
                "completed", "dead", "cancelled", "ready", "registered"),
    "fetch": (STREAMS, "tasks", "leases", "consumers", "paused", "dead", "ready"),
    "peek": (STREAMS, "consumers", "paused", "ready"),
    "ack": (STREAMS, "tasks", "leases", "completed", "unique", "unique_exp", "consumers",
            "cancelled", "minutes", "minutes_index"),
    "fail": (STREAMS, "tasks", "leases", "scheduled", "retry", "dead", "signal", "consumers",
             "cancelled", "unique", "unique_exp", "minutes", "minutes_index"),
    "release": (STREAMS, "tasks", "leases", "consumers", "ready"),
    "renew": ("tasks", "leases", "consumers"),
    "claim_stale": (STREAMS, "tasks", "leases", "dead", "consumers", "cancelled", "unique",
                    "unique_exp", "minutes", "minutes_index"),
    "promote": (STREAMS, "tasks", "scheduled", "retry", "dead", "completed", "cancelled",
                "unique", "unique_exp", "signal", "ready"),
    "cancel": (STREAMS, "tasks", "scheduled", "retry", "cancelled", "unique", "unique_exp"),
    "delete": (STREAMS, "tasks", "scheduled", "retry", "dead", "completed", "cancelled",
               "unique", "unique_exp"),
    "requeue_dead": (STREAMS, "tasks", "dead", "ready"),
    "run_now": (STREAMS, "tasks", "scheduled", "retry", "ready"),
    "purge": (STREAMS, "tasks", "scheduled", "retry", "dead", "completed", "cancelled",
              "unique", "unique_exp", "registered"),
    "remove_idle_consumers": (STREAMS, "consumers"),
    "list_pending": (STREAMS, "tasks"),
    "list_active": (STREAMS, "tasks"),
    "list_sorted": ("tasks", LISTED),
    "oldest_pending": (STREAMS,),
    "put_schedule": ("crons", "cron_defs"),
    "remove_schedule": ("crons", "cron_defs"),
    "fire_schedule": (STREAMS, "tasks", "crons", "ready", "registered"),
    "remove_idle_drainers": ("history",),
}  # fmt: skip


#: The transitions that write a history event (lib/history.lua): with history on, each is given
#: the queue's `history` stream as one more key, after its SCRIPT_KEYS.
HISTORY_SCRIPTS = frozenset({
    "enqueue", "fetch", "ack", "fail", "release", "claim_stale", "promote", "cancel",
    "requeue_dead", "delete", "purge", "run_now", "fire_schedule",
})  # fmt: skip


def key_count(name: str) -> int:
    """How many KEYS script `name` takes (SCRIPT_KEYS's row, the streams counted one each)."""
    kinds = SCRIPT_KEYS[name]
    return len(kinds) - 1 + len(PRIORITIES) if kinds[0] == STREAMS else len(kinds)


def history_key(prefix: str, queue: str) -> str:
    """The queue's history stream (see HISTORY_SCRIPTS), in the queue's hash tag."""
    return f"{prefix}:{LAYOUT_VERSION}:{{{queue}}}:history"


def lua_key_names(name: str) -> str:
    """The Lua line that names a script's KEYS (the loader puts it before the script): `K.tasks`
    and so on, each at its place in SCRIPT_KEYS; the streams stay KEYS[1..11]."""
    kinds = SCRIPT_KEYS[name]
    first = 1 + len(PRIORITIES) if kinds[0] == STREAMS else 1
    named = [k for k in kinds if k != STREAMS]
    fields = ", ".join(f"{kind} = KEYS[{first + i}]" for i, kind in enumerate(named))
    return f"local K = {{{fields}}}\n"


class Keys:
    """The keys of one queue: ``<prefix>:v1:{<queue>}:<kind>``."""

    __slots__ = (
        "_scripts",
        "cancel_channel",
        "cancelled",
        "completed",
        "consumers",
        "cron_defs",
        "crons",
        "dead",
        "ended_channel",
        "history",
        "leases",
        "minutes",
        "minutes_index",
        "paused",
        "queue",
        "ready",
        "registered",
        "retry",
        "scheduled",
        "signal",
        "streams",
        "tasks",
        "unique",
        "unique_exp",
    )  # fmt: skip

    def __init__(self, prefix: str, queue: str) -> None:
        base = f"{prefix}:{LAYOUT_VERSION}:{{{queue}}}:"
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
        #: hash: schedule id -> 'revision,next tick ms,last fire ms,last task id' (scripts own it)
        self.crons = base + "crons"
        #: hash: schedule id -> its definition (JSON only Python reads)
        self.cron_defs = base + "cron_defs"
        #: string: a counter INCRed whenever tasks become pending (or the queue is resumed), so a
        #: fetcher that found the queue idle can tell from one MGET whether to look at it again
        self.ready = base + "ready"
        #: string: set (with a TTL) while the queue's entry in the global registry is taken care
        #: of; unset, the next script that stores a task sets it and its caller SADDs the queue
        self.registered = base + "registered"
        #: hash: per-minute counts `<minute><kind>[:<type>]` -> n (lib/minutes.lua), and zset:
        #: each of its fields -> its minute, so the minutes past retention are found and removed
        self.minutes = base + "minutes"
        self.minutes_index = base + "minutes_index"
        #: pub/sub channels (not keys: they hold nothing): the ids of tasks that ended
        #: (completed, dead, cancelled), for result waiters; the ids of active tasks whose cancel
        #: was requested, for the servers holding them
        self.ended_channel = base + "ended"
        self.cancel_channel = base + "cancel"
        #: capped stream: one event per transition, while the backend has history on
        self.history = base + "history"
        #: one stream of task ids per priority (index = priority), with the consumer group
        self.streams: tuple[str, ...] = tuple(f"{base}p{p}" for p in PRIORITIES)
        #: each script's KEYS, built once
        self._scripts: dict[str, tuple[str, ...]] = {}

    def script_keys(self, name: str, listed: str | None = None) -> tuple[str, ...]:
        """The KEYS of script `name` for this queue, in SCRIPT_KEYS order (`listed`: the key a
        list_sorted call lists)."""
        if listed is not None:
            return tuple(listed if kind == LISTED else getattr(self, kind)
                         for kind in SCRIPT_KEYS[name])  # fmt: skip
        keys = self._scripts.get(name)
        if keys is None:
            found: list[str] = []
            for kind in SCRIPT_KEYS[name]:
                if kind == STREAMS:
                    found += self.streams
                else:
                    found.append(getattr(self, kind))
            keys = self._scripts[name] = tuple(found)
        return keys

    def all(self) -> tuple[str, ...]:
        """Every key of the queue."""
        fixed = (
            self.tasks, self.scheduled, self.retry, self.dead, self.completed, self.cancelled,
            self.leases, self.unique, self.unique_exp, self.consumers, self.paused, self.signal,
            self.ready, self.minutes, self.minutes_index, self.crons, self.cron_defs,
            self.registered,
        )  # fmt: skip
        return fixed + self.streams
