"""`ClusterTransport`: the Transport protocol over a Redis Cluster, one `AnyioTransport` per
primary, on asyncio and trio. URL:

    redis+cluster://[[user]:password@]h1:7000,h2:7001[/0][?option=value...]
    rediss+cluster://...               (TLS)

Options are those of a plain redis:// URL, and cluster_timeout (seconds, default 30): how long a
call keeps retrying while slots move or a primary is replaced.

- The slot map comes from CLUSTER SHARDS (any node that answers: the seeds, then the nodes seen),
  asked again on MOVED, on a connection failure, and every REFRESH_S seconds.
- A call goes to the primary of its first key's slot (strego's scripts touch one queue, one hash
  tag: one slot). A pipeline is split per node, the parts sent at once, and the replies put back
  in the caller's order. Order across nodes is kept: a command that follows a script on another
  node in the same pipeline waits for it.
- MOVED: the call goes to the named node, and the map is refreshed. ASK: it is sent once more to
  the named node after ASKING. TRYAGAIN and CLUSTERDOWN: sent again with backoff until
  cluster_timeout. A node that cannot be reached: the map is refreshed and the call sent again
  (only if it never reached the node, or is idempotent, as on one server).
- NOSCRIPT: the node's own transport loads the script on that node and calls again.
- MGET over several slots is split per slot. Fetches and schedulers wait on `wakeups` (sharded
  pub/sub, wakeups.py: one subscriber connection per primary); a blocking XREAD over several
  slots, their fallback, blocks on each slot at once (a connection each) and returns the first
  reply (a wake-up: the rest are cancelled; XREAD without a group consumes nothing).
"""

from __future__ import annotations

import math
import random
import ssl
import time
from collections.abc import Sequence
from types import TracebackType
from typing import Any, Self
from urllib.parse import unquote

import anyio
import attrs

from strego.backends.redis.anyio_transport import AnyioTransport
from strego.backends.redis.core import _pairs
from strego.backends.redis.pubsub import AnyioPubSub
from strego.backends.redis.slots import SLOTS, command_keys, key_slot
from strego.backends.redis.transport import Command, ScriptCall, to_resend
from strego.backends.redis.url import ConnectionSettings, parse_url
from strego.backends.redis.wakeups import Wakeups
from strego.errors import (
    BackendCertificateError,
    BackendConnectionError,
    BackendError,
    ReplyLostError,
)

Address = tuple[str, int]
Call = ScriptCall | Command

#: Seconds between slot-map refreshes when nothing prompts one.
REFRESH_S = 10.0
_RETRY = ("TRYAGAIN", "CLUSTERDOWN", "LOADING", "MASTERDOWN")


@attrs.define
class ClusterStats:
    """Counters for tests and benchmarks."""

    moved: int = 0
    ask: int = 0
    retried: int = 0
    refreshes: int = 0


def is_cluster_url(url: str) -> bool:
    return url.split("://", 1)[0].lower() in {"redis+cluster", "rediss+cluster"}


def parse_cluster_url(
    url: str, *, ssl_context: ssl.SSLContext | None = None
) -> tuple[list[Address], ConnectionSettings, float]:
    """The seed nodes, the settings of every node (host and port aside) and cluster_timeout from
    a redis+cluster:// URL. Raises ValueError on a malformed URL or an unknown option."""
    scheme, sep, rest = url.partition("://")
    if not sep or not is_cluster_url(url):
        raise ValueError(f"not a Cluster URL: {_safe(url)}")
    end = min((i for i in (rest.find("/"), rest.find("?")) if i >= 0), default=len(rest))
    netloc, tail = rest[:end], rest[end:]
    userinfo, at, hosts = netloc.rpartition("@")
    seeds: list[Address] = []
    for part in hosts.split(","):
        if not part:
            continue
        host, colon, port_text = part.rpartition(":")
        if not colon:
            host, port_text = part, "6379"
        try:
            port = int(port_text)
        except ValueError:
            raise ValueError(f"bad port {port_text!r} in Cluster URL {_safe(url)}") from None
        if not host or not 0 < port < 65536:
            raise ValueError(f"bad node {part!r} in Cluster URL {_safe(url)}")
        seeds.append((unquote(host.strip("[]")), port))
    if not seeds:
        raise ValueError(f"a Cluster URL needs at least one node: {_safe(url)}")
    timeout = 30.0
    path, _, query = tail.partition("?")
    options = []
    for item in query.split("&") if query else []:
        name, _, value = item.partition("=")
        if name == "cluster_timeout":
            try:
                timeout = float(value)
            except ValueError:
                raise ValueError(f"cluster_timeout must be seconds: {_safe(url)}") from None
            if timeout <= 0:
                raise ValueError(f"cluster_timeout must be positive: {_safe(url)}")
        else:
            options.append(item)
    plain = "rediss" if scheme.lower().startswith("rediss") else "redis"
    node_url = f"{plain}://{userinfo}{at}cluster-node{path}"
    if options:
        node_url += "?" + "&".join(options)
    settings = parse_url(node_url, ssl_context=ssl_context)
    if settings.db != 0:
        raise ValueError(f"Redis Cluster has database 0 only: {_safe(url)}")
    return seeds, settings, timeout


def _safe(url: str) -> str:
    scheme, _, rest = url.partition("://")
    return repr(f"{scheme}://{rest.rpartition('@')[2].split('?', 1)[0]}")


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def parse_shards(reply: Any, *, tls: bool = False) -> dict[Address, list[tuple[int, int]]]:
    """Each primary's slot ranges from a CLUSTER SHARDS reply: per shard, the primary that is
    online (else any primary). A node listening on a plain and a TLS port lists both: `tls`
    picks the TLS one."""
    owners: dict[Address, list[tuple[int, int]]] = {}
    for shard in reply:
        fields = {_text(k): v for k, v in _pairs(shard)}
        bounds = [int(b) for b in fields.get("slots", [])]
        ranges = list(zip(bounds[::2], bounds[1::2], strict=True))
        if not ranges:
            continue
        primaries = []
        for node in fields.get("nodes", []):
            info = {_text(k): v for k, v in _pairs(node)}
            if _text(info.get("role", "")) != "master":
                continue
            host = _text(info.get("endpoint") or info.get("ip") or "")
            if host in ("", "?"):
                host = _text(info.get("ip", ""))
            ports = ("tls-port", "port") if tls else ("port", "tls-port")
            port = int(info.get(ports[0]) or info.get(ports[1]) or 0)
            online = _text(info.get("health", "online")) == "online"
            primaries.append((not online, (host, port)))
        if primaries:
            owners.setdefault(min(primaries)[1], []).extend(ranges)
    return owners


class _Redirect(Exception):
    pass


class ClusterTransport:
    """The Transport protocol over a Redis Cluster (see the module docstring). `node_options`
    go to each node's AnyioTransport."""

    def __init__(
        self,
        seeds: Sequence[Address],
        settings: ConnectionSettings,
        *,
        cluster_timeout: float = 30.0,
        backoff_base: float = 0.02,
        backoff_max: float = 0.5,
        **node_options: Any,
    ) -> None:
        if not seeds:
            raise ValueError("a cluster transport needs at least one seed node")
        self._seeds = list(seeds)
        self._settings = settings
        self.cluster_timeout = cluster_timeout
        self._backoff_base = backoff_base
        self._backoff_max = backoff_max
        # Each node's transport fails fast: this transport retries, after refreshing the map.
        node_options.setdefault("retries", 1)
        node_options.setdefault("connect_attempts", 1)
        self._node_options = node_options
        self._nodes: dict[Address, AnyioTransport] = {}
        self._slots: list[Address | None] = [None] * SLOTS
        self._primaries: list[Address] = []
        self._refreshed = -math.inf
        self._stale = True
        self._refresh_lock: anyio.Lock | None = None
        self._refresh_count = 0
        self.stats = ClusterStats()
        #: the sharded subscriptions that wake waiting fetches and schedulers (wakeups.py)
        self.wakeups = Wakeups(self)

    @classmethod
    def from_url(
        cls, url: str, *, ssl_context: ssl.SSLContext | None = None, **options: Any
    ) -> ClusterTransport:
        seeds, settings, timeout = parse_cluster_url(url, ssl_context=ssl_context)
        options.setdefault("cluster_timeout", timeout)
        return cls(seeds, settings, **options)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    # -- the Transport protocol ------------------------------------------------------------------

    async def run_script(self, call: ScriptCall) -> Any:
        (reply,) = await self.pipeline([call])
        if isinstance(reply, BaseException):
            raise reply
        return reply

    async def execute(self, command: Command) -> Any:
        (reply,) = await self.pipeline([command])
        if isinstance(reply, BaseException):
            raise reply
        return reply

    async def ping(self) -> None:
        await self.execute(Command(("PING",), idempotent=True))

    async def pipeline(self, calls: Sequence[Call]) -> list[Any]:
        if not calls:
            return []
        flat, merges = _split_multi_slot(calls)
        replies = await self._pipeline(flat)
        return _merge(replies, merges)

    async def blocking(self, command: Command, timeout_ms: int) -> Any:
        keys = command_keys(command.args)
        by_slot: dict[int, list[int]] = {}
        for i, key in enumerate(keys):
            by_slot.setdefault(key_slot(key), []).append(i)
        if len(by_slot) <= 1:
            return await self._blocking_one(command, timeout_ms)
        if _name(command) != b"XREAD":
            raise BackendError("a blocking command over several cluster slots must be XREAD")
        # One XREAD per slot, all at once; the first to answer wins.
        head = list(command.args[: len(command.args) - 2 * len(keys)])
        ids = command.args[len(command.args) - len(keys) :]
        found: list[Any] = []
        failed: list[BackendError] = []
        async with anyio.create_task_group() as tg:

            async def wait(indexes: list[int]) -> None:
                part = Command(
                    (*head, *(keys[i] for i in indexes), *(ids[i] for i in indexes)),
                    command.idempotent,
                )
                try:
                    reply = await self._blocking_one(part, timeout_ms)
                except BackendError as exc:  # raised below, not wrapped in a group
                    failed.append(exc)
                else:
                    found.append(reply)
                tg.cancel_scope.cancel()

            for indexes in by_slot.values():
                tg.start_soon(wait, indexes)
        if found:
            return found[0]
        if failed:
            raise failed[0]
        return None

    async def open_pubsub(self) -> AnyioPubSub:
        """A subscription on any primary that answers: a PUBLISH (the scripts') reaches every
        node of a cluster."""
        await self._fresh()
        errors: list[str] = []
        for address in dict.fromkeys([*self._primaries, *self._seeds]):
            try:
                return await self.node(address).open_pubsub()
            except BackendError as exc:
                errors.append(str(exc))
                self._stale = True
        raise BackendConnectionError("no cluster node took a subscription: " + "; ".join(errors))

    async def aclose(self) -> None:
        await self.wakeups.aclose()
        nodes, self._nodes = list(self._nodes.values()), {}
        self._refresh_lock = None
        self._stale = True
        for node in nodes:
            await node.aclose()

    # -- the slot map ------------------------------------------------------------------------------

    def node(self, address: Address) -> AnyioTransport:
        transport = self._nodes.get(address)
        if transport is None:
            settings = attrs.evolve(self._settings, host=address[0], port=address[1])
            transport = self._nodes[address] = AnyioTransport(settings, **self._node_options)
        return transport

    def owner(self, slot: int) -> Address | None:
        return self._slots[slot]

    @property
    def primaries(self) -> list[Address]:
        return list(self._primaries)

    def mark_stale(self) -> None:
        """Read the slot map again before the next call (a slot moved)."""
        self._stale = True

    async def fresh(self) -> None:
        """Read the slot map if it is stale or older than REFRESH_S."""
        await self._fresh()

    async def refresh(self) -> None:
        """Read the slot map again now (concurrent callers share one reading)."""
        if self._refresh_lock is None:
            self._refresh_lock = anyio.Lock()
        seen = self._refresh_count
        async with self._refresh_lock:
            if self._refresh_count != seen:
                return
            errors: list[str] = []
            candidates = list(dict.fromkeys([*self._primaries, *self._seeds, *self._nodes]))
            for address in candidates:
                try:
                    reply = await self.node(address).execute(
                        Command(("CLUSTER", "SHARDS"), idempotent=True)
                    )
                except BackendError as exc:
                    errors.append(f"{address[0]}:{address[1]}: {exc}")
                    continue
                owners = parse_shards(reply, tls=self._settings.ssl_context is not None)
                if not owners:
                    errors.append(f"{address[0]}:{address[1]} serves no slot")
                    continue
                slots: list[Address | None] = [None] * SLOTS
                for owner, ranges in owners.items():
                    for first, last in ranges:
                        slots[first : last + 1] = [owner] * (last - first + 1)
                gone = [a for a in self._primaries if a not in owners]
                self._slots = slots
                self._primaries = list(owners)
                self._refreshed = time.monotonic()
                self._stale = False
                self._refresh_count += 1
                self.stats.refreshes += 1
                # Connections to a node that is no primary any more are of no use: drop them.
                for address in gone:
                    transport = self._nodes.pop(address, None)
                    if transport is not None:
                        await transport.aclose()
                return
            raise BackendConnectionError(
                "no cluster node answered CLUSTER SHARDS: " + "; ".join(errors)
            )

    async def _fresh(self) -> None:
        if self._stale or time.monotonic() - self._refreshed > REFRESH_S:
            await self.refresh()

    def _route(self, call: Call, previous: Address | None) -> Address:
        keys = call.keys if isinstance(call, ScriptCall) else command_keys(call.args)
        if keys:
            owner = self._slots[key_slot(keys[0])]
            if owner is not None:
                return owner
        if previous is not None:  # keyless (WAIT...): where the last script went
            return previous
        return self._primaries[0] if self._primaries else self._seeds[0]

    # -- pipelines ---------------------------------------------------------------------------------

    async def _pipeline(self, calls: list[Call]) -> list[Any]:
        replies: list[Any] = [None] * len(calls)
        pending = list(range(len(calls)))
        asking: dict[int, Address] = {}
        started = time.monotonic()
        rounds = 0
        while pending:
            await self._fresh()
            redo: list[int] = []
            retry_error: BaseException | None = None
            waves = self._waves(calls, pending, asking)
            for n, wave in enumerate(waves):
                outcome = await self._send_wave(calls, wave, asking)
                asking = {}
                for position, reply in outcome.items():
                    if isinstance(reply, _Redirect):
                        redo.append(position)
                        retry_error = reply.__cause__
                        continue
                    replies[position] = reply
                    redirect = _redirect(reply)
                    if redirect is None:
                        continue
                    kind, slot, address = redirect
                    if kind == "MOVED":
                        self.stats.moved += 1
                        self._slots[slot] = address
                        self._stale = True
                    elif kind == "ASK":
                        self.stats.ask += 1
                        asking[position] = address
                    else:
                        self.stats.retried += 1
                        retry_error = reply
                    redo.append(position)
                if redo:
                    unsent = [p for w in waves[n + 1 :] for ps in w.values() for p in ps]
                    # The calls redirected did not run: send them again, with every call not
                    # sent yet and the idempotent commands after the first of them (order).
                    redo = sorted(set(to_resend(calls, sorted(redo))) | set(unsent))
                    break
            pending = redo
            if not pending:
                break
            rounds += 1
            if retry_error is not None:
                if time.monotonic() - started > self.cluster_timeout:
                    if isinstance(retry_error, BackendError) and not isinstance(
                        retry_error, BackendConnectionError
                    ):
                        for position in pending:
                            if replies[position] is None or _redirect(replies[position]):
                                replies[position] = retry_error
                        break
                    raise BackendConnectionError(
                        f"{retry_error} (the cluster did not recover within "
                        f"{self.cluster_timeout}s)"
                    ) from None
                await anyio.sleep(self._backoff(rounds))
            elif rounds > 16:
                # MOVED back and forth: the nodes do not agree yet on who serves the slot (just
                # after a failover), and the map read again says the old owner. Wait for them.
                if time.monotonic() - started > self.cluster_timeout:
                    raise BackendError(f"calls redirected {rounds} times in a row: {replies}")
                await anyio.sleep(self._backoff(rounds - 16))
        return replies

    def _waves(
        self, calls: list[Call], positions: list[int], asking: dict[int, Address]
    ) -> list[dict[Address, list[int]]]:
        """The positions grouped per node, in waves sent one after another: a command that
        follows a script on another node goes in a later wave than that script. (Scripts among
        themselves need no order: the backend never pipelines scripts that depend on each other,
        docs/redis.md, NOSCRIPT policy.)"""
        waves: list[dict[Address, list[int]]] = [{}]
        scripts: set[Address] = set()
        previous: Address | None = None
        for position in positions:
            call = calls[position]
            address = asking.get(position) or self._route(call, previous)
            if isinstance(call, ScriptCall):
                previous = address
            if isinstance(call, Command) and scripts - {address}:
                waves.append({})
                scripts = set()
            waves[-1].setdefault(address, []).append(position)
            if isinstance(call, ScriptCall):
                scripts.add(address)
            elif previous is None:
                previous = address
        return waves

    async def _send_wave(
        self, calls: list[Call], wave: dict[Address, list[int]], asking: dict[int, Address]
    ) -> dict[int, Any]:
        outcome: dict[int, Any] = {}
        # Raised after the wave (not out of the task group, which would wrap it in a group).
        lost: list[BackendError] = []

        async def send(address: Address, positions: list[int]) -> None:
            part: list[Call] = []
            for position in positions:
                if position in asking:
                    part.append(Command(("ASKING",), idempotent=True))
                part.append(calls[position])
            try:
                replies = await self.node(address).pipeline(part)
            except (ReplyLostError, BackendCertificateError) as exc:  # not retried
                lost.append(exc)
                self._stale = True
                return
            except BackendConnectionError as exc:
                # Never reached the node (or idempotent): find who serves the slot now.
                self._stale = True
                for position in positions:
                    redirect = _Redirect()
                    redirect.__cause__ = exc
                    outcome[position] = redirect
                return
            except BackendError as exc:  # a timeout, a refused login...
                lost.append(exc)
                return
            replies_iter = iter(replies)
            for position in positions:
                if position in asking:
                    next(replies_iter)
                outcome[position] = next(replies_iter)

        if len(wave) == 1:
            ((address, positions),) = wave.items()
            await send(address, positions)
        else:
            async with anyio.create_task_group() as tg:
                for address, positions in wave.items():
                    tg.start_soon(send, address, positions)
        if lost:
            raise lost[0]
        return outcome

    async def _blocking_one(self, command: Command, timeout_ms: int) -> Any:
        started = time.monotonic()
        rounds = 0
        while True:
            await self._fresh()
            address = self._route(command, None)
            try:
                return await self.node(address).blocking(command, timeout_ms)
            except (ReplyLostError, BackendCertificateError):
                self._stale = True
                raise
            except BackendConnectionError as exc:
                self._stale = True
                error: BaseException = exc
            except BackendError as exc:
                redirect = _redirect(exc)
                if redirect is None:
                    raise
                self._stale = True
                error = exc
                if redirect[0] == "MOVED":
                    self._slots[redirect[1]] = redirect[2]
                    continue
            rounds += 1
            if time.monotonic() - started > self.cluster_timeout:
                raise BackendConnectionError(
                    f"{error} (the cluster did not recover within {self.cluster_timeout}s)"
                ) from None
            await anyio.sleep(self._backoff(rounds))

    def _backoff(self, attempt: int) -> float:
        ceiling = min(self._backoff_max, self._backoff_base * 2 ** (attempt - 1))
        return random.uniform(ceiling / 2, ceiling)


def _name(command: Command) -> bytes:
    name = command.args[0]
    return (name if isinstance(name, bytes) else str(name).encode()).upper()


def _redirect(reply: Any) -> tuple[str, int, Address] | None:
    """(MOVED|ASK, slot, address) of a redirection, (TRYAGAIN|CLUSTERDOWN..., -1, ('', 0)) of a
    reply to send again later, or None."""
    if not isinstance(reply, BackendError) or isinstance(reply, BackendConnectionError):
        return None
    text = str(reply)
    if text.startswith(("MOVED ", "ASK ")):
        kind, slot, where = text.split()[:3]
        host, _, port = where.rpartition(":")
        return kind, int(slot), (host, int(port))
    if text.startswith(_RETRY):
        return text.split()[0], -1, ("", 0)
    return None


# -- MGET over several slots -------------------------------------------------------------------


@attrs.frozen
class _Merge:
    """Where the replies of one caller's call are in the flat list: `count` parts from `start`,
    each answering the keys at `indexes` of the original MGET (None: not split)."""

    start: int
    count: int
    indexes: tuple[tuple[int, ...], ...] | None = None


def _split_multi_slot(calls: Sequence[Call]) -> tuple[list[Call], list[_Merge]]:
    flat: list[Call] = []
    merges: list[_Merge] = []
    for call in calls:
        if isinstance(call, Command) and _name(call) == b"MGET" and len(call.args) > 2:
            by_slot: dict[int, list[int]] = {}
            for i, key in enumerate(call.args[1:]):
                by_slot.setdefault(key_slot(key), []).append(i)
            if len(by_slot) > 1:
                merges.append(_Merge(len(flat), len(by_slot), tuple(map(tuple, by_slot.values()))))
                for indexes in by_slot.values():
                    flat.append(
                        Command(("MGET", *(call.args[1 + i] for i in indexes)), call.idempotent)
                    )
                continue
        merges.append(_Merge(len(flat), 1))
        flat.append(call)
    return flat, merges


def _merge(replies: list[Any], merges: list[_Merge]) -> list[Any]:
    out: list[Any] = []
    for merge in merges:
        if merge.indexes is None:
            out.append(replies[merge.start])
            continue
        parts = replies[merge.start : merge.start + merge.count]
        failed = next((p for p in parts if isinstance(p, BaseException)), None)
        if failed is not None:
            out.append(failed)
            continue
        values: list[Any] = [None] * sum(len(ix) for ix in merge.indexes)
        for indexes, part in zip(merge.indexes, parts, strict=True):
            for i, value in zip(indexes, part, strict=True):
                values[i] = value
        out.append(values)
    return out
