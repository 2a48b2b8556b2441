"""The history events' own reader of an enqueue envelope agrees with the record format's writer
(record.encode_envelope), for every field it keeps."""

from __future__ import annotations

import pytest

from strego.backends.redis.record import encode_envelope
from strego.history.events import _envelope
from strego.ids import new_task_id
from strego.message import TaskMessage


@pytest.mark.parametrize(
    "message",
    [
        TaskMessage(id=new_task_id(1_700_000_000_000), type="email.send", queue="q",
                    payload=b'{"to": "a@b"}', encoding="json", created_ms=1_700_000_000_000),
        TaskMessage(id="my-own-id", type="t", queue="q", payload=b"\xff\x00;,", encoding="msgpack",
                    labels={"order": "1234", "é": ";,"}, timeout_ms=5_000, created_ms=42),
        TaskMessage(id="x", type="t", queue="q", payload=b"", encoding="json", created_ms=0),
    ],
)  # fmt: skip
def test_the_envelope_reader_reads_what_enqueue_writes(message: TaskMessage) -> None:
    fields = _envelope(message.id, encode_envelope(message))
    assert fields == {
        "type": message.type, "encoding": message.encoding, "labels": message.labels,
        "payload": message.payload, "created_ms": message.created_ms,
    }  # fmt: skip
