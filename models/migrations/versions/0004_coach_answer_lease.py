"""Coach answers: a lease for the one answer a user may have streaming, and its delta count.

`uq_coach_messages_one_streaming` (a partial unique index on `user_id` where `status =
'streaming'`, the same on SQLite and PostgreSQL) lets a node start an answer only if the user
has no other streaming one, atomically and across nodes; `heartbeat_at` is renewed with each
partial save, so an answer whose node died is recognised by its stale heartbeat and failed.
`deltas` is how many delta publications the stored text holds.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | Sequence[str] | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_STREAMING = sa.text("status = 'streaming'")


def upgrade() -> None:
    op.add_column("coach_messages", sa.Column("heartbeat_at", sa.DateTime(timezone=True),
                                              nullable=True))
    op.add_column("coach_messages", sa.Column("deltas", sa.Integer(), nullable=False,
                                              server_default="0"))
    # Rows streaming before this revision have no heartbeat: their node is gone by now.
    op.execute("UPDATE coach_messages SET status = 'failed' WHERE status = 'streaming'")
    op.create_index("uq_coach_messages_one_streaming", "coach_messages", ["user_id"],
                    unique=True, sqlite_where=_STREAMING, postgresql_where=_STREAMING)


def downgrade() -> None:
    op.drop_index("uq_coach_messages_one_streaming", table_name="coach_messages")
    with op.batch_alter_table("coach_messages") as batch:
        batch.drop_column("deltas")
        batch.drop_column("heartbeat_at")
