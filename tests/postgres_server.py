"""PostgreSQL for tests: a throwaway database on the local service (created and dropped per
session), and throwaway clusters (`initdb` + `pg_ctl` in a temporary directory, on a free port)
for the tests that stop and start PostgreSQL, which the shared service must never be.

STREGO_TEST_POSTGRES is the admin DSN of the service (default: postgres on 127.0.0.1:5432, trust
auth). When it cannot be reached, the session database is made in a throwaway cluster instead."""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator

import attrs
import psycopg

from tests.redis_server import free_port

ADMIN_DSN = os.environ.get("STREGO_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/postgres")


def _bin(name: str) -> str:
    found = shutil.which(name) or next(
        iter(sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), reverse=True)), None
    )
    if found is None:
        raise RuntimeError(f"{name} not found: install PostgreSQL (.ci/run does it with apt-get)")
    return found


def _as_postgres() -> list[str]:
    """initdb and postgres refuse to run as root: run them as the postgres user then."""
    return ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []


@attrs.define
class Cluster:
    """A throwaway PostgreSQL cluster in `dir`, listening on 127.0.0.1:`port`."""

    dir: str
    port: int

    @property
    def dsn(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _ctl(self, *args: str) -> None:
        subprocess.run(
            [*_as_postgres(), _bin("pg_ctl"), "-D", f"{self.dir}/data", "-w", "-t", "60", *args],
            check=True,
            capture_output=True,
        )

    def start(self) -> None:
        opts = f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 -c fsync=off"
        self._ctl("-o", opts, "-l", f"{self.dir}/log", "start")

    def stop(self) -> None:
        self._ctl("-m", "fast", "stop")


@contextlib.contextmanager
def throwaway_cluster() -> Iterator[Cluster]:
    tmp = tempfile.mkdtemp(prefix="strego-pg-")
    try:
        if os.geteuid() == 0:
            shutil.chown(tmp, "postgres", "postgres")
        subprocess.run(
            [*_as_postgres(), _bin("initdb"), "-D", f"{tmp}/data", "-U", "postgres",
             "--auth=trust", "--no-sync", "-E", "UTF8"],
            check=True,
            capture_output=True,
        )  # fmt: skip
        cluster = Cluster(tmp, free_port())
        cluster.start()
        try:
            yield cluster
        finally:
            with contextlib.suppress(subprocess.CalledProcessError):
                cluster.stop()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def in_schema(dsn: str, name: str) -> str:
    """`dsn` with `name` as its search path: a test's own schema in a shared database."""
    return f"{dsn}?options=-csearch_path%3D{name}"


def _with_db(dsn: str, name: str) -> str:
    base, _, _ = dsn.rpartition("/")
    return f"{base}/{name}"


@contextlib.contextmanager
def throwaway_database(admin_dsn: str) -> Iterator[str]:
    """A new, empty database on the server of `admin_dsn`, dropped at the end; yields its DSN."""
    name = f"strego_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(admin_dsn, autocommit=True, connect_timeout=5) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    try:
        yield _with_db(admin_dsn, name)
    finally:
        with psycopg.connect(admin_dsn, autocommit=True, connect_timeout=5) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@contextlib.contextmanager
def session_admin_dsn() -> Iterator[str]:
    """The admin DSN of the local service, or of a throwaway cluster when it is unreachable."""
    try:
        psycopg.connect(ADMIN_DSN, connect_timeout=3).close()
    except psycopg.OperationalError:
        with throwaway_cluster() as cluster:
            yield cluster.dsn
        return
    yield ADMIN_DSN
