"""redis+sentinel:// URLs, and the RedisBackend options any Redis URL may carry."""

from __future__ import annotations

import pytest

from strego.backends.redis import RedisBackend
from strego.backends.redis.sentinel import SentinelTransport, parse_sentinel_url
from strego.backends.redis.url import backend_options
from strego.errors import InvalidTaskError


def test_sentinels_service_and_db() -> None:
    s = parse_sentinel_url("redis+sentinel://h1:26379,h2:26380,h3/mymaster/2")
    assert s.sentinels == (("h1", 26379), ("h2", 26380), ("h3", 26379))
    assert s.service == "mymaster"
    assert s.master.db == 2 and s.master.ssl_context is None
    assert s.failover_timeout == 30.0


def test_master_and_sentinel_credentials_are_apart() -> None:
    s = parse_sentinel_url(
        "redis+sentinel://alice:pw@h1,h2/svc?sentinel_password=spw&sentinel_username=sen"
        "&client_name=w1&failover_timeout=5"
    )
    assert (s.master.username, s.master.password, s.master.client_name) == ("alice", "pw", "w1")
    assert (s.sentinel_username, s.sentinel_password) == ("sen", "spw")
    assert s.master.db == 0 and s.failover_timeout == 5.0
    sentinel = s.for_sentinel("h1", 26379)
    assert (sentinel.username, sentinel.password, sentinel.db) == ("sen", "spw", 0)
    master = s.for_master("10.0.0.5", 6380)
    assert (master.host, master.port, master.password) == ("10.0.0.5", 6380, "pw")
    assert "pw" not in repr(s)


def test_tls() -> None:
    s = parse_sentinel_url("rediss+sentinel://h1/svc?ssl_cert_reqs=none")
    assert s.master.ssl_context is not None
    assert s.for_sentinel("h1", 26379).ssl_context is s.master.ssl_context


def test_ipv6() -> None:
    s = parse_sentinel_url("redis+sentinel://[::1]:26400,[::2]/svc")
    assert s.sentinels == (("::1", 26400), ("::2", 26379))


@pytest.mark.parametrize(
    "url",
    [
        "redis+sentinel:///svc",
        "redis+sentinel://h1",
        "redis+sentinel://h1/svc/0/extra",
        "redis+sentinel://h1:port/svc",
        "redis+sentinel://h1:0/svc",
        "redis+sentinel://h1/svc/x",
        "redis+sentinel://h1/svc?bogus=1",
        "redis+sentinel://h1/svc?failover_timeout=-1",
        "redis+sentinel://h1/svc?ssl_cert_reqs=none",
        "redis://h1/svc",
    ],
)
def test_malformed(url: str) -> None:
    with pytest.raises(ValueError):
        parse_sentinel_url(url)


def test_password_is_not_in_errors() -> None:
    with pytest.raises(ValueError) as info:
        parse_sentinel_url("redis+sentinel://u:hunter2@h1/svc?bogus=1&sentinel_password=x")
    assert "hunter2" not in str(info.value)


def test_backend_options() -> None:
    assert backend_options("redis://h/0") == ("redis://h/0", {})
    assert backend_options(
        "redis://h/0?durable=true&durable_timeout_ms=250&db=1&durable_replicas=2"
    ) == ("redis://h/0?db=1", {"durable": True, "durable_timeout_ms": 250, "durable_replicas": 2})
    with pytest.raises(ValueError):
        backend_options("redis://h?durable=maybe")
    with pytest.raises(ValueError):
        backend_options("redis://h?durable_timeout_ms=soon")


def test_history_from_the_url() -> None:
    """One URL turns history on for every process that uses it (CLI, web, workers)."""
    assert backend_options("redis://h/0?history=true&history_cap=5000") == (
        "redis://h/0", {"history": True, "history_cap": 5000},
    )  # fmt: skip
    assert RedisBackend.from_url("redis://h/0?history=yes&history_cap=7").history_cap == 7
    assert RedisBackend.from_url("redis://h/0?history=false").history_cap == 0
    assert RedisBackend.from_url("redis+cluster://h1:7000/0?history=1").history_cap > 0
    with pytest.raises(ValueError):
        backend_options("redis://h?history=sometimes")
    with pytest.raises(InvalidTaskError):
        RedisBackend.from_url("redis://h/0?history=1&history_cap=0")


def test_from_url_picks_the_transport() -> None:
    backend = RedisBackend.from_url("redis+sentinel://h1,h2/svc/0?durable=1")
    assert isinstance(backend.transport, SentinelTransport)
    assert backend.durable and backend.durable_timeout_ms == 1000
    assert not RedisBackend.from_url("redis://h/0").durable
    with pytest.raises(ValueError):
        RedisBackend.from_url("redis://h/0?durable=1&durable_timeout_ms=0")
    with pytest.raises(ValueError):
        RedisBackend.from_url("redis://h/0?durable=1&durable_replicas=0")
