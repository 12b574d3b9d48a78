"""Database access: engine setup, migrations on start, and the three ways to run SQL.

* `read()` — a connection for reads. On SQLite its transaction is deferred, so readers never
  wait for the writer (WAL).
* `write()` — a connection inside one transaction, committed on exit and rolled back on error.
  On SQLite the transaction starts with `BEGIN IMMEDIATE` under an in-process FIFO lock: a
  read-then-write transaction can never fail half way with "database is locked" because another
  writer committed in between, and writers of this process take turns fairly instead of
  polling the file lock.
* `session()` — an ORM `AsyncSession`; on SQLite its transactions also begin `IMMEDIATE` so
  read-modify-write code is safe, at the price of holding the file's write lock while open.

The schema is owned by the Alembic migrations in `models/migrations`; `start()` upgrades to head
inside one transaction (under an advisory lock on PostgreSQL, so nodes starting together
migrate once).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, Literal

import asyncpg
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Connection, Table, event, text
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import OperationalError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession, create_async_engine

log = logging.getLogger("models.db")

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"

SQLITE_BUSY_TIMEOUT_MS = 10_000
"""How long a SQLite connection waits for another process's write lock before failing."""

POSTGRES_POOL_SIZE = 10
POSTGRES_CONNECT_TIMEOUT_S = 5.0
"""Bounds every new connection when the server is unreachable (asyncpg would wait 60 s)."""
PING_TIMEOUT_S = 5.0
POSTGRES_APPLICATION_NAME = "fitsync-hub"
"""How the hub's connections show in `pg_stat_activity`."""

_MIGRATION_LOCK_KEY = 0x46495453594E43
"""pg_advisory_xact_lock key ("FITSYNC") serialising migrations of concurrently starting nodes."""

_BEGIN_OPTION = "fitsync_sqlite_begin"


def normalize_url(url: str | None, sqlite_path: str = "fitsync.db") -> str:
    """An async SQLAlchemy URL for `url`: aiosqlite for SQLite, asyncpg for PostgreSQL.

    None or "" means the SQLite file `sqlite_path`. `postgres://` (as platforms hand it out) and
    `postgresql://` become `postgresql+asyncpg://`, translating libpq's `sslmode` into the
    `ssl` argument asyncpg understands. URLs that already name an async driver pass unchanged.
    """
    if not url:
        return f"sqlite+aiosqlite:///{sqlite_path}"
    scheme, sep, rest = url.partition("://")
    if not sep:
        raise ValueError(f"not a database URL: {url!r}")
    scheme = scheme.lower()
    if scheme in ("postgres", "postgresql"):
        location, qmark, query = rest.partition("?")
        params = "&".join(
            "ssl=" + p.removeprefix("sslmode=") if p.startswith("sslmode=") else p
            for p in query.split("&")
        )
        return f"postgresql+asyncpg://{location}{qmark}{params}"
    if scheme == "sqlite":
        return "sqlite+aiosqlite://" + rest
    if scheme in ("postgresql+asyncpg", "sqlite+aiosqlite"):
        return url
    raise ValueError(f"unsupported database URL {scheme}://…; use sqlite:// or postgresql://")


def libpq_url(url: str) -> str:
    """The `postgresql://` spelling of a normalized PostgreSQL URL, for connecting with asyncpg
    directly: it reads libpq's `sslmode` from the URL, not the `ssl` SQLAlchemy hands it."""
    scheme, _, rest = url.partition("://")
    if scheme != "postgresql+asyncpg":
        raise ValueError(f"not a normalized PostgreSQL URL: {scheme}://…")
    location, qmark, query = rest.partition("?")
    params = "&".join(
        "sslmode=" + p.removeprefix("ssl=") if p.startswith("ssl=") else p for p in query.split("&")
    )
    return f"postgresql://{location}{qmark}{params}"


def alembic_config(connection: Connection) -> Config:
    """Alembic configuration built in code, so migrations run from an installed package.

    `connection` is handed to `migrations/env.py`, which runs on it rather than opening its own.
    """
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.attributes["connection"] = connection
    return config


def _upgrade_to_head(connection: Connection) -> tuple[str | None, str | None]:
    """Upgrade; the schema's revision before and after."""
    before = MigrationContext.configure(connection).get_current_revision()
    command.upgrade(alembic_config(connection), "head")
    return before, MigrationContext.configure(connection).get_current_revision()


class Database:
    """One engine and its pool for the life of a node."""

    def __init__(self, url: str | None = None) -> None:
        self.url = normalize_url(url)
        self.dialect: Literal["sqlite", "postgresql"] = (
            "postgresql" if self.url.startswith("postgresql") else "sqlite"
        )
        self._engine: AsyncEngine | None = None
        self._write_engine: AsyncEngine | None = None
        self._write_lock: asyncio.Lock | None = None
        self._raw_pool: asyncpg.Pool | None = None
        self._raw_pool_lock = asyncio.Lock()

    @property
    def engine(self) -> AsyncEngine:
        if self._engine is None:
            raise RuntimeError("Database.start() has not been called")
        return self._engine

    async def start(self) -> None:
        """Create the engine and migrate the schema to head; on failure nothing stays open."""
        if self._engine is not None:
            raise RuntimeError("Database already started")
        if self.dialect == "postgresql":
            engine = create_async_engine(
                self.url,
                pool_size=POSTGRES_POOL_SIZE,
                max_overflow=POSTGRES_POOL_SIZE,
                pool_pre_ping=True,
                connect_args={
                    "timeout": POSTGRES_CONNECT_TIMEOUT_S,
                    "server_settings": {"application_name": POSTGRES_APPLICATION_NAME},
                },
            )
            self._write_engine = engine
            self._write_lock = None
        else:
            engine = create_async_engine(self.url)
            _configure_sqlite(engine)
            self._write_engine = engine.execution_options(**{_BEGIN_OPTION: "BEGIN IMMEDIATE"})
            self._write_lock = asyncio.Lock()
        self._engine = engine
        try:
            if self.dialect == "sqlite":
                await self._switch_to_wal()
            async with self.write() as conn:
                if self.dialect == "postgresql":
                    await conn.execute(
                        text("SELECT pg_advisory_xact_lock(:key)"), {"key": _MIGRATION_LOCK_KEY}
                    )
                before, after = await conn.run_sync(_upgrade_to_head)
        except BaseException:
            await self.close()
            raise
        # One line for the whole upgrade (alembic's own step-by-step lines are kept quiet).
        if before == after:
            log.info("%s database schema at revision %s", self.dialect, after)
        else:
            log.info("%s database schema migrated from %s to %s", self.dialect,
                     before or "empty", after)

    async def _switch_to_wal(self) -> None:
        """Open a first connection, retrying while the file is busy.

        Switching a new file to WAL needs an exclusive lock and SQLite reports a competing
        switch (another node starting on the same new file) as "locked" without waiting; once
        the file is in WAL mode, the pragma on later connections needs no lock.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + SQLITE_BUSY_TIMEOUT_MS / 1000
        while True:
            try:
                async with self.engine.connect():
                    return
            except OperationalError as exc:
                if "locked" not in str(exc.orig) or loop.time() > deadline:
                    raise
            await asyncio.sleep(0.02)

    async def close(self) -> None:
        """Close every pooled connection. Idempotent."""
        engine, self._engine, self._write_engine = self._engine, None, None
        raw_pool, self._raw_pool = self._raw_pool, None
        if raw_pool is not None:
            await raw_pool.close()
        if engine is not None:
            await engine.dispose()

    async def ping(self) -> None:
        """Run `SELECT 1`; raises when the database cannot be reached or does not answer
        within `PING_TIMEOUT_S` (so a readiness probe never hangs)."""
        async with asyncio.timeout(PING_TIMEOUT_S), self.engine.connect() as conn:
            await conn.execute(text("SELECT 1"))

    @asynccontextmanager
    async def read(self) -> AsyncIterator[AsyncConnection]:
        """A connection for reads; its transaction is rolled back on exit."""
        async with self.engine.connect() as conn:
            yield conn

    @asynccontextmanager
    async def raw_postgres(self) -> AsyncIterator[asyncpg.Connection]:
        """A connection of a plain asyncpg pool beside the engine's (PostgreSQL only), for the
        few queries too hot for SQLAlchemy: through it a statement costs about ten times the
        CPU of asyncpg's own (the coach's per-ask queries: 9 ms against 0.7 here).

        Its connections are opened when needed (at most `POSTGRES_POOL_SIZE`) and handed back
        without the reset query asyncpg sends by default: the queries run on them leave no
        session state (no LISTEN, cursors, locks or settings) behind."""
        pool = self._raw_pool or await self._open_raw_pool()
        async with pool.acquire() as conn:
            yield conn

    async def _open_raw_pool(self) -> asyncpg.Pool:
        if self.dialect != "postgresql":
            raise RuntimeError("raw_postgres() is for PostgreSQL only")
        async with self._raw_pool_lock:
            if self._raw_pool is None:
                self._raw_pool = await asyncpg.create_pool(
                    libpq_url(self.url), min_size=0, max_size=POSTGRES_POOL_SIZE,
                    timeout=POSTGRES_CONNECT_TIMEOUT_S, reset=_leave_as_is,
                    server_settings={"application_name": POSTGRES_APPLICATION_NAME})
            return self._raw_pool

    @staticmethod
    @asynccontextmanager
    async def reading(source: Database | AsyncConnection) -> AsyncIterator[AsyncConnection]:
        """`source` itself when it is a connection already reading (several queries on one
        connection, one checkout), else a read of the database."""
        if isinstance(source, AsyncConnection):
            yield source
            return
        async with source.read() as conn:
            yield conn

    @asynccontextmanager
    async def write(self) -> AsyncIterator[AsyncConnection]:
        """A connection in one transaction: everything in the block commits, or nothing does."""
        engine = self._started_write_engine()
        if self._write_lock is None:
            async with engine.begin() as conn:
                yield conn
            return
        async with self._write_lock, engine.begin() as conn:
            yield conn

    def insert(self, table: Table) -> postgresql.Insert | sqlite.Insert:
        """An INSERT for this backend, so callers can add `ON CONFLICT` clauses portably."""
        if self.dialect == "postgresql":
            return postgresql.insert(table)
        return sqlite.insert(table)

    def session(self) -> AsyncSession:
        """An ORM session (use as `async with db.session() as s:`); objects stay usable after
        commit. Prefer `models.queries`, which returns plain values."""
        return AsyncSession(self._started_write_engine(), expire_on_commit=False)

    def _started_write_engine(self) -> AsyncEngine:
        if self._write_engine is None:
            raise RuntimeError("Database.start() has not been called")
        return self._write_engine


async def _leave_as_is(_conn: asyncpg.Connection) -> None:
    """`raw_postgres`'s connections go back to the pool as they are (see there)."""


def _configure_sqlite(engine: AsyncEngine) -> None:
    """WAL, a busy timeout and foreign keys on every connection; SQLAlchemy emits BEGIN.

    The driver's own transaction handling is switched off (it would not BEGIN before SELECT or
    DDL, breaking repeatable reads and transactional migrations) and the `begin` hook emits the
    BEGIN flavour the connection's options ask for.
    """

    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    @event.listens_for(engine.sync_engine, "begin")
    def _on_begin(conn: Connection) -> None:
        conn.exec_driver_sql(conn.get_execution_options().get(_BEGIN_OPTION, "BEGIN"))
