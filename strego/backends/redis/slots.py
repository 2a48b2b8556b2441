"""Redis Cluster hash slots: which of the 16,384 slots a key lives in (CRC16 of its hash tag), and
which arguments of the commands strego sends are keys."""

from __future__ import annotations

from collections.abc import Sequence

from strego.backends.redis.transport import Arg

SLOTS = 16384


def _table() -> list[int]:
    # CRC16-CCITT (XMODEM): polynomial 0x1021, initial value 0, as Redis Cluster uses.
    table = []
    for byte in range(256):
        crc = byte << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021) if crc & 0x8000 else crc << 1
        table.append(crc & 0xFFFF)
    return table


_CRC_TABLE = _table()


def crc16(data: bytes) -> int:
    crc = 0
    for byte in data:
        crc = ((crc << 8) & 0xFFFF) ^ _CRC_TABLE[(crc >> 8) ^ byte]
    return crc


def _bytes(value: Arg) -> bytes:
    if isinstance(value, bytes):
        return value
    return str(value).encode()


def key_slot(key: Arg) -> int:
    """The slot of `key`: of the part between the first '{' and the next '}' when that part is
    not empty (the hash tag), else of the whole key."""
    data = _bytes(key)
    start = data.find(b"{")
    if start >= 0:
        end = data.find(b"}", start + 1)
        if end > start + 1:
            data = data[start + 1 : end]
    return crc16(data) % SLOTS


#: Commands without keys: sent to any primary (WAIT goes where the write before it went).
KEYLESS = frozenset({b"PING", b"TIME", b"WAIT", b"INFO", b"CONFIG", b"SCRIPT", b"CLUSTER"})
#: Commands whose every argument is a key.
ALL_KEYS = frozenset({b"MGET", b"EXISTS", b"DEL", b"UNLINK", b"TOUCH"})
#: Commands with a subcommand first, then the key (XGROUP CREATE <key> ..., XINFO GROUPS <key>).
KEY_AFTER_SUBCOMMAND = frozenset({b"XGROUP", b"XINFO", b"OBJECT", b"MEMORY"})


def command_keys(args: Sequence[Arg]) -> list[Arg]:
    """The keys among a command's arguments: none, all (MGET...), those after STREAMS (XREAD,
    XREADGROUP: the first half), the one after a subcommand (XGROUP, XINFO...), or else the
    first argument."""
    name = _bytes(args[0]).upper()
    if name in KEYLESS or len(args) < 2:
        return []
    if name in ALL_KEYS:
        return list(args[1:])
    if name in (b"XREAD", b"XREADGROUP"):
        # (XREADGROUP GROUP <group> <consumer>: names that could read STREAMS come first)
        first = 4 if name == b"XREADGROUP" else 1
        for i, arg in enumerate(args[first:], first):
            if _bytes(arg).upper() == b"STREAMS":
                rest = args[i + 1 :]
                return list(rest[: len(rest) // 2])
        return []
    if name in KEY_AFTER_SUBCOMMAND:
        return [args[2]] if len(args) > 2 else []
    return [args[1]]
