"""`RedisBackend`: the backend contract on Redis. Every state transition is one Lua script from
strego/lua (see docs/redis.md for the key layout, the record format and each script); everything
is sent through a `Transport`, so the same backend runs over redis-py or the anyio transport.

The class is built in layers, one module each, every layer using the ones before it:

- core.py: the shared calls (`keys`, `_now`, `_read_now`, `_run`, `_pipeline`);
- foreign.py: foreign-key isolation (`_foreign`, `_skip_foreign`, `_isolate`);
- reads.py: inspection (`queues`, `queue_info`, `throughput`, `list_tasks`, `get_task`,
  `consumers`, `held_by`);
- transitions.py: every transition but fetch (`enqueue`, `ack`, `fail`, `release`, `claim_stale`,
  `promote`, `cancel`, `delete`, `run_now`, `requeue_dead`, `purge`, `pause`, ...);
- fetching.py: the multi-queue fetch and its idle-queue cache, and `wait_schedule_change`;
- schedules.py: periodic schedules (`put_schedule`, `remove_schedule`, `list_schedules`,
  `fire_schedule`);

and this module: the constructor (which sets the state of every layer), `from_url`, `aclose`,
and the watches (`watch_ended`, `watch_cancel_requests`) on the pub/sub `Notifier` (notify.py).
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any, cast

from strego.backends.base import STATS_RETENTION_MS, Clock, check_stats_retention
from strego.backends.redis.fetching import IDLE_RECHECK_S, IdleQueues
from strego.backends.redis.keys import DEFAULT_HISTORY_CAP, Keys, queues_key
from strego.backends.redis.notify import Notifier, PubSubConnection
from strego.backends.redis.schedules import Schedules
from strego.backends.redis.transport import ClosedTransport, Transport
from strego.backends.watch import Watch
from strego.errors import InvalidTaskError

if TYPE_CHECKING:
    import anyio
    import redis.asyncio


def system_clock() -> int:
    return time.time_ns() // 1_000_000


class RedisBackend(Schedules):
    """A backend storing tasks in Redis. Give it a `redis.asyncio.Redis` client (created with
    ``decode_responses=False`` or not: replies are read raw either way) or any `Transport`."""

    capabilities: frozenset[str] = frozenset()

    def __init__(
        self,
        client_or_transport: redis.asyncio.Redis | Transport,
        *,
        prefix: str = "strego",
        group: str = "strego",
        clock: Clock | None = None,
        completed_ttl_ms: int = 3_600_000,
        dead_ttl_ms: int = 7 * 86_400_000,
        stats_retention_ms: int = STATS_RETENTION_MS,
        history: bool = False,
        history_cap: int = DEFAULT_HISTORY_CAP,
        durable: bool = False,
        durable_timeout_ms: int = 1000,
        durable_replicas: int = 1,
    ) -> None:
        check_stats_retention(stats_retention_ms)
        if history and (not isinstance(history_cap, int) or history_cap < 1):
            raise InvalidTaskError(f"history_cap must be a positive int, got {history_cap!r}")
        if hasattr(client_or_transport, "run_script"):
            self.transport: Transport = cast("Transport", client_or_transport)
        else:
            from strego.backends.redis.redispy_transport import RedisPyTransport

            self.transport = RedisPyTransport(client_or_transport)
        self.prefix = prefix
        self.group = group
        #: the host clock, for what the caller stamps itself (task ids, created times); every
        #: decision on time is made by Redis TIME inside the scripts (docs/architecture.md,
        #: invariant 7), unless `clock` was injected: a test facility only
        self.clock: Clock = clock or system_clock
        self._injected_clock = clock is not None
        #: Redis time minus the monotonic clock (ms), for reads that filter by time, and when
        #: it was measured (monotonic s); see _read_now
        self._time_offset_ms = 0.0
        self._time_measured = float("-inf")
        self.completed_ttl_ms = completed_ttl_ms
        self.dead_ttl_ms = dead_ttl_ms
        #: how long the per-minute history (`throughput`) is kept
        self.stats_retention_ms = stats_retention_ms
        #: with history on, every transition appends an event to its queue's history stream,
        #: capped at about history_cap entries (docs/redis.md, "History"); 0: off
        self.history_cap = history_cap if history else 0
        self._wakeups = getattr(self.transport, "wakeups", None)
        self._sharded_notify = False  # until the first call's checks saw Redis 7
        if durable_timeout_ms < 1:
            raise ValueError("durable_timeout_ms must be at least 1 (WAIT 0 waits forever)")
        if durable_replicas < 1:
            raise ValueError("durable_replicas must be at least 1")
        #: an enqueue returns only once `durable_replicas` replicas have its tasks, waiting up to
        #: durable_timeout_ms (docs/deploy.md)
        self.durable = durable
        self.durable_timeout_ms = durable_timeout_ms
        self.durable_replicas = durable_replicas
        self._keys: dict[str, Keys] = {}
        self._registry = queues_key(prefix)
        #: newest signal-stream id seen per queue, so wait_schedule_change misses nothing
        self._signal_ids: dict[str, bytes] = {}
        #: when each queue with foreign keys was last logged
        self._foreign_logged: dict[str, float] = {}
        #: per consumer, the queues its last fetches over several queues found idle
        self._idle: dict[str, IdleQueues] = {}
        # per queue, where remove_idle_consumers' scan of the consumers hash goes on from
        self._consumer_scan: dict[str, bytes | str] = {}
        self.idle_recheck_s = IDLE_RECHECK_S
        #: the first call's checks (eviction policy, record version) passed; the lock makes
        #: concurrent first calls wait for them (created in the event loop that first calls)
        self._first_call_checked = False
        self._schema_checked = False
        self._wakeups_unchecked = self._wakeups
        self._sharded_check_at = float("-inf")
        self._first_call_lock: anyio.Lock | None = None
        #: the one pub/sub connection of this backend, shared by every watch
        self._notifier = Notifier(self._open_pubsub)

    async def _open_pubsub(self) -> PubSubConnection:
        return await self.transport.open_pubsub()

    @classmethod
    def from_url(
        cls, url: str, *, transport_options: dict[str, Any] | None = None, **options: Any
    ) -> RedisBackend:
        """A backend for a redis://, rediss:// or unix:// URL over strego's anyio transport, which
        runs under asyncio and trio and pipelines concurrent calls (bench/bench_transport.py
        measured it at least as fast as redis-py under asyncio); or for a redis+sentinel:// URL
        (`SentinelTransport`) or a redis+cluster:// URL (`ClusterTransport`): docs/deploy.md.
        The URL options durable=true, durable_timeout_ms=N, durable_replicas=N, history=true and
        history_cap=N set the constructor's options of those names (one URL that every process
        uses turns history on for all of them). `transport_options` go to the transport;
        `options` to the constructor. To use redis-py instead, pass a `redis.asyncio.Redis` to
        the constructor."""
        from strego.backends.redis.anyio_transport import AnyioTransport
        from strego.backends.redis.cluster import ClusterTransport, is_cluster_url
        from strego.backends.redis.sentinel import SentinelTransport, is_sentinel_url
        from strego.backends.redis.url import backend_options

        url, from_query = backend_options(url)
        options = {**from_query, **options}
        transport: Transport
        if is_sentinel_url(url):
            transport = SentinelTransport.from_url(url, **(transport_options or {}))
        elif is_cluster_url(url):
            transport = ClusterTransport.from_url(url, **(transport_options or {}))
        else:
            transport = AnyioTransport.from_url(url, **(transport_options or {}))
        return cls(transport, **options)

    async def aclose(self) -> None:
        """Close the transport; every call afterwards raises BackendClosedError."""
        transport, self.transport = self.transport, ClosedTransport()
        await self._notifier.aclose()
        await transport.aclose()

    @asynccontextmanager
    async def watch_ended(self, queue: str, task_id: str) -> AsyncIterator[Watch]:
        channel = self.keys(queue).ended_channel.encode()
        async with self._notifier.listen([(channel, queue)], task_id) as watch:
            yield watch

    @asynccontextmanager
    async def watch_cancel_requests(self, queues: Sequence[str]) -> AsyncIterator[Watch]:
        channels = [(self.keys(q).cancel_channel.encode(), q) for q in queues]
        async with self._notifier.listen(channels) as watch:
            yield watch
