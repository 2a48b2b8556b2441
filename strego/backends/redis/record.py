"""The task record codec: the one place Python reads and writes what the `tasks` hash holds
(the Lua side's one definition is strego/lua/lib/record.lua).

A record is a header that the Lua scripts own (lib/record.lua parses and rebuilds it with string
functions) followed by the envelope that Python writes at enqueue and only Python reads::

    <state><retried>,<deliveries>,<started>,<ended>,<due>,<max_retry>,<priority>,<sid>,
    <consumer_len>,<error_len>,<unique_len>[,<tag><len>]...;
    <consumer><error><unique_key>[<optional values>]<envelope>

    envelope = <created>,<timeout>,<type_len>,<encoding_len>,<labels_len>[,<tag><len>]...;
               <type><encoding><labels JSON, empty when none>[<optional values>]<payload>

Numbers are decimal ASCII; lengths are in bytes. An empty field is its default, so a fresh task's
record is short: retried, deliveries, priority and the lengths 0, max_retry 3, started, ended,
due and timeout none, encoding "json", created the time that starts the task id (strego.ids; an
id chosen by the caller, or another time, is written out). The payload is the tail, stored and
returned byte for byte: nothing ever parses it.

Optional fields. After the fixed fields of the header and of the envelope come zero or more
entries ``,<tag><len>`` (one ASCII letter, a byte length, empty = 0) whose values follow, in
entry order, the unique key (header) or the labels (envelope). A record with none, as every record
of format v1 is, reads the same in both formats. `OPTIONAL` and `ENVELOPE_OPTIONAL` name the tags
this code knows; values of other tags (written by newer code) are skipped when reading, and the
Lua scripts keep them byte for byte.

Short header. The Lua side writes a pending task whose header fields are all at their defaults
but sid, and which has no optional field (a fresh task), as ``P<sid ms>-<sid seq>;<envelope>``:
a capital P, then the two numbers of its stream entry id (``<ms>-<seq>``) each in base 36, e.g.
``Pmwt87eed-23;``, so a small task's record fits a 32-byte Redis allocation. Python reads it as a
pending task with every header field at its default (it never needs the sid)."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence

import attrs

from strego.errors import UnreadableRecordError
from strego.ids import ID_LENGTH, id_time_ms, time_prefix
from strego.message import TaskMessage
from strego.task import TaskError, TaskInfo, TaskState

STATE_OF = {
    b"s"[0]: TaskState.SCHEDULED,
    b"p"[0]: TaskState.PENDING,
    b"a"[0]: TaskState.ACTIVE,
    b"r"[0]: TaskState.RETRY,
    b"d"[0]: TaskState.DEAD,
    b"c"[0]: TaskState.COMPLETED,
    b"x"[0]: TaskState.CANCELLED,
}
LETTER = {state: bytes([code]).decode() for code, state in STATE_OF.items()}
#: The short header of a fresh pending task: `P<sid ms>-<sid seq>;` (base 36), every other
#: field at its default.
_SHORT = b"P"[0]
_SHORT_HEADER = re.compile(rb"P[0-9A-Za-z]+-[0-9A-Za-z]+;")  # as lib/record.lua's SHORT
_DEFAULTS = (b"",) * 11
_ENDED = (TaskState.DEAD, TaskState.COMPLETED, TaskState.CANCELLED)
_WAITING = (TaskState.SCHEDULED, TaskState.RETRY)


#: Header defaults, written as empty fields (the Lua side, lib/record.lua, uses the same).
DEFAULT_MAX_RETRY = 3
DEFAULT_ENCODING = "json"

#: The optional header fields this code knows: tag -> name (as lib/record.lua's OPTIONAL).
#: Adding a field is one line here and one there (docs/architecture.md, "How to add a field").
OPTIONAL: dict[bytes, str] = {b"R": "result", b"F": "failure", b"C": "cancel"}
#: The optional envelope fields: tag -> name. Python alone writes and reads the envelope.
ENVELOPE_OPTIONAL: dict[bytes, str] = {
    b"T": "result_ttl",
    b"h": "headers",  # propagation headers (trace context, baggage): a JSON object of strings
}
_TAG = re.compile(rb"[A-Za-z][0-9]*")


def _opt_entries(entries: Sequence[bytes]) -> list[tuple[bytes, int]]:
    """The (tag, length) of each `<tag><len>` entry of an optional part (ValueError if one is
    malformed or a tag repeats)."""
    out = []
    for entry in entries:
        if not _TAG.fullmatch(entry):
            raise ValueError(f"malformed optional field {entry!r}")
        out.append((entry[:1], int(entry[1:]) if len(entry) > 1 else 0))
    if len({tag for tag, _ in out}) != len(out):
        raise ValueError("an optional field repeats")
    return out


def _opt_values(
    record: bytes, entries: Sequence[bytes], pos: int, table: Mapping[bytes, str]
) -> tuple[dict[str, bytes], int]:
    """The known optional values of `entries` (by name), starting at `pos`, and where they end."""
    known = {}
    for tag, length in _opt_entries(entries):
        end = pos + length
        if end > len(record):
            raise ValueError("an optional field runs past the record")
        if tag in table:
            known[table[tag]] = record[pos:end]
        pos = end
    return known, pos


def encode_envelope(message: TaskMessage, optional: Mapping[str, bytes] | None = None) -> bytes:
    """The immutable part of a task, as the enqueue script stores it after the header, with
    the `optional` fields given (by name, from ENVELOPE_OPTIONAL); the message's result_ttl and
    headers are among them when it sets them."""
    if message.headers or message.result_ttl_ms is not None:
        extra = {} if optional is None else dict(optional)
        if message.headers:
            extra["headers"] = encode_headers(message.headers)
        if message.result_ttl_ms is not None:
            extra["result_ttl"] = str(message.result_ttl_ms).encode()
        optional = extra
        message = attrs.evolve(message, headers={}, result_ttl_ms=None)
    if optional:
        return _with_optional(encode_envelope(message), optional)
    kind = message.type.encode()
    id_ = message.id
    created: int | str = message.created_ms
    if len(id_) == ID_LENGTH and id_.startswith(time_prefix(message.created_ms)):
        created = ""
    timeout = "" if message.timeout_ms is None else message.timeout_ms
    if message.encoding == DEFAULT_ENCODING:
        encoding, encoding_len = b"", ""
    else:
        encoding = message.encoding.encode()
        encoding_len = str(len(encoding))
    if message.labels:
        labels = json.dumps(message.labels, separators=(",", ":")).encode()
        head = f"{created},{timeout},{len(kind)},{encoding_len},{len(labels)};"
        return b"".join((head.encode(), kind, encoding, labels, message.payload))
    head = f"{created},{timeout},{len(kind)},{encoding_len},;"
    return b"".join((head.encode(), kind, encoding, message.payload))


def encode_headers(headers: Mapping[str, str]) -> bytes:
    return json.dumps(headers, separators=(",", ":")).encode()


def decode_headers(value: bytes) -> dict[str, str]:
    """The headers envelope field (ValueError unless a JSON object of strings)."""
    headers = json.loads(value)
    if not isinstance(headers, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in headers.items()
    ):
        raise ValueError("the headers field is not a JSON object of strings")
    return headers


def _with_optional(envelope: bytes, optional: Mapping[str, bytes]) -> bytes:
    """`envelope` (with no optional field) with `optional` added, in ENVELOPE_OPTIONAL's order."""
    tags = {name: tag for tag, name in ENVELOPE_OPTIONAL.items()}
    unknown = set(optional) - set(tags)
    if unknown:
        raise ValueError(f"unknown envelope fields: {sorted(unknown)}")
    head_end = envelope.index(b";")
    lengths = envelope[:head_end].split(b",")[2:5]  # type, encoding, labels
    fixed_end = head_end + 1 + sum(int(n) for n in lengths if n)
    present = [(tags[n], optional[n]) for n in ENVELOPE_OPTIONAL.values() if n in optional]
    entries = b"".join(b"," + tag + (str(len(v)).encode() if v else b"") for tag, v in present)
    values = b"".join(v for _, v in present)
    return b"".join(
        (envelope[:head_end], entries, envelope[head_end:fixed_end], values, envelope[fixed_end:])
    )


def _int(field: bytes) -> int | None:
    return int(field) if field else None


def _n(field: bytes, default: int = 0) -> int:
    return int(field) if field else default


def decode(queue: str, task_id: str, record: bytes) -> TaskInfo:
    """A TaskInfo from a stored record (UnreadableRecordError when it is not one)."""
    try:
        return _decode(queue, task_id, record)
    except (ValueError, KeyError, IndexError) as exc:
        raise UnreadableRecordError(
            f"task {task_id} in queue {queue}: {unreadable_reason(exc)}"
        ) from exc


def unreadable_reason(exc: BaseException) -> str:
    """The last_error recorded for a task whose record does not decode."""
    cause = exc.__cause__ if isinstance(exc, UnreadableRecordError) and exc.__cause__ else exc
    return f"unreadable task record: {type(cause).__name__}: {cause}"


#: The type listings show for a task whose envelope does not decode.
UNREADABLE_TYPE = "<unreadable>"


def decode_for_listing(queue: str, task_id: str, record: bytes) -> TaskInfo | None:
    """Like `decode`, but a record whose envelope or labels do not decode gives what its header
    holds (type UNREADABLE_TYPE, empty payload, the reason in last_error), and one whose header
    does not parse gives None: a listing shows what it can instead of failing whole."""
    try:
        return _decode(queue, task_id, record)
    except (ValueError, KeyError, IndexError) as exc:
        reason = unreadable_reason(exc)
    try:
        state, fields, end = _header(record)
        retried, deliveries, started, ended, due, max_retry, prio, _sid, cl, el, _ul = fields[:11]
        _opt_entries(fields[11:])
        cl_, el_ = _n(cl), _n(el)
        consumer = record[end + 1 : end + 1 + cl_].decode(errors="replace") or None
        error = record[end + 1 + cl_ : end + 1 + cl_ + el_].decode(errors="replace")
        end_ms = _int(ended) if state in _ENDED else None
        return TaskInfo(
            id=task_id,
            type=UNREADABLE_TYPE,
            queue=queue,
            state=state,
            payload=b"",
            encoding="",
            max_retry=_n(max_retry, DEFAULT_MAX_RETRY),
            priority=_n(prio),
            retried=_n(retried),
            deliveries=_n(deliveries),
            started_ms=_int(started),
            completed_ms=end_ms if state is TaskState.COMPLETED else None,
            next_run_ms=_int(due) if state in _WAITING else None,
            ended_ms=end_ms,
            # a task buried for being unreadable already says so
            last_error=error if error.startswith("unreadable task record") else reason,
            consumer=consumer,
        )
    except (ValueError, KeyError, IndexError):
        return None


def _decode(queue: str, task_id: str, record: bytes) -> TaskInfo:
    # on the fetch hot path (every task a server runs): one split per header, slices by offset,
    # nothing decoded twice, no helper calls for the fields, TaskInfo built positionally
    state, fields, end = _header(record)
    retried, deliveries, started, ended, due, max_retry, prio, _sid, cl, el, ul = (
        fields if len(fields) == 11 else fields[:11]
    )
    pos = end + 1
    consumer_end = pos + int(cl) if cl else pos
    error_end = consumer_end + int(el) if el else consumer_end
    unique_end = error_end + int(ul) if ul else error_end
    opt_end = unique_end
    header_opt: dict[str, bytes] | None = None
    if len(fields) > 11:  # optional header fields (result, failure, cancel)
        header_opt, opt_end = _opt_values(record, fields[11:], unique_end, OPTIONAL)
    env_end = record.index(b";", opt_end)
    env_fields = record[opt_end:env_end].split(b",")
    created, timeout, tl, encl, ll = env_fields if len(env_fields) == 5 else env_fields[:5]
    type_end = env_end + 1 + int(tl)
    if encl:
        encoding_end = type_end + int(encl)
        encoding = record[type_end:encoding_end].decode()
    else:
        encoding_end, encoding = type_end, DEFAULT_ENCODING
    labels_end = encoding_end + int(ll) if ll else encoding_end
    payload_at = labels_end
    result_ttl_ms = None
    headers = {}
    if len(env_fields) > 5:  # optional envelope fields (result_ttl, headers)
        env_opt, payload_at = _opt_values(record, env_fields[5:], labels_end, ENVELOPE_OPTIONAL)
        if "result_ttl" in env_opt:
            result_ttl_ms = int(env_opt["result_ttl"])
        if "headers" in env_opt:
            headers = decode_headers(env_opt["headers"])
    created_ms = int(created) if created else id_time_ms(task_id)
    if created_ms is None:
        raise ValueError("no created time, and the task id does not start with one")
    ended_ms = int(ended) if ended and state in _ENDED else None
    return TaskInfo(
        task_id,
        record[env_end + 1 : type_end].decode(),
        queue,
        state,
        record[payload_at:],
        encoding,
        int(max_retry) if max_retry else DEFAULT_MAX_RETRY,
        int(prio) if prio else 0,
        int(timeout) if timeout else None,
        json.loads(record[encoding_end:labels_end]) if labels_end > encoding_end else {},
        record[error_end:unique_end].decode() if unique_end > error_end else None,
        int(retried) if retried else 0,
        int(deliveries) if deliveries else 0,
        created_ms,
        int(started) if started else None,
        ended_ms if state is TaskState.COMPLETED else None,
        int(due) if due and state in _WAITING else None,
        ended_ms,
        record[consumer_end:error_end].decode(errors="replace")
        if error_end > consumer_end
        else None,
        record[pos:consumer_end].decode(errors="replace") if consumer_end > pos else None,
        *(_NO_OPTIONAL if header_opt is None and result_ttl_ms is None
          else _optional_info(header_opt, result_ttl_ms)),
        headers,
    )  # fmt: skip


#: TaskInfo's result, result_ttl_ms, error and cancel_requested when no optional field is set
_NO_OPTIONAL = (None, None, None, False)


def _optional_info(
    header: dict[str, bytes] | None, result_ttl_ms: int | None
) -> tuple[bytes | None, int | None, TaskError | None, bool]:
    """TaskInfo's result, result_ttl_ms, error and cancel_requested from the optional fields."""
    if not header:
        return None, result_ttl_ms, None, False
    failure = header.get("failure")
    error = None
    if failure is not None:
        detail = json.loads(failure)
        error = TaskError(str(detail["type"]), str(detail["message"]), str(detail["traceback"]))
    return header.get("result"), result_ttl_ms, error, "cancel" in header


def encode_error(error: TaskError) -> bytes:
    """The `failure` field of a dead task (JSON; read back by `_optional_info`)."""
    detail = {"type": error.type, "message": error.message, "traceback": error.traceback}
    return json.dumps(detail, separators=(",", ":")).encode()


def optional_fields(record: bytes) -> tuple[dict[str, bytes], dict[str, bytes]]:
    """The known optional fields of a record's header and of its envelope, by name (for the
    fields no TaskInfo attribute shows yet; UnreadableRecordError when it does not decode)."""
    try:
        _state, fields, end = _header(record)
        cl, el, ul = (_n(f) for f in fields[8:11])
        header, opt_end = _opt_values(record, fields[11:], end + 1 + cl + el + ul, OPTIONAL)
        env_end = record.index(b";", opt_end)
        env_fields = record[opt_end:env_end].split(b",")
        labels_end = env_end + 1 + sum(_n(f) for f in env_fields[2:5])
        envelope, _ = _opt_values(record, env_fields[5:], labels_end, ENVELOPE_OPTIONAL)
    except (ValueError, KeyError, IndexError) as exc:
        raise UnreadableRecordError(f"unreadable task record: {exc}") from exc
    return header, envelope


def _header(record: bytes) -> tuple[TaskState, list[bytes] | tuple[bytes, ...], int]:
    """The state, the header fields (11 fixed, then the optional entries) and where the header
    ends (at its ';')."""
    end = record.index(b";")
    if record[0] == _SHORT:
        if not _SHORT_HEADER.match(record):
            raise ValueError("malformed short header")
        return TaskState.PENDING, _DEFAULTS, end
    fields = record[1:end].split(b",")
    if len(fields) < 11:
        raise ValueError("a header has 11 fixed fields")
    return STATE_OF[record[0]], fields, end


def ended_ms(record: bytes) -> tuple[TaskState, int | None]:
    """The state and end time of a record, without decoding the rest (for retention checks)."""
    try:
        state, fields, _ = _header(record)
        return state, _int(fields[3])
    except (ValueError, KeyError, IndexError) as exc:
        raise UnreadableRecordError("unreadable task record") from exc
