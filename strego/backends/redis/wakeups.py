"""`Wakeups`: how fetches and schedulers wait on a Redis Cluster. One sharded pub/sub connection
per primary that owns a watched channel, shared by every fetch and scheduler of the backend,
instead of one blocking XREAD connection per hash slot (a multi-key XREAD cannot span slots, even
on one node).

- The scripts publish (SPUBLISH, gated by `SHARDED_NOTIFY`: only on Cluster) the queue's `ready`
  counter when tasks become pending, on a sharded channel named like the counter, and the due
  time on a channel named like the signal stream when a schedule wait should end early. A
  channel shares its queue's hash tag, so a script publishes in its own slot.
- A connection subscribes with one SSUBSCRIBE per slot (a command's channels must share a slot),
  and keeps its channels for its life (two per served queue at most). `Notifier` (notify.py)
  reads it: whoever waits reads, no background task.
- No lost wake-up: the waiter subscribes first (`listen` returns once Redis confirmed), then looks
  (the fetch pass, or the signal streams' last ids), then waits for a message or its timeout.
- A slot that moves: Redis pushes SUNSUBSCRIBE (or answers MOVED to an SSUBSCRIBE sent to a node
  that lost it); the channel is dropped there, its waiters are woken (they look again), and the
  slot map is read again before the next `listen`. A node that is no primary any more loses its
  connection, its waiters woken. A lost connection wakes every waiter of that node.
- When a channel cannot be subscribed (its owner unknown, refused, or not confirmed within
  SUBSCRIBE_TIMEOUT_S or the waiter's own time left, whichever is shorter), `listen` yields
  None: the caller waits the old way (XREAD per slot) for the time it has left.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from typing import TYPE_CHECKING

import anyio

from strego.backends.redis.eviction import _info_field
from strego.backends.redis.notify import SUBSCRIBE_TIMEOUT_S, Notifier, PubSubConnection
from strego.backends.redis.pubsub import AnyioPubSub
from strego.backends.redis.slots import key_slot
from strego.backends.redis.transport import Command
from strego.backends.watch import Watch
from strego.errors import BackendConnectionError, BackendError, BackendTimeoutError

if TYPE_CHECKING:
    from strego.backends.redis.cluster import Address, ClusterTransport

log = logging.getLogger("strego.backends.redis")


#: After a version check that could not reach a node, how long until the next one is asked.
SHARDED_RECHECK_S = 5.0


async def sharded_pubsub_supported(cluster: ClusterTransport) -> bool | None:
    """Does every primary run Redis 7 or newer (SPUBLISH, SSUBSCRIBE)? strego supports Redis 6.2,
    where a script calling SPUBLISH would fail: there the waits stay on XREAD. INFO refused by
    Redis: no. None when a node could not be reached (a failover under way): ask again later,
    a brief outage must not turn this process's wake-ups off for good."""
    try:
        await cluster.fresh()
    except BackendConnectionError as exc:
        log.debug("checking the Redis versions failed: %s", exc)
        return None
    for address in cluster.primaries:
        try:
            reply = await cluster.node(address).execute(Command(("INFO", "server"), True))
        except (BackendConnectionError, BackendTimeoutError) as exc:
            log.debug("checking the Redis version of %s:%s failed: %s", *address, exc)
            return None
        except BackendError:
            return False
        version = _info_field(reply, "redis_version") or ""
        major = version.split(".", 1)[0]
        if not major.isdigit() or int(major) < 7:
            log.info("Redis %s on %s:%s: waits block on the streams", version, *address)
            return False
    return True


class NodesWatch(Watch):
    """A watch joined to the notifiers of several nodes: its wait reads each of them (when
    nobody else does) until a message or a wake-up comes from any."""

    def __init__(self) -> None:
        super().__init__()
        self.notifiers: list[Notifier] = []

    async def wait(self, timeout_s: float) -> list[tuple[str, str]]:
        if len(self.notifiers) == 1:
            await self.notifiers[0].pump(self, timeout_s)
        elif self.notifiers:
            # a pump reading its node's connection would go on reading until its own node
            # sends something: all of them stop once any node woke this watch (reads are
            # cancel-safe, and the next waiter takes over the reading)
            async with anyio.create_task_group() as tg:
                for notifier in self.notifiers:
                    tg.start_soon(notifier.pump, self, timeout_s)
                await self.wait_event(timeout_s)
                tg.cancel_scope.cancel()
        else:
            await self.wait_event(timeout_s)
        return self.take()


class Wakeups:
    """The sharded subscriptions of one `ClusterTransport` (see the module docstring)."""

    def __init__(self, cluster: ClusterTransport) -> None:
        self.cluster = cluster
        self._nodes: dict[Address, Notifier] = {}
        #: each channel's slot (CRC16 in Python costs more than the rest of a listen)
        self._slot_of: dict[bytes, int] = {}

    @property
    def nodes(self) -> list[Address]:
        """The nodes this transport holds a subscription notifier for (for tests and stats)."""
        return list(self._nodes)

    def _notifier(self, address: Address) -> Notifier:
        notifier = self._nodes.get(address)
        if notifier is None:

            async def open_connection() -> PubSubConnection:
                settings = self.cluster.node(address).settings
                return await AnyioPubSub.open(settings, sharded=True)

            notifier = Notifier(open_connection, on_moved=self.cluster.mark_stale)
            self._nodes[address] = notifier
        return notifier

    @asynccontextmanager
    async def listen(
        self, channels: Sequence[tuple[bytes, str]], timeout_s: float = SUBSCRIBE_TIMEOUT_S
    ) -> AsyncIterator[Watch | None]:
        """A watch woken by a message on any of these (channel, queue) pairs, subscribed when
        this returns; None when one of them could not be subscribed within `timeout_s` (at
        most SUBSCRIBE_TIMEOUT_S): the caller waits otherwise."""
        deadline = anyio.current_time() + min(timeout_s, SUBSCRIBE_TIMEOUT_S)
        await self.cluster.fresh()
        await self._prune()
        by_node: dict[Address, list[tuple[bytes, str]]] = {}
        for name, queue in channels:
            slot = self._slot_of.get(name)
            if slot is None:
                slot = self._slot_of[name] = key_slot(name)
            owner = self.cluster.owner(slot)
            if owner is None:
                by_node = {}
                break
            by_node.setdefault(owner, []).append((name, queue))
        watch = NodesWatch()
        complete = bool(by_node)
        async with AsyncExitStack() as stack:
            for address, part in by_node.items():
                notifier = self._notifier(address)
                watch.notifiers.append(notifier)
                timeout = max(0.0, deadline - anyio.current_time())
                joined = notifier.join(watch, part, None, timeout)
                complete &= await stack.enter_async_context(joined)
            watch.take()  # a confirmation or message during the joins: the caller looks next
            yield watch if complete else None

    async def _prune(self) -> None:
        """Close the connections to nodes that are no primary any more (failover): their
        waiters are woken and listen again on the new primaries."""
        primaries = set(self.cluster.primaries)
        for address in [a for a in self._nodes if a not in primaries]:
            await self._nodes.pop(address).aclose()

    async def aclose(self) -> None:
        nodes, self._nodes = list(self._nodes.values()), {}
        for notifier in nodes:
            await notifier.aclose()
