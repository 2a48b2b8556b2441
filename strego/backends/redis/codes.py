"""Script return codes and the one table that maps them to typed errors."""

from __future__ import annotations

from collections.abc import Callable

from strego.errors import DuplicateTaskError, StregoError, TaskIdConflictError
from strego.message import TaskMessage

OK = b"OK"
PAUSED = b"PAUSED"

#: code -> error, built from the message the script refused and the code's detail.
ERRORS: dict[bytes, Callable[[TaskMessage, str], StregoError]] = {
    b"DUPLICATE": lambda msg, holder: DuplicateTaskError(msg.unique_key or "", holder),
    b"ID_CONFLICT": lambda msg, _: TaskIdConflictError(msg.id),
}


def error_for(code: bytes, message: TaskMessage, detail: bytes) -> StregoError:
    return ERRORS[code](message, detail.decode())
