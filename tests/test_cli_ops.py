"""The operator CLI as a subprocess against a real redis-server: each command, its --json parsed
back, its tables, the exit codes (0 done, 1 not found or refused, 2 usage), confirmation on a
terminal, and `strego web` serving the API under asyncio and trio."""

from __future__ import annotations

import json
import os
import pty
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
import redis

from strego import Client, Task
from strego.backends.redis import RedisBackend
from strego.backends.redis.keys import Keys
from tests.redis_server import free_port
from tests.web.support import Seeded, seed

pytestmark = pytest.mark.redis

ROOT = Path(__file__).resolve().parent.parent
CONSUMER = "host-a:4242:0badcafe"


@pytest.fixture
def prefix(clean_redis_url: str) -> str:
    return f"ops{uuid.uuid4().hex[:8]}"


def strego(
    url: str, prefix: str, *args: str, env: dict[str, str] | None = None, stdin: Any = None
) -> subprocess.CompletedProcess[str]:
    """`strego ARGS --redis URL --prefix PREFIX` as a user runs it (stdin not a terminal)."""
    return subprocess.run(
        [sys.executable, "-m", "strego.cli", *args, "--redis", url, "--prefix", prefix],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **(env or {})},
        stdin=subprocess.DEVNULL if stdin is None else stdin,
    )


def ok(done: subprocess.CompletedProcess[str]) -> Any:
    """The JSON a successful --json command printed."""
    assert done.returncode == 0, done.stdout + done.stderr
    return json.loads(done.stdout)


def seeded(url: str, prefix: str, **tasks: str) -> Seeded:
    async def main() -> Seeded:
        backend = RedisBackend.from_url(url, prefix=prefix)
        try:
            ids = await seed(backend, CONSUMER)
            client = Client(backend)
            for type_ in tasks.values():
                await client.enqueue(Task(type_, queue="odd"))
            return ids
        finally:
            await backend.aclose()

    return anyio.run(main)


def dead_tasks(url: str, prefix: str, queue: str, count: int) -> None:
    """`count` more dead tasks in `queue`."""

    async def main() -> None:
        backend = RedisBackend.from_url(url, prefix=prefix)
        try:
            client = Client(backend)
            for _ in range(count):
                await client.enqueue(Task("doomed", queue=queue))
            for task in await backend.fetch([queue], count, "c", lease_ms=60_000):
                await backend.fail(queue, task.id, "c", "no", retry_in_ms=None)
        finally:
            await backend.aclose()

    anyio.run(main)


def test_reads_as_json_and_as_tables(clean_redis_url: str, prefix: str) -> None:
    ids = seeded(clean_redis_url, prefix)
    queues = ok(strego(clean_redis_url, prefix, "queues", "--json"))["queues"]
    assert [q["name"] for q in queues] == ["other", "work"]
    work = queues[1]
    assert work["counts"] == dict.fromkeys(work["counts"], 1)  # one task in each state
    assert work["history"]["total"] == {"completed": 1, "failed": 1, "dead": 1}
    assert work["oldest_pending_age_ms"] >= 0

    table = strego(clean_redis_url, prefix, "queues").stdout.splitlines()
    assert table[0].split() == [
        "QUEUE", "PAUSED", "SCHEDULED", "PENDING", "ACTIVE", "RETRY", "DEAD", "COMPLETED",
        "CANCELLED", "OLDEST", "DONE/H", "FAILED/H",
    ]  # fmt: skip
    assert table[2].split()[:8] == ["work", "1", "1", "1", "1", "1", "1", "1"]

    page = ok(strego(clean_redis_url, prefix, "tasks", "work", "--state", "dead", "--json"))
    assert [t["id"] for t in page["tasks"]] == [ids.dead] and page["next_cursor"] is None
    listing = strego(clean_redis_url, prefix, "tasks", "work", "--state", "retry").stdout
    assert ids.retry in listing and "boom <b>" in listing

    task = ok(strego(clean_redis_url, prefix, "task", ids.active, "--json"))
    assert task["state"] == "active" and task["consumer"] == CONSUMER
    assert task["payload"]["text"] == '{"n":"active"}'
    shown = strego(clean_redis_url, prefix, "task", ids.dead).stdout
    assert "last_error:    fatal 'x'" in shown and '{"n":"dead"}' in shown

    workers = ok(strego(clean_redis_url, prefix, "workers", "--json"))["workers"]
    assert [(w["name"], w["queue"], w["host"], w["pid"]) for w in workers] == [
        (CONSUMER, "work", "host-a", 4242)
    ]
    assert workers[0]["held"] == [ids.active]
    assert CONSUMER in strego(clean_redis_url, prefix, "workers").stdout


def test_a_queue_whose_keys_are_foreign_is_listed_as_unreadable(
    clean_redis_url: str, prefix: str
) -> None:
    """Another program's string in place of a queue's leases key: `queues` and `workers` still
    list every other queue (exit 0), that one with its error."""
    seeded(clean_redis_url, prefix)
    raw = redis.Redis.from_url(clean_redis_url)
    try:
        key = Keys(prefix, "other").leases
        raw.set(key, "someone else's")
    finally:
        raw.close()
    error = "ForeignKeyError: WRONGTYPE Operation against a key holding the wrong kind of value"
    other, work = ok(strego(clean_redis_url, prefix, "queues", "--json"))["queues"]
    assert other == {
        "name": "other",
        "error": error,
        "paused": None,
        "counts": None,
        "oldest_pending_age_ms": None,
        "history": None,
    }
    assert work["error"] is None and work["counts"] == dict.fromkeys(work["counts"], 1)
    shown = strego(clean_redis_url, prefix, "queues")
    assert shown.returncode == 0, shown.stderr
    table = shown.stdout.splitlines()
    assert table[1].split() == ["other", *["?"] * 10]
    assert table[2].split()[:8] == ["work", "1", "1", "1", "1", "1", "1", "1"]
    assert table[3] == f"other: unreadable: {error}"
    workers = ok(strego(clean_redis_url, prefix, "workers", "--json"))
    assert [(w["name"], w["queue"]) for w in workers["workers"]] == [(CONSUMER, "work")]
    assert workers["unreadable"] == [{"name": "other", "error": error}]
    listed = strego(clean_redis_url, prefix, "workers")
    assert listed.returncode == 0 and CONSUMER in listed.stdout
    assert listed.stdout.endswith(f"other: unreadable: {error}\n")


def test_paging_with_the_cursor(clean_redis_url: str, prefix: str) -> None:
    seeded(clean_redis_url, prefix, a="t1", b="t2", c="t3")
    first = ok(strego(clean_redis_url, prefix, "tasks", "odd", "--limit", "2", "--json"))
    assert len(first["tasks"]) == 2 and first["next_cursor"]
    rest = ok(
        strego(clean_redis_url, prefix, "tasks", "odd", "--cursor", first["next_cursor"], "--json")
    )
    assert [t["type"] for t in first["tasks"] + rest["tasks"]] == ["t1", "t2", "t3"]
    assert rest["next_cursor"] is None
    table = strego(clean_redis_url, prefix, "tasks", "odd", "--limit", "2").stdout
    assert f"more: --cursor {first['next_cursor']}" in table


def test_the_redis_url_from_the_environment(clean_redis_url: str, prefix: str) -> None:
    seeded(clean_redis_url, prefix)
    done = subprocess.run(
        [sys.executable, "-m", "strego.cli", "queues", "--json", "--prefix", prefix],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "STREGO_REDIS_URL": clean_redis_url},
    )
    assert [q["name"] for q in ok(done)["queues"]] == ["other", "work"]


def test_actions_and_their_exit_codes(clean_redis_url: str, prefix: str) -> None:
    ids = seeded(clean_redis_url, prefix)
    url = clean_redis_url
    assert ok(strego(url, prefix, "requeue", "work", ids.dead, "--json")) == {
        "id": ids.dead, "action": "requeue", "changed": True,
    }  # fmt: skip
    again = strego(url, prefix, "requeue", "work", ids.dead)
    assert again.returncode == 1
    assert again.stderr == (
        f"strego requeue: task {ids.dead!r} is pending: only dead tasks can be requeued\n"
    )
    refused = strego(url, prefix, "requeue", "work", ids.dead, "--json")
    assert refused.returncode == 1 and json.loads(refused.stderr)["error"] == "wrong_state"
    assert strego(url, prefix, "requeue", "other", ids.retry).returncode == 1  # another queue
    assert strego(url, prefix, "cancel", ids.pending).stdout == "cancelled\n"
    running = strego(url, prefix, "cancel", ids.active)  # a request: its server stops it
    assert running.returncode == 0 and running.stdout == "cancel requested: its server stops it\n"
    assert strego(url, prefix, "delete", ids.completed).returncode == 0
    missing = strego(url, prefix, "delete", ids.completed)
    assert missing.returncode == 1 and "no task with id" in missing.stderr
    assert ok(strego(url, prefix, "pause", "work", "--json")) == {"queue": "work", "paused": True}
    queues = ok(strego(url, prefix, "queues", "--json"))["queues"]
    assert queues[1]["paused"] is True
    assert strego(url, prefix, "resume", "work").stdout == "resumed work\n"
    purged = ok(strego(url, prefix, "purge", "work", "--state", "cancelled,scheduled", "--json"))
    # the cancelled task, the pending one cancelled above, the scheduled one
    assert purged["changed"] == 3 and purged["states"] == ["cancelled", "scheduled"]
    assert strego(url, prefix, "purge", "work", "--state", "active").returncode == 2
    assert strego(url, prefix, "requeue", "work", "--all").stdout == "requeued 0\n"  # none dead
    dead_tasks(url, prefix, "other", 3)
    assert ok(strego(url, prefix, "requeue", "other", "--all", "--json")) == {
        "queue": "other", "action": "requeue-dead", "changed": 3,
    }  # fmt: skip
    assert ok(strego(url, prefix, "queues", "--json"))["queues"][0]["counts"]["dead"] == 0
    for unknown in (("pause", "nope"), ("tasks", "nope"), ("task", "nope"), ("cancel", "nope")):
        done = strego(url, prefix, *unknown)
        assert done.returncode == 1 and done.stdout == "", unknown


@pytest.mark.parametrize(
    "args",
    [
        ("tasks",),
        ("tasks", "work", "--state", "bogus"),
        ("tasks", "work", "--limit", "0"),
        ("tasks", "work", "--cursor", "garbage"),
        ("requeue", "work"),
        ("requeue", "work", "x", "--all"),
        ("purge", "work"),
        ("nonsense",),
    ],
)
def test_usage_errors_exit_2(clean_redis_url: str, prefix: str, args: tuple[str, ...]) -> None:
    seeded(clean_redis_url, prefix)
    done = strego(clean_redis_url, prefix, *args)
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr


def test_a_redis_that_is_down_or_a_bad_url(prefix: str) -> None:
    down = strego(f"redis://127.0.0.1:{free_port()}/0", prefix, "queues")
    assert down.returncode == 1
    (line,) = down.stderr.splitlines()  # the cause, not a traceback
    assert line.startswith("strego queues: BackendConnectionError: could not connect")
    assert strego("http://nowhere", prefix, "queues").returncode == 2


def on_a_terminal(url: str, prefix: str, answer: bytes, *args: str) -> tuple[int, str]:
    """Run a command with stdin a terminal that types `answer`; its code and stderr."""
    master, slave = pty.openpty()
    try:
        process = subprocess.Popen(
            [sys.executable, "-m", "strego.cli", *args, "--redis", url, "--prefix", prefix],
            cwd=ROOT,
            stdin=slave,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        os.write(master, answer)
        _, err = process.communicate(timeout=60)
    finally:
        os.close(slave)
        os.close(master)
    return process.returncode, err


def test_destructive_commands_ask_on_a_terminal(clean_redis_url: str, prefix: str) -> None:
    ids = seeded(clean_redis_url, prefix)
    url = clean_redis_url
    code, err = on_a_terminal(url, prefix, b"n\n", "delete", ids.dead)
    assert code == 1
    assert err == (f"delete task {ids.dead}? [y/N] strego delete: not confirmed: nothing changed\n")
    assert ok(strego(url, prefix, "task", ids.dead, "--json"))["state"] == "dead"
    assert on_a_terminal(url, prefix, b"y\n", "delete", ids.dead)[0] == 0
    assert strego(url, prefix, "task", ids.dead).returncode == 1
    code, err = on_a_terminal(url, prefix, b"", "purge", "work", "--state", "completed", "--yes")
    assert (code, err) == (0, "")  # --yes: not asked
    code, err = on_a_terminal(url, prefix, b"\n", "cancel", ids.pending)
    assert code == 1 and "not confirmed" in err
    code, err = on_a_terminal(url, prefix, b"no\n", "requeue", "work", "--all")
    assert code == 1 and err.startswith("requeue every dead task of work? [y/N]")


def test_tables_never_send_control_characters_to_the_terminal(
    clean_redis_url: str, prefix: str
) -> None:
    seeded(clean_redis_url, prefix, a="evil\x1b]0;owned\x07\x1b[31mred\u202e")
    table = strego(clean_redis_url, prefix, "tasks", "odd").stdout
    assert "\x1b" not in table and "\x07" not in table and "\u202e" not in table
    assert "evil\\x1b]0;owned\\x07\\x1b[31mred\\u202e" in table
    listed = ok(strego(clean_redis_url, prefix, "tasks", "odd", "--json"))
    assert listed["tasks"][0]["type"] == "evil\x1b]0;owned\x07\x1b[31mred\u202e"


@pytest.mark.parametrize("loop", ["asyncio", "trio"])
def test_strego_web_serves_the_api(clean_redis_url: str, prefix: str, loop: str) -> None:
    ids = seeded(clean_redis_url, prefix)
    web_port = free_port()
    readonly = loop == "asyncio"  # read-only under asyncio, read-write under trio
    args = [sys.executable, "-m", "strego.cli", "web", "--port", str(web_port)]
    args += ["--redis", clean_redis_url, "--prefix", prefix, "--root-path", "/ops"]
    args += (["--trio"] if loop == "trio" else []) + ([] if readonly else ["--no-readonly"])
    # read-write under trio, so behind HTTP Basic (its password from the environment)
    env = {**os.environ, "STREGO_WEB_PASSWORD": "pw"} if not readonly else None
    server = subprocess.Popen(args, cwd=ROOT, stderr=subprocess.PIPE, text=True, env=env)
    base = f"http://127.0.0.1:{web_port}/ops/api/v1"
    try:
        assert server.stderr is not None
        said = [server.stderr.readline()]  # our line, then Hypercorn's once it listens
        said.append(server.stderr.readline())
        assert "Running on" in said[1], said
        # DNS rebinding: a page of another site under its own name, resolved to 127.0.0.1
        rebound = httpx.get(f"{base}/queues", headers={"host": f"evil.example:{web_port}"})
        assert rebound.status_code == 400
        auth = None if readonly else ("admin", "pw")
        if auth is not None:
            assert httpx.get(f"{base}/queues").status_code == 401
        with httpx.Client(base_url=base, timeout=10, auth=auth) as http:
            answer = http.get("/queues")
            assert answer.status_code == 200
            assert [q["name"] for q in answer.json()["queues"]] == ["other", "work"]
            assert http.get("/openapi.json").json()["servers"] == [{"url": "/ops/api/v1"}]
            requeue = http.post(f"/tasks/{ids.dead}/requeue")
            assert requeue.status_code == (405 if readonly else 200)
        server.send_signal(signal.SIGINT)
        _, err = server.communicate(timeout=30)
        assert server.returncode == 0, [*said, err]
        mode = "read-only" if readonly else "read-write"
        assert said[0].startswith(f"strego web: {mode}, on http://127.0.0.1:{web_port}/ops/")
    finally:
        server.kill()
        server.wait()


MARKUP = "<script>alert(1)</script>\"'&"
#: stored by a handler that returned it: the CLI prints it, never deserializes it
RESULT_VALUE = {"html": MARKUP, "esc": "\x1b[31mred\u202e", "n": 1}


def ended_tasks(url: str, prefix: str) -> dict[str, str]:
    """In queue "r": completed with a hostile JSON result, with raw bytes, with none; dead with
    a hostile error; cancelled; pending."""
    from strego.task import TaskError

    async def main() -> dict[str, str]:
        backend = RedisBackend.from_url(url, prefix=prefix)
        try:
            client = Client(backend)
            names = ("json", "raw", "none", "dead", "cancelled", "pending")
            ids = {n: (await client.enqueue(Task(n, queue="r", max_retry=0))).id for n in names}
            held = await backend.fetch(["r"], 4, "c", lease_ms=60_000)
            assert {t.id for t in held} == {ids[n] for n in names[:4]}
            value = json.dumps(RESULT_VALUE, ensure_ascii=False).encode()
            assert await backend.ack("r", ids["json"], "c", result=b"json\n" + value)
            assert await backend.ack("r", ids["raw"], "c", result=b"raw\n\xff\x00<b>")
            assert await backend.ack("r", ids["none"], "c")
            detail = TaskError(f"Bad{MARKUP}", MARKUP, f"Traceback\n  {MARKUP}\x1b[2J")
            await backend.fail("r", ids["dead"], "c", MARKUP, retry_in_ms=None, detail=detail)
            assert await backend.cancel(ids["cancelled"])
            return ids
        finally:
            await backend.aclose()

    return anyio.run(main)


def test_result_prints_the_stored_result(clean_redis_url: str, prefix: str) -> None:
    url = clean_redis_url
    ids = ended_tasks(url, prefix)
    done = ok(strego(url, prefix, "result", ids["json"], "--json"))
    assert done["id"] == ids["json"] and done["state"] == "completed"
    assert done["result"]["encoding"] == "json"
    assert json.loads(done["result"]["text"]) == RESULT_VALUE  # intact, as stored
    text = strego(url, prefix, "result", ids["json"])
    assert text.returncode == 0 and "<script>alert(1)</script>" in text.stdout
    # the stored JSON text, with what would drive a terminal shown as an escape
    assert "\u202e" not in text.stdout and 'red\\u202e"' in text.stdout
    raw = ok(strego(url, prefix, "result", ids["raw"], "--json"))["result"]
    assert raw["text"] is None and raw["base64"] == "/wA8Yj4="
    assert strego(url, prefix, "result", ids["raw"]).stdout == "base64:/wA8Yj4=\n"
    assert ok(strego(url, prefix, "result", ids["none"], "--json"))["result"] is None
    assert strego(url, prefix, "result", ids["none"]).stdout == ""

    dead = strego(url, prefix, "result", ids["dead"], "--json")
    assert dead.returncode == 1 and dead.stdout == ""
    said = json.loads(dead.stderr)
    assert said["error"] == "dead" and MARKUP in said["message"]
    assert said["task_error"] == {
        "type": f"Bad{MARKUP}", "message": MARKUP, "traceback": f"Traceback\n  {MARKUP}\x1b[2J",
    }  # fmt: skip
    dead_text = strego(url, prefix, "result", ids["dead"])
    assert dead_text.returncode == 1 and "\x1b" not in dead_text.stderr
    assert f"strego result: task {ids['dead']!r} died: Bad{MARKUP}: {MARKUP}" in dead_text.stderr
    cancelled = strego(url, prefix, "result", ids["cancelled"], "--json")
    assert cancelled.returncode == 1 and json.loads(cancelled.stderr)["error"] == "cancelled"
    missing = strego(url, prefix, "result", "nope", "--json")
    assert missing.returncode == 1 and json.loads(missing.stderr)["error"] == "not_found"
    late = strego(url, prefix, "result", ids["pending"], "--timeout", "0.2", "--json")
    assert late.returncode == 1 and json.loads(late.stderr)["error"] == "timeout"
    assert strego(url, prefix, "result", ids["pending"], "--timeout", "x").returncode == 2

    shown = ok(strego(url, prefix, "task", ids["dead"], "--json"))
    assert shown["error"]["message"] == MARKUP and shown["cancel_requested"] is False
    table = strego(url, prefix, "task", ids["json"]).stdout
    assert "result:        json," in table and "\x1b" not in table
    assert "error:         Bad" in strego(url, prefix, "task", ids["dead"]).stdout


def test_result_waits_for_the_task_to_end(clean_redis_url: str, prefix: str) -> None:
    import redis

    url = clean_redis_url
    ids = ended_tasks(url, prefix)
    channel = RedisBackend.from_url(url, prefix=prefix).keys("r").ended_channel
    args = [sys.executable, "-m", "strego.cli", "result", ids["pending"], "--json"]
    waiting = subprocess.Popen(
        [*args, "--timeout", "60", "--redis", url, "--prefix", prefix],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        with redis.Redis.from_url(url) as r:
            # the command subscribed to the task's end: complete the task now
            deadline = time.monotonic() + 30
            while not dict(r.pubsub_numsub(channel)).get(channel.encode(), 0):
                assert waiting.poll() is None, waiting.communicate()
                assert time.monotonic() < deadline, "the command never subscribed"
                time.sleep(0.01)  # polling its progress, as tests.runtime_support.eventually

        async def complete() -> None:
            backend = RedisBackend.from_url(url, prefix=prefix)
            try:
                (task,) = await backend.fetch(["r"], 1, "c", lease_ms=60_000)
                assert await backend.ack("r", task.id, "c", result=b'json\n"done"')
            finally:
                await backend.aclose()

        anyio.run(complete)
        out, err = waiting.communicate(timeout=60)
    finally:
        waiting.kill()
        waiting.wait()
    assert waiting.returncode == 0, err
    assert json.loads(out)["result"]["text"] == '"done"'


def test_schedules(clean_redis_url: str, prefix: str) -> None:
    import attrs

    from strego.backends.base import ScheduleDefinition
    from strego.message import TaskMessage

    url = clean_redis_url
    listed = ok(strego(url, prefix, "schedules", "--json"))
    assert listed["schedules"] == [] and listed["now_ms"] > 0

    async def store() -> int:
        backend = RedisBackend.from_url(url, prefix=prefix)
        try:
            template = TaskMessage(
                id="x", type=f"report{MARKUP}\x1b[2J", queue="reports", payload=b"{}",
                encoding="json", created_ms=0,
            )  # fmt: skip
            nightly = ScheduleDefinition("nightly", "0 3 * * *", "Europe/Paris", "all", template)
            beat = ScheduleDefinition("beat", "every 60000ms", "UTC", "latest", template)
            now = backend.clock()
            info = await backend.put_schedule(nightly, now - 1000)
            await backend.put_schedule(attrs.evolve(beat), now + 60_000)
            assert await backend.fire_schedule(info, now - 1000, now + 3_600_000) == "fired"
            return now
        finally:
            await backend.aclose()

    now = anyio.run(store)
    beat, nightly = ok(strego(url, prefix, "schedules", "--json"))["schedules"]
    assert (beat["id"], beat["queue"], beat["spec"], beat["tz"]) == (
        "beat", "reports", "every 60000ms", "UTC",
    )  # fmt: skip
    assert beat["type"] == f"report{MARKUP}\x1b[2J"
    assert beat["next_ms"] == now + 60_000 and beat["last_fire_ms"] is None
    assert nightly["catchup"] == "all" and nightly["next_ms"] == now + 3_600_000
    assert nightly["last_fire_ms"] == now - 1000
    assert nightly["last_task_id"] == f"nightly:{now - 1000}"
    table = strego(url, prefix, "schedules").stdout.splitlines()
    assert table[0].split() == [
        "ID", "QUEUE", "TYPE", "SPEC", "TZ", "NEXT", "FIRE", "LAST", "FIRE", "LAST", "TASK",
    ]  # fmt: skip
    assert table[1].startswith("beat ") and "\x1b" not in "\n".join(table)
    assert f"nightly:{now - 1000}" in table[2] and "Europe/Paris" in table[2]
