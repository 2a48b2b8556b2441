"""The operator commands: see queues, tasks and workers, and act on them (`strego queues`,
`tasks`, `task`, `requeue`, `cancel`, `delete`, `pause`, `resume`, `purge`, `workers`). Each is
one call of `strego.operate` (the HTTP API's operations too); --json prints what the API answers
for the same question."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

from strego import operate
from strego.backends.base import MAX_PAGE
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
from strego.report import consumer_view, queue_view, task_view
from strego.task import TaskState

if TYPE_CHECKING:
    from strego.backends.base import Backend

EXIT_CODES = "Exit codes: 0 done, 1 not found or refused, 2 usage."
#: Payload bytes `strego task` shows (--json shows as many as the API).
SHOWN_PAYLOAD = 2000


async def queues(backend: Backend, args: argparse.Namespace) -> int:
    infos = await operate.overview(backend)
    history = await operate.history(backend, [i.name for i in infos])
    views = [queue_view(i, h) for i, h in zip(infos, history, strict=True)]
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
        for v in views
    ]
    table(["QUEUE", "PAUSED", *(s.upper() for s in states), "OLDEST", "DONE/H", "FAILED/H"], rows)
    return DONE


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


async def task(backend: Backend, args: argparse.Namespace) -> int:
    view = task_view(await operate.find_task(backend, args.id))
    if args.json:
        print_json(view)
        return DONE
    payload = view.pop("payload")
    for key, value in view.items():
        if key.endswith("_ms") and key != "timeout_ms":
            value = when(value)
        print(f"{key + ':':14} {clean('-' if value is None else value)}")
    body = payload["text"] if payload["text"] is not None else f"base64:{payload['base64']}"
    cut = " (truncated)" if payload["truncated"] or len(body) > SHOWN_PAYLOAD else ""
    print(f"{'payload:':14} {payload['encoding']}, {payload['size']} bytes{cut}")
    print(clean(body[:SHOWN_PAYLOAD]))
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
    views = [consumer_view(c) for c in await operate.consumers(backend)]
    if args.json:
        print_json({"workers": views})
        return DONE
    table(
        ["CONSUMER", "QUEUE", "HOST", "PID", "IDLE", "HELD"],
        [[v["name"], v["queue"], v["host"], v["pid"], age(v["idle_ms"]), len(v["held"])]
         for v in views],
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
