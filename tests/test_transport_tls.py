"""AnyioTransport over TLS, under asyncio and trio, against a redis-server with a self-signed
certificate made for the test by the openssl CLI."""

from __future__ import annotations

import ssl
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest

from strego.backends.redis.anyio_transport import AnyioTransport
from strego.backends.redis.transport import Command, Script, ScriptCall
from strego.errors import BackendCertificateError
from tests.redis_server import (
    RedisServer,
    TlsFiles,
    free_port,
    make_certificate,
    start_redis_server,
    unavailable,
)

pytestmark = [pytest.mark.anyio, pytest.mark.redis]

INCR = Script("incr", "return redis.call('INCR', KEYS[1])")


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A self-signed certificate for 127.0.0.1 and localhost (tests.redis_server)."""
    return make_certificate(tmp_path_factory.mktemp("tls"))


@pytest.fixture(scope="module")
def tls_server(certificate: Path) -> Iterator[tuple[RedisServer, int]]:
    """A redis-server with a TLS port (and its plain port, which the fixture uses to see it up)."""
    tls_port = free_port()
    key = TlsFiles(certificate).key
    args = [
        "--tls-port", str(tls_port),
        "--tls-cert-file", str(certificate),
        "--tls-key-file", str(key),
        "--tls-ca-cert-file", str(certificate),
        "--tls-auth-clients", "no",
    ]  # fmt: skip
    try:
        server = start_redis_server(args)
    except (RuntimeError, OSError) as exc:
        if "tls" in str(exc).lower() or "unrecognized" in str(exc).lower():
            unavailable(f"the installed redis-server has no TLS support: {exc}")
        unavailable(f"no redis-server could be started: {exc}")
    try:
        yield server, tls_port
    finally:
        server.stop()


async def test_rediss_url_with_ca_file(
    tls_server: tuple[RedisServer, int], certificate: Path
) -> None:
    _, port = tls_server
    url = f"rediss://127.0.0.1:{port}/1?ssl_ca_certs={certificate}"
    async with AnyioTransport.from_url(url) as t:
        await t.ping()
        assert await t.execute(Command(("SET", "over-tls", "yes"))) == b"OK"
        assert await t.execute(Command(("GET", "over-tls"))) == b"yes"
        # Auto-pipelining works the same over TLS.
        await t.execute(Command(("DEL", "c")))
        async with anyio.create_task_group() as tg:
            for _ in range(50):
                tg.start_soon(t.run_script, ScriptCall(INCR, ["c"], []))
        assert await t.execute(Command(("GET", "c"))) == b"50"
        assert t.stats.connections_opened == 1
        info: bytes = await t.execute(Command(("CLIENT", "INFO")))
        assert f"laddr=127.0.0.1:{port}".encode() in info


async def test_explicit_ssl_context(tls_server: tuple[RedisServer, int], certificate: Path) -> None:
    _, port = tls_server
    context = ssl.create_default_context(cafile=str(certificate))
    async with AnyioTransport.from_url(f"redis://localhost:{port}", ssl_context=context) as t:
        await t.ping()


async def test_cert_reqs_none_skips_verification(tls_server: tuple[RedisServer, int]) -> None:
    _, port = tls_server
    async with AnyioTransport.from_url(f"rediss://127.0.0.1:{port}?ssl_cert_reqs=none") as t:
        await t.ping()


async def test_unknown_certificate_is_refused(tls_server: tuple[RedisServer, int]) -> None:
    _, port = tls_server
    t = AnyioTransport.from_url(f"rediss://127.0.0.1:{port}")
    # A BackendConnectionError that says why, raised at the first refusal: not retried.
    with anyio.fail_after(1), pytest.raises(BackendCertificateError, match="could not connect"):
        await t.ping()


async def test_tls_connection_killed_while_idle(
    tls_server: tuple[RedisServer, int], certificate: Path
) -> None:
    server, port = tls_server
    url = f"rediss://127.0.0.1:{port}?ssl_ca_certs={certificate}"
    async with AnyioTransport.from_url(url) as t, AnyioTransport.from_url(server.url) as admin:
        await t.execute(Command(("SET", "n", 0)))
        await admin.execute(
            Command(("CLIENT", "KILL", "ID", await t.execute(Command(("CLIENT", "ID")))))
        )
        assert await t.run_script(ScriptCall(INCR, ["n"], [])) == 1
        assert t.stats.connections_opened == 2
