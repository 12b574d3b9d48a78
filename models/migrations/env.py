"""Alembic environment: runs on the connection `models.db` hands over in `config.attributes`.

There is no alembic.ini and no URL here on purpose: the hub migrates itself on start
(`Database.start`), inside the transaction it opened, so the whole upgrade is atomic.
"""

from __future__ import annotations

from typing import Any, Literal

from alembic import context
from alembic.autogenerate.api import AutogenContext
from sqlmodel import SQLModel

from models import tables

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError(
        "models/migrations runs on a connection from models.db.alembic_config(connection); "
        "the hub migrates on start"
    )


def render_item(type_: str, obj: Any, autogen_context: AutogenContext) -> str | Literal[False]:
    """Write `UTCDateTime` as the plain column type so revisions never import the models."""
    if type_ == "type" and isinstance(obj, tables.UTCDateTime):
        return "sa.DateTime(timezone=True)"
    return False


context.configure(
    connection=connection,
    target_metadata=SQLModel.metadata,
    render_as_batch=connection.dialect.name == "sqlite",
    render_item=render_item,
    compare_type=True,
)
with context.begin_transaction():
    context.run_migrations()
