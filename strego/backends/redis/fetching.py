"""The multi-queue fetch of `RedisBackend`, and the scheduler's wait. A fetch over several queues
skips the queues it found idle while their `ready` counters hold (`IdleQueues`, "The idle-queue
cache and the `ready` rule" in docs/architecture.md), peeks at the others in one pipeline, runs
the fetch script on those with work (`Taken` gathers the result), and waits on the streams when
nothing came. `wait_schedule_change` waits on the queues' signal streams for the scheduler. On
Cluster both wait on sharded pub/sub instead (`_wakeups`, wakeups.py: one connection per node,
where blocking on the streams would take one per slot)."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import anyio

from strego.backends.redis import codes
from strego.backends.redis.core import _pairs, _str
from strego.backends.redis.transitions import Transitions
from strego.backends.redis.transport import Command, ScriptCall
from strego.errors import ForeignKeyError
from strego.task import TaskInfo

#: Redis times out a BLOCK in its cron, every 1000/hz ms (100 ms at the default hz 10), so a
#: blocking read returns up to that much late. Schedule waits end this much early, and the last
#: stretch before a due time is slept here in short steps.
REDIS_TIMER_SLACK_MS = 110
#: The step of that last stretch: how late a due task can be promoted, at most.
SCHEDULE_STEP_MS = 5

#: A fetch over several queues skips the queues it found idle while their `ready` counters hold
#: (one MGET), but peeks at every queue at least this often anyway: peek refreshes the consumer's
#: last-seen time in each queue, and a counter reset by hand to an old value is caught.
IDLE_RECHECK_S = 1.0
#: How many consumers' idle-queue findings a backend keeps (the least recently used go first).
IDLE_CONSUMERS = 64
#: The wait of a queue whose streams are all empty: anything added later has an id above 0-0.
_FROM_START = b"0-0"


class IdleQueues:
    """What fetches of one consumer over one set of queues found idle: for each such queue, its
    `ready` counter then (b"" = none) and where a blocking wait on it starts (none when paused).
    While the counter holds, nothing became pending there, so the queue need not be peeked."""

    __slots__ = ("checked", "idle", "mget", "names")

    def __init__(self, names: frozenset[str]) -> None:
        self.names = names
        self.idle: dict[str, tuple[bytes, list[tuple[str, bytes]]]] = {}
        #: monotonic time of the last peek at every queue (-inf: never)
        self.checked = float("-inf")
        #: the MGET of the idle queues' counters, kept while `idle` holds the same queues
        self.mget: tuple[tuple[str, ...], Command] | None = None

    def mark(self, queue: str, ready: bytes, wait: list[tuple[str, bytes]]) -> None:
        if queue not in self.idle:
            self.mget = None
        self.idle[queue] = (ready, wait)

    def forget(self, queue: str) -> None:
        if self.idle.pop(queue, None) is not None:
            self.mget = None


class Taken:
    """What one fetch over several queues has gathered so far."""

    __slots__ = ("errors", "more", "tasks", "waits")

    def __init__(self) -> None:
        self.tasks: list[TaskInfo] = []
        #: a fetch script stopped at its bound of stray entries: more may be left to deliver
        self.more = False
        #: where a blocking wait would start, a group per queue: flattened only when needed
        self.waits: list[list[tuple[str, bytes]]] = []
        self.errors: list[tuple[str, ForeignKeyError]] = []


class Fetching(Transitions):
    """Part of `RedisBackend`: fetch, and the wait for a schedule change. The attributes below
    are set by its constructor."""

    _idle: dict[str, IdleQueues]
    idle_recheck_s: float

    async def fetch(
        self,
        queues: Sequence[str],
        count: int,
        consumer: str,
        *,
        lease_ms: int,
        block_ms: int = 0,
        ordered: bool = True,
    ) -> list[TaskInfo]:
        if not self._first_call_checked:
            await self._first_call_checks()
        if self._wakeups is not None and block_ms > 0 and count > 0:
            return await self._fetch_sharded(queues, count, consumer, lease_ms, block_ms, ordered)
        taken = await self._fetch_once(queues, count, consumer, lease_ms, ordered)
        out = taken.tasks
        if out or block_ms <= 0 or count <= 0 or taken.more:
            return out
        await self._block_on_streams(taken, block_ms)
        return (await self._fetch_once(queues, count, consumer, lease_ms, ordered)).tasks

    async def _block_on_streams(self, taken: Taken, block_ms: int) -> None:
        """Wait until an entry is added after where the fetch pass left each stream."""
        waits = [w for group in taken.waits for w in group]
        if not waits:  # every queue is paused: nothing to wait on but time
            await anyio.sleep(block_ms / 1000)
            return
        streams = [s for s, _ in waits]
        ids = [i for _, i in waits]
        # XREAD without a group only reads: idempotent, so a wait cut by a failover goes on
        await self.transport.blocking(
            Command(
                ("XREAD", "COUNT", 1, "BLOCK", block_ms, "STREAMS", *streams, *ids),
                idempotent=True,
            ),
            block_ms,
        )

    async def _fetch_sharded(
        self,
        queues: Sequence[str],
        count: int,
        consumer: str,
        lease_ms: int,
        block_ms: int,
        ordered: bool,
    ) -> list[TaskInfo]:
        """The blocking fetch on Cluster: subscribed first to the queues' `ready` channels
        (wakeups.py: one connection per node, not one per slot), then the fetch pass, then a
        wait for a message. Nothing is lost in between: a task made pending after the
        subscription publishes, one before it is seen by the pass. (A first pass before the
        subscription returns at once when it finds tasks.) A wake-up without a task (a
        lost connection, a moved slot) subscribes and looks again until `block_ms` is over, as
        a blocked XREAD would go on after a failover."""
        assert self._wakeups is not None
        deadline = anyio.current_time() + block_ms / 1000
        # a busy server finds tasks here and never pays for the subscription
        taken = await self._fetch_once(queues, count, consumer, lease_ms, ordered)
        if taken.tasks or taken.more:
            return taken.tasks
        channels = [(self.keys(q).ready.encode(), q) for q in queues]
        while True:
            remaining = deadline - anyio.current_time()
            async with self._wakeups.listen(channels, max(0.0, remaining)) as watch:
                taken = await self._fetch_once(queues, count, consumer, lease_ms, ordered)
                remaining = deadline - anyio.current_time()
                if taken.tasks or taken.more or remaining <= 0:
                    return taken.tasks
                if watch is None:  # a channel could not be subscribed: block on the streams
                    await self._block_on_streams(taken, max(1, int(remaining * 1000)))
                    return (
                        await self._fetch_once(queues, count, consumer, lease_ms, ordered)
                    ).tasks
                await watch.wait(remaining)

    def _idle_of(self, consumer: str, queues: Sequence[str]) -> IdleQueues:
        """The idle-queue findings of `consumer`, kept for its last set of queues only (a server
        asks for the same set each time, in an order that may change)."""
        names = frozenset(queues)
        state = self._idle.pop(consumer, None)
        if state is None or state.names != names:
            state = IdleQueues(names)
        self._idle[consumer] = state  # now the most recently used
        if len(self._idle) > IDLE_CONSUMERS:
            del self._idle[next(iter(self._idle))]
        return state

    def _mget(self, state: IdleQueues) -> tuple[tuple[str, ...], Command]:
        if state.mget is None:
            names = tuple(state.idle)
            state.mget = (
                names,
                Command(("MGET", *(self.keys(q).ready for q in names)), idempotent=True),
            )
        return state.mget

    def _fetch_call(self, queue: str, consumer: str, count: int, lease_ms: int) -> ScriptCall:
        k = self.keys(queue)
        return self._call(
            "fetch",
            k.script_keys("fetch"),
            (self._now(), self.group, consumer, count, lease_ms),
        )

    async def _candidates(
        self,
        queues: Sequence[str],
        consumer: str,
        state: IdleQueues,
        taken: Taken,
        *,
        count: int,
        lease_ms: int,
        ordered: bool,
    ) -> list[str]:
        """The queues (in order) a fetch over several queues should still run the fetch script
        on. Queues not known idle are peeked, all in one pipeline; known idle ones are not: one
        MGET of their `ready` counters, in the same pipeline, tells which changed since (those
        are candidates again). Every `state.idle_recheck_s`, every queue is peeked anyway.

        The first queue not known idle is fetched from in that same pipeline, not peeked, when
        that keeps the order: it is the first queue asked for, or the order is only a preference
        (not `ordered`). The fetch runs before the MGET, so a counter that held proves the queues
        before it were still idle when it ran. That saves a round trip per fetch while the others
        sleep."""
        now = time.monotonic()
        if now - state.checked >= self.idle_recheck_s:
            state.checked = now
            skip: dict[str, tuple[bytes, list[tuple[str, bytes]]]] = {}
        else:
            skip = state.idle
        calls: list[ScriptCall | Command] = []
        seen: dict[str, tuple[bytes, list[tuple[str, bytes]]]] = {}
        if skip:
            names, mget = self._mget(state)
            seen = {q: skip[q] for q in names}  # as they were when the MGET was sent
        peeked = [q for q in queues if q not in seen]
        first = peeked[0] if peeked and (not ordered or peeked[0] == queues[0]) else None
        if first is not None:
            peeked = peeked[1:]
            calls.append(self._fetch_call(first, consumer, count, lease_ms))
        if seen:
            calls.append(mget)
        clock = self._now()
        for k in map(self.keys, peeked):
            calls.append(self._call("peek", k.script_keys("peek"), (clock, consumer)))
        replies = await self.transport.pipeline(calls)
        if first is not None:
            await self._take(first, replies.pop(0), consumer, state, taken)
        changed: set[str] = set()
        if seen:
            counters = replies.pop(0)
            if isinstance(counters, BaseException):
                raise counters
            # a foreign (non-string) counter reads as nil here: the queue's peek, when its
            # counter moves or at the next recheck, reports it
            for (queue, (ready, wait)), value in zip(seen.items(), counters, strict=True):
                if (value or b"") != ready:
                    changed.add(queue)
                else:
                    taken.waits.append(wait)
            # no longer taken for idle: looked at by every fetch until found idle again, so one
            # passed over for `first` is taken next time (it may come before `first` then)
            for queue in changed:
                state.forget(queue)
        busy: set[str] = set()
        for queue, reply in zip(peeked, replies, strict=True):
            if isinstance(reply, BaseException):
                await self._failed(queue, reply, state, taken)
                continue
            flag, ready = reply
            if flag == 1:
                busy.add(queue)
                state.forget(queue)
            else:
                wait = [] if flag == -1 else [(s, _FROM_START) for s in self.keys(queue).streams]
                state.mark(queue, ready, wait)
                taken.waits.append(wait)
        return [q for q in queues if q in busy or q in changed]

    async def _fetch_once(
        self, queues: Sequence[str], count: int, consumer: str, lease_ms: int, ordered: bool
    ) -> Taken:
        taken = Taken()
        asked = len(queues)
        state = None
        if len(queues) > 1:
            # idle queues then cost no round trip and no script each
            state = self._idle_of(consumer, queues)
            queues = await self._candidates(
                queues, consumer, state, taken, count=count, lease_ms=lease_ms, ordered=ordered
            )
        for queue in queues:
            if len(taken.tasks) >= count:
                break
            call = self._fetch_call(queue, consumer, count - len(taken.tasks), lease_ms)
            try:
                reply = await self.transport.run_script(call)
            except ForeignKeyError as exc:
                reply = exc
            await self._take(queue, reply, consumer, state, taken)
        self._isolate(asked, taken.errors, "fetch")
        return taken

    async def _take(
        self, queue: str, reply: Any, consumer: str, state: IdleQueues | None, taken: Taken
    ) -> None:
        """Add what the fetch script on `queue` replied to `taken`, and note in `state` whether
        the queue is idle now."""
        if isinstance(reply, BaseException):
            await self._failed(queue, reply, state, taken)
            return
        status, items, last, ready = reply
        started = await self._started(queue, items, consumer)
        taken.tasks += started
        k = self.keys(queue)
        wait = list(zip(k.streams, last, strict=True)) if status == codes.OK and last else []
        if status == codes.OK and not last and not started:
            taken.more = True  # stopped at its bound of strays: fetch again, do not wait
        taken.waits.append(wait)
        if state is not None:
            if wait or status != codes.OK:  # nothing left to deliver, or paused
                state.mark(queue, ready, wait)
            else:
                state.forget(queue)

    async def _failed(
        self, queue: str, error: BaseException, state: IdleQueues | None, taken: Taken
    ) -> None:
        """A call on `queue` in a fetch over several queues failed: the queue is no longer taken
        for idle; a foreign key only skips it (`_isolate` reports it), anything else is raised."""
        if state is not None:
            state.forget(queue)
        await self._skip_foreign(queue, error, taken.errors)

    # -- the scheduler's wait -------------------------------------------------------------------

    async def wait_schedule_change(self, queues: Sequence[str], timeout_ms: int) -> None:
        if not queues or timeout_ms <= 0:
            return
        if timeout_ms <= REDIS_TIMER_SLACK_MS:
            # shorter than Redis's timer resolution: return (spuriously, as allowed) after a
            # short local sleep, so the caller promotes on time and an earlier arrival waits
            # no longer than one step
            await anyio.sleep(min(timeout_ms, SCHEDULE_STEP_MS) / 1000)
            return
        if self._wakeups is not None:  # Cluster: subscribe, look, then wait (wakeups.py)
            deadline = anyio.current_time() + timeout_ms / 1000
            channels = [(self.keys(q).signal.encode(), q) for q in queues]
            async with self._wakeups.listen(channels, timeout_ms / 1000) as watch:
                news = None if watch is None else await self._signal_news(queues)
                if news is False:
                    assert watch is not None
                    # a local timer: no Redis slack
                    await watch.wait(max(0.0, deadline - anyio.current_time()))
                if news is not None:
                    return
            # a channel could not be subscribed, or a signal stream not read: block on them
            # for what is left of the caller's time
            timeout_ms = int((deadline - anyio.current_time()) * 1000)
            if timeout_ms <= REDIS_TIMER_SLACK_MS:
                if timeout_ms > 0:
                    await anyio.sleep(timeout_ms / 1000)
                return
        timeout_ms -= REDIS_TIMER_SLACK_MS
        streams = [self.keys(q).signal for q in queues]
        ids = [self._signal_ids.get(q, b"$") for q in queues]
        try:
            reply = await self.transport.blocking(
                Command(("XREAD", "BLOCK", timeout_ms, "STREAMS", *streams, *ids), idempotent=True),
                timeout_ms,
            )
        except ForeignKeyError as exc:  # wait on the other queues' signals
            types = await self._pipeline([Command(("TYPE", k), idempotent=True) for k in streams])
            ok = [q for q, t in zip(queues, types, strict=True) if _str(t) in ("none", "stream")]
            bad = [(q, await self._foreign(q, exc)) for q in queues if q not in ok]
            if not bad:
                raise
            self._isolate(len(queues), bad, "wait_schedule_change")
            return await self.wait_schedule_change(ok, timeout_ms + REDIS_TIMER_SLACK_MS)
        by_key = {k: q for k, q in zip(streams, queues, strict=True)}
        for key, entries in _pairs(reply):
            if entries:
                self._signal_ids[by_key[_str(key)]] = entries[-1][0]

    async def _signal_news(self, queues: Sequence[str]) -> bool | None:
        """Did a queue's signal stream get an entry since the last one seen (True), or not
        (False)? A queue seen for the first time starts from its last entry (as XREAD's `$`).
        None when a stream could not be read (a foreign key: the XREAD wait isolates it)."""
        last_entries = [
            Command(("XREVRANGE", self.keys(q).signal, "+", "-", "COUNT", 1), idempotent=True)
            for q in queues
        ]
        replies = await self._send(last_entries)
        news = False
        for queue, reply in zip(queues, replies, strict=True):
            if isinstance(reply, BaseException):
                return None
            last = reply[0][0] if reply else _FROM_START
            seen = self._signal_ids.get(queue)
            if seen != last:
                self._signal_ids[queue] = last
                news = news or seen is not None
        return news
