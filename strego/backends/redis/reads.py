"""The reads of `RedisBackend` (inspection): the registered queues, a queue's counts, the tasks of
a state page by page (its cursors), one task by id, a queue's consumers and what a consumer holds.
Reads change nothing; they filter ended tasks past their retention by the read clock
(`RedisCore._read_now`)."""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

from strego.backends.base import (
    MAX_SCAN,
    MINUTE_MS,
    ConsumerInfo,
    MinuteCount,
    QueueInfo,
    TaskPage,
    check_limit,
    check_minutes,
    first_kept_minute,
    minute_of,
)
from strego.backends.cursor import decode_cursor, encode_cursor
from strego.backends.redis.core import _pairs, _str
from strego.backends.redis.foreign import ForeignKeys
from strego.backends.redis.record import decode_for_listing, ended_ms
from strego.backends.redis.transport import Arg, Command, ScriptCall
from strego.errors import ForeignKeyError, InvalidCursorError, UnreadableRecordError
from strego.task import MAX_PRIORITY, TaskInfo, TaskState

#: How many entries one list_pending, list_active or list_sorted call looks at at most: a page
#: of list_tasks takes several calls (MAX_SCAN entries in all), each of them short.
LIST_BATCH = 250

_RETAINED = {
    TaskState.COMPLETED: "completed",
    TaskState.CANCELLED: "cancelled",
    TaskState.DEAD: "dead",
}


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


class Reads(ForeignKeys):
    """Part of `RedisBackend`: inspection."""

    def _decode_pairs(self, queue: str, flat: Sequence[bytes]) -> list[TaskInfo]:
        """Listing: records that do not decode are shown as far as they can be, or left out."""
        out = []
        for i in range(0, len(flat), 2):
            info = decode_for_listing(queue, _str(flat[i]), flat[i + 1])
            if info is not None:
                out.append(info)
        return out

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
            *(
                Command(("ZCOUNT", getattr(k, _RETAINED[s]), now - MINUTE_MS, "+inf"))
                for s in _RETAINED
            ),
            *(Command(("XLEN", s)) for s in k.streams),
            self._call(
                "oldest_pending", k.script_keys("oldest_pending"), (self._now(), self.group)
            ),
        ]
        r = await self._pipeline(calls)
        recent = {s: min(r[7 + i], r[4 + i]) for i, s in enumerate(_RETAINED)}
        counts = {
            TaskState.SCHEDULED: r[1],
            TaskState.RETRY: r[2],
            TaskState.ACTIVE: r[3],
            TaskState.COMPLETED: r[4],
            TaskState.CANCELLED: r[5],
            TaskState.DEAD: r[6],
            # every stream entry is a pending task or an active one (until it leaves active)
            TaskState.PENDING: max(0, sum(r[10:-1]) - r[3]),
        }
        age = int(r[-1])
        return QueueInfo(
            name=queue,
            paused=bool(r[0]),
            counts={s: counts[s] for s in TaskState},
            oldest_pending_age_ms=None if age < 0 else age,
            ended_last_minute=recent,
        )

    async def throughput(
        self, queue: str, *, minutes: int = 60, task_type: str | None = None
    ) -> list[MinuteCount]:
        check_minutes(minutes)
        now = await self._read_now()
        first = first_kept_minute(now, self.stats_retention_ms)
        starts = [minute_of(now) - i * MINUTE_MS for i in range(minutes - 1, -1, -1)]
        kept = [m for m in starts if m >= first]
        # the fields lib/minutes.lua writes: <minute number><kind>[:<type>]
        suffix = b"" if task_type is None else b":" + task_type.encode()
        fields = [
            b"%d%s%s" % (m // MINUTE_MS, kind, suffix) for m in kept for kind in (b"c", b"f", b"d")
        ]
        values: list[Any] = []
        if fields:
            values = await self.transport.execute(
                Command(("HMGET", self.keys(queue).minutes, *fields), idempotent=True)
            )
        counts = {
            m: [int(v) if v else 0 for v in values[3 * i : 3 * i + 3]] for i, m in enumerate(kept)
        }
        out = []
        for m in starts:
            c, f, d = counts.get(m, (0, 0, 0))
            out.append(MinuteCount(minute_ms=m, completed=c, failed=f, dead=d))
        return out

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
                more, prio, sid, items = await self._run(name, k.script_keys(name), args)
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
        more, items = await self._run(
            "list_sorted", k.script_keys("list_sorted", listed=key), (order, want, *after, floor)
        )
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
