"""How the UI shows a task's payload: always as text, never interpreted. Pretty JSON when the bytes
parse as JSON, the text when they are UTF-8, a hex dump otherwise; cut at a limit (the whole is a
download away)."""

from __future__ import annotations

import json

import attrs

#: Bytes of payload shown on the task page; the download has the rest.
SHOW_LIMIT = 16 * 1024
#: Bytes per hex dump line.
HEX_WIDTH = 16


@attrs.frozen
class PayloadView:
    kind: str  #: "json", "text" or "hex"
    text: str
    size: int  #: the whole payload's length in bytes
    truncated: bool


def hex_dump(data: bytes) -> str:
    """Offset, hex bytes and printable ASCII, HEX_WIDTH bytes a line."""
    lines = []
    for offset in range(0, len(data), HEX_WIDTH):
        chunk = data[offset : offset + HEX_WIDTH]
        hexes = " ".join(f"{b:02x}" for b in chunk)
        ascii_ = "".join(chr(b) if 0x20 <= b < 0x7F else "." for b in chunk)
        lines.append(f"{offset:08x}  {hexes:<{HEX_WIDTH * 3 - 1}}  {ascii_}")
    return "\n".join(lines)


def payload_view(payload: bytes, limit: int = SHOW_LIMIT) -> PayloadView:
    size = len(payload)
    if size <= limit:
        try:
            text = payload.decode("utf-8")
        except UnicodeDecodeError:
            return PayloadView("hex", hex_dump(payload), size, False)
        try:
            parsed = json.loads(text)
        except ValueError:
            return PayloadView("text", text, size, False)
        return PayloadView("json", json.dumps(parsed, indent=2, ensure_ascii=False), size, False)
    # too long to parse whole for the page: the head as text if it decodes (a cut character at the
    # end is dropped), else as hex
    head = payload[:limit]
    try:
        return PayloadView("text", head.decode("utf-8", errors="strict"), size, True)
    except UnicodeDecodeError as exc:
        if exc.start >= limit - 3:  # only the last character was cut in two
            return PayloadView("text", head[: exc.start].decode("utf-8"), size, True)
    return PayloadView("hex", hex_dump(head), size, True)
