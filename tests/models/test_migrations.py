"""The Alembic migrations build exactly the schema `models.tables` declares, on both backends,
and `Database.start` applies them safely (idempotent, concurrent nodes, clear failures)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import Column, Connection, Integer, MetaData, inspect, text
from sqlalchemy.exc import SQLAlchemyError
from sqlmodel import SQLModel

from models.db import Database, alembic_config
from models.tables import users


def _diff(connection: Connection, metadata: MetaData) -> list[Any]:
    context = MigrationContext.configure(connection, opts={"compare_type": True})
    return compare_metadata(context, metadata)


async def test_migrated_schema_matches_the_models(database: Database) -> None:
    async with database.read() as conn:
        assert await conn.run_sync(_diff, SQLModel.metadata) == []
        version = (await conn.execute(text("SELECT version_num FROM alembic_version"))).scalar()
    assert version == "0004"


async def test_comparison_sees_a_model_change(database: Database) -> None:
    changed = MetaData()
    for table in SQLModel.metadata.tables.values():
        table.to_metadata(changed)
    changed.tables[users.name].append_column(Column("shoe_size", Integer))
    async with database.read() as conn:
        diff = await conn.run_sync(_diff, changed)
    assert [(d[0], d[3].name) for d in diff] == [("add_column", "shoe_size")]


async def test_start_is_idempotent_and_downgrade_works(database: Database) -> None:
    again = Database(database.url)
    await again.start()  # already at head: nothing to do
    await again.ping()
    await again.close()

    async with database.write() as conn:
        await conn.run_sync(lambda c: command.downgrade(alembic_config(c), "base"))
    async with database.read() as conn:
        tables = await conn.run_sync(lambda c: inspect(c).get_table_names())
    assert set(tables) <= {"alembic_version"}

    await database.close()
    await database.start()
    async with database.read() as conn:
        assert await conn.run_sync(_diff, SQLModel.metadata) == []


async def test_nodes_starting_together_migrate_once(database_url: str) -> None:
    nodes = [Database(database_url) for _ in range(3)]
    await asyncio.gather(*(node.start() for node in nodes))
    try:
        async with nodes[0].read() as conn:
            assert await conn.run_sync(_diff, SQLModel.metadata) == []
    finally:
        for node in nodes:
            await node.close()


async def test_unreachable_database_fails_start(database_url: str) -> None:
    if database_url.startswith("sqlite"):
        bad = "sqlite:////nonexistent-directory/fitsync.db"
    else:
        bad = "postgresql://postgres@127.0.0.1:1/fitsync"
    db = Database(bad)
    with pytest.raises((OSError, SQLAlchemyError)):
        await db.start()
    with pytest.raises(RuntimeError):
        db.engine  # noqa: B018 - nothing stays open after a failed start


async def test_ping(database: Database) -> None:
    await database.ping()
    assert database.dialect in ("sqlite", "postgresql")
    assert database.engine.dialect.name == database.dialect
