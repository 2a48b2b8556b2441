"""The state transitions of `RedisBackend` other than fetch, each one Lua script per queue
(strego/lua/<name>.lua): enqueue, ack, fail, release, renew, claim_stale, promote, cancel,
delete, requeue_dead, purge, pause/resume and remove_idle_consumers. Each method builds the
script's KEYS from `keys(queue)` and its ARGV, runs it and decodes the reply."""

from __future__ import annotations

import contextlib
from collections import defaultdict
from collections.abc import Callable, Sequence
from typing import Any

from strego.backends.base import AckItem, Renewal
from strego.backends.redis import codes
from strego.backends.redis.core import _str, log
from strego.backends.redis.keys import history_queues_key
from strego.backends.redis.reads import Reads
from strego.backends.redis.record import (
    DEFAULT_MAX_RETRY,
    LETTER,
    decode,
    encode_envelope,
    encode_error,
    unreadable_reason,
)
from strego.backends.redis.transport import Arg, Command, ScriptCall
from strego.errors import (
    BackendError,
    ForeignKeyError,
    InvalidTaskError,
    NotReplicatedError,
    StregoError,
    TaskNotFoundError,
    UnreadableRecordError,
)
from strego.message import TaskMessage, check_unique_ttl
from strego.task import TaskError, TaskInfo, TaskState

#: Messages of one queue sent in one enqueue script call.
ENQUEUE_CHUNK = 100
#: How many dead tasks requeue_all_dead moves per call.
REQUEUE_BATCH = 250
#: How many due tasks of each of scheduled and retry one promote call moves, and how many ended
#: tasks of each retained set and expired unique keys it removes (1,000 moves took 10-27 ms, 250
#: took 4-12 ms, on a loaded 2-core machine).
PROMOTE_BATCH = 100
#: About how many consumers one remove_idle_consumers call looks at (one HSCAN batch); the next
#: call goes on from there.
CONSUMER_BATCH = 100
#: How many entries (zset members, stream entries) one purge script call looks at, at most (in
#: bench/slowlog.py, 500 a call took up to 19 ms and 250 up to 15 ms, 100 at most 3 ms).
PURGE_BATCH = 100


class Transitions(Reads):
    """Part of `RedisBackend`: the transitions, fetch aside (fetching.py). The attributes below
    are set by its constructor."""

    _signal_ids: dict[str, bytes]
    _consumer_scan: dict[str, bytes | str]

    # -- producing ------------------------------------------------------------------------------

    async def enqueue(self, message: TaskMessage) -> TaskInfo:
        # enqueue_many's call for one message, without its grouping (the common call)
        check_unique_ttl([message])
        now = self._now()
        queue = message.queue
        reply, *waited = await self._send(
            [self._enqueue_call(queue, now, [message]), *self._durable()]
        )
        if isinstance(reply, ForeignKeyError):
            raise await self._foreign(queue, reply) from None
        if isinstance(reply, BaseException):
            raise reply
        try:
            ((code, detail),) = (await self._register([reply], [queue]))[0]
        except NotReplicatedError:
            self._check_replicated(waited, 1)  # the tasks' own shortfall first, when both
            raise
        result = self._enqueued(message, code, detail)
        if isinstance(result, StregoError):
            raise result
        self._check_replicated(waited, 1)
        return result

    async def enqueue_many(self, messages: Sequence[TaskMessage]) -> list[TaskInfo | StregoError]:
        if not messages:
            return []
        check_unique_ttl(messages)
        now = self._now()
        by_queue: dict[str, list[int]] = defaultdict(list)
        for i, message in enumerate(messages):
            by_queue[message.queue].append(i)
        calls: list[ScriptCall | Command] = []
        chunks: list[tuple[str, list[int]]] = []
        for queue, indexes in by_queue.items():
            for start in range(0, len(indexes), ENQUEUE_CHUNK):
                chunk = indexes[start : start + ENQUEUE_CHUNK]
                calls.append(self._enqueue_call(queue, now, [messages[i] for i in chunk]))
                chunks.append((queue, chunk))
        durable = self._durable()
        sent = await self._send([*calls, *durable])
        waited = sent[len(calls) :]
        try:
            replies = await self._register(sent[: len(calls)], [queue for queue, _ in chunks])
        except NotReplicatedError:
            self._check_replicated(waited, len(messages))
            raise
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
        self._check_replicated(waited, len(messages))
        return [r for r in results if r is not None]

    def _durable(self) -> list[Command]:
        """With `durable`, the WAIT that follows an enqueue's writes on the same connection."""
        if not self.durable:
            return []
        return [Command(("WAIT", self.durable_replicas, self.durable_timeout_ms), idempotent=True)]

    def _check_replicated(self, waited: list[Any], count: int) -> None:
        """Raise NotReplicatedError unless the WAIT after an enqueue (if any) saw enough
        replicas."""
        if not waited:  # durable off: no message built on the hot path
            return
        self._check_wait(
            waited,
            failed=f"{count} task(s) stored, but WAIT failed",
            short=lambda replicas: (
                f"{count} task(s) stored on the master, but {replicas} "
                f"replica(s), not {self.durable_replicas}, confirmed them within "
                f"{self.durable_timeout_ms} ms: a failover now could lose them"
            ),
        )

    def _check_wait(self, waited: list[Any], *, failed: str, short: Callable[[Any], str]) -> None:
        """Raise NotReplicatedError unless the WAIT whose reply is `waited` (none: nothing was
        waited for) answered and saw enough replicas; `failed` and `short(replicas)` say which
        went wrong."""
        if not waited:
            return
        (reply,) = waited
        if isinstance(reply, BaseException):
            raise NotReplicatedError(f"{failed}: {reply}")
        if int(reply) < self.durable_replicas:
            raise NotReplicatedError(short(reply))

    async def _register(self, replies: Sequence[Any], queues: Sequence[str]) -> list[Any]:
        """The enqueue script calls' `replies` (of `queues`) without the 'REGISTER' that ends
        a reply whose call set its queue's `registered` flag (lib/registered.lua), once those
        queues are SADDed to the registry: one more round trip, at a queue's first enqueue (or
        the first after a purge emptied it, or after the flag's TTL), none on the hot path. A
        failed SADD never reports the stored tasks refused (servers fetch them by queue name): it
        is logged, and the flags are cleared so that the next enqueue registers again."""
        out: list[Any] = []
        unlisted: dict[str, None] = {}
        for queue, reply in zip(queues, replies, strict=True):
            if isinstance(reply, list) and reply and reply[-1] == b"REGISTER":
                reply = reply[:-1]
                unlisted[queue] = None
            out.append(reply)
        if unlisted:
            await self._register_queues(list(unlisted), for_enqueue=True)
        return out

    async def _register_queues(self, queues: Sequence[str], *, for_enqueue: bool = False) -> None:
        """SADD `queues`, whose `registered` flag a script has just set, to the registry. For an
        enqueue with `durable` on (not for fire_schedule, whose writes are not waited for), WAIT
        after it on the same connection, as after the enqueue's writes (the replicas have the
        flag, so a failover losing the SADD would leave the queue unlisted): too few replicas
        raise NotReplicatedError. (The replication stream is ordered, so any later WAIT that
        succeeds covers this SADD as well.)"""
        sadd = Command(("SADD", self._registry, *queues), idempotent=True)
        wait = self._durable() if for_enqueue else []
        waited: list[Any] = []
        try:
            if wait:
                reply, *waited = await self.transport.pipeline([sadd, *wait])
                if isinstance(reply, BackendError):
                    raise reply
            else:
                await self.transport.execute(sadd)
        except BackendError as exc:
            log.error("tasks were stored but the queue registry did not list %s: %s", queues, exc)
            forget = [Command(("DEL", self.keys(q).registered), idempotent=True) for q in queues]
            with contextlib.suppress(BackendError):  # best effort: else the flag's TTL does it
                await self.transport.pipeline(forget)
            return
        entry = f"the queue registry's entry for {list(queues)}"
        self._check_wait(
            waited,
            failed=f"tasks stored, but WAIT after {entry} failed",
            short=lambda replicas: (
                f"tasks stored and replicated, but {replicas} replica(s), "
                f"not {self.durable_replicas}, confirmed {entry} within "
                f"{self.durable_timeout_ms} ms: a failover now could lose it"
            ),
        )

    def _enqueue_call(self, queue: str, now: Arg, messages: Sequence[TaskMessage]) -> ScriptCall:
        """The enqueue script's call for `messages`, all of `queue`."""
        keys = self.keys(queue).script_keys("enqueue")
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

    async def ack(
        self, queue: str, task_id: str, consumer: str, *, result: bytes | None = None
    ) -> bool:
        return (await self.ack_many([(queue, task_id, result)], consumer))[0]

    async def ack_many(self, items: Sequence[AckItem], consumer: str) -> list[bool]:
        if not items:
            return []
        now = self._now()
        by_queue: dict[str, list[int]] = defaultdict(list)
        for i, item in enumerate(items):
            by_queue[item[0]].append(i)
        calls: list[ScriptCall | Command] = []
        for queue, indexes in by_queue.items():
            k = self.keys(queue)
            args: list[Arg] = [now, self.group, consumer, k.ended_channel, self.stats_retention_ms]
            if any(_result_of(items[i]) is not None for i in indexes):
                args.append(2)  # (id, result) pairs
                for i in indexes:
                    result = _result_of(items[i])
                    args += (items[i][1], b"" if result is None else result)
            else:  # no result in this call (the usual case): ids only
                args.append(1)
                args += (items[i][1] for i in indexes)
            calls.append(self._call("ack", k.script_keys("ack"), args))
        replies = await self._pipeline(calls)
        done = [False] * len(items)
        for indexes, reply in zip(by_queue.values(), replies, strict=True):
            for i, flag in zip(indexes, reply, strict=True):
                done[i] = flag == 1
        return done

    async def fail(
        self,
        queue: str,
        task_id: str,
        consumer: str,
        error: str,
        *,
        retry_in_ms: int | None,
        detail: TaskError | None = None,
    ) -> TaskState | None:
        k = self.keys(queue)
        letter = await self._run(
            "fail",
            k.script_keys("fail"),
            (self._now(), self.group, consumer, task_id, error,
             "" if retry_in_ms is None else max(0, retry_in_ms),
             b"" if detail is None else encode_error(detail), k.ended_channel,
             self.stats_retention_ms),
        )  # fmt: skip
        return {b"r": TaskState.RETRY, b"d": TaskState.DEAD, b"x": TaskState.CANCELLED}.get(letter)

    async def release(self, queue: str, task_ids: Sequence[str], consumer: str) -> int:
        k = self.keys(queue)
        if not task_ids:
            return 0
        n: int = await self._run(
            "release",
            k.script_keys("release"),
            (self._now(), self.group, consumer, *task_ids),
        )
        return n

    async def renew(
        self, queue: str, task_ids: Sequence[str], consumer: str, *, lease_ms: int
    ) -> Renewal:
        k = self.keys(queue)
        if not task_ids:
            return Renewal()
        lost, cancel = await self._run(
            "renew",
            k.script_keys("renew"),
            (self._now(), consumer, lease_ms, *task_ids),
        )
        return Renewal([_str(i) for i in lost], [_str(i) for i in cancel])

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
                    k.script_keys("claim_stale"),
                    (self._now(), self.group, consumer, count - len(out), lease_ms,
                     max_deliveries, error, k.ended_channel, self.stats_retention_ms),
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
                    k.script_keys("promote"),
                    (now, self.group, self.completed_ttl_ms, self.dead_ttl_ms, PROMOTE_BATCH),
                )
            )  # fmt: skip
        earliest: int | None = None
        errors: list[tuple[str, ForeignKeyError]] = []
        for queue, reply in zip(queues, await self._send(calls), strict=True):
            if isinstance(reply, BaseException):
                await self._skip_foreign(queue, reply, errors)
                continue
            due_in, signal_id = reply
            self._signal_ids.setdefault(queue, signal_id)
            if due_in != b"":
                earliest = int(due_in) if earliest is None else min(earliest, int(due_in))
        self._isolate(len(queues), errors, "promote")
        return earliest

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
            k.script_keys("cancel"),
            (self._now(), self.group, task_id, k.ended_channel, k.cancel_channel),
        )
        return done in (1, 2) or await self._refused(task_id, queue)

    async def delete(self, task_id: str, queue: str | None = None) -> bool:
        queue = await self._located(task_id, queue)
        k = self.keys(queue)
        done = await self._run(
            "delete",
            k.script_keys("delete"),
            (self._now(), self.group, self.completed_ttl_ms, self.dead_ttl_ms, task_id),
        )  # fmt: skip
        if done == -1:
            raise TaskNotFoundError(task_id)
        return bool(done == 1)

    async def run_now(self, task_id: str, queue: str | None = None) -> bool:
        queue = await self._located(task_id, queue)
        done = await self._run(
            "run_now", self.keys(queue).script_keys("run_now"), (self._now(), self.group, task_id)
        )
        return done == 1 or await self._refused(task_id, queue)

    async def _requeue(
        self, queue: str, task_ids: Sequence[str], until: Arg = ""
    ) -> tuple[int, int, Arg]:
        """requeue_dead's script: (how many it requeued, how many dead entries it looked at, the
        death time it looked up to)."""
        k = self.keys(queue)
        n, seen, until = await self._run(
            "requeue_dead",
            k.script_keys("requeue_dead"),
            (self._now(), self.group, self.dead_ttl_ms, REQUEUE_BATCH, until, *task_ids),
        )
        return int(n), int(seen), until

    async def requeue_dead(self, queue: str, task_id: str) -> bool:
        n, _, _ = await self._requeue(queue, [task_id])
        return n == 1 or await self._refused(task_id, queue)

    async def requeue_all_dead(self, queue: str) -> int:
        # each call removes every entry it looked at from the dead set (requeued, or gone with
        # its retention), so the walk goes on past a batch of expired ones; it looks only at
        # tasks dead when it began, so a task that dies again meanwhile is not requeued twice
        total = 0
        until: Arg = ""  # the first call's now, from the second call on
        while True:
            n, seen, until = await self._requeue(queue, [], until)
            total += n
            if seen < REQUEUE_BATCH:
                return total

    async def _purge_call(self, queue: str, cursor: str, letters: str) -> tuple[int, str, int]:
        k = self.keys(queue)
        deleted, cursor_after, left = await self._run(
            "purge",
            k.script_keys("purge"),
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
            # script: drop the queue, count its tasks again (a call that also clears the queue's
            # `registered` flag if none is left), and put it back if one is there. For a task T
            # enqueued meanwhile: if T's script ran before the count, the count sees T and
            # SADDs. If after, the count left the flag set (and SADDs: a task was there) or
            # cleared it; then T's script, or another that stored a task since, set it again
            # and its caller SADDs after that script, so after this SREM. No order of the
            # calls loses T (docs/redis.md, "Registry"; tests/test_redis_manage.py runs them).
            if self.history_cap:
                # Drainers find history streams through the registry: first list the queue
                # where they also look (after the scripts wrote their events, before the SREM),
                # so that its events not stored yet are still drained (docs/history.md).
                await self.transport.execute(
                    Command(("SADD", history_queues_key(self.prefix), queue), idempotent=True)
                )
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
        calls = [Command(("DEL", k.paused), idempotent=True),
                 Command(("INCR", k.ready), idempotent=True)]  # fmt: skip
        if self._sharded_notify:  # Cluster: wake fetches waiting on the queue (wakeups.py)
            calls.append(Command(("SPUBLISH", k.ready, "resumed"), idempotent=True))
        try:
            await self._pipeline(calls)
        except ForeignKeyError as exc:
            raise await self._foreign(queue, exc) from None

    async def remove_idle_consumers(self, queue: str, idle_ms: int) -> list[str]:
        k = self.keys(queue)
        scan, names = await self._run(
            "remove_idle_consumers",
            k.script_keys("remove_idle_consumers"),
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


def _result_of(item: AckItem) -> bytes | None:
    return item[2] if len(item) > 2 else None  # the 3-tuple form
