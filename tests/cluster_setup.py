"""A throwaway Redis Cluster on loopback for tests: six `redis-server --cluster-enabled yes` (three
primaries, three replicas) joined by `redis-cli --cluster create`, on free ports, killed at the
end. With `tls`, every node listens on TLS alone, and the nodes talk TLS to each other
(tls-cluster, tls-replication); with `password`, the nodes require it (requirepass, masterauth)."""

from __future__ import annotations

import contextlib
import random
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from typing import Any

import attrs
import redis

from tests.redis_server import RedisServer, TlsFiles, free_port, unavailable

NODE_TIMEOUT_MS = 2000


def free_cluster_port() -> int:
    """A free port P <= 55535 whose cluster bus port P + 10000 is free too."""
    for _ in range(200):
        port = random.randint(20000, 55535)
        with socket.socket() as a, socket.socket() as b:
            try:
                a.bind(("127.0.0.1", port))
                b.bind(("127.0.0.1", port + 10000))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port pair for a cluster node")


@attrs.define
class ClusterSetup:
    servers: list[RedisServer]
    tls: TlsFiles | None = None
    password: str | None = None

    def url(self, query: str = "") -> str:
        """A strego URL of this cluster, with its TLS files and password."""
        hosts = ",".join(f"127.0.0.1:{s.port}" for s in self.servers[:3])
        scheme = "redis+cluster" if self.tls is None else "rediss+cluster"
        login = "" if self.password is None else f":{self.password}@"
        options = [] if self.tls is None else [self.tls.query()]
        if query:
            options.append(query)
        return f"{scheme}://{login}{hosts}/0" + "?" * bool(options) + "&".join(options)

    def client(self, port: int) -> redis.Redis:
        tls: dict[str, Any] = {} if self.tls is None else self.tls.redis_py()
        return redis.Redis(port=port, socket_timeout=5, password=self.password, **tls)

    def server(self, port: int) -> RedisServer:
        return next(s for s in self.servers if s.port == port)

    def primaries(self) -> list[int]:
        ports = []
        for s in self.servers:
            with contextlib.suppress(redis.RedisError, OSError):
                if self.client(s.port).info("replication")["role"] == "master":
                    ports.append(s.port)
        return ports

    def wait_healthy(self, timeout: float = 30.0) -> None:
        """Wait until every node says cluster_state:ok and every primary has a replica in sync."""
        deadline = time.monotonic() + timeout
        problem = ""
        while time.monotonic() < deadline:
            problem = self._problem()
            if not problem:
                return
            time.sleep(0.05)
        raise AssertionError(f"the cluster did not settle within {timeout}s: {problem}")

    def _problem(self) -> str:
        try:
            for s in self.servers:
                info = self.client(s.port).execute_command("CLUSTER INFO")
                if info["cluster_state"] != "ok":
                    return f"{s.port}: cluster_state {info['cluster_state']}"
            primaries = self.primaries()
            if len(primaries) != 3:
                return f"{len(primaries)} primaries"
            for port in primaries:
                replication = self.client(port).info("replication")
                if replication["connected_slaves"] < 1:
                    return f"{port} has no replica"
                if replication["slave0"]["state"] != "online":
                    return f"{port}'s replica is {replication['slave0']['state']}"
        except (redis.RedisError, OSError, KeyError) as exc:
            return repr(exc)
        return ""

    def wait_role(self, port: int, role: str, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while self.client(port).info("replication")["role"] != role:
            if time.monotonic() > deadline:
                raise AssertionError(f"{port} did not become {role} within {timeout}s")
            time.sleep(0.02)

    def blocked_clients(self, port: int) -> int:
        return int(self.client(port).info("clients")["blocked_clients"])

    def wait_replicated(self, timeout: float = 10.0) -> None:
        """Wait until every primary's replica has acknowledged all its writes so far."""
        deadline = time.monotonic() + timeout
        for port in self.primaries():
            target = self.client(port).info("replication")["master_repl_offset"]
            while self.client(port).info("replication")["slave0"]["offset"] < target:
                if time.monotonic() > deadline:
                    raise AssertionError(f"{port}'s replica did not catch up in {timeout}s")
                time.sleep(0.01)

    def migrate_slot(self, slot: int, source: int, target: int, batch: int = 2) -> None:
        """Move `slot` from primary `source` to primary `target` as redis-cli --cluster reshard
        does: IMPORTING on the target, MIGRATING on the source, MIGRATE its keys a few at a time
        (meanwhile, calls get ASK and TRYAGAIN), then give the slot to the target everywhere."""
        src, dst = self.client(source), self.client(target)
        src_id = src.execute_command("CLUSTER MYID")
        dst_id = dst.execute_command("CLUSTER MYID")
        dst.execute_command("CLUSTER SETSLOT", slot, "IMPORTING", src_id)
        src.execute_command("CLUSTER SETSLOT", slot, "MIGRATING", dst_id)
        while keys := src.execute_command("CLUSTER GETKEYSINSLOT", slot, batch):
            src.execute_command("MIGRATE", "127.0.0.1", target, "", 0, 5000, "KEYS", *keys)
        for client in [dst, src, *(self.client(p) for p in self.primaries())]:
            client.execute_command("CLUSTER SETSLOT", slot, "NODE", dst_id)

    def open_plain_ports(self, timeout: float = 10.0) -> None:
        """Give every node of a TLS cluster a plain port as well (CONFIG SET port), as a
        cluster being moved to TLS has, and wait until every node lists both ports of every
        other node in CLUSTER SHARDS (Redis 7.0 lists a port set at run time only for the others:
        they learn it by gossip)."""
        assert self.tls is not None
        for s in self.servers:
            self.client(s.port).config_set("port", free_port())
        deadline = time.monotonic() + timeout
        while not all(self._lists_plain_ports(s.port) for s in self.servers):
            if time.monotonic() > deadline:
                raise AssertionError(f"CLUSTER SHARDS did not list the plain ports in {timeout}s")
            time.sleep(0.05)

    def close_plain_ports(self) -> None:
        for s in self.servers:
            self.client(s.port).config_set("port", 0)

    def _lists_plain_ports(self, port: int) -> bool:
        shards = self.client(port).execute_command("CLUSTER SHARDS")
        nodes = [node for shard in shards for node in shard[b"nodes"]]
        return sum(1 for node in nodes if node.get(b"port")) >= len(self.servers) - 1

    def stop(self) -> None:
        for s in self.servers:
            s.stop()


@contextlib.contextmanager
def running_cluster(
    *, tls: TlsFiles | None = None, password: str | None = None
) -> Iterator[ClusterSetup]:
    """The cluster for the duration of the block (see the module docstring for the options)."""
    setup = ClusterSetup([], tls, password)
    options: tuple[str, ...] = () if tls is None else ("--tls-cluster", "yes")
    if password is not None:
        options += ("--requirepass", password, "--masterauth", password)
    try:
        cli = shutil.which("redis-cli")
        if cli is None:
            raise RuntimeError("redis-cli is not on PATH")
        for _ in range(6):
            server = RedisServer(
                port=free_cluster_port(),
                dir=tempfile.mkdtemp(prefix="strego-cluster-"),
                args=(
                    "--cluster-enabled", "yes",
                    "--cluster-config-file", "nodes.conf",
                    "--cluster-node-timeout", str(NODE_TIMEOUT_MS),
                    *options,
                ),
                tls=tls,
            )  # fmt: skip
            server.start()
            setup.servers.append(server)
        create = [cli, *([] if tls is None else tls.cli_args())]
        if password is not None:
            create += ["--no-auth-warning", "-a", password]
        create += ["--cluster", "create"]
        create += [f"127.0.0.1:{s.port}" for s in setup.servers]
        create += ["--cluster-replicas", "1", "--cluster-yes"]
        done = subprocess.run(create, capture_output=True, timeout=60, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"redis-cli --cluster create failed: {done.stdout.decode()[-2000:]}")
        setup.wait_healthy()
    except (RuntimeError, OSError, subprocess.TimeoutExpired) as exc:
        setup.stop()
        unavailable(f"no Redis Cluster could be started: {exc}")
    except BaseException:  # e.g. wait_healthy timing out: no server is left running
        setup.stop()
        raise
    try:
        yield setup
    finally:
        setup.stop()
