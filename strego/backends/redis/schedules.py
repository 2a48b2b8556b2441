"""Periodic schedules on Redis: `put_schedule`, `remove_schedule`, `fire_schedule` (one script
each, strego/lua/) and `list_schedules`.

A schedule lives in the queue its task goes to (hash tag `{<queue>}`), so the fire script that
enqueues a tick's task and advances the schedule touches one slot: `crons` holds its state (which
the scripts parse), `cron_defs` its definition (JSON that only Python reads). The global hash
`schedules_key` maps each schedule id to its queue, for listing and removal by id; like the queue
registry it is written by single-key idempotent commands outside the scripts."""

from __future__ import annotations

import base64
import json
from typing import Any

import attrs

from strego.backends.base import FireResult, ScheduleDefinition, ScheduleInfo, ScheduleList
from strego.backends.redis.core import _pairs, _str, log
from strego.backends.redis.fetching import Fetching
from strego.backends.redis.keys import schedules_key
from strego.backends.redis.record import encode_envelope
from strego.backends.redis.transport import Command
from strego.cron import check_catchup, check_schedule_id, tick_task_id
from strego.errors import ForeignKeyError, UnreadableRecordError
from strego.message import TaskMessage

_FIRE = {b"FIRED": FireResult.FIRED, b"STALE": FireResult.STALE, b"EARLY": FireResult.EARLY}


def encode_definition(d: ScheduleDefinition) -> bytes:
    """The stored definition: JSON with sorted keys, so one definition is always the same bytes
    (put_schedule compares them to tell a changed schedule)."""
    m = d.template
    # fields added since v1 are written only when set: a definition without them keeps its bytes
    optional: dict[str, object] = {}
    if m.result_ttl_ms is not None:
        optional["result_ttl_ms"] = m.result_ttl_ms
    if m.headers:
        optional["headers"] = m.headers
    return json.dumps(
        {
            **optional,
            "v": 1,
            "spec": d.spec,
            "tz": d.tz,
            "catchup": d.catchup,
            "type": m.type,
            "queue": m.queue,
            "payload": base64.b64encode(m.payload).decode(),
            "encoding": m.encoding,
            "max_retry": m.max_retry,
            "priority": m.priority,
            "timeout_ms": m.timeout_ms,
            "labels": m.labels,
        },
        sort_keys=True,
        separators=(",", ":"),
    ).encode()


def decode_definition(schedule_id: str, raw: bytes) -> ScheduleDefinition:
    try:
        f = json.loads(raw)
        template = TaskMessage(
            id=schedule_id,
            type=f["type"],
            queue=f["queue"],
            payload=base64.b64decode(f["payload"]),
            encoding=f["encoding"],
            max_retry=f["max_retry"],
            priority=f["priority"],
            timeout_ms=f["timeout_ms"],
            labels=f["labels"],
            result_ttl_ms=f.get("result_ttl_ms"),
            headers=f.get("headers", {}),
        )
        return ScheduleDefinition(
            schedule_id, f["spec"], f["tz"], check_catchup(f["catchup"]), template
        )
    except (ValueError, KeyError, TypeError) as exc:
        raise UnreadableRecordError(f"schedule {schedule_id!r}: unreadable definition") from exc


def decode_state(definition: ScheduleDefinition, state: bytes) -> ScheduleInfo:
    """A ScheduleInfo from the script-owned state 'revision,next,last fire,last task id'."""
    revision, next_ms, last_fire, last_task = _str(state).split(",", 3)
    return ScheduleInfo(
        definition,
        int(revision),
        int(next_ms),
        int(last_fire) if last_fire else None,
        last_task or None,
    )


class Schedules(Fetching):
    """Part of `RedisBackend`: the periodic schedules."""

    async def _index_queue(self, schedule_id: str) -> str | None:
        found = await self.transport.execute(
            Command(("HGET", schedules_key(self.prefix), schedule_id), idempotent=True)
        )
        return None if found is None else _str(found)

    async def _schedule_script(self, name: str, queue: str, args: tuple[Any, ...]) -> Any:
        try:
            return await self._run(name, self.keys(queue).script_keys(name), args)
        except ForeignKeyError as exc:
            raise await self._foreign(queue, exc) from None

    async def put_schedule(self, definition: ScheduleDefinition, next_ms: int) -> ScheduleInfo:
        queue = definition.template.queue
        old_queue = await self._index_queue(definition.id)
        # indexed first: a schedule is never stored where listing cannot find it
        await self.transport.execute(
            Command(("HSET", schedules_key(self.prefix), definition.id, queue), idempotent=True)
        )
        if old_queue is not None and old_queue != queue:
            await self._schedule_script("remove_schedule", old_queue, (definition.id,))
        state = await self._schedule_script(
            "put_schedule", queue, (definition.id, encode_definition(definition), next_ms)
        )
        return decode_state(definition, state)

    async def remove_schedule(self, schedule_id: str) -> bool:
        check_schedule_id(schedule_id)
        queue = await self._index_queue(schedule_id)
        if queue is None:
            return False
        removed = await self._schedule_script("remove_schedule", queue, (schedule_id,))
        await self.transport.execute(
            Command(("HDEL", schedules_key(self.prefix), schedule_id), idempotent=True)
        )
        return bool(removed)

    async def list_schedules(self) -> ScheduleList:
        now = await self._read_now()
        index = _pairs(
            await self.transport.execute(
                Command(("HGETALL", schedules_key(self.prefix)), idempotent=True)
            )
        )
        by_queue: dict[str, list[str]] = {}
        for schedule_id, queue in index:
            by_queue.setdefault(_str(queue), []).append(_str(schedule_id))
        calls: list[Command] = []
        for queue, ids in by_queue.items():
            k = self.keys(queue)
            calls.append(Command(("HMGET", k.crons, *ids), idempotent=True))
            calls.append(Command(("HMGET", k.cron_defs, *ids), idempotent=True))
        replies = await self._send(calls) if calls else []
        found: list[ScheduleInfo] = []
        for i, (queue, ids) in enumerate(by_queue.items()):
            states, defs = replies[2 * i], replies[2 * i + 1]
            for reply in (states, defs):
                if isinstance(reply, BaseException) and not isinstance(reply, ForeignKeyError):
                    raise reply
            error = next((r for r in (states, defs) if isinstance(r, ForeignKeyError)), None)
            if error is not None:
                # one queue's foreign keys must not stop every schedule from firing
                log.error("schedules of queue %s skipped: %s", queue, error)
                continue
            for schedule_id, state, raw in zip(ids, states, defs, strict=True):
                if state is None or raw is None:
                    continue  # removed, or moved to another queue, since the index was read
                try:
                    found.append(decode_state(decode_definition(schedule_id, raw), state))
                except (UnreadableRecordError, ValueError) as exc:
                    log.error("schedule %s skipped: %s", schedule_id, exc)
        found.sort(key=lambda s: s.id)
        return ScheduleList(now, found)

    async def fire_schedule(
        self, schedule: ScheduleInfo, tick_ms: int, next_ms: int, *, enqueue: bool = True
    ) -> FireResult:
        queue = schedule.queue
        template = schedule.definition.template
        task_id = tick_task_id(schedule.id, tick_ms) if enqueue else ""
        envelope = b""
        if enqueue:
            # the template whole (its result_ttl and headers too), as the tick's task
            message = attrs.evolve(template, id=task_id, queue=queue, created_ms=tick_ms)
            envelope = encode_envelope(message)
        args = (
            self._now(), self.group, schedule.id, schedule.revision, schedule.next_ms,
            tick_ms, next_ms, task_id, template.priority, template.max_retry, envelope,
        )  # fmt: skip
        reply = await self._schedule_script("fire_schedule", queue, args)
        if reply == b"FIRED_REGISTER":
            # the tick's task found the queue's `registered` flag unset: SADDed as by enqueue
            await self._register_queues([queue])
            return FireResult.FIRED
        return _FIRE[reply]
