"""Loads the Lua scripts of strego/lua once: each ``--#include lib/x.lua`` line is replaced by that
shared fragment (fragments may include others; each is included once per script), and each script
becomes one `Script` (called by SHA1, loaded again on NOSCRIPT)."""

from __future__ import annotations

import re
from functools import cache
from importlib import resources

from strego.backends.redis.keys import HISTORY_SCRIPTS, SCRIPT_KEYS, key_count, lua_key_names
from strego.backends.redis.transport import Script

_INCLUDE = re.compile(r"^--#include (\S+)$", re.MULTILINE)
#: a whole-line comment (not an include), dropped from the loaded script
_COMMENT_LINE = re.compile(r"^[ \t]*--(?!#include ).*\n", re.MULTILINE)
#: a line's indentation, and blank lines: dropped from the loaded script (no script holds a
#: multi-line string, where they would count)
_INDENT = re.compile(r"^[ \t]+|^\n", re.MULTILINE)

#: Every script, by name: those SCRIPT_KEYS declares (a script file must have its row there).
NAMES = tuple(SCRIPT_KEYS)


def _read(path: str) -> str:
    return resources.files("strego.lua").joinpath(path).read_text(encoding="utf-8")


def source(name: str) -> str:
    """The script's own text, before includes."""
    return _read(f"{name}.lua")


def _expand(text: str, included: set[str]) -> str:
    def include(match: re.Match[str]) -> str:
        path = match.group(1)
        if path in included:
            return ""
        included.add(path)
        return _expand(_read(path), included)

    return _INCLUDE.sub(include, text)


def _compact(text: str) -> str:
    """The script without its comment lines, indentation and blank lines: each stays under
    16 KB, what Redis reads from a connection at once, so that a SCRIPT LOAD and the EVALSHA
    sent after it in one write are not split by another client's SCRIPT FLUSH."""
    return _INDENT.sub("", _COMMENT_LINE.sub("", text))


@cache
def script(name: str, history_cap: int = 0, sharded_notify: bool = False) -> Script:
    """The script as loaded: its keys named (`K`, from SCRIPT_KEYS), then its text with the
    fragments it includes. A script of HISTORY_SCRIPTS starts with the `HISTORY` lib/history.lua
    reads: `false` (history_cap 0: history off), or its stream (the last KEYS entry, after
    SCRIPT_KEYS's) and `history_cap`, the stream's MAXLEN. `SHARDED_NOTIFY` (lib/ready.lua,
    lib/record.lua) is true on Cluster only: the scripts then SPUBLISH the wake-ups of waiting
    fetches and schedulers (strego/backends/redis/wakeups.py); a single Redis pays nothing."""
    head = lua_key_names(name)
    head += f"local SHARDED_NOTIFY = {'true' if sharded_notify else 'false'}\n"
    if name in HISTORY_SCRIPTS:
        if history_cap:
            index = key_count(name) + 1
            head += f"local HISTORY = {{key = KEYS[{index}], cap = '{history_cap}'}}\n"
        else:
            head += "local HISTORY = false\n"
    return Script(name=name, source=head + _compact(_expand(source(name), set())))
