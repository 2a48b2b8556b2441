"""History events and where a drainer reads them from (docs/redis.md, "History").

With history on, every transition appends one event to its queue's history: a capped Redis
stream written by the transition's own script (lib/history.lua), or the memory backend's log. A
drainer reads the events not yet acknowledged, oldest first per queue, stores them, and only then
acknowledges them, which removes them (so the stream holds only the events not yet stored, and its
cap bounds how far a drainer may fall behind before the oldest are trimmed)."""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections import OrderedDict
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Protocol

import anyio
import attrs

from strego.errors import BackendError
from strego.ids import id_time_ms

if TYPE_CHECKING:
    from strego.backends.redis import RedisBackend

log = logging.getLogger("strego.history")

#: A history stream's cap unless the backend is given another: the events a drainer may fall
#: behind by before the oldest are trimmed (about 100 bytes each in Redis, more for an enqueue's
#: payload).
DEFAULT_HISTORY_CAP = 1_000_000

#: The consumer group the drainers read history streams with.
GROUP = "strego-history"

#: An entry read by a drainer and neither stored nor read again for this long (ms) is taken over
#: by another drainer: its reader stopped (a live one reads its unstored entries again every
#: retry, which makes them young again).
CLAIM_IDLE_MS = 60_000
#: How often (s) a drainer looks for such entries.
CLAIM_EVERY_S = 30.0

#: Event state letters (the record's, plus `g`: deleted) -> the state names stored.
STATES = {
    "s": "scheduled", "p": "pending", "a": "active", "r": "retry", "d": "dead",
    "c": "completed", "x": "cancelled", "g": "deleted",
}  # fmt: skip


@attrs.frozen
class HistoryEvent:
    """One transition of one task. `seq` (the stream entry id as (ms, n)) increases with each
    event of a queue: it orders them, and (queue, seq) names the event, so storing one twice
    changes nothing. `type`, `labels`, `payload`, `encoding` and `created_ms` are set on the
    enqueue event only."""

    queue: str
    seq: tuple[int, int]
    task_id: str
    state: str
    at_ms: int
    retried: int | None = None
    error: str | None = None
    consumer: str | None = None
    type: str | None = None
    labels: dict[str, str] | None = None
    payload: bytes | None = None
    encoding: str | None = None
    created_ms: int | None = None


class HistorySource(Protocol):
    """What a drainer needs of a backend with history on."""

    async def read_history(self, count: int) -> list[HistoryEvent]:
        """Up to `count` events not read yet, each queue's in order (after `rewind`, or in a new
        source, those read but never acknowledged come first)."""
        ...

    def rewind(self) -> None:
        """The events read were not stored: read them again (those not acknowledged) first."""
        ...

    async def ack_history(self, events: Sequence[HistoryEvent]) -> None:
        """Forget `events`: they are stored."""
        ...

    async def history_backlog(self) -> dict[str, int]:
        """Per queue, how many events wait to be stored (the drainer's lag)."""
        ...

    @property
    def history_cap(self) -> int:
        """Each queue's cap: events past it are trimmed, oldest first (0: history is off)."""
        ...


def history_source(backend: object, consumer: str | None = None) -> HistorySource:
    """The history of a RedisBackend or MemoryBackend (created with history on). On Redis,
    `consumer` is the drainer's name in the consumer group (default ``hostname:pid:random``,
    unique per source): several drainers share the group, each reading other entries."""
    from strego.backends.memory import MemoryBackend
    from strego.backends.redis import RedisBackend

    if isinstance(backend, RedisBackend):
        return RedisHistorySource(backend, consumer)
    if isinstance(backend, MemoryBackend):
        if backend.history is None:
            raise BackendError("the memory backend was created without history=True")
        backend.history.rewind()  # one reader, as Redis's one consumer: it starts over
        return backend.history
    raise TypeError(f"no history source for {type(backend).__name__}")


async def release_history(backend: object, consumer: str) -> int:
    """Hand the entries `consumer` (a stopped drainer) read and did not store to the next
    drainer at once (RedisHistorySource.release); 0 on the memory backend (one reader)."""
    from strego.backends.redis import RedisBackend

    if not isinstance(backend, RedisBackend):
        return 0
    return await RedisHistorySource(backend, consumer).release()


def history_cap(backend: object) -> int:
    """The cap of `backend`'s history streams: 0 when its history is off (or it has none)."""
    from strego.backends.memory import MemoryBackend

    if isinstance(backend, MemoryBackend):
        return 0 if backend.history is None else backend.history.history_cap
    cap = getattr(backend, "history_cap", 0)
    return cap if isinstance(cap, int) else 0


def enable_history(backend: object, cap: int = DEFAULT_HISTORY_CAP) -> None:
    """Turn history on for a RedisBackend or MemoryBackend before it is used (``strego worker
    --history-postgres``); a backend with history on already keeps its cap."""
    from strego.backends.memory import MemoryBackend
    from strego.backends.redis import RedisBackend

    if history_cap(backend):
        return
    if isinstance(backend, RedisBackend):
        backend.history_cap = cap  # read by each script call (core.py `_call`)
    elif isinstance(backend, MemoryBackend):
        backend.history = MemoryHistoryLog(cap)
    else:
        raise TypeError(f"no history for {type(backend).__name__}")


async def history_backlog(backend: object, queues: Sequence[str]) -> dict[str, int]:
    """Per queue of `queues`, the entries of its history not stored yet, read without a
    consumer group (for metrics: no drainer needed). A queue whose stream cannot be read (a key
    of another type) is logged and left out; a lost connection raises."""
    from strego.backends.memory import MemoryBackend
    from strego.backends.redis import RedisBackend
    from strego.backends.redis.transport import Command

    if isinstance(backend, MemoryBackend):
        waiting = await backend.history.history_backlog() if backend.history else {}
        return {q: waiting.get(q, 0) for q in queues}
    if not isinstance(backend, RedisBackend) or not queues:
        return {}
    calls = [Command(("XLEN", backend.keys(q).history), idempotent=True) for q in queues]
    found: dict[str, int] = {}
    for queue, reply in zip(queues, await backend.transport.pipeline(calls), strict=True):
        if isinstance(reply, BaseException):
            log.warning("history: reading the backlog of queue %s failed: %s", queue, reply)
        else:
            found[queue] = int(reply)
    return found


#: A Redis entry holds the events of one transition of several tasks: the k-th task's event is
#: seq (ms, n * SEQ_SPREAD + k), so events sort by entry id, then by place in the entry.
SEQ_SPREAD = 1 << 16


def _envelope(task_id: str, env: bytes) -> dict[str, Any]:
    """The fields of an enqueue's envelope (the format `encode_envelope` writes, record.py):
    `created,timeout,type_len,encoding_len,labels_len[,<tag><len>]...;` then the type, the
    encoding, the labels, the optional values and the payload. Only what the history keeps."""
    from strego.backends.redis.record import DEFAULT_ENCODING

    head_end = env.index(b";")
    fields = env[:head_end].split(b",")
    created, _timeout, type_len, encoding_len, labels_len = fields[:5]
    type_end = head_end + 1 + int(type_len)
    encoding_end = type_end + (int(encoding_len) if encoding_len else 0)
    labels_end = encoding_end + (int(labels_len) if labels_len else 0)
    # optional entries (`,<tag><len>`): their values come after the labels
    payload_at = labels_end + sum(int(f[1:]) for f in fields[5:] if len(f) > 1)
    created_ms = int(created) if created else id_time_ms(task_id)
    return {
        "type": env[head_end + 1 : type_end].decode(),
        "encoding": env[type_end:encoding_end].decode() if encoding_len else DEFAULT_ENCODING,
        "labels": json.loads(env[encoding_end:labels_end]) if labels_end > encoding_end else {},
        "payload": env[payload_at:],
        "created_ms": created_ms,
    }


def _events_of_entry(queue: str, entry_id: bytes, flat: list[bytes]) -> list[HistoryEvent]:
    """The events of one history stream entry (lib/history.lua: s, t, r, e, c, then one
    id/envelope pair per task)."""
    head = dict(zip(flat[0:10:2], flat[1:10:2], strict=True))
    ms, n = (int(x) for x in entry_id.split(b"-"))
    state = head[b"s"].decode()
    state = STATES.get(state, state)
    at_ms = int(head[b"t"])
    retried_b, error_b, consumer_b = head.get(b"r"), head.get(b"e"), head.get(b"c")
    retried = int(retried_b) if retried_b else None
    error = error_b.decode(errors="replace") if error_b else None
    consumer = consumer_b.decode(errors="replace") if consumer_b else None
    events = []
    first = n * SEQ_SPREAD
    # positional arguments: an entry holds up to hundreds of events, and keywords cost more
    for k, i in enumerate(range(10, len(flat) - 1, 2)):
        task_id, env = flat[i].decode(errors="replace"), flat[i + 1]
        seq = (ms, first + k)
        if env:
            try:
                f = _envelope(task_id, env)
            except (ValueError, IndexError):  # not an envelope: the event without its fields
                log.warning("history: task %s of queue %s: unreadable envelope", task_id, queue)
            else:
                events.append(HistoryEvent(
                    queue, seq, task_id, state, at_ms, retried, error, consumer, f["type"],
                    f["labels"], f["payload"], f["encoding"], f["created_ms"],
                ))  # fmt: skip
                continue
        events.append(HistoryEvent(queue, seq, task_id, state, at_ms, retried, error, consumer))
    return events


def _entries(reply: Any, trimmed: list[bytes]) -> list[tuple[bytes, list[bytes]]]:
    """The entries of a one-stream XREADGROUP reply (RESP2 or RESP3); the ids of pending
    entries trimmed meanwhile (no fields) go to `trimmed`."""
    if not reply:
        return []
    streams = list(reply.items()) if isinstance(reply, dict) else reply
    out: list[tuple[bytes, list[bytes]]] = []
    for _key, entries in streams:
        for entry_id, fields in entries:
            if fields is None:
                trimmed.append(entry_id)
                continue
            if isinstance(fields, dict):
                fields = [x for kv in fields.items() for x in kv]
            out.append((entry_id, fields))
    return out


def _id_order(entry_id: bytes) -> tuple[int, int]:
    ms, _, n = entry_id.partition(b"-")
    return int(ms), int(n or 0)


class RedisHistorySource:
    """The history streams of every queue in the registry, read with the consumer group `GROUP`
    as `consumer`. One stream per queue (in the queue's hash tag) keeps every script in one
    Cluster slot; queues are found in the registry at each read.

    Drainers must have distinct consumer names (the default is unique), or one would read the
    other's entries in flight as its own pending ones. The entries a stopped drainer read and
    never stored stay pending under its name: every `CLAIM_EVERY_S` a drainer takes over those
    idle for `CLAIM_IDLE_MS` (XAUTOCLAIM) and reads them first."""

    def __init__(self, backend: RedisBackend, consumer: str | None = None) -> None:
        from strego.backends.redis.transport import Command
        from strego.server import consumer_name

        self._backend = backend
        self._consumer = consumer or consumer_name()
        self._command = Command
        self._grouped: set[str] = set()
        #: read the group's pending entries (read before, not acknowledged) first: at start (a
        #: drainer that stopped mid-batch) and after a batch was not stored
        self._pending_first = True
        #: per queue, the last pending entry read in this pass over the pending entries: the
        #: next read goes on after it (read from "0" again, the same entries would come twice)
        self._pending_from: dict[str, bytes] = {}
        #: events per entry in the last read, to ask for about `count` events
        self._per_entry: float | None = None
        #: when to look for entries a stopped drainer left (monotonic s): at the first read
        self._claim_at = float("-inf")

    @property
    def consumer(self) -> str:
        return self._consumer

    @property
    def history_cap(self) -> int:
        return self._backend.history_cap

    async def _listed(self) -> tuple[list[str], list[str]]:
        """The queues of the registry, and those only in the set of purged queues (their
        history streams may still hold events)."""
        from strego.backends.redis.core import _str
        from strego.backends.redis.keys import history_queues_key

        registry, purged = await self._backend.transport.pipeline([
            self._command(("SMEMBERS", self._backend._registry), idempotent=True),
            self._command(("SMEMBERS", history_queues_key(self._backend.prefix)),
                          idempotent=True),
        ])  # fmt: skip
        for reply in (registry, purged):
            if isinstance(reply, BaseException):
                raise reply
        queues = sorted(_str(q) for q in registry)
        listed = set(queues)
        return queues, sorted(q for q in map(_str, purged) if q not in listed)

    async def _all_queues(self) -> list[str]:
        queues, purged = await self._listed()
        return queues + purged

    async def _queues(self) -> list[str]:
        from strego.backends.redis.keys import history_queues_key

        queues, purged = await self._listed()
        if purged:
            # Queues a purge took out of the registry: drop each from the set, then look at its
            # stream, and list it again if events wait there. In this order no event is lost: a
            # purge lists its queue after its scripts wrote their events, so either after our
            # SREM (listed again), or before it (then XLEN counts them).
            key = history_queues_key(self._backend.prefix)
            await self._backend.transport.execute(
                self._command(("SREM", key, *purged), idempotent=True)
            )
            try:
                queues += await self._still_waiting(key, purged)
            except BaseException:
                # taken out of the set and not known to be empty: list them all again (always
                # safe: an empty one is dropped at a later read), or their events are lost
                with anyio.move_on_after(5, shield=True), contextlib.suppress(BackendError):
                    await self._backend.transport.execute(
                        self._command(("SADD", key, *purged), idempotent=True)
                    )
                raise
        new = [q for q in queues if q not in self._grouped]
        if new:
            calls = [
                self._command(("XGROUP", "CREATE", self._backend.keys(q).history, GROUP, "0",
                               "MKSTREAM"), idempotent=True)
                for q in new
            ]  # fmt: skip
            for queue, reply in zip(
                new, await self._backend.transport.pipeline(calls), strict=True
            ):
                if isinstance(reply, BaseException) and "BUSYGROUP" not in str(reply):
                    raise reply
                self._grouped.add(queue)
        return queues

    async def _still_waiting(self, key: str, purged: list[str]) -> list[str]:
        """The queues of `purged` whose streams hold events, listed in `key` again."""
        lengths = await self._backend.transport.pipeline([
            self._command(("XLEN", self._backend.keys(q).history), idempotent=True)
            for q in purged
        ])  # fmt: skip
        waiting = []
        for queue, reply in zip(purged, lengths, strict=True):
            if isinstance(reply, BaseException):
                raise reply
            if int(reply):
                waiting.append(queue)
        if waiting:
            await self._backend.transport.execute(
                self._command(("SADD", key, *waiting), idempotent=True)
            )
        return waiting

    async def _claim_idle(self, queues: Sequence[str]) -> None:
        """Take over the entries other drainers read and left idle for CLAIM_IDLE_MS (their
        drainer stopped): they become this one's pending entries, read first."""
        calls: list[Any] = []
        for q in queues:
            key = self._backend.keys(q).history
            calls.append(
                self._command(("XAUTOCLAIM", key, GROUP, self._consumer, CLAIM_IDLE_MS, "0-0",
                               "COUNT", 1000, "JUSTID"))
            )  # fmt: skip
            # then forget the stopped drainers left with nothing (each start has its own name)
            calls.append(
                self._backend._call("remove_idle_drainers", (key,),
                                    (GROUP, CLAIM_IDLE_MS, self._consumer))
            )  # fmt: skip
        replies = await self._backend._send(calls)
        claimed = 0
        for queue, reply, forgot in zip(queues, replies[::2], replies[1::2], strict=True):
            if isinstance(forgot, BaseException):
                log.warning("history: forgetting stopped drainers of queue %s failed: %s",
                            queue, forgot)  # fmt: skip
            if isinstance(reply, BaseException):
                if "NOGROUP" not in str(reply):
                    log.warning("history: taking over idle entries of queue %s failed: %s",
                                queue, reply)  # fmt: skip
                continue
            claimed += len(reply[1])
            if len(reply) > 2 and reply[2]:
                log.error("history: %d events of queue %s were trimmed before being stored"
                          " (the backlog passed the cap)", len(reply[2]), queue)  # fmt: skip
        if claimed:
            # a drainer stopped (handing them on) or died (after CLAIM_IDLE_MS)
            log.info("history: took over %d entries another drainer read and did not store",
                     claimed)  # fmt: skip
            self.rewind()

    async def release(self) -> int:
        """Hand this drainer's pending entries (read, not stored) to the next drainer: they are
        marked idle for longer than CLAIM_IDLE_MS, so another drainer takes them over at its
        next look instead of a minute later. Returns how many."""
        queues = await self._all_queues()
        calls = [
            self._command(("XPENDING", self._backend.keys(q).history, GROUP, "-", "+", 10_000,
                           self._consumer), idempotent=True)
            for q in queues
        ]  # fmt: skip
        replies = await self._backend.transport.pipeline(calls) if calls else []
        marks = []
        for queue, reply in zip(queues, replies, strict=True):
            if isinstance(reply, BaseException) or not reply:  # NOGROUP: never drained
                continue
            marks.append(
                self._command(("XCLAIM", self._backend.keys(queue).history, GROUP, self._consumer,
                               0, *(entry[0] for entry in reply), "IDLE", 1000 * CLAIM_IDLE_MS,
                               "JUSTID"),
                              idempotent=True)
            )  # fmt: skip
        released = 0
        for reply in await self._backend.transport.pipeline(marks) if marks else []:
            if not isinstance(reply, BaseException):
                released += len(reply)
        return released

    async def read_history(self, count: int) -> list[HistoryEvent]:
        queues = await self._queues()
        if not queues:
            return []
        if time.monotonic() >= self._claim_at:
            self._claim_at = time.monotonic() + CLAIM_EVERY_S
            await self._claim_idle(queues)
        pending = self._pending_first
        # COUNT is in entries, of one or many events each (a batch): by the last read's mean
        # (before any read: at most 100 entries, as an entry may hold hundreds of events)
        per_entry = self._per_entry or max(1.0, count / 100)
        per_queue = max(1, int(count / len(queues) / per_entry))
        calls = [
            self._command(("XREADGROUP", "GROUP", GROUP, self._consumer, "COUNT", per_queue,
                           "STREAMS", self._backend.keys(q).history,
                           self._pending_from.get(q, b"0") if pending else ">"))
            for q in queues
        ]  # fmt: skip
        replies = await self._backend.transport.pipeline(calls)
        events: list[HistoryEvent] = []
        entries = dropped = 0
        for queue, reply in zip(queues, replies, strict=True):
            if isinstance(reply, BaseException):
                if "NOGROUP" in str(reply):  # the stream was deleted by hand: group it again
                    self._grouped.discard(queue)
                    continue
                raise reply
            trimmed: list[bytes] = []
            found = _entries(reply, trimmed)
            for entry_id, flat in found:
                events += _events_of_entry(queue, entry_id, flat)
                entries += 1
            if pending and (found or trimmed):
                self._pending_from[queue] = max([e for e, _ in found] + trimmed, key=_id_order)
            if trimmed:
                # trimmed by the cap while pending (read, never stored): lost; acknowledged, so
                # that re-reading the pending entries goes past them
                log.error("history: %d events of queue %s were trimmed before being stored"
                          " (the backlog passed the cap)", len(trimmed), queue)  # fmt: skip
                key = self._backend.keys(queue).history
                await self._backend.transport.execute(
                    self._command(("XACK", key, GROUP, *trimmed), idempotent=True)
                )
                dropped += len(trimmed)
        if entries:
            self._per_entry = max(1.0, len(events) / entries)
        if pending and not events:
            # the entries read before and never acknowledged are all stored (or were trimmed,
            # and more may follow them): new ones now
            self._pending_first = dropped > 0
            if not self._pending_first:
                self._pending_from.clear()
            return await self.read_history(count)
        return events

    def rewind(self) -> None:
        self._pending_first = True
        self._pending_from.clear()

    async def ack_history(self, events: Sequence[HistoryEvent]) -> None:
        by_queue: dict[str, list[str]] = {}
        for e in events:
            entry = f"{e.seq[0]}-{e.seq[1] // SEQ_SPREAD}"
            ids = by_queue.setdefault(e.queue, [])
            if not ids or ids[-1] != entry:
                ids.append(entry)
        calls = []
        for queue, ids in by_queue.items():
            key = self._backend.keys(queue).history
            calls.append(self._command(("XACK", key, GROUP, *ids), idempotent=True))
            calls.append(self._command(("XDEL", key, *ids), idempotent=True))
        if calls:
            for reply in await self._backend.transport.pipeline(calls):
                if isinstance(reply, BaseException):
                    raise reply

    async def history_backlog(self) -> dict[str, int]:
        queues = await self._all_queues()
        calls = [self._command(("XLEN", self._backend.keys(q).history), idempotent=True)
                 for q in queues]  # fmt: skip
        replies = await self._backend.transport.pipeline(calls) if calls else []
        return {q: int(r) for q, r in zip(queues, replies, strict=True)
                if not isinstance(r, BaseException)}  # fmt: skip


class MemoryHistoryLog:
    """The memory backend's history: per queue, the events not acknowledged yet, oldest first,
    at most `cap` (the oldest beyond it are dropped, as XADD MAXLEN trims a stream)."""

    def __init__(self, cap: int) -> None:
        self._cap = cap
        self._queues: dict[str, OrderedDict[tuple[int, int], HistoryEvent]] = {}
        self._last: tuple[int, int] = (0, 0)
        #: per queue, the newest event read (the consumer group's last delivered id)
        self._read: dict[str, tuple[int, int]] = {}

    @property
    def history_cap(self) -> int:
        return self._cap

    def add(self, event: HistoryEvent) -> None:
        """Append `event` (its seq is replaced by the next one, as a stream entry id)."""
        ms, n = self._last
        seq = (event.at_ms, 0) if event.at_ms > ms else (ms, n + 1)
        self._last = seq
        log_ = self._queues.setdefault(event.queue, OrderedDict())
        log_[seq] = attrs.evolve(event, seq=seq)
        while len(log_) > self._cap:
            log_.popitem(last=False)

    async def read_history(self, count: int) -> list[HistoryEvent]:
        events: list[HistoryEvent] = []
        for queue, log_ in self._queues.items():
            after = self._read.get(queue, (-1, 0))
            for seq, event in log_.items():
                if len(events) >= count:
                    return events
                if seq > after:
                    events.append(event)
                    self._read[queue] = seq
        return events

    def rewind(self) -> None:
        self._read.clear()

    async def ack_history(self, events: Sequence[HistoryEvent]) -> None:
        for e in events:
            self._queues.get(e.queue, OrderedDict()).pop(e.seq, None)

    async def history_backlog(self) -> dict[str, int]:
        return {queue: len(log_) for queue, log_ in self._queues.items()}
