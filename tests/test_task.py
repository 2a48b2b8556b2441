"""Task validation: every rule raises the typed error, valid tasks construct, durations and times
convert."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta, timezone, tzinfo
from typing import Any

import attrs
import pytest

from strego.errors import InvalidQueueNameError, InvalidTaskError, NaiveDatetimeError
from strego.task import Task, TaskInfo, TaskState, validate_queue_name


def test_defaults() -> None:
    task = Task("email.send", {"to": "a@b"})
    assert (task.type, task.payload, task.queue) == ("email.send", {"to": "a@b"}, "default")
    assert (task.max_retry, task.priority, task.labels, task.id) == (3, 0, {}, None)
    assert task.timeout is None and task.process_at is None and task.process_in is None


def test_valid_task_with_every_option() -> None:
    task = Task(
        "t",
        b"raw",
        queue="mail.out-1_x",
        max_retry=0,
        timeout=2.5,
        process_in=0,
        priority=10,
        unique_key="k",
        unique_ttl=60,
        labels={"tenant": "acme"},
        id="order:42-a.b_c",
    )
    assert (task.queue, task.max_retry, task.timeout, task.process_in) == (
        "mail.out-1_x",
        0,
        2.5,
        0.0,
    )
    assert (task.priority, task.unique_ttl, task.id) == (10, 60.0, "order:42-a.b_c")


@pytest.mark.parametrize("value", ["", "x" * 257, None, 3])
def test_bad_type(value: Any) -> None:
    with pytest.raises(InvalidTaskError, match="task type"):
        Task(value)


def test_type_at_limit() -> None:
    assert Task("x" * 256).type == "x" * 256


@pytest.mark.parametrize(
    "name", ["", "a" * 101, "with space", "br{ace}", "co:lon", "tab\t", "ünï", None, 5]
)
def test_bad_queue_name(name: Any) -> None:
    with pytest.raises(InvalidQueueNameError):
        Task("t", queue=name)
    with pytest.raises(InvalidQueueNameError):
        validate_queue_name(name)


def test_queue_name_error_is_invalid_task_error() -> None:
    with pytest.raises(InvalidTaskError):
        Task("t", queue="")


@pytest.mark.parametrize("name", ["a", "a" * 100, "A-Z_a.z-0.9"])
def test_good_queue_name(name: str) -> None:
    assert validate_queue_name(name) == name


@pytest.mark.parametrize("value", [-1, 1.5, True, "3", None])
def test_bad_max_retry(value: Any) -> None:
    with pytest.raises(InvalidTaskError, match="max_retry"):
        Task("t", max_retry=value)


@pytest.mark.parametrize("value", [-1, 11, 2.0, True, "1", None])
def test_bad_priority(value: Any) -> None:
    with pytest.raises(InvalidTaskError, match="priority"):
        Task("t", priority=value)


@pytest.mark.parametrize("value", ["", "x" * 129, "has space", "slash/", "brace{", 7])
def test_bad_id(value: Any) -> None:
    with pytest.raises(InvalidTaskError, match="task id"):
        Task("t", id=value)


def test_id_at_limit() -> None:
    assert Task("t", id="a" * 128).id == "a" * 128


@pytest.mark.parametrize("value", ["", "x" * 513, 5])
def test_bad_unique_key(value: Any) -> None:
    with pytest.raises(InvalidTaskError, match="unique_key"):
        Task("t", unique_key=value, unique_ttl=10)


def test_unique_key_and_ttl_go_together() -> None:
    with pytest.raises(InvalidTaskError, match="unique_key needs a unique_ttl"):
        Task("t", unique_key="k")
    with pytest.raises(InvalidTaskError, match="unique_ttl needs a unique_key"):
        Task("t", unique_ttl=10)


@pytest.mark.parametrize("field", ["timeout", "unique_ttl"])
@pytest.mark.parametrize(
    "value",
    [0, -1, float("inf"), float("nan"), "5", True, timedelta(0), 1e300, timedelta(days=36_600)],
)
def test_bad_positive_durations(field: str, value: Any) -> None:
    extra = {"unique_key": "k"} if field == "unique_ttl" else {}
    with pytest.raises(InvalidTaskError, match=field):
        Task("t", **{field: value}, **extra)


@pytest.mark.parametrize("value", [-0.5, float("inf"), "1", timedelta(seconds=-1), 1e300, 4e9])
def test_bad_process_in(value: Any) -> None:
    with pytest.raises(InvalidTaskError, match="process_in"):
        Task("t", process_in=value)


@pytest.mark.parametrize(
    "value", [float("nan"), "2026-01-01", True, float("inf"), float("-inf"), 1e20, -1e20]
)
def test_bad_process_at(value: Any) -> None:
    with pytest.raises(InvalidTaskError, match="process_at"):
        Task("t", process_at=value)


def test_durations_and_times_at_their_limits() -> None:
    hundred_years = 100 * 365.25 * 86_400
    assert Task("t", process_in=hundred_years).process_in == hundred_years
    assert Task("t", timeout=timedelta(days=36_524)).timeout == 36_524 * 86_400
    last = datetime(9999, 12, 31, 23, 59, tzinfo=UTC)
    assert Task("t", process_at=last).process_at == last.timestamp()


def test_process_at_and_in_exclusive() -> None:
    with pytest.raises(InvalidTaskError, match="at most one"):
        Task("t", process_at=1_700_000_000, process_in=5)


@pytest.mark.parametrize("value", [{"a": 1}, {1: "a"}, ["a"], "a=b"])
def test_bad_labels(value: Any) -> None:
    with pytest.raises(InvalidTaskError, match="labels"):
        Task("t", labels=value)


def test_labels_copied() -> None:
    source = {"a": "b"}
    task = Task("t", labels=source)
    source["c"] = "d"
    assert task.labels == {"a": "b"}


def test_timedelta_conversion() -> None:
    task = Task(
        "t",
        timeout=timedelta(minutes=2),
        process_in=timedelta(milliseconds=1500),
        unique_key="k",
        unique_ttl=timedelta(hours=1),
    )
    assert (task.timeout, task.process_in, task.unique_ttl) == (120.0, 1.5, 3600.0)
    assert Task("t", timeout=3).timeout == 3.0 and isinstance(Task("t", timeout=3).timeout, float)


def test_datetime_conversion() -> None:
    aware = datetime(2026, 1, 1, tzinfo=UTC)
    assert Task("t", process_at=aware).process_at == 1_767_225_600.0
    new_york = datetime(2025, 12, 31, 19, tzinfo=timezone(timedelta(hours=-5)))
    assert Task("t", process_at=new_york).process_at == 1_767_225_600.0
    assert Task("t", process_at=1_767_225_600).process_at == 1_767_225_600.0


class _NoOffset(tzinfo):
    """A tzinfo that knows no offset: a datetime carrying it is naive all the same."""

    def utcoffset(self, dt: datetime | None) -> None:
        return None


@pytest.mark.parametrize(
    "naive", [datetime(2026, 1, 1, 12, 30), datetime(2026, 1, 1, tzinfo=_NoOffset())]
)
def test_naive_process_at_is_refused(naive: datetime) -> None:
    with pytest.raises(NaiveDatetimeError, match=r"process_at must be an aware datetime") as err:
        Task("t", process_at=naive)
    assert isinstance(err.value, InvalidTaskError)
    assert "datetime.now(timezone.utc)" in str(err.value)


# The case: in New York, a naive `utcnow() + 5 s` was read as local time, five hours out.
# Under the same TZ it is refused, and the aware form it is told to use is due in 5 s.
NEW_YORK_SCRIPT = """
import time
from datetime import datetime, timedelta, timezone
import strego

assert time.localtime().tm_gmtoff != 0, "TZ did not take effect"
try:
    strego.Task("t", process_at=datetime.utcnow() + timedelta(seconds=5))
except strego.NaiveDatetimeError as exc:
    print("refused:", exc)
due = strego.Task("t", process_at=datetime.now(timezone.utc) + timedelta(seconds=5)).process_at
print("due in", round(due - time.time()))
"""


def test_naive_process_at_is_refused_in_another_time_zone() -> None:
    done = subprocess.run(
        [sys.executable, "-W", "ignore::DeprecationWarning", "-c", NEW_YORK_SCRIPT],
        env={**os.environ, "TZ": "America/New_York"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    refused, due = done.stdout.splitlines()
    assert refused.startswith("refused: process_at must be an aware datetime")
    assert due == "due in 5"


def test_task_info_views() -> None:
    info = TaskInfo(
        id="a",
        type="t",
        queue="q",
        state=TaskState.ACTIVE,
        payload=b"",
        encoding="json",
        max_retry=3,
        timeout_ms=2_500,
        created_ms=1_767_225_600_000,
        started_ms=1_767_225_601_500,
    )
    assert info.created_at == datetime(2026, 1, 1, tzinfo=UTC)
    assert info.started_at == datetime(2026, 1, 1, 0, 0, 1, 500_000, tzinfo=UTC)
    assert info.completed_at is None and info.next_run_at is None and info.ended_at is None
    assert info.timeout == 2.5
    ended = attrs.evolve(info, state=TaskState.DEAD, ended_ms=1_767_225_602_000)
    assert ended.ended_at == datetime(2026, 1, 1, 0, 0, 2, tzinfo=UTC)
