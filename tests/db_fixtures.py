"""Database fixtures: every test that asks for `database_url` or `database` runs twice, once on
a fresh SQLite file and once on a fresh PostgreSQL database.

PostgreSQL being unreachable is a failure, never a skip: a green run must mean both backends
were exercised. `HUB_TEST_POSTGRES_URL` names the admin connection (default: local trust auth);
each test gets its own `fitsync_test_<random>` database, dropped afterwards even if sessions to
it are still open.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest
from sqlalchemy.engine import make_url

from models.db import Database

DEFAULT_POSTGRES_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/postgres"


def postgres_admin_url() -> str:
    """The libpq-style URL of a database to run CREATE/DROP DATABASE from."""
    url = make_url(os.environ.get("HUB_TEST_POSTGRES_URL") or DEFAULT_POSTGRES_ADMIN_URL)
    return url.set(drivername="postgresql").render_as_string(hide_password=False)


async def _admin_connect() -> asyncpg.Connection:
    admin = postgres_admin_url()
    try:
        return await asyncpg.connect(admin, timeout=5)
    except (TimeoutError, OSError, asyncpg.PostgresError) as exc:
        error = exc
    pytest.fail(
        f"PostgreSQL is unreachable at {make_url(admin)!r}: {error!r}. The database tests need "
        "it: start it (pg_ctlcluster --skip-systemctl-redirect <version> main start) or point "
        "HUB_TEST_POSTGRES_URL at a server where this user may create databases.",
        pytrace=False,
    )


async def create_postgres_database() -> str:
    """Create an empty database and return its `postgresql://` URL."""
    name = f"fitsync_test_{secrets.token_hex(6)}"
    conn = await _admin_connect()
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    return make_url(postgres_admin_url()).set(database=name).render_as_string(hide_password=False)


async def drop_postgres_database(url: str) -> None:
    """Drop the database, disconnecting whoever is still connected to it."""
    name = make_url(url).database
    conn = await _admin_connect()
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


@pytest.fixture(params=["sqlite", "postgresql"])
async def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    """The URL of an empty database, as a user would configure it (`sqlite:///…` or
    `postgresql://…`)."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'fitsync.db'}"
        return
    url = await create_postgres_database()
    try:
        yield url
    finally:
        await drop_postgres_database(url)


@pytest.fixture
async def postgres_url() -> AsyncIterator[str]:
    """The URL of an empty PostgreSQL database, for what only PostgreSQL can do (refuse
    connections on demand, say)."""
    url = await create_postgres_database()
    try:
        yield url
    finally:
        await drop_postgres_database(url)


@pytest.fixture
async def database(database_url: str) -> AsyncIterator[Database]:
    """A started (migrated) `Database` on `database_url`."""
    db = Database(database_url)
    await db.start()
    try:
        yield db
    finally:
        await db.close()
