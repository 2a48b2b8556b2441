"""When a periodic schedule's ticks fall, and which of them to fire after a gap.

A schedule is a cron expression (read by cronsim, which treats daylight saving time as Debian's
cron does: a time skipped by a spring-forward runs at the first minute after the gap, a
fixed-time job in a repeated hour runs once, a wildcard one in each copy of the hour) in a time
zone, or an interval: ticks at whole multiples of it since the Unix epoch, so every server that
computes them gets the same instants without asking another.

Everything here is a pure function of instants (epoch ms) passed in, never of a clock: the caller
passes the backend's time (docs/architecture.md, invariant 7), and tests pass any time they like.
"""

from __future__ import annotations

import re
from datetime import datetime, timedelta
from typing import Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import attrs
from cronsim import CronSim, CronSimError

from strego.errors import InvalidScheduleError
from strego.task import MAX_SECONDS

Catchup = Literal["latest", "all", "none"]
CATCHUP: tuple[Catchup, ...] = ("latest", "all", "none")
#: With catchup "all", at most this many missed ticks fire on return (the latest ones).
MAX_CATCHUP = 100
#: With catchup "none", a tick is fired when found at most this late (and never later than half
#: the time to the following tick): later than that it was missed, and is skipped.
NONE_GRACE_MS = 60_000
#: Schedule ids: like queue names, no colon (a tick's task id is `<schedule id>:<tick ms>`).
SCHEDULE_ID_PATTERN = re.compile(r"[A-Za-z0-9_.\-]{1,100}")
_EVERY = re.compile(r"every (\d+)ms")


def check_schedule_id(value: object) -> str:
    if not isinstance(value, str) or SCHEDULE_ID_PATTERN.fullmatch(value) is None:
        raise InvalidScheduleError(
            f"invalid schedule id {value!r}: use 1 to 100 characters from A-Z a-z 0-9 _ . -"
        )
    return value


def check_catchup(value: object) -> Catchup:
    for name in CATCHUP:
        if value == name:
            return name
    raise InvalidScheduleError(f"catchup must be one of {', '.join(CATCHUP)}, not {value!r}")


def tick_task_id(schedule_id: str, tick_ms: int) -> str:
    """The id of the task a tick enqueues: the same whichever server fires it."""
    return f"{schedule_id}:{tick_ms}"


@attrs.frozen
class Ticks:
    """The ticks of one schedule. `spec` is a cron expression or ``every <n>ms`` (see `parse`)."""

    spec: str
    tz: str
    _every_ms: int | None = attrs.field(init=False, default=None)
    _zone: ZoneInfo = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        try:
            zone = ZoneInfo(self.tz)
        except (ZoneInfoNotFoundError, ValueError, TypeError) as exc:
            raise InvalidScheduleError(f"unknown time zone {self.tz!r}") from exc
        object.__setattr__(self, "_zone", zone)
        every = _EVERY.fullmatch(self.spec)
        if every is not None:
            object.__setattr__(self, "_every_ms", int(every.group(1)))
            return
        try:
            CronSim(self.spec, datetime.now(zone))
        except (CronSimError, ValueError, TypeError) as exc:
            raise InvalidScheduleError(f"invalid cron expression {self.spec!r}: {exc}") from exc

    @classmethod
    def parse(cls, schedule: str | timedelta, tz: str = "UTC") -> Ticks:
        """From what a user passes: a cron expression, or a timedelta of at least 1 ms (whole
        milliseconds) and at most 100 years."""
        if isinstance(schedule, timedelta):
            ms = schedule // timedelta(milliseconds=1)
            if schedule != timedelta(milliseconds=ms) or not 0 < ms <= MAX_SECONDS * 1000:
                raise InvalidScheduleError(
                    "an interval must be whole milliseconds, from 1 ms to 100 years,"
                    f" not {schedule!r}"
                )
            return cls(f"every {ms}ms", tz)
        if not isinstance(schedule, str) or _EVERY.fullmatch(schedule.strip()):
            raise InvalidScheduleError(
                f"a schedule is a cron expression or a datetime.timedelta, not {schedule!r}"
            )
        return cls(" ".join(schedule.split()), tz)

    def _at(self, ms: int) -> datetime:
        return datetime.fromtimestamp(ms / 1000, self._zone)

    def after(self, ms: int) -> int:
        """The first tick strictly after `ms`."""
        if self._every_ms is not None:
            return (ms // self._every_ms + 1) * self._every_ms
        return _ms(next(CronSim(self.spec, self._at(ms))))

    def at_or_before(self, ms: int) -> int:
        """The last tick at or before `ms`."""
        if self._every_ms is not None:
            return ms // self._every_ms * self._every_ms
        # reverse iteration gives ticks strictly before its start: start 1 ms later
        return _ms(next(CronSim(self.spec, self._at(ms + 1), reverse=True)))

    def due(self, first_ms: int, now_ms: int, limit: int) -> list[int]:
        """Up to `limit` ticks from `first_ms` to `now_ms` (both included), the latest ones,
        oldest first."""
        found: list[int] = []
        tick = self.at_or_before(now_ms)
        while tick >= first_ms and len(found) < limit:
            found.append(tick)
            if self._every_ms is not None:
                tick -= self._every_ms
            else:
                tick = self.at_or_before(tick - 1)
        return found[::-1]


def _ms(dt: datetime) -> int:
    return round(dt.timestamp() * 1000)


@attrs.frozen
class Step:
    """One fire call: fire `tick_ms` (or, when `fire` is False, skip every tick up to it), and
    leave the schedule at `next_ms`."""

    tick_ms: int
    fire: bool
    next_ms: int


def plan(ticks: Ticks, catchup: Catchup, next_ms: int, now_ms: int) -> list[Step]:
    """What to do with a schedule whose next tick is `next_ms`, at `now_ms`: nothing when the tick
    is not due; else the steps, in order. Each next tick is computed from the tick fired, not from
    now, so a schedule does not drift with the time its fire took.

    - "latest": the latest due tick fires once, the older ones are skipped;
    - "all": every due tick fires, oldest first (at most MAX_CATCHUP of them, the latest);
    - "none": a tick found later than the grace (NONE_GRACE_MS, or half the time to the tick after
      it if that is less) is skipped; the latest due tick fires if it is still on time."""
    if next_ms > now_ms:
        return []
    if catchup == "all":
        # (next_ms is a tick: put_schedule stores one; `or` keeps a schedule moving if not)
        due = ticks.due(next_ms, now_ms, MAX_CATCHUP) or [next_ms]
        return [Step(t, True, ticks.after(t)) for t in due]
    latest = max(ticks.at_or_before(now_ms), next_ms)
    after = ticks.after(latest)
    if catchup == "latest":
        return [Step(latest, True, after)]
    grace = min(NONE_GRACE_MS, (after - latest) // 2)
    return [Step(latest, now_ms - latest <= grace, after)]
