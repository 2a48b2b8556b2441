"""Redis URL parsing for the anyio transport."""

from __future__ import annotations

import ssl

import pytest

from strego.backends.redis.url import ConnectionSettings, parse_url


def test_host_port_db() -> None:
    s = parse_url("redis://example.com:6390/3")
    assert (s.host, s.port, s.db, s.unix_path) == ("example.com", 6390, 3, None)
    assert s.username is None and s.password is None and s.ssl_context is None


def test_defaults() -> None:
    s = parse_url("redis://localhost")
    assert (s.host, s.port, s.db) == ("localhost", 6379, 0)


def test_password_only() -> None:
    s = parse_url("redis://:s%40cret@h/0")
    assert s.username is None
    assert s.password == "s@cret"


def test_acl_user_and_password() -> None:
    s = parse_url("redis://alice:pw@h:1234")
    assert (s.username, s.password, s.port) == ("alice", "pw", 1234)


def test_password_is_not_in_repr() -> None:
    assert "hunter2" not in repr(parse_url("redis://:hunter2@h"))


def test_query_options() -> None:
    s = parse_url("redis://h/1?client_name=w1&connect_timeout=2.5&read_timeout=none")
    assert s.client_name == "w1"
    assert s.connect_timeout == 2.5
    assert s.read_timeout is None
    assert s.db == 1


def test_db_option_overrides_path() -> None:
    assert parse_url("redis://h/1?db=4").db == 4


def test_unix_socket() -> None:
    s = parse_url("unix:///run/redis/redis.sock?db=2&password=pw&username=bob")
    assert s.unix_path == "/run/redis/redis.sock"
    assert s.host is None
    assert (s.db, s.password, s.username) == (2, "pw", "bob")
    assert s.describe() == "unix:///run/redis/redis.sock/2"


def test_rediss_defaults_to_verified_tls() -> None:
    s = parse_url("rediss://h:6380")
    assert s.ssl_context is not None
    assert s.ssl_context.verify_mode == ssl.CERT_REQUIRED
    assert s.ssl_context.check_hostname
    assert s.describe() == "rediss://h:6380/0"


def test_rediss_cert_reqs_none() -> None:
    s = parse_url("rediss://h?ssl_cert_reqs=none")
    assert s.ssl_context is not None
    assert s.ssl_context.verify_mode == ssl.CERT_NONE
    assert not s.ssl_context.check_hostname


def test_explicit_ssl_context_wins() -> None:
    context = ssl.create_default_context()
    assert parse_url("redis://h", ssl_context=context).ssl_context is context
    assert parse_url("rediss://h?ssl_cert_reqs=none", ssl_context=context).ssl_context is context


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("http://h", "scheme"),
        ("redis://h?bogus=1", "unknown Redis URL option 'bogus'"),
        ("redis://h/x", "bad db"),
        ("redis://h:99999", "bad port"),
        ("redis://h?connect_timeout=soon", "connect_timeout"),
        ("redis://h?read_timeout=-1", "positive"),
        ("redis://h?ssl_cert_reqs=none", "rediss://"),
        ("rediss://h?ssl_cert_reqs=maybe", "ssl_cert_reqs"),
        ("unix://", "socket path"),
        ("redis://", "host"),
    ],
)
def test_bad_urls(url: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_url(url)


def test_bad_url_message_masks_password() -> None:
    with pytest.raises(ValueError) as info:
        parse_url("redis://:hunter2@h?bogus=1")
    assert "hunter2" not in str(info.value)


def test_settings_describe_hides_credentials() -> None:
    s = ConnectionSettings(host="h", port=1, password="pw", username="u")
    assert s.describe() == "redis://h:1/0"
