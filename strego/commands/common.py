"""What every operator command shares: its Redis options, running it against the backend, exit
codes, tables for people and JSON for scripts, and the confirmation of destructive commands.

Exit codes a script can test: 0 done, 1 not found or refused (no such task or queue, a state that
does not allow the action, Redis failing or unreachable, not confirmed), 2 usage (bad arguments,
an invalid URL, state or cursor)."""

from __future__ import annotations

import argparse
import os
import sys
import unicodedata
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import anyio

from strego.errors import BackendError, InvalidTaskError, StregoError, TaskNotFoundError
from strego.operate import QueueNotFoundError, TaskStateError
from strego.report import dumps

if TYPE_CHECKING:
    from strego.backends.base import Backend

DONE, REFUSED, USAGE = 0, 1, 2
DEFAULT_REDIS_URL = "redis://localhost:6379/0"

#: A command: given the backend and the parsed arguments, writes its output, returns its code.
Command = Callable[["Backend", argparse.Namespace], Awaitable[int]]


def add_options(command: argparse.ArgumentParser) -> None:
    """--redis, --prefix and --json, after the command name."""
    command.add_argument(
        "--redis",
        metavar="URL",
        default=None,
        help=f"the Redis (default: $STREGO_REDIS_URL, else {DEFAULT_REDIS_URL})",
    )
    command.add_argument("--prefix", default="strego", help="the key prefix (default strego)")
    command.add_argument("--json", action="store_true", help="print JSON for scripts")


def add_yes(command: argparse.ArgumentParser) -> None:
    command.add_argument("-y", "--yes", action="store_true", help="do not ask for confirmation")


def redis_url(args: argparse.Namespace) -> str:
    return args.redis or os.environ.get("STREGO_REDIS_URL") or DEFAULT_REDIS_URL


class Refused(Exception):
    """The command refuses, with this line (exit code 1)."""


def run(args: argparse.Namespace, command: Command) -> int:
    """Run `command` against the Redis the arguments name, and turn its errors into one line on
    stderr (JSON with --json) and an exit code."""
    from strego.backends.redis import RedisBackend

    try:
        backend: Backend = RedisBackend.from_url(redis_url(args), prefix=args.prefix)
    except ValueError as exc:
        return fail(args, USAGE, "usage", str(exc))

    async def main() -> int:
        try:
            return await command(backend, args)
        finally:
            with anyio.CancelScope(shield=True):
                await backend.aclose()

    try:
        return anyio.run(main)
    except (TaskNotFoundError, QueueNotFoundError) as exc:
        return fail(args, REFUSED, "not_found", str(exc))
    except TaskStateError as exc:
        return fail(args, REFUSED, "wrong_state", str(exc))
    except Refused as exc:
        return fail(args, REFUSED, "refused", str(exc))
    except InvalidTaskError as exc:
        return fail(args, USAGE, "invalid", str(exc))
    except BackendError as exc:
        return fail(args, REFUSED, "backend", f"{type(exc).__name__}: {exc}")
    except StregoError as exc:
        return fail(args, REFUSED, "error", f"{type(exc).__name__}: {exc}")


def fail(args: argparse.Namespace, code: int, kind: str, message: str) -> int:
    if args.json:
        print(dumps({"error": kind, "message": message}).decode(), file=sys.stderr)
    else:
        print(f"strego {args.command}: {clean(message)}", file=sys.stderr)
    return code


def confirm(args: argparse.Namespace, question: str) -> None:
    """Ask on a terminal (stdin a tty) unless --yes; Refused unless the answer is yes. Without a
    terminal (a script, a pipe) there is nobody to ask: the command goes on."""
    if args.yes or not sys.stdin.isatty():
        return
    print(f"{clean(question)} [y/N] ", end="", file=sys.stderr, flush=True)
    answer = sys.stdin.readline().strip().lower()
    if answer not in ("y", "yes"):
        raise Refused("not confirmed: nothing changed")


def print_json(value: Any) -> None:
    print(dumps(value).decode())


def clean(text: object) -> str:
    """Text for a terminal: control characters (an escape sequence in a task's error or type
    would otherwise drive the terminal) shown as escapes, never sent."""
    return "".join(_escaped(ch) for ch in str(text))


def _escaped(ch: str) -> str:
    if unicodedata.category(ch)[0] != "C":
        return ch
    return ch.encode("unicode_escape", "backslashreplace").decode()


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    """Aligned columns (cells cleaned of control characters); the last column is not padded."""
    cells = [[clean("-" if c is None else c) for c in row] for row in rows]
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(headers)]
    for row in [list(headers), *cells]:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())


def age(ms: int | None) -> str:
    """A duration for people: 850ms, 12s, 5m, 3h, 2d."""
    if ms is None:
        return "-"
    for unit, size in (("d", 86_400_000), ("h", 3_600_000), ("m", 60_000), ("s", 1000)):
        if ms >= size:
            return f"{ms // size}{unit}"
    return f"{ms}ms"


def when(ms: int | None) -> str:
    if ms is None:
        return "-"
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S")
