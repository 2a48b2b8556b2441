"""The schema version of the data under a prefix, and `strego migrate`, which moves a live
installation from one version to the next while servers run.

The version is stored in one global hash, ``<prefix>:v1:schema`` (field ``record``), written by
`migrate` only. Data without it is version 1: everything written before the version existed.
A backend reads it once, before its first call (`check_schema`): a version newer than
RECORD_VERSION is refused with SchemaVersionError (this code would misread it); an older or
absent one is read as is, because each version so far can read the data of the ones before.

Versions. 1: the record format of strego 0.x before optional fields. 2: the record with
optional header and envelope fields (lib/record.lua, record.py); a version 1 record is a
version 2 record without any, so step 1 -> 2 rewrites nothing: it checks that every record
decodes (reporting those that do not, by id), then writes the version.

A later step that rewrites records is one more `Step` in STEPS: its function gets the
`Migration` (transport, prefix, batch size, dry run, a report callback) and must work in
bounded batches (HSCAN of at most MAX_BATCH entries, each batch one script call or pipeline),
be safe to run while servers of both versions run, and be safe to run again after a crash."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable

import attrs

from strego.backends.redis.keys import Keys, queues_key, schema_key
from strego.backends.redis.record import decode
from strego.backends.redis.transport import Command, Transport
from strego.errors import ForeignKeyError, SchemaVersionError, UnreadableRecordError

#: The record version this code writes and reads.
RECORD_VERSION = 2
#: Data with no stored version is version 1.
IMPLICIT_VERSION = 1
#: The most hash entries one HSCAN batch asks for.
MAX_BATCH = 1000


async def read_version(transport: Transport, prefix: str) -> int:
    """The record version of the data under `prefix` (IMPLICIT_VERSION when none is stored)."""
    try:
        raw = await transport.execute(
            Command(("HGET", schema_key(prefix), "record"), idempotent=True)
        )
    except ForeignKeyError:
        raise SchemaVersionError(
            f"{schema_key(prefix)} is not a hash: it was written by something else"
        ) from None
    if raw is None:
        return IMPLICIT_VERSION
    try:
        return int(raw)
    except ValueError:
        raise SchemaVersionError(
            f"{schema_key(prefix)} holds record version {raw!r}, which is not a number"
        ) from None


async def check_schema(transport: Transport, prefix: str) -> None:
    """Refuse data of a record version newer than this code knows."""
    found = await read_version(transport, prefix)
    if found > RECORD_VERSION:
        raise SchemaVersionError(
            f"the data under prefix {prefix!r} has record version {found}; this strego knows "
            f"versions up to {RECORD_VERSION}: upgrade strego to serve it",
            found=found,
            known=RECORD_VERSION,
        )


@attrs.define
class Migration:
    """What one run of `migrate` works with, and what it found."""

    transport: Transport
    prefix: str
    dry_run: bool = False
    batch: int = MAX_BATCH
    report: Callable[[str], None] = print
    #: (queue, task id, reason) of each record that does not decode
    unreadable: list[tuple[str, str, str]] = attrs.Factory(list)
    #: records looked at
    checked: int = 0

    async def queues(self) -> list[str]:
        names = await self.transport.execute(
            Command(("SMEMBERS", queues_key(self.prefix)), idempotent=True)
        )
        return sorted(n.decode() if isinstance(n, bytes) else str(n) for n in names)

    async def scan_records(self, queue: str) -> AsyncIterator[tuple[str, bytes]]:
        """Every (task id, record) of a queue, HSCAN batch by batch (`batch` entries at most)."""
        key = Keys(self.prefix, queue).tasks
        cursor: bytes | str = b"0"
        while True:
            cursor, flat = await self.transport.execute(
                Command(("HSCAN", key, cursor, "COUNT", self.batch), idempotent=True)
            )
            for i in range(0, len(flat), 2):
                task_id = flat[i].decode() if isinstance(flat[i], bytes) else flat[i]
                yield task_id, flat[i + 1]
            if cursor in (b"0", "0", 0):
                return


async def _verify_records(m: Migration) -> None:
    """1 -> 2: nothing to rewrite; check that every record of every queue decodes."""
    m.report("record version 1 -> 2: no record is rewritten (a version 1 record is a version 2 "
             "record without optional fields); checking that every record decodes")  # fmt: skip
    for queue in await m.queues():
        count = 0
        async for task_id, record in m.scan_records(queue):
            count += 1
            try:
                decode(queue, task_id, record)
            except UnreadableRecordError as exc:
                m.unreadable.append((queue, task_id, str(exc)))
                m.report(f"  unreadable: queue {queue} task {task_id}: {exc}")
        m.checked += count
        m.report(f"  queue {queue}: {count} records checked")


@attrs.frozen
class Step:
    """Moves the data from record version `from_version` to `to_version`."""

    from_version: int
    to_version: int
    run: Callable[[Migration], Awaitable[None]]


#: Every step, in order; the last one's `to_version` is RECORD_VERSION.
STEPS: tuple[Step, ...] = (Step(1, 2, _verify_records),)


async def migrate(m: Migration) -> int:
    """Run every step from the data's version to RECORD_VERSION, writing the version after each
    (unless a dry run). Returns the version the data is at when done (or would be)."""
    version = await read_version(m.transport, m.prefix)
    if version > RECORD_VERSION:
        await check_schema(m.transport, m.prefix)  # raises: newer than this code
    if version == RECORD_VERSION:
        m.report(f"prefix {m.prefix!r}: record version {version}, nothing to do")
        return version
    if version < IMPLICIT_VERSION:
        raise SchemaVersionError(
            f"the data under prefix {m.prefix!r} says record version {version}, which no strego"
            f" wrote (the first is {IMPLICIT_VERSION}): no step upgrades it"
        )
    for step in STEPS:
        if step.from_version != version:
            continue
        await step.run(m)
        version = step.to_version
        if m.dry_run:
            m.report(f"dry run: would write record version {version}")
        else:
            await m.transport.execute(
                Command(("HSET", schema_key(m.prefix), "record", str(version)), idempotent=True)
            )
            m.report(f"prefix {m.prefix!r}: record version {version} written")
    return version
