"""What every part of `RedisBackend` shares: the key names of each queue, the `now` a script is
given, the read clock, and the calls that send scripts and commands through the transport (with
the one-time eviction check). The parts (foreign.py, reads.py, transitions.py, fetching.py) build
on `RedisCore`; backend.py composes them into `RedisBackend`, whose constructor sets the
attributes declared here."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any

import anyio

from strego.backends.base import Clock
from strego.backends.redis.eviction import NotReachable, warn_if_evicting
from strego.backends.redis.keys import (
    HISTORY_SCRIPTS,
    PRIORITIES,
    SCRIPT_KEYS,
    STREAMS,
    Keys,
)
from strego.backends.redis.migrate import check_schema
from strego.backends.redis.scripts import script
from strego.backends.redis.transport import Arg, Command, ScriptCall, Transport
from strego.backends.redis.wakeups import SHARDED_RECHECK_S, Wakeups, sharded_pubsub_supported
from strego.task import validate_queue_name

log = logging.getLogger("strego.backends.redis")

#: Where each history script's KEYS hold the queue's `tasks` key (its history key is beside it):
#: the streams kind stands for 11 keys.
_TASKS_AT = {
    name: SCRIPT_KEYS[name].index("tasks") + (len(PRIORITIES) - 1) * (STREAMS in SCRIPT_KEYS[name])
    for name in HISTORY_SCRIPTS
}

#: How often reads that filter by time measure the offset of Redis's clock again (seconds).
TIME_REFRESH_S = 10.0


def _str(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


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


class RedisCore:
    """The state and calls every part of `RedisBackend` uses (set by its constructor)."""

    transport: Transport
    prefix: str
    group: str
    clock: Clock
    _injected_clock: bool
    _time_offset_ms: float
    _time_measured: float
    completed_ttl_ms: int
    #: wait for replicas (WAIT durable_replicas durable_timeout_ms) before an enqueue returns
    durable: bool
    durable_timeout_ms: int
    durable_replicas: int
    dead_ttl_ms: int
    stats_retention_ms: int
    #: the history streams' MAXLEN, 0 while history is off (docs/redis.md, "History")
    history_cap: int
    #: on Cluster (Redis 7), fetches and schedulers wait on sharded pub/sub (wakeups.py), and
    #: the scripts SPUBLISH the wake-ups (from the first call's checks on); None and False
    #: elsewhere
    _wakeups: Wakeups | None
    _sharded_notify: bool
    _keys: dict[str, Keys]
    _registry: str
    _first_call_checked: bool
    #: the eviction and record-version checks passed (the Cluster version check may be left)
    _schema_checked: bool
    #: on Cluster, the wake-ups until the Redis version check answered; when it was asked
    #: last and could not reach a node, the time (anyio clock) it may be asked again
    _wakeups_unchecked: Wakeups | None
    _sharded_check_at: float
    _first_call_lock: anyio.Lock | None

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
        if self.history_cap and name in HISTORY_SCRIPTS:
            # history on: the queue's history stream is one more key (lib/history.lua)
            tasks = keys[_TASKS_AT[name]]
            assert isinstance(tasks, str) and tasks.endswith(":tasks")
            history = tasks[: -len("tasks")] + "history"
            return ScriptCall(
                script(name, self.history_cap, self._sharded_notify), (*keys, history), args
            )
        return ScriptCall(script(name, 0, self._sharded_notify), keys, args)

    async def _run(self, name: str, keys: Sequence[Arg], args: Sequence[Arg]) -> Any:
        if not self._first_call_checked:
            await self._first_call_checks()
        return await self.transport.run_script(self._call(name, keys, args))

    async def _send(self, calls: Sequence[ScriptCall | Command]) -> list[Any]:
        """One pipeline after the first call's checks, its replies as they are (an exception in
        place of a call that failed): for callers that handle each reply themselves."""
        if not self._first_call_checked:
            await self._first_call_checks()
        return await self.transport.pipeline(calls)

    async def _pipeline(self, calls: Sequence[ScriptCall | Command]) -> list[Any]:
        """`_send`, raising the first failed call's exception."""
        replies = await self._send(calls)
        for reply in replies:
            if isinstance(reply, BaseException):
                raise reply
        return replies

    async def _first_call_checks(self) -> None:
        """Before the backend's first script call or fetch (one flag test per call after that):
        warn when Redis may evict our keys (that never fails the call), then refuse data of a
        newer record version (migrate.check_schema: that fails the call, and every later one).
        Concurrent first calls wait for the one check; an unreachable Redis is checked again."""
        if self._first_call_lock is None:
            self._first_call_lock = anyio.Lock()
        async with self._first_call_lock:
            if self._first_call_checked:
                return
            if not self._schema_checked:
                try:
                    await warn_if_evicting(self.transport)
                except NotReachable:
                    return  # the call itself says why; check on a later one
                except Exception as exc:
                    log.debug("checking the maxmemory-policy failed: %s", exc)
                await check_schema(self.transport, self.prefix)
                self._schema_checked = True
            wakeups = self._wakeups_unchecked
            if wakeups is not None:
                if anyio.current_time() < self._sharded_check_at:
                    return  # a node was unreachable lately: this call goes on without wake-ups
                supported = await sharded_pubsub_supported(wakeups.cluster)
                if supported is None:
                    # meanwhile the waits block on the streams and the scripts do not publish
                    self._sharded_check_at = anyio.current_time() + SHARDED_RECHECK_S
                    self._wakeups = None
                    return
                # Redis 6.2 Cluster: no SPUBLISH in the scripts, waits block on the streams
                self._wakeups = wakeups if supported else None
                self._sharded_notify = supported
                self._wakeups_unchecked = None
            self._first_call_checked = True
