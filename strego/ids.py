"""Task ids: 20 characters, a 48-bit millisecond time then 72 random bits, 6 bits a character in
an alphabet that is in ASCII order, so ids are unique without coordination, sort by creation time
as plain strings, and match TASK_ID_PATTERN. 20 characters (not a 26-character ULID) keep a
pending task small in Redis: the id is a hash field and a stream value of every task."""

from __future__ import annotations

import binascii
import os
import time

#: 64 characters in ASCII order: digits < ':' < upper case < '_' < lower case (no '-': an id
#: starting with one would read as an option on a command line).
ALPHABET = "0123456789:ABCDEFGHIJKLMNOPQRSTUVWXYZ_abcdefghijklmnopqrstuvwxyz"
ID_LENGTH = 20
_TIME_CHARS = 8  # 48 bits
_RANDOM_BYTES = 9  # 72 bits
_VALUE = {c: i for i, c in enumerate(ALPHABET)}
# every 12-bit value as two characters: a time prefix is four look-ups
_PAIRS = [a + b for a in ALPHABET for b in ALPHABET]
_FROM_BASE64 = bytes.maketrans(
    b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/", ALPHABET.encode()
)


def new_task_id(now_ms: int | None = None) -> str:
    ms = time.time_ns() // 1_000_000 if now_ms is None else now_ms
    # 9 random bytes are 12 base64 characters, mapped onto the alphabet in C
    tail = binascii.b2a_base64(os.urandom(_RANDOM_BYTES), newline=False).translate(_FROM_BASE64)
    return time_prefix(ms & 0xFFFF_FFFF_FFFF) + tail.decode()


#: The last (time, prefix) pair either function below worked out: the ids of a batch share it.
_last = (-1, "")


def time_prefix(ms: int) -> str:
    """The 8 characters a `new_task_id(ms)` id starts with ("" for a time out of 48-bit range,
    which no id starts with)."""
    global _last
    if _last[0] == ms:
        return _last[1]
    if not 0 <= ms < 1 << 48:
        return ""
    p = _PAIRS
    prefix = p[ms >> 36] + p[(ms >> 24) & 4095] + p[(ms >> 12) & 4095] + p[ms & 4095]
    _last = (ms, prefix)
    return prefix


def id_time_ms(task_id: str) -> int | None:
    """The millisecond time a 20-character id starts with (whoever chose it), or None for an id
    not of that shape."""
    global _last
    if len(task_id) != ID_LENGTH:
        return None
    prefix = task_id[:_TIME_CHARS]
    if prefix == _last[1]:
        return _last[0]
    ms = 0
    try:
        for c in prefix:
            ms = (ms << 6) | _VALUE[c]
    except KeyError:
        return None
    _last = (ms, prefix)
    return ms
