"""A throwaway Redis Sentinel setup on loopback for tests: one master, two replicas and three
sentinels (`redis-server --sentinel`), each on a free port with a directory of its own, killed at
the end. Sentinels declare a master down after DOWN_AFTER_MS without a reply.

With `tls`, every server and sentinel listens on TLS alone and they talk TLS to each other
(tls-replication); with `password`, the servers require it (requirepass, masterauth, and the
sentinels' auth-pass); with `sentinel_password`, the sentinels require it of clients and of each
other (requirepass, sentinel-pass)."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from typing import Any

import attrs
import redis

from tests.redis_server import RedisServer, TlsFiles, free_port, ping_port, unavailable

SERVICE = "mymaster"
DOWN_AFTER_MS = 1000
FAILOVER_TIMEOUT_MS = 4000


@attrs.define
class SentinelProcess:
    port: int
    dir: str
    master_port: int
    process: subprocess.Popen[bytes] | None = None
    tls: TlsFiles | None = None
    password: str | None = None
    sentinel_password: str | None = None

    def start(self, timeout: float = 10.0) -> None:
        config = os.path.join(self.dir, "sentinel.conf")
        lines = [
            f"port {self.port}",
            "bind 127.0.0.1",
            f"dir {self.dir}",
            f"logfile {os.path.join(self.dir, 'sentinel.log')}",
            f"sentinel monitor {SERVICE} 127.0.0.1 {self.master_port} 2",
            f"sentinel down-after-milliseconds {SERVICE} {DOWN_AFTER_MS}",
            f"sentinel failover-timeout {SERVICE} {FAILOVER_TIMEOUT_MS}",
            f"sentinel parallel-syncs {SERVICE} 2",
        ]
        if self.tls is not None:
            options = self.tls.server_args(self.port)
            lines += [f"{options[i][2:]} {options[i + 1]}" for i in range(0, len(options), 2)]
        if self.password is not None:
            lines.append(f"sentinel auth-pass {SERVICE} {self.password}")
        if self.sentinel_password is not None:
            lines += [
                f"requirepass {self.sentinel_password}",
                f"sentinel sentinel-pass {self.sentinel_password}",
            ]
        with open(config, "w") as f:
            f.write("\n".join(lines) + "\n")
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
            if ping_port(self.port, self.tls):
                return
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
    tls: TlsFiles | None = None
    password: str | None = None
    sentinel_password: str | None = None

    def url(self, db: int = 0, query: str = "") -> str:
        """A strego URL of this setup, with its TLS files and passwords."""
        hosts = ",".join(f"127.0.0.1:{s.port}" for s in self.sentinels)
        scheme = "redis+sentinel" if self.tls is None else "rediss+sentinel"
        login = "" if self.password is None else f":{self.password}@"
        options = [] if self.tls is None else [self.tls.query()]
        if self.sentinel_password is not None:
            options.append(f"sentinel_password={self.sentinel_password}")
        if query:
            options.append(query)
        return f"{scheme}://{login}{hosts}/{SERVICE}/{db}" + "?" * bool(options) + "&".join(options)

    def sentinel_client(self, index: int = 0) -> redis.Redis:
        return redis.Redis(
            port=self.sentinels[index].port,
            socket_timeout=5,
            password=self.sentinel_password,
            **self._tls(),
        )

    def client(self, port: int) -> redis.Redis:
        """A redis-py client of the server on `port`."""
        return redis.Redis(port=port, socket_timeout=2, password=self.password, **self._tls())

    def _tls(self) -> dict[str, Any]:
        return {} if self.tls is None else self.tls.redis_py()

    def master_port(self) -> int:
        _, port = self.sentinel_client().sentinel_get_master_addr_by_name(SERVICE)
        return int(port)

    def server(self, port: int) -> RedisServer:
        return next(s for s in self.servers if s.port == port)

    def wait_healthy(self, timeout: float = 30.0, replicas: int = 2) -> int:
        """Wait until every sentinel names the same master, which answers ROLE master and has
        `replicas` replicas in sync, and the sentinels see those replicas up: then a failover
        can happen. Returns the master's port. (After a failover the second replica takes the
        sentinels' 10 s INFO period to be seen again: replicas=1 need not wait for it.)"""
        deadline = time.monotonic() + timeout
        problem = ""
        while time.monotonic() < deadline:
            problem = self._problem(replicas)
            if not problem:
                return self.master_port()
            time.sleep(0.05)
        raise AssertionError(f"the Sentinel setup did not settle within {timeout}s: {problem}")

    def _problem(self, wanted: int = 2) -> str:
        try:
            named = {
                int(self.sentinel_client(i).sentinel_get_master_addr_by_name(SERVICE)[1])
                for i in range(len(self.sentinels))
            }
            if len(named) != 1:
                return f"sentinels name different masters {named}"
            (port,) = named
            master = self.client(port)
            info = master.info("replication")
            if info["role"] != "master" or info["connected_slaves"] < wanted:
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
                if len(up) < wanted:
                    return f"sentinel {i} sees {len(up)} replicas of {port} up"
        except (redis.RedisError, OSError) as exc:
            return str(exc)
        return ""

    def fail_over(self, timeout: float = 30.0) -> None:
        """SENTINEL FAILOVER, asked again while the sentinel refuses because its previous
        failover is still being finished (INPROG) or it sees no replica ready (NOGOODSLAVE)."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                self.sentinel_client().sentinel_failover(SERVICE)
                return
            except redis.ResponseError as exc:
                if not str(exc).startswith(("INPROG", "NOGOODSLAVE")):
                    raise
                if time.monotonic() > deadline:
                    raise AssertionError(
                        f"SENTINEL FAILOVER refused for {timeout}s: {exc}"
                    ) from None
                time.sleep(0.1)

    def kill_master(self) -> RedisServer:
        server = self.server(self.master_port())
        server.stop()  # SIGKILL
        return server

    def stop(self) -> None:
        for process in [*self.sentinels, *self.servers]:
            process.stop()


@contextlib.contextmanager
def running_sentinel_setup(
    *,
    tls: TlsFiles | None = None,
    password: str | None = None,
    sentinel_password: str | None = None,
) -> Iterator[SentinelSetup]:
    """The setup for the duration of the block (see the module docstring for the options)."""
    setup = SentinelSetup([], [], tls, password, sentinel_password)
    auth = () if password is None else ("--requirepass", password, "--masterauth", password)
    try:
        master = RedisServer(
            port=free_port(), dir=tempfile.mkdtemp(prefix="strego-sent-"), args=auth, tls=tls
        )
        master.start()
        setup.servers.append(master)
        for _ in range(2):
            replica = RedisServer(
                port=free_port(),
                dir=tempfile.mkdtemp(prefix="strego-sent-"),
                args=(*auth, "--replicaof", "127.0.0.1", str(master.port)),
                tls=tls,
            )
            replica.start()
            setup.servers.append(replica)
        for _ in range(3):
            sentinel = SentinelProcess(
                port=free_port(),
                dir=tempfile.mkdtemp(prefix="strego-sent-"),
                master_port=master.port,
                tls=tls,
                password=password,
                sentinel_password=sentinel_password,
            )
            sentinel.start()
            setup.sentinels.append(sentinel)
        setup.wait_healthy()
    except (RuntimeError, OSError) as exc:
        setup.stop()
        unavailable(f"no Sentinel setup could be started: {exc}")
    except BaseException:  # e.g. wait_healthy timing out: no server is left running
        setup.stop()
        raise
    try:
        yield setup
    finally:
        setup.stop()
