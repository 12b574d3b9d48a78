"""Initial schema: users, trainer links, workout sessions, their events and hr samples, coach
messages.

Revision ID: 0001
Revises:
Create Date: 2026-11-25
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

BigIntId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "users",
        sa.Column("id", sa.String(), nullable=False),
        sa.Column("name", sa.String(), nullable=False),
        sa.Column("role", sa.String(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )

    op.create_table(
        "trainer_links",
        sa.Column("trainer_id", sa.String(), nullable=False),
        sa.Column("client_id", sa.String(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("trainer_id", "client_id"),
    )
    op.create_index("ix_trainer_links_client_id", "trainer_links", ["client_id"])

    op.create_table(
        "workout_sessions",
        sa.Column("id", sa.String(), nullable=False),
        sa.Column("user_id", sa.String(), nullable=False),
        sa.Column("title", sa.Text(), nullable=False),
        sa.Column("status", sa.String(), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("ended_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("sets", sa.Integer(), nullable=False),
        sa.Column("reps", sa.Integer(), nullable=False),
        sa.Column("volume_kg", sa.Float(), nullable=False),
        sa.Column("hr_count", sa.BigInteger(), nullable=False),
        sa.Column("hr_sum", sa.BigInteger(), nullable=False),
        sa.Column("max_bpm", sa.Integer(), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index(
        "ix_workout_sessions_user_started", "workout_sessions", ["user_id", "started_at"]
    )

    op.create_table(
        "session_events",
        sa.Column("id", BigIntId, autoincrement=True, nullable=False),
        sa.Column("session_id", sa.String(), nullable=False),
        sa.Column("user_id", sa.String(), nullable=False),
        sa.Column("event_id", sa.String(), nullable=False),
        sa.Column("kind", sa.String(), nullable=False),
        sa.Column("device", sa.String(), nullable=True),
        sa.Column("server_ts", sa.BigInteger(), nullable=False),
        sa.Column("exercise", sa.String(), nullable=True),
        sa.Column("reps", sa.Integer(), nullable=True),
        sa.Column("weight_kg", sa.Float(), nullable=True),
        sa.Column("rpe", sa.Float(), nullable=True),
        sa.Column("duration_s", sa.Float(), nullable=True),
        sa.Column("ts", sa.BigInteger(), nullable=True),
        sa.ForeignKeyConstraint(["session_id"], ["workout_sessions.id"]),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("user_id", "event_id", name="uq_session_events_user_event"),
    )
    op.create_index("ix_session_events_session_id", "session_events", ["session_id"])

    op.create_table(
        "heart_rate_samples",
        sa.Column("id", BigIntId, autoincrement=True, nullable=False),
        sa.Column("event_pk", sa.BigInteger(), nullable=False),
        sa.Column("session_id", sa.String(), nullable=False),
        sa.Column("ts_ms", sa.BigInteger(), nullable=False),
        sa.Column("bpm", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(["event_pk"], ["session_events.id"]),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_heart_rate_samples_session_id", "heart_rate_samples", ["session_id"])

    op.create_table(
        "coach_messages",
        sa.Column("id", sa.String(), nullable=False),
        sa.Column("user_id", sa.String(), nullable=False),
        sa.Column("role", sa.String(), nullable=False),
        sa.Column("text", sa.Text(), nullable=False),
        sa.Column("status", sa.String(), nullable=False),
        sa.Column("reply_to", sa.String(), nullable=True),
        sa.Column("finish_reason", sa.String(), nullable=True),
        sa.Column("usage", sa.JSON(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_coach_messages_user_created", "coach_messages", ["user_id", "created_at"])


def downgrade() -> None:
    op.drop_table("coach_messages")
    op.drop_table("heart_rate_samples")
    op.drop_table("session_events")
    op.drop_table("workout_sessions")
    op.drop_table("trainer_links")
    op.drop_table("users")
