"""Optional fields of the task record (lib/record.lua, strego/backends/redis/record.py): a record
without any is format v1 unchanged; a known field is read and written through the one table of
each language; a field this code does not know (written by newer code) is kept byte for byte by
every transition; a malformed optional part makes the record unreadable, as any bad header."""

from __future__ import annotations

import re
from typing import Any

import pytest
import redis

from conformance.clock import FakeClock
from strego.backends.redis import RedisBackend
from strego.backends.redis import record as record_module
from strego.backends.redis.record import decode, encode_envelope, optional_fields
from strego.backends.redis.scripts import _expand
from strego.errors import UnreadableRecordError
from strego.ids import new_task_id
from strego.message import TaskMessage
from strego.task import TaskError, TaskState

NOW = 1_767_225_600_000
LEASE_MS = 60_000


def message(task_id: str, **kw: Any) -> TaskMessage:
    fields: dict[str, Any] = {
        "id": task_id, "type": "t.opt", "queue": "q", "payload": b"\x00;,payload",
        "encoding": "raw", "created_ms": NOW, "priority": 3, "labels": {"a": "b"},
    }  # fmt: skip
    fields.update(kw)
    return TaskMessage(**fields)


def lua(source: str, table: str = "") -> str:
    """A test script on lib/record.lua, whose OPTIONAL table gets the lines `table`."""
    lib = _expand("--#include lib/record.lua\n", set())
    if not table:
        return lib + "\n" + source
    # the table replaces the fields this code knows (results and cancel requests among them)
    patched = re.sub(r"local OPTIONAL = \{\n.*?\n\}", "local OPTIONAL = {\n" + table + "}", lib,
                     count=1, flags=re.S)  # fmt: skip
    assert patched != lib
    return patched + "\n" + source


# -- Lua: parse and build ------------------------------------------------------------------------

ROUND_TRIP = "local h = parse(ARGV[1]); if not h then return false end; return build(h)"


def test_records_with_and_without_optional_fields_round_trip(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    try:
        for rec in [
            b"p,,,,,,2,1-1,,,;,,1,,;tX",  # v1, full header
            b"Pa-b;,,1,,;tX",  # v1, short header
            b"a,1,5,,,,2,1-1,2,3,4,z3,y;c1errukeyxyz,,1,,;tX",  # unknown tags, one empty
        ]:
            assert client.eval(lua(ROUND_TRIP), 0, rec) == rec
        for bad in [b"p,,,,,,,1-1,,,,3;,,1,,;t", b"p,,,,,,,1-1,,,,z9;xy", b"p,,,,,,,,,,,z1,z1;ab"]:
            assert client.eval(lua(ROUND_TRIP), 0, bad) is None, bad
    finally:
        client.close()


def test_a_known_field_is_read_set_and_removed_through_the_table(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    table = "  {'r', 'result'},\n  {'k', 'cancel'},\n"
    script = lua(
        "local h = parse(ARGV[1]); local was = h.opt.result or '<none>'\n"
        "if ARGV[2] == '' then h.opt.result = nil else h.opt.result = ARGV[2] end\n"
        "return {was, build(h)}",
        table,
    )
    try:
        base = b"c,1,5,6,,,,,,,"
        # set on a record without any: appended; the envelope stays last
        assert client.eval(script, 0, base + b";,,1,,;tX", "42") == [
            b"<none>",
            base + b",r2;42,,1,,;tX",
        ]
        # read, changed in place, an unknown tag before it kept
        rec = base + b",z1,r2;Z42,,1,,;tX"
        assert client.eval(script, 0, rec, "abc") == [b"42", base + b",z1,r3;Zabc,,1,,;tX"]
        # removed
        assert client.eval(script, 0, rec, "") == [b"42", base + b",z1;Z,,1,,;tX"]
        # a pending record with a field is never written short (its header would lose it)
        pending = b"p,,,,,,,5-6,,,;,,1,,;tX"
        assert client.eval(script, 0, pending, "1") == [b"<none>", b"p,,,,,,,5-6,,,,r1;1,,1,,;tX"]
        assert client.eval(script, 0, b"p,,,,,,,5-6,,,,r1;1,,1,,;tX", "") == [
            b"1",
            b"P5-6;,,1,,;tX",
        ]
    finally:
        client.close()


# -- Python: reading -----------------------------------------------------------------------------


def test_python_reads_past_optional_fields_and_names_the_known_ones(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    m = message(new_task_id(NOW))
    env = encode_envelope(m)
    plain = decode("q", m.id, b"s,,,,99,,3,,,,;" + env)
    with_fields = b"s,,,,99,,3,,,,,z3,r2;xyz42" + env
    assert decode("q", m.id, with_fields) == plain
    assert optional_fields(with_fields) == ({}, {})  # no field is known yet
    monkeypatch.setitem(record_module.OPTIONAL, b"r", "result")
    assert optional_fields(with_fields) == ({"result": b"42"}, {})
    for bad in (b"s,,,,,,,,,,,3;" + env, b"s,,,,,,,,,,,r9;1" + env[:3], b"s,,,,,,,,,,,r,r;" + env):
        with pytest.raises(UnreadableRecordError):
            decode("q", m.id, bad)


def test_envelope_optional_fields_follow_the_labels_and_leave_the_rest_alone(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    m = message(new_task_id(NOW))
    monkeypatch.setitem(record_module.ENVELOPE_OPTIONAL, b"t", "trace")
    monkeypatch.setitem(record_module.ENVELOPE_OPTIONAL, b"e", "empty")
    env = encode_envelope(m, {"trace": b"00-abc-01", "empty": b""})
    assert env.startswith(b",,5,3,9,t9,e;t.optraw")
    rec = b"p,,,,,,,1-1,,,;" + env
    assert decode("q", m.id, rec) == decode("q", m.id, b"p,,,,,,,1-1,,,;" + encode_envelope(m))
    assert decode("q", m.id, rec).payload == m.payload
    assert optional_fields(rec) == ({}, {"trace": b"00-abc-01", "empty": b""})
    with pytest.raises(ValueError, match="unknown envelope fields"):
        encode_envelope(m, {"nope": b"x"})


# -- every transition keeps a field it does not know ---------------------------------------------


UNKNOWN = b",z5"
UNKNOWN_VALUE = b"N;E,W"


async def _add_unknown(client: redis.Redis, backend: RedisBackend, task_id: str) -> None:
    """Write an unknown optional field into a task's record, as a newer strego would."""
    key = backend.keys("q").tasks
    rec = client.hget(key, task_id)
    assert isinstance(rec, bytes)
    head_end = rec.index(b";")
    fields = rec[1:head_end].split(b",")
    at = head_end + 1 + sum(int(f) for f in fields[8:11] if f)
    client.hset(
        key, task_id, rec[:head_end] + UNKNOWN + rec[head_end:at] + UNKNOWN_VALUE + rec[at:]
    )


def _kept(client: redis.Redis, backend: RedisBackend, task_id: str) -> bytes:
    rec = client.hget(backend.keys("q").tasks, task_id)
    assert isinstance(rec, bytes)
    head_end = rec.index(b";")
    assert rec[:head_end].endswith(UNKNOWN), rec
    assert UNKNOWN_VALUE in rec, rec
    return rec


@pytest.mark.anyio
@pytest.mark.redis
async def test_every_transition_keeps_an_unknown_field_byte_for_byte(
    clean_redis_url: str,
) -> None:
    client = redis.Redis.from_url(clean_redis_url)
    clock = FakeClock(NOW)
    backend = RedisBackend.from_url(clean_redis_url, prefix="o", clock=clock)
    try:
        ids = [new_task_id(NOW) for _ in range(3)]
        for task_id in ids:
            await backend.enqueue(message(task_id, unique_key=task_id, unique_ttl_ms=10**8))
            await _add_unknown(client, backend, task_id)
        a, b, c = ids
        want = {t: message(t).payload for t in ids}

        async def check(task_id: str, state: TaskState) -> None:
            _kept(client, backend, task_id)
            info = await backend.get_task(task_id, "q")
            assert info is not None and info.state is state
            assert (info.payload, info.labels, info.unique_key) == (
                want[task_id],
                {"a": "b"},
                task_id,
            )

        got = await backend.fetch(["q"], 3, "w1", lease_ms=LEASE_MS)
        assert sorted(t.id for t in got) == sorted(ids)
        for t in got:
            assert t.payload == want[t.id]
            await check(t.id, TaskState.ACTIVE)
        assert await backend.fail("q", a, "w1", "again", retry_in_ms=0) is TaskState.RETRY
        await check(a, TaskState.RETRY)
        assert await backend.fail("q", b, "w1", "dead", retry_in_ms=None) is TaskState.DEAD
        await check(b, TaskState.DEAD)
        assert (await backend.renew("q", [c], "w1", lease_ms=LEASE_MS)).lost == []
        clock.advance(LEASE_MS + 1)
        claimed = await backend.claim_stale(["q"], "w2", 10, lease_ms=LEASE_MS, max_deliveries=9)
        assert [t.id for t in claimed] == [c]
        await check(c, TaskState.ACTIVE)
        assert await backend.release("q", [c], "w2") == 1
        await check(c, TaskState.PENDING)
        assert await backend.cancel(c, "q")
        await check(c, TaskState.CANCELLED)
        await backend.promote(["q"])
        await check(a, TaskState.PENDING)
        assert await backend.requeue_dead("q", b)
        await check(b, TaskState.PENDING)
        got = await backend.fetch(["q"], 3, "w3", lease_ms=LEASE_MS)
        assert sorted(t.id for t in got) == sorted([a, b])
        before = _kept(client, backend, a)
        assert await backend.ack("q", a, "w3")  # the ack's one-match shortcut
        after = _kept(client, backend, a)
        assert after[after.index(b";") + 1 :] == before[before.index(b";") + 1 + len(b"w3") :]
        await check(a, TaskState.COMPLETED)
        assert await backend.ack("q", b, "w3")
        await check(b, TaskState.COMPLETED)
    finally:
        await backend.aclose()
        client.close()


def test_results_errors_and_cancel_requests_read_into_task_info() -> None:
    """The fields results and cancel requests added (docs/redis.md, "Record format")."""
    m = message(new_task_id(NOW), result_ttl_ms=5_000)
    env = encode_envelope(m, {"result_ttl": b"5000"})
    failure = b'{"type":"E","message":"m","traceback":"t"}'
    rec = b"d,1,,7,,,,,,,,F%d,z1;%sZ" % (len(failure), failure) + env
    info = decode("q", m.id, rec)
    assert info.error == TaskError("E", "m", "t") and info.result_ttl_ms == 5_000
    assert info.payload == m.payload and info.result is None and not info.cancel_requested
    rec = b"c,1,,7,,,,,,,,R6;json\n1" + encode_envelope(m)
    assert decode("q", m.id, rec).result == b"json\n1"
    rec = b"a,1,5,,,,,1-1,2,,,C1;c11" + encode_envelope(m)
    assert decode("q", m.id, rec).cancel_requested
