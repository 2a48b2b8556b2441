"""Pytest plugin: PostgreSQL fixtures for any test that asks for them (the history tests, the
web app's history pages). One throwaway database per session on the local service (or in a
throwaway cluster when the service cannot be reached), and a schema of its own per test."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from strego.history import PostgresHistory


@pytest.fixture(scope="session")
def pg_admin() -> Iterator[str]:
    from tests.postgres_server import session_admin_dsn

    with session_admin_dsn() as dsn:
        yield dsn


@pytest.fixture(scope="session")
def pg_database(pg_admin: str) -> Iterator[str]:
    from tests.postgres_server import throwaway_database

    with throwaway_database(pg_admin) as dsn:
        yield dsn


@pytest.fixture
def pg_dsn(pg_database: str) -> Iterator[str]:
    """The session database, seen through a schema of this test's own (dropped after it)."""
    import psycopg

    from tests.postgres_server import in_schema

    name = f"t_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(pg_database, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {name}")
    try:
        yield in_schema(pg_database, name)
    finally:
        with psycopg.connect(pg_database, autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA {name} CASCADE")


@pytest.fixture
async def history(pg_dsn: str) -> AsyncIterator[PostgresHistory]:
    from strego.history import PostgresHistory

    h = PostgresHistory(pg_dsn)
    yield h
    await h.aclose()
