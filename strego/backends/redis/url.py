"""Redis connection settings and the redis-style URLs that describe them:

    redis://[[user]:password@]host[:port][/db][?option=value...]
    rediss://...                       (TLS)
    unix:///path/to/redis.sock[?db=N&password=...&username=...]

Query options: db, username, password, client_name, connect_timeout, read_timeout (seconds),
and for TLS ssl_cert_reqs (none | optional | required), ssl_ca_certs, ssl_certfile, ssl_keyfile,
ssl_check_hostname (true | false)."""

from __future__ import annotations

import ssl
from typing import Any
from urllib.parse import parse_qs, unquote, urlencode, urlsplit

import attrs

DEFAULT_PORT = 6379


@attrs.frozen
class ConnectionSettings:
    """Where a Redis server is and how to log in. Exactly one of `host` or `unix_path` is set;
    TLS is used when `ssl_context` is set (TCP only)."""

    host: str | None = "127.0.0.1"
    port: int = DEFAULT_PORT
    unix_path: str | None = None
    db: int = 0
    username: str | None = None
    password: str | None = attrs.field(default=None, repr=False)
    client_name: str | None = None
    ssl_context: ssl.SSLContext | None = None
    #: The name checked against the server certificate; defaults to `host`.
    tls_hostname: str | None = None
    connect_timeout: float | None = 5.0
    #: How long to wait for a reply (per read); None waits forever.
    read_timeout: float | None = 30.0

    def describe(self) -> str:
        """The address, without credentials, for error messages."""
        if self.unix_path is not None:
            return f"unix://{self.unix_path}/{self.db}"
        scheme = "rediss" if self.ssl_context is not None else "redis"
        return f"{scheme}://{self.host}:{self.port}/{self.db}"


_CERT_REQS = {
    "none": ssl.CERT_NONE,
    "optional": ssl.CERT_OPTIONAL,
    "required": ssl.CERT_REQUIRED,
}
_KNOWN_OPTIONS = {
    "db",
    "username",
    "password",
    "client_name",
    "connect_timeout",
    "read_timeout",
    "ssl_cert_reqs",
    "ssl_ca_certs",
    "ssl_certfile",
    "ssl_keyfile",
    "ssl_check_hostname",
}


def parse_url(url: str, *, ssl_context: ssl.SSLContext | None = None) -> ConnectionSettings:
    """Settings from a redis://, rediss:// or unix:// URL. An explicit `ssl_context` turns TLS on
    (also for redis://) and takes precedence over the ssl_* query options. Raises ValueError on a
    malformed URL or an unknown option."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in {"redis", "rediss", "unix"}:
        raise ValueError(f"unsupported Redis URL scheme {parts.scheme!r} in {_safe(url)}")
    query: dict[str, str] = {}
    for name, values in parse_qs(parts.query, keep_blank_values=True).items():
        if name not in _KNOWN_OPTIONS:
            raise ValueError(f"unknown Redis URL option {name!r} in {_safe(url)}")
        query[name] = values[-1]

    fields: dict[str, Any] = {}
    username = unquote(parts.username) if parts.username else None
    password = unquote(parts.password) if parts.password else None
    fields["username"] = query.get("username", username) or None
    fields["password"] = query.get("password", password) or None
    if "client_name" in query:
        fields["client_name"] = query["client_name"] or None
    for name in ("connect_timeout", "read_timeout"):
        if name in query:
            fields[name] = _seconds(name, query[name])

    db_text = query.get("db")
    if scheme == "unix":
        if not parts.path:
            raise ValueError(f"a unix:// URL needs a socket path: {_safe(url)}")
        fields["host"] = None
        fields["unix_path"] = unquote(parts.path)
    else:
        if not parts.hostname:
            raise ValueError(f"a Redis URL needs a host: {_safe(url)}")
        fields["host"] = unquote(parts.hostname)
        try:
            fields["port"] = parts.port or DEFAULT_PORT
        except ValueError as exc:
            raise ValueError(f"bad port in Redis URL {_safe(url)}") from exc
        path = parts.path.strip("/")
        if path and db_text is None:
            db_text = path
    if db_text:
        try:
            fields["db"] = int(db_text)
        except ValueError:
            raise ValueError(f"bad db {db_text!r} in Redis URL {_safe(url)}") from None
        if fields["db"] < 0:
            raise ValueError(f"bad db {db_text!r} in Redis URL {_safe(url)}")

    if ssl_context is None and scheme == "rediss":
        ssl_context = _ssl_context(query)
    elif scheme != "rediss" and any(name.startswith("ssl_") for name in query):
        raise ValueError(f"ssl_* options need a rediss:// URL: {_safe(url)}")
    if ssl_context is not None:
        if scheme == "unix":
            raise ValueError("TLS over a Unix socket is not supported")
        fields["ssl_context"] = ssl_context
    return ConnectionSettings(**fields)


#: URL options that configure RedisBackend rather than the connection.
BACKEND_OPTIONS = {"durable", "durable_timeout_ms", "durable_replicas", "history", "history_cap"}
_FLAGS = ("durable", "history")
_INTEGERS = ("durable_timeout_ms", "durable_replicas", "history_cap")


def backend_options(url: str) -> tuple[str, dict[str, Any]]:
    """The URL without the RedisBackend options (durable=true|false, durable_timeout_ms=N,
    durable_replicas=N, history=true|false, history_cap=N), and those options as constructor
    keywords. Raises ValueError on a bad value."""
    base, sep, query_text = url.partition("?")
    if not sep:
        return url, {}
    query = parse_qs(query_text, keep_blank_values=True)
    options: dict[str, Any] = {}
    for name in _FLAGS:
        if name in query:
            text = query.pop(name)[-1].lower()
            if text not in {"1", "true", "yes", "0", "false", "no"}:
                raise ValueError(f"{name} must be true or false, not {text!r}")
            options[name] = text in {"1", "true", "yes"}
    for name in _INTEGERS:
        if name in query:
            text = query.pop(name)[-1]
            try:
                options[name] = int(text)
            except ValueError:
                raise ValueError(f"{name} must be an integer, not {text!r}") from None
    rest = urlencode(query, doseq=True)
    return (f"{base}?{rest}" if rest else base), options


def _ssl_context(query: dict[str, str]) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=query.get("ssl_ca_certs") or None)
    cert_reqs = query.get("ssl_cert_reqs", "required").lower()
    if cert_reqs not in _CERT_REQS:
        raise ValueError(f"ssl_cert_reqs must be one of {sorted(_CERT_REQS)}, not {cert_reqs!r}")
    check_hostname = query.get("ssl_check_hostname", "true").lower() in {"1", "true", "yes"}
    # check_hostname must be off before verification can be relaxed.
    context.check_hostname = check_hostname and cert_reqs != "none"
    context.verify_mode = _CERT_REQS[cert_reqs]
    if query.get("ssl_certfile"):
        context.load_cert_chain(query["ssl_certfile"], query.get("ssl_keyfile") or None)
    return context


def _seconds(name: str, text: str) -> float | None:
    if text.lower() in {"", "none"}:
        return None
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"{name} must be a number of seconds, not {text!r}") from None
    if value <= 0:
        raise ValueError(f"{name} must be positive, not {text!r}")
    return value


def _safe(url: str) -> str:
    """The URL with any password masked, for error messages."""
    parts = urlsplit(url)
    if parts.password is None:
        return repr(url.split("?", 1)[0]) if "password=" in url else repr(url)
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return repr(parts._replace(netloc=netloc, query="").geturl())
