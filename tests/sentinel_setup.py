"""A throwaway Redis Sentinel setup on loopback for tests: one master, two replicas and three
sentinels (`redis-server --sentinel`), each on a free port with a directory of its own, killed at
the end. Sentinels declare a master down after DOWN_AFTER_MS without a reply."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator

import attrs
import redis

from tests.redis_server import RedisServer, free_port, unavailable

SERVICE = "mymaster"
DOWN_AFTER_MS = 1000
FAILOVER_TIMEOUT_MS = 4000


@attrs.define
class SentinelProcess:
    port: int
    dir: str
    master_port: int
    process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 10.0) -> None:
        config = os.path.join(self.dir, "sentinel.conf")
        with open(config, "w") as f:
            f.write(
                f"port {self.port}\nbind 127.0.0.1\ndir {self.dir}\n"
                f"logfile {os.path.join(self.dir, 'sentinel.log')}\n"
                f"sentinel monitor {SERVICE} 127.0.0.1 {self.master_port} 2\n"
                f"sentinel down-after-milliseconds {SERVICE} {DOWN_AFTER_MS}\n"
                f"sentinel failover-timeout {SERVICE} {FAILOVER_TIMEOUT_MS}\n"
                f"sentinel parallel-syncs {SERVICE} 2\n"
            )
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not on PATH")
        self.process = subprocess.Popen(
            [binary, config, "--sentinel"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError("redis-server --sentinel exited at start")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(64).startswith(b"+PONG"):
                        return
            except OSError:
                pass
            time.sleep(0.02)
        raise RuntimeError(f"sentinel on {self.port} did not answer within {timeout}s")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)


@attrs.define
class SentinelSetup:
    servers: list[RedisServer]
    sentinels: list[SentinelProcess]

    def url(self, db: int = 0, query: str = "") -> str:
        hosts = ",".join(f"127.0.0.1:{s.port}" for s in self.sentinels)
        return f"redis+sentinel://{hosts}/{SERVICE}/{db}" + (f"?{query}" if query else "")

    def sentinel_client(self, index: int = 0) -> redis.Redis:
        return redis.Redis(port=self.sentinels[index].port, socket_timeout=5)

    def master_port(self) -> int:
        _, port = self.sentinel_client().sentinel_get_master_addr_by_name(SERVICE)
        return int(port)

    def server(self, port: int) -> RedisServer:
        return next(s for s in self.servers if s.port == port)

    def wait_healthy(self, timeout: float = 30.0) -> int:
        """Wait until every sentinel names the same master, which answers ROLE master and has
        both replicas in sync, and the sentinels see those replicas up: then a failover can
        happen. Returns the master's port."""
        deadline = time.monotonic() + timeout
        problem = ""
        while time.monotonic() < deadline:
            problem = self._problem()
            if not problem:
                return self.master_port()
            time.sleep(0.05)
        raise AssertionError(f"the Sentinel setup did not settle within {timeout}s: {problem}")

    def _problem(self) -> str:
        try:
            named = {
                int(self.sentinel_client(i).sentinel_get_master_addr_by_name(SERVICE)[1])
                for i in range(len(self.sentinels))
            }
            if len(named) != 1:
                return f"sentinels name different masters {named}"
            (port,) = named
            master = redis.Redis(port=port, socket_timeout=2)
            info = master.info("replication")
            if info["role"] != "master" or info["connected_slaves"] < 2:
                return f"{port}: {info['role']} with {info['connected_slaves']} replicas"
            for i in range(len(self.sentinels)):
                replicas = self.sentinel_client(i).sentinel_slaves(SERVICE)
                up = [
                    r
                    for r in replicas
                    if r["is_slave"]
                    and not r["is_sdown"]
                    and not r["is_disconnected"]
                    and r.get("master-link-status") == "ok"
                    and int(r.get("master-port", 0)) == port
                ]
                if len(up) < 2:
                    return f"sentinel {i} sees {len(up)} replicas of {port} up"
        except (redis.RedisError, OSError) as exc:
            return str(exc)
        return ""

    def kill_master(self) -> RedisServer:
        server = self.server(self.master_port())
        server.stop()  # SIGKILL
        return server

    def stop(self) -> None:
        for process in [*self.sentinels, *self.servers]:
            process.stop()


@contextlib.contextmanager
def running_sentinel_setup() -> Iterator[SentinelSetup]:
    setup = SentinelSetup([], [])
    try:
        master = RedisServer(port=free_port(), dir=tempfile.mkdtemp(prefix="strego-sent-"))
        master.start()
        setup.servers.append(master)
        for _ in range(2):
            replica = RedisServer(
                port=free_port(),
                dir=tempfile.mkdtemp(prefix="strego-sent-"),
                args=("--replicaof", "127.0.0.1", str(master.port)),
            )
            replica.start()
            setup.servers.append(replica)
        for _ in range(3):
            sentinel = SentinelProcess(
                port=free_port(),
                dir=tempfile.mkdtemp(prefix="strego-sent-"),
                master_port=master.port,
            )
            sentinel.start()
            setup.sentinels.append(sentinel)
        setup.wait_healthy()
    except (RuntimeError, OSError) as exc:
        setup.stop()
        unavailable(f"no Sentinel setup could be started: {exc}")
    try:
        yield setup
    finally:
        setup.stop()
