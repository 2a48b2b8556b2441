"""Tasks in every state for the browser tests, with hostile strings wherever a task carries text
(queue names cannot: they are validated to A-Z a-z 0-9 _ . -), and history events for the
history's pages."""

from __future__ import annotations

import json

from strego.backends.base import Backend
from strego.clock import wall_clock_ms
from strego.history import HistoryEvent
from strego.message import TaskMessage

#: Markup, an event handler and quote-breakers: each must show as literal text, never run.
HOSTILE = [
    "<script>alert('script')</script>",
    "<img src=x onerror=\"alert('img')\">",
    '"\'><svg onload=alert("svg")>',
]
#: Held by the active task: a consumer name with markup.
HOSTILE_CONSUMER = '<img src=x onerror=alert("consumer")>'
LEASE_MS = 3_600_000


def message(task_id: str, queue: str, type_: str = "send", **fields: object) -> TaskMessage:
    payload = fields.pop("payload", json.dumps({"to": "a@example.com", "n": 1}).encode())
    return TaskMessage(
        id=task_id,
        type=type_,
        queue=queue,
        payload=payload,  # type: ignore[arg-type]
        encoding="json",
        created_ms=wall_clock_ms(),
        **fields,  # type: ignore[arg-type]
    )


async def seed(backend: Backend) -> None:
    """Queue "mail": pending (hostile type, payload, labels), scheduled, retry, two dead (one with
    a hostile error), active (hostile holder), completed, binary and long payloads. Queue
    "reports": paused, pending, nobody serving it."""
    hostile_payload = json.dumps({"html": HOSTILE, "note": "x" * 50}).encode()
    await backend.enqueue(
        message(
            "t-hostile",
            "mail",
            HOSTILE[0],
            payload=hostile_payload,
            labels={HOSTILE[1]: HOSTILE[2]},
            unique_key=HOSTILE[2],
            unique_ttl_ms=3_600_000,
        )
    )
    await backend.enqueue(message("t-binary", "mail", "blob", payload=bytes(range(256))))
    await backend.enqueue(message("t-long", "mail", "long", payload=b"y" * 40_000))
    for i in range(3):
        await backend.enqueue(message(f"t-sched-{i}", "mail", process_in_ms=3_600_000))
    # dead, retry, active, completed: fetched in priority order, so each is enqueued and taken
    await backend.enqueue(message("t-dead", "mail", HOSTILE[1], max_retry=0, priority=10))
    [dead] = await backend.fetch(["mail"], 1, "w1", lease_ms=LEASE_MS)
    await backend.fail("mail", dead.id, "w1", "\n".join(HOSTILE), retry_in_ms=None)
    await backend.enqueue(message("t-dead2", "mail", "send", max_retry=0, priority=10))
    [dead2] = await backend.fetch(["mail"], 1, "w1", lease_ms=LEASE_MS)
    await backend.fail("mail", dead2.id, "w1", "gone for good", retry_in_ms=None)
    await backend.enqueue(message("t-retry", "mail", max_retry=5, priority=10))
    [retry] = await backend.fetch(["mail"], 1, "w1", lease_ms=LEASE_MS)
    await backend.fail("mail", retry.id, "w1", "boom", retry_in_ms=3_600_000)
    await backend.enqueue(message("t-done", "mail", priority=10))
    [done] = await backend.fetch(["mail"], 1, "w1", lease_ms=LEASE_MS)
    await backend.ack("mail", done.id, "w1")
    await backend.enqueue(message("t-active", "mail", HOSTILE[2], priority=10))
    await backend.fetch(["mail"], 1, HOSTILE_CONSUMER, lease_ms=LEASE_MS)
    for i in range(4):
        await backend.enqueue(message(f"t-act-{i}", "mail", "act"))
    for i in range(3):
        await backend.enqueue(message(f"r-{i}", "reports", "report"))
    await backend.pause("reports")


async def seed_history(backend: Backend, minutes: int = 60) -> None:
    """Queue "images": an hour of work, completed and failed minute by minute, on a backend whose
    clock the caller moves (`backend.clock` reads `backend.clock_at[0]`) so that the per-minute
    history has a shape to draw."""
    now = backend.clock()
    clock_at: list[int] = backend.clock_at  # type: ignore[attr-defined]
    for ago in range(minutes - 1, -1, -1):
        clock_at[0] = now - ago * 60_000
        done = 6 + (ago * 7) % 5 + (4 if 20 <= ago <= 30 else 0)
        failed = 2 if ago % 9 == 0 else 0
        ids = [f"img-{ago}-{i}" for i in range(done + failed)]
        for task_id in ids:
            await backend.enqueue(message(task_id, "images", "thumbnail", max_retry=3))
        fetched = await backend.fetch(["images"], len(ids), "w-img", lease_ms=LEASE_MS)
        for i, task in enumerate(fetched):
            if i < done:
                await backend.ack("images", task.id, "w-img")
            else:
                await backend.fail("images", task.id, "w-img", "timeout", retry_in_ms=LEASE_MS)
    clock_at[0] = now


class HistoryEvents:
    """History events as a server's transitions write them, for PostgresHistory.store."""

    def __init__(self) -> None:
        self.events: list[HistoryEvent] = []
        self._n = 0

    def task(
        self,
        task_id: str,
        queue: str,
        type_: str,
        at: int,
        steps: list[tuple[str, str | None, str | None]],
        *,
        labels: dict[str, str] | None = None,
        payload: bytes = b"{}",
    ) -> None:
        """The enqueue (pending, with type, labels and payload), then each (state, error,
        consumer) a second apart."""
        retried = 0
        for i, (state, err, consumer) in enumerate([("pending", None, None), *steps]):
            self._n += 1
            if state == "retry":
                retried += 1
            enqueue = i == 0
            self.events.append(
                HistoryEvent(
                    queue, (at + i * 1000, self._n), task_id, state, at + i * 1000,
                    retried=retried if state != "active" else None, error=err,
                    consumer=consumer, type=type_ if enqueue else None,
                    labels=(labels or {}) if enqueue else None,
                    payload=payload if enqueue else None,
                    encoding="json" if enqueue else None, created_ms=at if enqueue else None,
                )
            )  # fmt: skip
