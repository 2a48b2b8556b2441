"""Listing cursors: the opaque strings `list_tasks` returns to ask for the next page.

A cursor names the position of the last entry a page looked at (never a count of entries to
skip), so a page is found by a seek, however deep the listing goes, and tasks that move between
pages never make a listing repeat or skip a task that stayed in place. Each backend chooses the
parts of its positions (a score and an id, a priority and a stream entry id, ...); the state is
part of every cursor, so a cursor of one state's listing is refused by another's.
"""

from __future__ import annotations

import base64
import binascii
import json

from strego.errors import InvalidCursorError
from strego.task import TaskState

#: The parts of a position: whole numbers and strings.
Part = int | str

#: Longer cursors are refused before being decoded.
MAX_CURSOR_LENGTH = 1024


def encode_cursor(state: TaskState, parts: tuple[Part, ...]) -> str:
    raw = json.dumps([state.value, *parts], separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str, state: TaskState, shape: tuple[type[Part], ...]) -> tuple[Part, ...]:
    """The parts of a cursor made by `encode_cursor` for `state` with parts of these types;
    InvalidCursorError for anything else."""
    if not isinstance(cursor, str) or not 0 < len(cursor) <= MAX_CURSOR_LENGTH:
        raise InvalidCursorError("a cursor is a non-empty string returned by list_tasks")
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        decoded = json.loads(raw)
    except (ValueError, binascii.Error):
        raise InvalidCursorError(f"malformed cursor {cursor!r}") from None
    if not isinstance(decoded, list) or len(decoded) != len(shape) + 1:
        raise InvalidCursorError(f"malformed cursor {cursor!r}")
    if decoded[0] != state.value:
        raise InvalidCursorError(f"cursor {cursor!r} is not one of a {state.value} listing")
    parts = tuple(decoded[1:])
    for part, kind in zip(parts, shape, strict=True):
        # bool is an int to Python, never a position
        if not isinstance(part, kind) or isinstance(part, bool):
            raise InvalidCursorError(f"malformed cursor {cursor!r}")
    return parts
