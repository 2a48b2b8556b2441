"""Start and stop throwaway `redis-server` processes for tests (a free loopback port, no persistence
unless asked, killed at the end)."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import ssl
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
import attrs
import pytest

IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def make_certificate(directory: Path, name: str = "cert") -> Path:
    """A self-signed certificate for 127.0.0.1 and localhost made by the openssl CLI, as
    `<name>.pem`, its key next to it as `<name>-key.pem`. It is its own CA, and serves as server
    and client certificate alike."""
    if shutil.which("openssl") is None:
        unavailable("the openssl CLI is not installed: cannot make a test certificate")
    cert, key = directory / f"{name}.pem", directory / f"{name}-key.pem"
    subprocess.run(
        [
            "openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
            "-keyout", str(key), "-out", str(cert), "-subj", "/CN=localhost",
            "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost",
        ],
        check=True,
        capture_output=True,
    )  # fmt: skip
    return cert


@attrs.frozen
class TlsFiles:
    """A certificate and key (`make_certificate`) that servers serve and present to each other
    (replication, cluster bus, sentinels), and that clients must present (tls-auth-clients
    yes); the certificate is also the CA."""

    cert: Path

    @property
    def key(self) -> Path:
        return self.cert.with_name(self.cert.stem + "-key.pem")

    def server_args(self, port: int) -> tuple[str, ...]:
        """redis-server options for TLS only on `port` (no plain TCP port)."""
        return (
            "--port", "0",
            "--tls-port", str(port),
            "--tls-cert-file", str(self.cert),
            "--tls-key-file", str(self.key),
            "--tls-ca-cert-file", str(self.cert),
            "--tls-auth-clients", "yes",
            "--tls-replication", "yes",
        )  # fmt: skip

    def query(self) -> str:
        """The ssl_* options of a strego URL that trusts this CA and presents this certificate."""
        return f"ssl_ca_certs={self.cert}&ssl_certfile={self.cert}&ssl_keyfile={self.key}"

    def context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=str(self.cert))
        context.load_cert_chain(str(self.cert), str(self.key))
        return context

    def redis_py(self) -> dict[str, Any]:
        """Keyword arguments of a redis-py client that connects over this TLS."""
        return {
            "ssl": True,
            "ssl_ca_certs": str(self.cert),
            "ssl_certfile": str(self.cert),
            "ssl_keyfile": str(self.key),
        }

    def cli_args(self) -> list[str]:
        return ["--tls", "--cacert", str(self.cert), "--cert", str(self.cert),
                "--key", str(self.key)]  # fmt: skip


def ping_port(port: int, tls: TlsFiles | None = None) -> bool:
    """Whether something answers PING (or NOAUTH) on 127.0.0.1:`port`, over TLS if given."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as raw:
            s = raw if tls is None else tls.context().wrap_socket(raw, server_hostname="127.0.0.1")
            with s:
                s.sendall(b"PING\r\n")
                return s.recv(64).startswith((b"+PONG", b"-NOAUTH"))
    except OSError:
        return False


@attrs.define
class RedisServer:
    """One redis-server process on 127.0.0.1:`port` (and a Unix socket), with its own directory.
    With `tls`, `port` is its only TCP port and speaks TLS alone."""

    port: int
    dir: str
    args: tuple[str, ...] = ()
    process: subprocess.Popen[bytes] | None = None
    tls: TlsFiles | None = None

    @property
    def url(self) -> str:
        if self.tls is not None:
            return f"rediss://127.0.0.1:{self.port}/0?{self.tls.query()}"
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def unix_socket(self) -> str:
        return os.path.join(self.dir, "redis.sock")

    def start(self, timeout: float = 10.0) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not on PATH")
        cmd = [
            binary,
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--unixsocket", self.unix_socket,
            "--unixsocketperm", "700",
            "--dir", self.dir,
            "--save", "",
            "--appendonly", "no",
            "--logfile", os.path.join(self.dir, "redis.log"),
            *(() if self.tls is None else self.tls.server_args(self.port)),
            *self.args,
        ]  # fmt: skip
        self.process = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                err = self.process.stderr.read().decode() if self.process.stderr else ""
                raise RuntimeError(f"redis-server exited at start: {err}{self.log_tail()}")
            if self.ping():
                return
            time.sleep(0.02)
        self.stop()
        raise RuntimeError(f"redis-server did not answer within {timeout}s{self.log_tail()}")

    def ping(self) -> bool:
        return ping_port(self.port, self.tls)

    def log_tail(self) -> str:
        try:
            with open(os.path.join(self.dir, "redis.log")) as f:
                return "\n" + "".join(f.readlines()[-20:])
        except OSError:
            return ""

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)

    def restart(self) -> None:
        self.stop()
        self.start()


def start_redis_server(args: Sequence[str] = ()) -> RedisServer:
    server = RedisServer(port=free_port(), dir=tempfile.mkdtemp(prefix="strego-redis-"),
                         args=tuple(args))  # fmt: skip
    server.start()
    return server


def unavailable(reason: str) -> None:
    """A test cannot run here: under CI (CI=true) it fails, elsewhere it is skipped with the
    reason."""
    if IN_CI:
        pytest.fail(f"{reason} (CI must run this test)")
    pytest.skip(reason, allow_module_level=True)  # also for a module whose import needs it


@contextlib.contextmanager
def running_redis_server(args: Sequence[str] = ()) -> Iterator[RedisServer]:
    """A throwaway redis-server for the duration of the block (see `unavailable`)."""
    try:
        server = start_redis_server(args)
    except (RuntimeError, OSError) as exc:
        unavailable(f"no redis-server could be started: {exc}")
        raise  # unreachable: unavailable() always raises
    try:
        yield server
    finally:
        server.stop()


@contextlib.asynccontextmanager
async def fake_redis(
    handler: Callable[[anyio.abc.SocketStream], Awaitable[None]],
) -> AsyncIterator[int]:
    """A stand-in server on a free loopback port that hands each connection to `handler` (a
    Redis that hangs up, never answers, or stops reading); yields its port, stops with the
    block."""
    async with (
        await anyio.create_tcp_listener(local_host="127.0.0.1") as listener,
        anyio.create_task_group() as tg,
    ):
        tg.start_soon(listener.serve, handler)
        yield listener.extra(anyio.abc.SocketAttribute.local_port)
        tg.cancel_scope.cancel()
