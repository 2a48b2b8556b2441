"""The eviction check: a Redis whose `maxmemory-policy` is not `noeviction` may delete keys when
it reaches `maxmemory`, task records and streams among them, and tasks are then lost without an
error. Under `noeviction` a full Redis refuses writes instead (strego raises OutOfMemoryError)
and loses nothing. A backend checks the policy once, before its first call, and warns."""

from __future__ import annotations

import logging

from strego.backends.redis.transport import Command, Transport
from strego.errors import BackendConnectionError, BackendTimeoutError, StregoError

log = logging.getLogger("strego.backends.redis")

#: The one policy under which Redis never deletes strego's keys.
SAFE_POLICY = "noeviction"

#: (server run id, policy) already warned about: once per process for each Redis server.
_warned: set[tuple[str, str]] = set()


class NotReachable(Exception):
    """Redis could not be asked (yet): check again on a later call."""


def _info_field(reply: object, field: str) -> str | None:
    """One `field:value` line of an INFO reply."""
    if isinstance(reply, bytes):
        reply = reply.decode("utf-8", "replace")
    if not isinstance(reply, str):
        return None
    for line in reply.splitlines():
        name, sep, value = line.partition(":")
        if sep and name == field:
            return value.strip()
    return None


def _config_value(reply: object) -> str | None:
    """The value of a one-parameter CONFIG GET reply (a flat list, or a map under RESP3)."""
    if isinstance(reply, dict):
        values = list(reply.values())
    elif isinstance(reply, list | tuple) and len(reply) == 2:
        values = [reply[1]]
    else:
        return None
    value = values[0] if len(values) == 1 else None
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return value if isinstance(value, str) else None


async def _ask(transport: Transport, *args: str) -> object:
    """The reply of a read-only command, or None when Redis refused it (a managed Redis may
    disable INFO or CONFIG)."""
    try:
        return await transport.execute(Command(args, idempotent=True))
    except (BackendConnectionError, BackendTimeoutError) as exc:
        raise NotReachable(str(exc)) from exc
    except StregoError as exc:
        log.debug("%s is refused (%s)", " ".join(args), exc)
        return None


async def read_policy(transport: Transport) -> str | None:
    """The server's maxmemory-policy (INFO memory, else CONFIG GET), None when neither says.
    Raises NotReachable when Redis cannot be reached."""
    policy = _info_field(await _ask(transport, "INFO", "memory"), "maxmemory_policy")
    if policy is None:
        policy = _config_value(await _ask(transport, "CONFIG", "GET", "maxmemory-policy"))
    return policy


async def warn_if_evicting(transport: Transport) -> None:
    """Log a WARNING, once per process for each Redis server and policy, when the policy may
    evict strego's keys. Never raises but NotReachable (and cancellation)."""
    policy = await read_policy(transport)
    if policy is None:
        log.debug("the maxmemory-policy of this Redis is unknown (INFO and CONFIG refused)")
        return
    if policy == SAFE_POLICY:
        return
    server = _info_field(await _ask(transport, "INFO", "server"), "run_id") or "unknown"
    if (server, policy) in _warned:
        return
    _warned.add((server, policy))
    log.warning(
        "Redis maxmemory-policy is %r, not %r: when Redis reaches maxmemory it may evict"
        " strego's task records and streams, and those tasks are lost without an error. Set"
        " `maxmemory-policy noeviction` (a full Redis then refuses new tasks with"
        " OutOfMemoryError and loses none).",
        policy,
        SAFE_POLICY,
    )
