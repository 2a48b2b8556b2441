"""The operator commands: see queues, tasks, workers and schedules, and act on them (`strego
queues`, `tasks`, `task`, `result`, `requeue`, `cancel`, `delete`, `pause`, `resume`, `purge`,
`workers`, `schedules`). Each is one call of `strego.operate` (the HTTP API's operations too);
--json prints what the API answers for the same question."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

from strego import operate
from strego.backends.base import MAX_PAGE
from strego.client import Client
from strego.commands.common import (
    DONE,
    Command,
    add_options,
    add_yes,
    age,
    clean,
    confirm,
    print_json,
    run,
    table,
    when,
)
from strego.errors import TaskCancelledError, TaskFailedError, TaskNotFoundError
from strego.report import (
    consumer_view,
    result_view,
    schedule_view,
    summary_view,
    task_view,
    unreadable_view,
)
from strego.task import TaskState

if TYPE_CHECKING:
    from strego.backends.base import Backend

EXIT_CODES = "Exit codes: 0 done, 1 not found or refused, 2 usage."
#: Payload bytes `strego task` shows (--json shows as many as the API).
SHOWN_PAYLOAD = 2000


async def queues(backend: Backend, args: argparse.Namespace) -> int:
    views = [summary_view(q) for q in await operate.overview(backend)]
    if args.json:
        print_json({"queues": views})
        return DONE
    states = [s.value for s in TaskState]
    rows = [
        [
            v["name"],
            "yes" if v["paused"] else "",
            *(v["counts"][s] for s in states),
            age(v["oldest_pending_age_ms"]),
            v["history"]["total"]["completed"],
            v["history"]["total"]["failed"],
        ]
        if v["error"] is None
        else [v["name"], "", *(["?"] * len(states)), "?", "?", "?"]
        for v in views
    ]
    table(["QUEUE", "PAUSED", *(s.upper() for s in states), "OLDEST", "DONE/H", "FAILED/H"], rows)
    _unreadable(views)
    return DONE


def _unreadable(views: list[dict[str, Any]]) -> None:
    """Below a table: each queue that could not be read, and why (as text)."""
    for v in views:
        if v["error"] is not None:
            print(f"{clean(v['name'])}: unreadable: {clean(v['error'])}")


async def tasks(backend: Backend, args: argparse.Namespace) -> int:
    queue = await operate.require_queue(backend, args.queue)
    page = await backend.list_tasks(queue, args.state, cursor=args.cursor, limit=args.limit)
    if args.json:
        print_json(
            {
                "queue": queue,
                "state": args.state.value,
                "tasks": [task_view(t, payload_limit=256) for t in page.tasks],
                "next_cursor": page.next_cursor,
            }
        )
        return DONE
    table(
        ["ID", "TYPE", "PRIORITY", "RETRIED", "CREATED", "LAST ERROR"],
        [
            [t.id, t.type, t.priority, t.retried, when(t.created_ms), (t.last_error or "")[:80]]
            for t in page.tasks
        ],
    )
    if page.next_cursor is not None:
        print(f"more: --cursor {page.next_cursor}")
    return DONE


def _body(shown: dict[str, Any]) -> str:
    """A payload or result view's bytes as text: the text, else ``base64:`` and the base64."""
    return shown["text"] if shown["text"] is not None else f"base64:{shown['base64']}"


def _shown(name: str, shown: dict[str, Any]) -> None:
    body = _body(shown)
    cut = " (truncated)" if shown["truncated"] or len(body) > SHOWN_PAYLOAD else ""
    print(f"{name + ':':14} {clean(shown['encoding'])}, {shown['size']} bytes{cut}")
    print(clean(body[:SHOWN_PAYLOAD]))


async def task(backend: Backend, args: argparse.Namespace) -> int:
    view = task_view(await operate.find_task(backend, args.id), now_ms=backend.clock())
    if args.json:
        print_json(view)
        return DONE
    payload, result, error = view.pop("payload"), view.pop("result"), view.pop("error")
    for key, value in view.items():
        if key.endswith("_ms") and key not in ("timeout_ms", "result_ttl_ms"):
            value = when(value)
        elif isinstance(value, dict):
            value = " ".join(f"{k}={v}" for k, v in sorted(value.items())) or None
        print(f"{key + ':':14} {clean('-' if value is None else value)}")
    if error is not None:
        print(f"{'error:':14} {clean(error['type'])}: {clean(error['message'])}")
        print(clean(error["traceback"][:SHOWN_PAYLOAD]))
    _shown("payload", payload)
    if result is not None:
        _shown("result", result)
    return DONE


async def result(backend: Backend, args: argparse.Namespace) -> int:
    """The stored result of a task, waiting up to --timeout for it to end. Never deserialized:
    shown as its serializer wrote it (JSON text for the default), base64 when it is not UTF-8."""
    client = Client(backend)
    info = await client.wait(args.id, timeout=args.timeout)
    if info.state is TaskState.DEAD:
        raise TaskFailedError(info.id, info.error, info.last_error)
    if info.state is TaskState.CANCELLED:
        raise TaskCancelledError(info.id)
    if not info.result_kept(backend.clock()):
        raise TaskNotFoundError(info.id)  # its result_ttl passed, as Client.result says
    shown = result_view(info, None)
    if args.json:
        print_json({"id": info.id, "state": info.state.value, "result": shown})
    elif shown is not None:  # None: the handler returned None, or result_ttl was 0
        print(clean(_body(shown)))
    return DONE


def _done(args: argparse.Namespace, result: dict[str, Any], line: str) -> int:
    if args.json:
        print_json(result)
    else:
        print(line)
    return DONE


async def requeue(backend: Backend, args: argparse.Namespace) -> int:
    queue = await operate.require_queue(backend, args.queue)
    if args.all:
        confirm(args, f"requeue every dead task of {queue}?")
        n = await backend.requeue_all_dead(queue)
        result = {"queue": queue, "action": "requeue-dead", "changed": n}
        return _done(args, result, f"requeued {n}")
    await operate.requeue_task(backend, args.id, queue)
    result = {"id": args.id, "action": "requeue", "changed": True}
    return _done(args, result, f"requeued {args.id}")


async def cancel(backend: Backend, args: argparse.Namespace) -> int:
    confirm(args, f"cancel task {args.id}?")
    await operate.cancel_task(backend, args.id)
    # a running task's cancel is a request: the server holding it stops it and ends it cancelled
    task = await backend.get_task(args.id)
    state = None if task is None else task.state.value
    line = "cancel requested: its server stops it" if state == "active" else "cancelled"
    result = {"id": args.id, "action": "cancel", "changed": True, "state": state}
    return _done(args, result, line)


async def delete(backend: Backend, args: argparse.Namespace) -> int:
    confirm(args, f"delete task {args.id}?")
    await operate.delete_task(backend, args.id)
    return _done(args, {"id": args.id, "action": "delete", "changed": True}, "deleted")


async def pause(backend: Backend, args: argparse.Namespace) -> int:
    queue = await operate.require_queue(backend, args.queue)
    await backend.pause(queue)
    return _done(args, {"queue": queue, "paused": True}, f"paused {queue}")


async def resume(backend: Backend, args: argparse.Namespace) -> int:
    queue = await operate.require_queue(backend, args.queue)
    await backend.resume(queue)
    return _done(args, {"queue": queue, "paused": False}, f"resumed {queue}")


async def purge(backend: Backend, args: argparse.Namespace) -> int:
    states = operate.purge_states([s for value in args.state for s in value.split(",") if s])
    queue = await operate.require_queue(backend, args.queue)
    names = [s.value for s in states]
    confirm(args, f"delete every {', '.join(names)} task of {queue}?")
    n = await backend.purge(queue, states)
    result = {"queue": queue, "action": "purge", "states": names, "changed": n}
    return _done(args, result, f"purged {n}")


async def workers(backend: Backend, args: argparse.Namespace) -> int:
    found = await operate.consumers(backend)
    views = [consumer_view(c) for c in found.found]
    unreadable = [unreadable_view(u) for u in found.unreadable]
    if args.json:
        print_json({"workers": views, "unreadable": unreadable})
        return DONE
    table(
        ["CONSUMER", "QUEUE", "HOST", "PID", "IDLE", "HELD"],
        [[v["name"], v["queue"], v["host"], v["pid"], age(v["idle_ms"]), len(v["held"])]
         for v in views],
    )  # fmt: skip
    _unreadable(unreadable)
    return DONE


async def schedules(backend: Backend, args: argparse.Namespace) -> int:
    found = await backend.list_schedules()
    views = [schedule_view(s) for s in found.schedules]
    if args.json:
        print_json({"now_ms": found.now_ms, "schedules": views})
        return DONE
    table(
        ["ID", "QUEUE", "TYPE", "SPEC", "TZ", "NEXT FIRE", "LAST FIRE", "LAST TASK"],
        [[v["id"], v["queue"], v["type"], v["spec"], v["tz"], when(v["next_ms"]),
          when(v["last_fire_ms"]), v["last_task_id"]] for v in views],
    )  # fmt: skip
    return DONE


def _state(text: str) -> TaskState:
    try:
        return TaskState(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected one of {', '.join(s.value for s in TaskState)}, not {text!r}"
        ) from None


def _limit(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if not 1 <= value <= MAX_PAGE:
        raise argparse.ArgumentTypeError(f"expected 1 to {MAX_PAGE}, not {text!r}")
    return value


def _timeout(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 <= value <= 86_400:
        raise argparse.ArgumentTypeError(f"expected 0 to 86400 seconds, not {text!r}")
    return value


def add_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register the operator commands on `strego`'s subcommands."""

    def command(name: str, call: Command, help: str) -> argparse.ArgumentParser:
        parser = commands.add_parser(name, help=help, description=help, epilog=EXIT_CODES)
        add_options(parser)
        parser.set_defaults(run=lambda args: run(args, call))
        return parser

    command("queues", queues, "every queue: tasks per state, paused, oldest pending, last hour")
    listing = command("tasks", tasks, "a page of a queue's tasks in one state")
    listing.add_argument("queue")
    listing.add_argument("--state", type=_state, default=TaskState.PENDING, help="(pending)")
    listing.add_argument("--limit", type=_limit, default=50, help=f"1 to {MAX_PAGE} (50)")
    listing.add_argument("--cursor", default=None, help="the 'more:' cursor of the page before")
    command("task", task, "one task by id").add_argument("id")
    result_ = command(
        "result",
        result,
        "a task's result (waiting for it to end); 1 if it died, was cancelled or is gone",
    )
    result_.add_argument("id")
    result_.add_argument(
        "--timeout",
        type=_timeout,
        default=None,
        help="seconds to wait for the task to end (default: as long as it takes)",
    )
    requeue_ = command("requeue", requeue, "a dead task (or every one) back to pending")
    requeue_.add_argument("queue")
    which = requeue_.add_mutually_exclusive_group(required=True)
    which.add_argument("id", nargs="?", help="the dead task's id")
    which.add_argument("--all", action="store_true", help="every dead task of the queue")
    add_yes(requeue_)
    for name, call, help in (
        ("cancel", cancel, "cancel a task (a running one is stopped by its server)"),
        ("delete", delete, "delete a task that is not active"),
    ):
        parser = command(name, call, help)
        parser.add_argument("id")
        add_yes(parser)
    command("pause", pause, "stop servers starting the queue's tasks").add_argument("queue")
    command("resume", resume, "let servers start the queue's tasks again").add_argument("queue")
    purge_ = command("purge", purge, "delete the queue's tasks of the given states")
    purge_.add_argument("queue")
    purge_.add_argument(
        "--state",
        action="append",
        required=True,
        help="a state to purge (repeat, or comma-separated; never active)",
    )
    add_yes(purge_)
    command("workers", workers, "each consumer of each queue: host, pid, idle time, tasks held")
    command("schedules", schedules, "every periodic schedule: next fire, last fire, last task")
