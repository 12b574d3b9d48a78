"""Drop the foreign keys of session events and heart-rate samples (see `SessionEvent`).

Measured on PostgreSQL with the event writer's batch insert (100 rows, json_to_recordset,
ON CONFLICT DO NOTHING): 20-23 us per row with the key, 13.5-14.3 without.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-25
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0002"
down_revision: str | Sequence[str] | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_FOREIGN_KEYS = (
    ("session_events", "session_id", "workout_sessions", "id"),
    ("heart_rate_samples", "event_pk", "session_events", "id"),
)
_NAMING = {"fk": "%(table_name)s_%(column_0_name)s_fkey"}
"""PostgreSQL's own names for these keys; on SQLite, where they are unnamed, the same names
let batch mode find them."""


def upgrade() -> None:
    for table, column, _, _ in _FOREIGN_KEYS:
        with op.batch_alter_table(table, naming_convention=_NAMING) as batch:
            batch.drop_constraint(f"{table}_{column}_fkey", type_="foreignkey")


def downgrade() -> None:
    for table, column, target, target_column in _FOREIGN_KEYS:
        with op.batch_alter_table(table, naming_convention=_NAMING) as batch:
            batch.create_foreign_key(f"{table}_{column}_fkey", target, [column], [target_column])
