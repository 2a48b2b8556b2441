"""The compact v1 record (strego/backends/redis/record.py) and the task ids it leans on
(strego/ids.py): defaults are written as empty fields and still read back exactly."""

from __future__ import annotations

import pytest

from strego.backends.redis.record import decode, encode_envelope
from strego.errors import UnreadableRecordError
from strego.ids import ID_LENGTH, id_time_ms, new_task_id, time_prefix
from strego.message import TaskMessage
from strego.task import TASK_ID_PATTERN, TaskState

NOW = 1_767_225_600_000  # 2026-01-01


def test_ids_sort_by_creation_time_and_match_the_id_pattern() -> None:
    times = [0, 1, 63, 64, 4095, 4096, NOW, NOW + 1, (1 << 47) + 5, (1 << 48) - 1]
    ids = [new_task_id(ms) for ms in times]
    assert ids == sorted(ids)
    for ms, task_id in zip(times, ids, strict=True):
        assert len(task_id) == ID_LENGTH
        assert TASK_ID_PATTERN.fullmatch(task_id)
        assert not task_id.startswith("-")  # never read as a command-line option
        assert id_time_ms(task_id) == ms
        assert task_id.startswith(time_prefix(ms))


def test_ids_of_one_millisecond_differ() -> None:
    ids = {new_task_id(NOW) for _ in range(1000)}
    assert len(ids) == 1000


def test_id_times_stay_exact_when_ids_alternate() -> None:
    # id_time_ms keeps its last answer: interleaved times and unreadable ids must not leak
    a, b = new_task_id(NOW), new_task_id(NOW + 4097)
    for task_id, ms in [(a, NOW), (b, NOW + 4097), (a, NOW), ("!" * 20, None), (a, NOW)]:
        assert id_time_ms(task_id) == ms
    assert id_time_ms("!" * 8 + a[8:]) is None


@pytest.mark.parametrize("task_id", ["short", "x" * 26, "!" * 20, "a.b" + "0" * 17])
def test_other_ids_have_no_time(task_id: str) -> None:
    assert id_time_ms(task_id) is None


def header(**fields: str) -> bytes:
    """A record header in the compact form, fields given by name (the rest empty)."""
    names = ("retried", "deliveries", "started", "ended", "due", "max_retry", "priority", "sid",
             "cl", "el", "ul")  # fmt: skip
    return (fields.get("state", "p") + ",".join(fields.get(n, "") for n in names) + ";").encode()


def message(task_id: str, **kw: object) -> TaskMessage:
    fields: dict[str, object] = {"type": "noop", "queue": "q", "payload": b"null"}
    fields["encoding"] = "json"
    fields["created_ms"] = NOW
    fields.update(kw)
    return TaskMessage(id=task_id, **fields)  # type: ignore[arg-type]


def test_a_fresh_generated_task_stores_only_what_differs_from_the_defaults() -> None:
    m = message(new_task_id(NOW))
    env = encode_envelope(m)
    assert env == b",,4,,;noopnull"  # created from the id, no timeout, json, no labels
    info = decode("q", m.id, header(sid="1-0") + env)
    assert info == m.info(TaskState.PENDING)
    assert (info.created_ms, info.encoding, info.max_retry, info.priority) == (NOW, "json", 3, 0)


@pytest.mark.parametrize(
    "task_id,kw",
    [
        ("custom-id", {}),  # a caller's id: created written out
        (new_task_id(NOW - 5), {}),  # an id of another time
        (new_task_id(NOW), {"encoding": "msgpack", "timeout_ms": 250}),
        (new_task_id(NOW), {"encoding": "", "labels": {"a": "b"}}),
        (new_task_id(NOW), {"max_retry": 0, "priority": 10, "payload": b""}),
    ],
)
def test_every_field_survives_the_compact_form(task_id: str, kw: dict[str, object]) -> None:
    m = message(task_id, **kw)
    head = header(max_retry=str(m.max_retry), priority=str(m.priority))
    assert decode("q", m.id, head + encode_envelope(m)) == m.info(TaskState.PENDING)


def test_the_short_header_of_a_fresh_pending_task_reads_as_all_defaults() -> None:
    m = message(new_task_id(NOW))
    info = decode("q", m.id, b"Pmwt87eed-23;" + encode_envelope(m))
    assert info == m.info(TaskState.PENDING)
    with pytest.raises(UnreadableRecordError):
        decode("q", m.id, b"P;" + encode_envelope(m))  # lib/record.lua cannot parse it either
