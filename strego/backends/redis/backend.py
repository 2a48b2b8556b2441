"""`RedisBackend`: the backend contract on Redis. Every state transition is one Lua script from
strego/lua (see docs/redis.md for the key layout, the record format and each script); everything
is sent through a `Transport`, so the same backend runs over redis-py or the anyio transport."""

from __future__ import annotations

import logging
import re
import time
from collections import defaultdict
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, cast

import anyio

from strego.backends.base import MAX_SCAN, Clock, ConsumerInfo, QueueInfo, TaskPage, check_limit
from strego.backends.cursor import decode_cursor, encode_cursor
from strego.backends.redis import codes
from strego.backends.redis.eviction import NotReachable, warn_if_evicting
from strego.backends.redis.keys import Keys, queues_key
from strego.backends.redis.migrate import check_schema
from strego.backends.redis.record import (
    DEFAULT_MAX_RETRY,
    LETTER,
    decode,
    decode_for_listing,
    encode_envelope,
    ended_ms,
    unreadable_reason,
)
from strego.backends.redis.scripts import script
from strego.backends.redis.transport import Arg, ClosedTransport, Command, ScriptCall, Transport
from strego.errors import (
    BackendError,
    ForeignKeyError,
    InvalidCursorError,
    InvalidTaskError,
    StregoError,
    TaskNotFoundError,
    UnreadableRecordError,
)
from strego.message import TaskMessage, check_unique_ttl
from strego.task import MAX_PRIORITY, TaskInfo, TaskState, validate_queue_name

if TYPE_CHECKING:
    import redis.asyncio

#: Messages of one queue sent in one enqueue script call.
ENQUEUE_CHUNK = 100
#: How many dead tasks requeue_all_dead moves per call.
BATCH = 1000
#: How many due tasks of each of scheduled and retry one promote call moves, and how many ended
#: tasks of each retained set and expired unique keys it removes (1,000 moves took 10-27 ms, 250
#: took 4-12 ms, on a loaded 2-core machine).
PROMOTE_BATCH = 100
#: How many entries one list_pending, list_active or list_sorted call looks at at most: a page
#: of list_tasks takes several calls (MAX_SCAN entries in all), each of them short.
LIST_BATCH = 250
#: About how many consumers one remove_idle_consumers call looks at (one HSCAN batch); the next
#: call goes on from there.
CONSUMER_BATCH = 100
#: How many entries (zset members, stream entries) one purge script call looks at, at most.
PURGE_BATCH = 500
#: Redis times out a BLOCK in its cron, every 1000/hz ms (100 ms at the default hz 10), so a
#: blocking read returns up to that much late. Schedule waits end this much early, and the last
#: stretch before a due time is slept here in short steps.
REDIS_TIMER_SLACK_MS = 110
#: The step of that last stretch: how late a due task can be promoted, at most.
SCHEDULE_STEP_MS = 5

#: How often reads that filter by time measure the offset of Redis's clock again (seconds).
TIME_REFRESH_S = 10.0
#: A queue whose keys hold another type is logged at most once per this many seconds.
FOREIGN_LOG_INTERVAL_S = 60.0
#: The Redis type of each kind of queue key (the priority streams p0..p10 are streams too).
_KEY_TYPES = {"tasks": "hash", "unique": "hash", "consumers": "hash", "paused": "string",
              "ready": "string", "signal": "stream"}  # fmt: skip

#: A fetch over several queues skips the queues it found idle while their `ready` counters hold
#: (one MGET), but peeks at every queue at least this often anyway: peek refreshes the consumer's
#: last-seen time in each queue, and a counter reset by hand to an old value is caught.
IDLE_RECHECK_S = 1.0
#: How many consumers' idle-queue findings a backend keeps (the least recently used go first).
IDLE_CONSUMERS = 64
#: The wait of a queue whose streams are all empty: anything added later has an id above 0-0.
_FROM_START = b"0-0"

log = logging.getLogger("strego.backends.redis")

_RETAINED = {
    TaskState.COMPLETED: "completed",
    TaskState.CANCELLED: "cancelled",
    TaskState.DEAD: "dead",
}


def system_clock() -> int:
    return time.time_ns() // 1_000_000


def _str(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


class _IdleQueues:
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


class _Taken:
    """What one fetch over several queues has gathered so far."""

    __slots__ = ("errors", "more", "tasks", "waits")

    def __init__(self) -> None:
        self.tasks: list[TaskInfo] = []
        #: a fetch script stopped at its bound of stray entries: more may be left to deliver
        self.more = False
        #: where a blocking wait would start, a group per queue: flattened only when needed
        self.waits: list[list[tuple[str, bytes]]] = []
        self.errors: list[tuple[str, ForeignKeyError]] = []


#: A stream entry id, as a cursor may name one.
_ENTRY_ID = re.compile(r"[0-9]{1,20}-[0-9]{1,20}")


def _stream_position(cursor: str, state: TaskState) -> tuple[int, str]:
    """The (priority, stream entry id) a pending or active listing's cursor names."""
    prio, sid = decode_cursor(cursor, state, (int, str))
    if not (isinstance(prio, int) and 0 <= prio <= MAX_PRIORITY) or not _ENTRY_ID.fullmatch(
        str(sid)
    ):
        raise InvalidCursorError(f"malformed cursor {cursor!r}")
    return prio, str(sid)


def _sorted_position(cursor: str, state: TaskState) -> tuple[int, str]:
    """The (score, task id) a listing of a sorted set's cursor names."""
    score, task_id = decode_cursor(cursor, state, (int, str))
    if not (isinstance(score, int) and abs(score) < 2**53):  # a score is a double in Redis
        raise InvalidCursorError(f"malformed cursor {cursor!r}")
    return score, str(task_id)


def _score(value: bytes | str) -> int:
    """A sorted set score as written by the scripts (whole ms; a float if set by hand)."""
    text = _str(value)
    try:
        return int(text)
    except ValueError:
        return int(float(text))


def _pairs(reply: Any) -> list[tuple[Any, Any]]:
    """Key/value pairs from a map reply: a dict under RESP3, a flat list or list of pairs under
    RESP2 (transports may speak either)."""
    if not reply:
        return []
    if isinstance(reply, dict):
        return list(reply.items())
    if isinstance(reply[0], list):
        return [(k, v) for k, v in reply]
    return list(zip(reply[::2], reply[1::2], strict=True))


class RedisBackend:
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
    ) -> None:
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
        self._keys: dict[str, Keys] = {}
        #: per queue, the enqueue script's keys (built once)
        self._enqueue_keys: dict[str, tuple[str, ...]] = {}
        self._registry = queues_key(prefix)
        #: newest signal-stream id seen per queue, so wait_schedule_change misses nothing
        self._signal_ids: dict[str, bytes] = {}
        #: when each queue with foreign keys was last logged
        self._foreign_logged: dict[str, float] = {}
        #: per consumer, the queues its last fetches over several queues found idle
        self._idle: dict[str, _IdleQueues] = {}
        # per queue, where remove_idle_consumers' scan of the consumers hash goes on from
        self._consumer_scan: dict[str, bytes | str] = {}
        self.idle_recheck_s = IDLE_RECHECK_S
        #: the eviction policy was checked (strego.backends.redis.eviction), or is being checked
        self._eviction_checked = False

    @classmethod
    def from_url(
        cls, url: str, *, transport_options: dict[str, Any] | None = None, **options: Any
    ) -> RedisBackend:
        """A backend for a redis://, rediss:// or unix:// URL over strego's anyio transport, which
        runs under asyncio and trio and pipelines concurrent calls (bench/bench_transport.py
        measured it at least as fast as redis-py under asyncio). `transport_options` go to
        `AnyioTransport`; `options` to the constructor. To use redis-py instead, pass a
        `redis.asyncio.Redis` to the constructor."""
        from strego.backends.redis.anyio_transport import AnyioTransport

        return cls(AnyioTransport.from_url(url, **(transport_options or {})), **options)

    def keys(self, queue: str) -> Keys:
        keys = self._keys.get(queue)
        if keys is None:
            keys = self._keys[queue] = Keys(self.prefix, validate_queue_name(queue))
        return keys

    def _now(self) -> Arg:
        """ARGV `now` of every script: '' (the script reads Redis TIME), or the injected clock."""
        return self.clock() if self._injected_clock else ""

    async def _read_now(self) -> int:
        """Now by Redis's clock, for reads that filter by time (retention, idle times): the
        monotonic clock plus an offset to Redis TIME measured at most TIME_REFRESH_S ago, so a
        read costs no extra round trip. Decisions are never made with it: scripts read TIME."""
        if self._injected_clock:
            return self.clock()
        mono = time.monotonic()
        if mono - self._time_measured >= TIME_REFRESH_S:
            sec, usec = await self.transport.execute(Command(("TIME",), idempotent=True))
            after = time.monotonic()
            # the reply was made somewhere in the round trip: take its middle
            self._time_offset_ms = int(sec) * 1000 + int(usec) / 1000 - (mono + after) * 500
            self._time_measured = after
            mono = after
        return int(mono * 1000 + self._time_offset_ms)

    def _call(self, name: str, keys: Sequence[Arg], args: Sequence[Arg]) -> ScriptCall:
        return ScriptCall(script(name), keys, args)

    async def _run(self, name: str, keys: Sequence[Arg], args: Sequence[Arg]) -> Any:
        if not self._eviction_checked:
            await self._check_eviction()
        return await self.transport.run_script(self._call(name, keys, args))

    async def _pipeline(self, calls: Sequence[ScriptCall | Command]) -> list[Any]:
        if not self._eviction_checked:
            await self._check_eviction()
        replies = await self.transport.pipeline(calls)
        for reply in replies:
            if isinstance(reply, BaseException):
                raise reply
        return replies

    async def _check_eviction(self) -> None:
        """Warn when Redis may evict our keys, once, before the backend's first script call or
        fetch: one flag test per call after that. The check never fails the call. Then refuse
        data of a newer record version (migrate.check_schema): that fails every call."""
        self._eviction_checked = True  # concurrent first calls do not check again
        try:
            await warn_if_evicting(self.transport)
        except NotReachable:
            self._eviction_checked = False  # the call itself says why; check on a later one
        except Exception as exc:
            log.debug("checking the maxmemory-policy failed: %s", exc)
        except BaseException:
            self._eviction_checked = False  # cancelled: check on a later call
            raise
        try:
            await check_schema(self.transport, self.prefix)
        except BaseException:
            self._eviction_checked = False  # refused, unreachable or cancelled: check again
            raise

    # -- foreign keys ---------------------------------------------------------------------------

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

    # -- producing ------------------------------------------------------------------------------

    async def enqueue(self, message: TaskMessage) -> TaskInfo:
        # enqueue_many's two calls for one message, without its grouping (the common call)
        check_unique_ttl([message])
        now = self._now()
        queue = message.queue
        register = Command(("SADD", self._registry, queue), idempotent=True)
        if not self._eviction_checked:
            await self._check_eviction()
        first, reply, last = await self.transport.pipeline(
            [register, self._enqueue_call(queue, now, [message]), register]
        )
        if isinstance(reply, BaseException):
            raise reply
        self._check_registered([queue], first, last)
        ((code, detail),) = reply
        result = self._enqueued(message, code, detail)
        if isinstance(result, StregoError):
            raise result
        return result

    async def enqueue_many(self, messages: Sequence[TaskMessage]) -> list[TaskInfo | StregoError]:
        if not messages:
            return []
        check_unique_ttl(messages)
        now = self._now()
        by_queue: dict[str, list[int]] = defaultdict(list)
        for i, message in enumerate(messages):
            by_queue[message.queue].append(i)
        register = Command(("SADD", self._registry, *by_queue), idempotent=True)
        calls: list[ScriptCall | Command] = [register]
        chunks: list[tuple[str, list[int]]] = []
        for queue, indexes in by_queue.items():
            for start in range(0, len(indexes), ENQUEUE_CHUNK):
                chunk = indexes[start : start + ENQUEUE_CHUNK]
                calls.append(self._enqueue_call(queue, now, [messages[i] for i in chunk]))
                chunks.append((queue, chunk))
        calls.append(register)
        if not self._eviction_checked:
            await self._check_eviction()
        first, *replies, last = await self.transport.pipeline(calls)
        self._check_registered(list(by_queue), first, last)
        results: list[TaskInfo | StregoError | None] = [None] * len(messages)
        failed = [r for r in replies if isinstance(r, BaseException)]
        for (queue, chunk), reply in zip(chunks, replies, strict=True):
            if isinstance(reply, BackendError):
                # the script checks every key before its first write: the chunk wrote nothing
                if isinstance(reply, ForeignKeyError):
                    reply = await self._foreign(queue, reply)
                if len(failed) == len(replies):  # nothing was written: raise, as enqueue does
                    raise reply
                for i in chunk:
                    results[i] = reply
                continue
            if isinstance(reply, BaseException):
                raise reply
            for i, (code, detail) in zip(chunk, reply, strict=True):
                results[i] = self._enqueued(messages[i], code, detail)
        return [r for r in results if r is not None]

    @staticmethod
    def _check_registered(queues: Sequence[str], first: Any, last: Any) -> None:
        """Enqueue registers its queues with one SADD before its scripts and one after: the one
        after is the one `purge` relies on (see there); the one before fails first under OOM,
        ahead of the scripts. Either is enough to list the queues: the tasks a script wrote are
        never reported as refused because of the registry, but when both failed the registry
        misses them, and that is logged."""
        if isinstance(first, BaseException) and isinstance(last, BaseException):
            log.error("tasks were stored but the queue registry did not list %s: %s", queues, last)

    def _enqueue_call(self, queue: str, now: Arg, messages: Sequence[TaskMessage]) -> ScriptCall:
        """The enqueue script's call for `messages`, all of `queue`."""
        keys = self._enqueue_keys.get(queue)
        if keys is None:
            k = self.keys(queue)
            keys = (
                k.tasks, k.scheduled, k.retry, k.unique, k.unique_exp, k.signal, k.completed,
                k.dead, k.cancelled, *k.streams, k.ready,
            )  # fmt: skip
            self._enqueue_keys[queue] = keys
        args: list[Arg] = [now, self.group, self.completed_ttl_ms, self.dead_ttl_ms]
        for m in messages:
            # the script decides against its clock whether the task is due yet
            if m.process_in_ms is not None:
                due_arg = f"+{m.process_in_ms}" if m.process_in_ms > 0 else ""
            else:
                due_arg = "" if m.process_at_ms is None else str(m.process_at_ms)
            if due_arg or m.priority or m.max_retry != DEFAULT_MAX_RETRY or m.unique_key:
                # '' stands for all the defaults (see enqueue.lua)
                opts = (
                    f"{due_arg},{m.priority},{m.max_retry},{m.unique_ttl_ms or 0},"
                    f"{m.unique_key or ''}"
                )
            else:
                opts = ""
            args += (m.id, opts, encode_envelope(m))
        return self._call("enqueue", keys, args)

    @staticmethod
    def _enqueued(m: TaskMessage, code: Any, detail: Any) -> TaskInfo | StregoError:
        """What the enqueue script's reply (code, detail) for `m` says."""
        if code != codes.OK:
            return codes.error_for(code, m, detail)
        if detail == b"p":
            return m.info(TaskState.PENDING)
        return m.info(TaskState.SCHEDULED, next_run_ms=int(detail))

    # -- consuming --------------------------------------------------------------------------------

    def _decode_pairs(self, queue: str, flat: Sequence[bytes]) -> list[TaskInfo]:
        """Listing: records that do not decode are shown as far as they can be, or left out."""
        out = []
        for i in range(0, len(flat), 2):
            info = decode_for_listing(queue, _str(flat[i]), flat[i + 1])
            if info is not None:
                out.append(info)
        return out

    async def _started(self, queue: str, flat: Sequence[bytes], consumer: str) -> list[TaskInfo]:
        """Tasks just made active for `consumer`. One whose record does not decode could never
        run: it goes to dead with the reason (docs/architecture.md, invariant 4), and the others
        are returned."""
        out = []
        for i in range(0, len(flat), 2):
            task_id = _str(flat[i])
            try:
                out.append(decode(queue, task_id, flat[i + 1]))
            except UnreadableRecordError as exc:
                await self.fail(queue, task_id, consumer, unreadable_reason(exc), retry_in_ms=None)
        return out

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
        if not self._eviction_checked:
            await self._check_eviction()
        taken = await self._fetch_once(queues, count, consumer, lease_ms, ordered)
        out = taken.tasks
        if out or block_ms <= 0 or count <= 0 or taken.more:
            return out
        waits = [w for group in taken.waits for w in group]
        if not waits:  # every queue is paused: nothing to wait on but time
            await anyio.sleep(block_ms / 1000)
            return []
        streams = [s for s, _ in waits]
        ids = [i for _, i in waits]
        await self.transport.blocking(
            Command(("XREAD", "COUNT", 1, "BLOCK", block_ms, "STREAMS", *streams, *ids)), block_ms
        )
        return (await self._fetch_once(queues, count, consumer, lease_ms, ordered)).tasks

    def _idle_of(self, consumer: str, queues: Sequence[str]) -> _IdleQueues:
        """The idle-queue findings of `consumer`, kept for its last set of queues only (a server
        asks for the same set each time, in an order that may change)."""
        names = frozenset(queues)
        state = self._idle.pop(consumer, None)
        if state is None or state.names != names:
            state = _IdleQueues(names)
        self._idle[consumer] = state  # now the most recently used
        if len(self._idle) > IDLE_CONSUMERS:
            del self._idle[next(iter(self._idle))]
        return state

    def _mget(self, state: _IdleQueues) -> tuple[tuple[str, ...], Command]:
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
            (k.tasks, k.leases, k.consumers, k.paused, *k.streams, k.dead, k.ready),
            (self._now(), self.group, consumer, count, lease_ms),
        )

    async def _candidates(
        self,
        queues: Sequence[str],
        consumer: str,
        state: _IdleQueues,
        taken: _Taken,
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
            calls.append(
                self._call("peek", (k.consumers, k.paused, *k.streams, k.ready), (clock, consumer))
            )
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
    ) -> _Taken:
        taken = _Taken()
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
        self, queue: str, reply: Any, consumer: str, state: _IdleQueues | None, taken: _Taken
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
        self, queue: str, error: BaseException, state: _IdleQueues | None, taken: _Taken
    ) -> None:
        """A call on `queue` in a fetch over several queues failed: the queue is no longer taken
        for idle; a foreign key only skips it (`_isolate` reports it), anything else is raised."""
        if state is not None:
            state.forget(queue)
        await self._skip_foreign(queue, error, taken.errors)

    async def ack(self, queue: str, task_id: str, consumer: str) -> bool:
        return (await self.ack_many([(queue, task_id)], consumer))[0]

    async def ack_many(self, items: Sequence[tuple[str, str]], consumer: str) -> list[bool]:
        if not items:
            return []
        now = self._now()
        by_queue: dict[str, list[int]] = defaultdict(list)
        for i, (queue, _) in enumerate(items):
            by_queue[queue].append(i)
        calls: list[ScriptCall | Command] = []
        for queue, indexes in by_queue.items():
            k = self.keys(queue)
            calls.append(
                self._call(
                    "ack",
                    (k.tasks, k.leases, k.completed, k.unique, k.unique_exp, k.consumers,
                     *k.streams),
                    (now, self.group, consumer, *(items[i][1] for i in indexes)),
                )
            )  # fmt: skip
        replies = await self._pipeline(calls)
        done = [False] * len(items)
        for indexes, reply in zip(by_queue.values(), replies, strict=True):
            for i, flag in zip(indexes, reply, strict=True):
                done[i] = flag == 1
        return done

    async def fail(
        self, queue: str, task_id: str, consumer: str, error: str, *, retry_in_ms: int | None
    ) -> TaskState | None:
        k = self.keys(queue)
        letter = await self._run(
            "fail",
            (k.tasks, k.leases, k.scheduled, k.retry, k.dead, k.signal, k.consumers, *k.streams),
            (self._now(), self.group, consumer, task_id, error,
             "" if retry_in_ms is None else max(0, retry_in_ms)),
        )  # fmt: skip
        return {b"r": TaskState.RETRY, b"d": TaskState.DEAD}.get(letter)

    async def release(self, queue: str, task_ids: Sequence[str], consumer: str) -> int:
        k = self.keys(queue)
        if not task_ids:
            return 0
        n: int = await self._run(
            "release",
            (k.tasks, k.leases, k.consumers, *k.streams, k.ready),
            (self._now(), self.group, consumer, *task_ids),
        )
        return n

    async def renew(
        self, queue: str, task_ids: Sequence[str], consumer: str, *, lease_ms: int
    ) -> list[str]:
        k = self.keys(queue)
        if not task_ids:
            return []
        lost = await self._run(
            "renew",
            (k.tasks, k.leases, k.consumers),
            (self._now(), consumer, lease_ms, *task_ids),
        )
        return [_str(i) for i in lost]

    async def claim_stale(
        self,
        queues: Sequence[str],
        consumer: str,
        count: int,
        *,
        lease_ms: int,
        max_deliveries: int,
    ) -> list[TaskInfo]:
        error = (
            f"exceeded max deliveries ({max_deliveries}): its consumer died {max_deliveries}"
            " times while running it"
        )
        out: list[TaskInfo] = []
        errors: list[tuple[str, ForeignKeyError]] = []
        asked = len(queues)
        if asked > 1:
            # the script runs queue after queue (each claims what the earlier left of `count`),
            # but most queues hold no expired lease: one round trip finds those that do (a
            # foreign key is left to the script to report). By the read clock: a lease it
            # misses by a few ms is claimed at the next pass; the script decides by TIME.
            now = await self._read_now()
            expired = await self.transport.pipeline(
                [Command(("ZRANGEBYSCORE", self.keys(q).leases, "-inf", now, "LIMIT", 0, 1),
                         idempotent=True)
                 for q in queues]
            )  # fmt: skip
            queues = [q for q, e in zip(queues, expired, strict=True) if e]
        for queue in queues:
            if len(out) >= count:
                break
            k = self.keys(queue)
            try:
                items = await self._run(
                    "claim_stale",
                    (k.tasks, k.leases, k.dead, k.consumers, *k.streams),
                    (self._now(), self.group, consumer, count - len(out), lease_ms,
                     max_deliveries, error),
                )  # fmt: skip
            except ForeignKeyError as exc:
                errors.append((queue, await self._foreign(queue, exc)))
                continue
            out += await self._started(queue, items, consumer)
        self._isolate(asked, errors, "claim_stale")
        return out

    async def promote(self, queues: Sequence[str]) -> int | None:
        if not queues:
            return None
        now = self._now()
        calls: list[ScriptCall | Command] = []
        for queue in queues:
            k = self.keys(queue)
            calls.append(
                self._call(
                    "promote",
                    (k.tasks, k.scheduled, k.retry, k.dead, k.completed, k.cancelled, k.unique,
                     k.unique_exp, k.signal, *k.streams, k.ready),
                    (now, self.group, self.completed_ttl_ms, self.dead_ttl_ms, PROMOTE_BATCH),
                )
            )  # fmt: skip
        earliest: int | None = None
        errors: list[tuple[str, ForeignKeyError]] = []
        for queue, reply in zip(queues, await self.transport.pipeline(calls), strict=True):
            if isinstance(reply, BaseException):
                await self._skip_foreign(queue, reply, errors)
                continue
            due_in, signal_id = reply
            self._signal_ids.setdefault(queue, signal_id)
            if due_in != b"":
                earliest = int(due_in) if earliest is None else min(earliest, int(due_in))
        self._isolate(len(queues), errors, "promote")
        return earliest

    async def wait_schedule_change(self, queues: Sequence[str], timeout_ms: int) -> None:
        if not queues or timeout_ms <= 0:
            return
        if timeout_ms <= REDIS_TIMER_SLACK_MS:
            # shorter than Redis's timer resolution: return (spuriously, as allowed) after a
            # short local sleep, so the caller promotes on time and an earlier arrival waits
            # no longer than one step
            await anyio.sleep(min(timeout_ms, SCHEDULE_STEP_MS) / 1000)
            return
        timeout_ms -= REDIS_TIMER_SLACK_MS
        streams = [self.keys(q).signal for q in queues]
        ids = [self._signal_ids.get(q, b"$") for q in queues]
        try:
            reply = await self.transport.blocking(
                Command(("XREAD", "BLOCK", timeout_ms, "STREAMS", *streams, *ids)), timeout_ms
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

    # -- managing ---------------------------------------------------------------------------------

    async def _queue_of(self, task_id: str) -> str | None:
        found = await self._find(task_id)
        return found[0] if found else None

    async def _refused(self, task_id: str, queue: str) -> bool:
        """A transition by id changed nothing: False if the task exists (a state that does not
        allow it), else TaskNotFoundError. Looked up after the script: a task deleted meanwhile
        is reported as not found, which it then is."""
        if await self.get_task(task_id, queue) is None:
            raise TaskNotFoundError(task_id)
        return False

    async def _located(self, task_id: str, queue: str | None) -> str:
        if queue is None:
            queue = await self._queue_of(task_id)
            if queue is None:
                raise TaskNotFoundError(task_id)
        return queue

    async def cancel(self, task_id: str, queue: str | None = None) -> bool:
        queue = await self._located(task_id, queue)
        k = self.keys(queue)
        done = await self._run(
            "cancel",
            (k.tasks, k.scheduled, k.retry, k.cancelled, k.unique, k.unique_exp, *k.streams),
            (self._now(), self.group, task_id),
        )
        return done == 1 or await self._refused(task_id, queue)

    async def delete(self, task_id: str, queue: str | None = None) -> bool:
        queue = await self._located(task_id, queue)
        k = self.keys(queue)
        done = await self._run(
            "delete",
            (k.tasks, k.scheduled, k.retry, k.dead, k.completed, k.cancelled, k.unique,
             k.unique_exp, *k.streams),
            (self._now(), self.group, self.completed_ttl_ms, self.dead_ttl_ms, task_id),
        )  # fmt: skip
        if done == -1:
            raise TaskNotFoundError(task_id)
        return bool(done == 1)

    async def _requeue(self, queue: str, task_ids: Sequence[str]) -> tuple[int, int]:
        """requeue_dead's script: (how many it requeued, how many dead entries it looked at)."""
        k = self.keys(queue)
        n, seen = await self._run(
            "requeue_dead",
            (k.tasks, k.dead, *k.streams, k.ready),
            (self._now(), self.group, self.dead_ttl_ms, BATCH, *task_ids),
        )
        return int(n), int(seen)

    async def requeue_dead(self, queue: str, task_id: str) -> bool:
        n, _ = await self._requeue(queue, [task_id])
        return n == 1 or await self._refused(task_id, queue)

    async def requeue_all_dead(self, queue: str) -> int:
        # each call removes every entry it looked at from the dead set (requeued, or gone with
        # its retention), so the walk goes on past a batch of expired ones
        total = 0
        while True:
            n, seen = await self._requeue(queue, [])
            total += n
            if seen < BATCH:
                return total

    async def _purge_call(self, queue: str, cursor: str, letters: str) -> tuple[int, str, int]:
        k = self.keys(queue)
        deleted, cursor_after, left = await self._run(
            "purge",
            (k.tasks, k.scheduled, k.retry, k.dead, k.completed, k.cancelled, k.unique,
             k.unique_exp, *k.streams),
            (self._now(), self.completed_ttl_ms, self.dead_ttl_ms, PURGE_BATCH, cursor, letters),
        )  # fmt: skip
        return int(deleted), _str(cursor_after), int(left)

    async def purge(self, queue: str, states: Sequence[TaskState] | None = None) -> int:
        if states is None:
            states = [s for s in TaskState if s is not TaskState.ACTIVE]
        if TaskState.ACTIVE in states:
            raise InvalidTaskError("active tasks cannot be purged: they are running")
        letters = "".join(LETTER[TaskState(s)] for s in states)
        # PURGE_BATCH entries per script call (each atomic), from the cursor the last one
        # returned, until the script says it is done (left >= 0)
        total, cursor, left = 0, "", -1
        while left < 0:
            deleted, cursor, left = await self._purge_call(queue, cursor, letters)
            total += deleted
        if left == 0:
            # The registry is a separate key (another Cluster slot), so it cannot change in the
            # script: drop the queue, count its tasks again, and put it back if one is there.
            # Enqueue sends its SADD after its script (same connection, in order), so for a task
            # T enqueued meanwhile either its SADD comes after this SREM (and lists the queue
            # again), or it came before: then T's script ran before this SREM, hence before the
            # count below, which sees T and SADDs. No order of the five commands loses T.
            await self.transport.execute(Command(("SREM", self._registry, queue), idempotent=True))
            _, _, left = await self._purge_call(queue, "", "")
            if left:
                await self.transport.execute(
                    Command(("SADD", self._registry, queue), idempotent=True)
                )
        return total

    async def pause(self, queue: str) -> None:
        await self.transport.execute(Command(("SET", self.keys(queue).paused, 1), idempotent=True))

    async def resume(self, queue: str) -> None:
        k = self.keys(queue)
        # the counter moves so that fetchers that found the queue paused look again; after the
        # DEL (one pipeline runs in order), else a peek in between could record it paused under
        # the new value. Counting twice on a retry only costs one more peek.
        try:
            await self._pipeline(
                [Command(("DEL", k.paused), idempotent=True),
                 Command(("INCR", k.ready), idempotent=True)]
            )  # fmt: skip
        except ForeignKeyError as exc:
            raise await self._foreign(queue, exc) from None

    # -- reading ----------------------------------------------------------------------------------

    async def queues(self) -> list[str]:
        names = await self.transport.execute(Command(("SMEMBERS", self._registry), idempotent=True))
        return sorted(_str(n) for n in names)

    def _live_from(self, state: TaskState, now: int) -> str:
        """The lowest end time (exclusive) of a retained task still within its retention."""
        ttl = self.dead_ttl_ms if state is TaskState.DEAD else self.completed_ttl_ms
        return f"({now - ttl}"

    async def queue_info(self, queue: str) -> QueueInfo:
        k = self.keys(queue)
        now = await self._read_now()
        calls: list[ScriptCall | Command] = [
            Command(("EXISTS", k.paused)),
            Command(("ZCARD", k.scheduled)),
            Command(("ZCARD", k.retry)),
            Command(("ZCARD", k.leases)),
            *(
                Command(("ZCOUNT", getattr(k, _RETAINED[s]), self._live_from(s, now), "+inf"))
                for s in _RETAINED
            ),
            *(Command(("XLEN", s)) for s in k.streams),
        ]
        r = await self._pipeline(calls)
        counts = {
            TaskState.SCHEDULED: r[1],
            TaskState.RETRY: r[2],
            TaskState.ACTIVE: r[3],
            TaskState.COMPLETED: r[4],
            TaskState.CANCELLED: r[5],
            TaskState.DEAD: r[6],
            # every stream entry is a pending task or an active one (until it leaves active)
            TaskState.PENDING: max(0, sum(r[7:]) - r[3]),
        }
        return QueueInfo(name=queue, paused=bool(r[0]), counts={s: counts[s] for s in TaskState})

    async def _records(self, queue: str, ids: Sequence[bytes]) -> list[TaskInfo]:
        if not ids:
            return []
        recs = await self.transport.execute(self._hmget(queue, ids))
        return self._decode_records(queue, ids, recs)

    def _hmget(self, queue: str, ids: Sequence[bytes]) -> Command:
        return Command(("HMGET", self.keys(queue).tasks, *ids), idempotent=True)

    @staticmethod
    def _decode_records(queue: str, ids: Sequence[bytes], recs: Sequence[Any]) -> list[TaskInfo]:
        found = (decode_for_listing(queue, _str(i), r) for i, r in zip(ids, recs, strict=True) if r)
        return [t for t in found if t is not None]

    async def list_tasks(
        self, queue: str, state: TaskState, *, cursor: str | None = None, limit: int = 100
    ) -> TaskPage:
        check_limit(limit)
        k = self.keys(queue)
        sorted_set = state not in (TaskState.PENDING, TaskState.ACTIVE)
        at: tuple[int | str, int | str] = ("", "")
        if cursor is not None:
            at = (_sorted_position if sorted_set else _stream_position)(cursor, state)
        tasks: list[TaskInfo] = []
        # a page in script calls of LIST_BATCH entries each (each one short: Redis serves nobody
        # else meanwhile), MAX_SCAN entries looked at in all
        for _ in range(MAX_SCAN // LIST_BATCH):
            want = min(limit - len(tasks), LIST_BATCH)
            if sorted_set:
                more, at = await self._list_sorted(queue, state, at, want, tasks)
            else:
                name = "list_pending" if state is TaskState.PENDING else "list_active"
                args: tuple[Arg, ...] = (want, LIST_BATCH, *at)
                if state is TaskState.ACTIVE:
                    args = (self.group, *args)
                more, prio, sid, items = await self._run(name, (k.tasks, *k.streams), args)
                tasks += self._decode_pairs(queue, items)
                at = (int(prio), _str(sid))
            if not more or len(tasks) == limit:
                break
        return TaskPage(tasks=tasks, next_cursor=encode_cursor(state, at) if more else None)

    async def _list_sorted(
        self,
        queue: str,
        state: TaskState,
        after: tuple[int | str, int | str],
        want: int,
        out: list[TaskInfo],
    ) -> tuple[bool, tuple[int | str, int | str]]:
        """One list_sorted call: adds the tasks of `state` after the position `after` to `out`;
        returns whether entries follow, and the position of the last entry looked at."""
        k = self.keys(queue)
        if state in (TaskState.SCHEDULED, TaskState.RETRY):
            key = k.scheduled if state is TaskState.SCHEDULED else k.retry
            order, floor = "asc", ""
        else:
            key = getattr(k, _RETAINED[state])
            ttl = self.dead_ttl_ms if state is TaskState.DEAD else self.completed_ttl_ms
            order, floor = "desc", str(await self._read_now() - ttl)
        more, items = await self._run("list_sorted", (k.tasks, key), (order, want, *after, floor))
        for i in range(0, len(items), 3):
            found = items[i + 1] and decode_for_listing(queue, _str(items[i]), items[i + 1])
            if found and found.state is state:
                out.append(found)
        if items:
            after = (_score(items[-1]), _str(items[-3]))
        return bool(more), after

    def _retained(self, record: bytes, now: int) -> bool:
        try:
            state, ended = ended_ms(record)
        except UnreadableRecordError:  # the listing decides what to show of it
            return True
        if ended is None or state not in _RETAINED:
            return True
        ttl = self.dead_ttl_ms if state is TaskState.DEAD else self.completed_ttl_ms
        return ended + ttl > now

    async def _find(self, task_id: str) -> tuple[str, bytes] | None:
        names = await self.queues()
        if not names:
            return None
        calls: list[ScriptCall | Command] = [
            Command(("HGET", self.keys(q).tasks, task_id), idempotent=True) for q in names
        ]
        now = await self._read_now()
        for queue, rec in zip(names, await self._pipeline(calls), strict=True):
            if rec is not None and self._retained(rec, now):
                return queue, rec
        return None

    async def get_task(self, task_id: str, queue: str | None = None) -> TaskInfo | None:
        if queue is None:
            found = await self._find(task_id)
            return None if found is None else decode_for_listing(found[0], task_id, found[1])
        rec = await self.transport.execute(
            Command(("HGET", self.keys(queue).tasks, task_id), idempotent=True)
        )
        if rec is None or not self._retained(rec, await self._read_now()):
            return None
        return decode_for_listing(queue, task_id, rec)

    async def consumers(self, queue: str) -> list[ConsumerInfo]:
        k = self.keys(queue)
        seen, ids = await self._pipeline(
            [Command(("HGETALL", k.consumers)), Command(("ZRANGE", k.leases, 0, -1))]
        )
        held: dict[str, list[str]] = defaultdict(list)
        for task in await self._records(queue, ids):
            if task.state is TaskState.ACTIVE and task.consumer is not None:
                held[task.consumer].append(task.id)
        now = await self._read_now()
        return [
            ConsumerInfo(
                name=_str(name),
                queue=queue,
                held=tuple(sorted(held[_str(name)])),
                idle_ms=max(0, now - int(last_seen)),
            )
            for name, last_seen in _pairs(seen)
        ]

    async def held_by(self, queues: Sequence[str], consumer: str) -> dict[str, list[str]]:
        # two round trips whatever the number of queues: the leased ids of every queue, then the
        # records of those ids (a lease does not say whose it is)
        leased = await self.transport.pipeline(
            [Command(("ZRANGE", self.keys(q).leases, 0, -1), idempotent=True) for q in queues]
        )
        errors: list[tuple[str, ForeignKeyError]] = []
        asked: list[tuple[str, Any]] = []
        for queue, ids in zip(queues, leased, strict=True):
            if isinstance(ids, BaseException):
                await self._skip_foreign(queue, ids, errors)
            elif ids:
                asked.append((queue, ids))
        records = (
            await self.transport.pipeline([self._hmget(q, i) for q, i in asked]) if asked else []
        )
        out: dict[str, list[str]] = {}
        for (queue, ids), recs in zip(asked, records, strict=True):
            if isinstance(recs, BaseException):
                await self._skip_foreign(queue, recs, errors)
                continue
            held = sorted(
                t.id
                for t in self._decode_records(queue, ids, recs)
                if t.state is TaskState.ACTIVE and t.consumer == consumer
            )
            if held:
                out[queue] = held
        self._isolate(len(queues), errors, "held_by")
        return out

    async def remove_idle_consumers(self, queue: str, idle_ms: int) -> list[str]:
        k = self.keys(queue)
        scan, names = await self._run(
            "remove_idle_consumers",
            (k.tasks, k.leases, k.consumers, *k.streams),
            (
                self._now(),
                self.group,
                idle_ms,
                self._consumer_scan.get(queue, "0"),
                CONSUMER_BATCH,
            ),
        )
        self._consumer_scan[queue] = scan
        return [_str(n) for n in names]

    async def aclose(self) -> None:
        """Close the transport; every call afterwards raises BackendClosedError."""
        transport, self.transport = self.transport, ClosedTransport()
        await transport.aclose()
