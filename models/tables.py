"""SQLModel tables of the hub.

`migrations/versions` must describe exactly these tables: tests compare the migrated schema with
`SQLModel.metadata` on SQLite and PostgreSQL, so a change here without a migration fails CI.

All datetimes are timezone-aware UTC on the way in and out (`UTCDateTime`), whatever the
backend stores; millisecond timestamps from clients are `BigInteger`.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, cast
from uuid import uuid4

from sqlalchemy import (
    JSON,
    BigInteger,
    Column,
    DateTime,
    Dialect,
    Float,
    Index,
    Integer,
    String,
    Table,
    Text,
    TypeDecorator,
    UniqueConstraint,
    text,
)
from sqlmodel import Field, SQLModel

BigIntId = BigInteger().with_variant(Integer(), "sqlite")
"""Surrogate keys: 64-bit on PostgreSQL; on SQLite only `INTEGER PRIMARY KEY` auto-increments."""


def utcnow() -> datetime:
    """The current time, timezone-aware UTC (the only kind of datetime the hub stores)."""
    return datetime.now(UTC)


def new_id() -> str:
    """A random 32-hex-digit identifier for rows whose id the server makes."""
    return uuid4().hex


class UTCDateTime(TypeDecorator[datetime]):
    """`DateTime(timezone=True)` that always hands back aware UTC datetimes.

    SQLite has no time zone storage: values are normalised to UTC before they are written and
    marked UTC when read, so ordering and arithmetic agree with PostgreSQL's `timestamptz`.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given; the hub stores timezone-aware UTC only")
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _created_at() -> Any:
    return Field(default_factory=utcnow, sa_column=Column(UTCDateTime(), nullable=False))


class User(SQLModel, table=True):
    """A person or device owner known to the hub; created on first connect or through the API."""

    __tablename__ = "users"

    id: str = Field(sa_column=Column(String, primary_key=True))
    name: str = Field(default="", sa_column=Column(String, nullable=False))
    role: str = Field(sa_column=Column(String, nullable=False))
    """athlete | trainer | device | admin"""
    created_at: datetime = _created_at()


class TrainerLink(SQLModel, table=True):
    """A trainer may watch a client. The composite key makes linking idempotent."""

    __tablename__ = "trainer_links"

    trainer_id: str = Field(sa_column=Column(String, primary_key=True))
    client_id: str = Field(sa_column=Column(String, primary_key=True, index=True))
    created_at: datetime = _created_at()


class WorkoutSession(SQLModel, table=True):
    """One workout. Running totals live in the row so every node reads the same stats.

    The totals are only changed by the event writer while it holds the row lock, in the same
    transaction that inserts the events they count.
    """

    __tablename__ = "workout_sessions"
    __table_args__ = (Index("ix_workout_sessions_user_started", "user_id", "started_at"),)

    id: str = Field(default_factory=new_id, sa_column=Column(String, primary_key=True))
    user_id: str = Field(sa_column=Column(String, nullable=False))
    title: str = Field(default="", sa_column=Column(Text, nullable=False))
    status: str = Field(default="active", sa_column=Column(String, nullable=False))
    """active | ended"""
    started_at: datetime = Field(
        default_factory=utcnow, sa_column=Column(UTCDateTime(), nullable=False)
    )
    ended_at: datetime | None = Field(default=None, sa_column=Column(UTCDateTime()))
    sets: int = Field(default=0, sa_column=Column(Integer, nullable=False))
    reps: int = Field(default=0, sa_column=Column(Integer, nullable=False))
    volume_kg: float = Field(default=0.0, sa_column=Column(Float, nullable=False))
    hr_count: int = Field(default=0, sa_column=Column(BigInteger, nullable=False))
    hr_sum: int = Field(default=0, sa_column=Column(BigInteger, nullable=False))
    max_bpm: int | None = Field(default=None, sa_column=Column(Integer))


class SessionEvent(SQLModel, table=True):
    """One accepted client event (a set or a batch of heart-rate samples).

    UNIQUE(user_id, event_id) is what makes a device's retry idempotent across nodes: whichever
    node sees the retry, the second insert conflicts and is reported as a duplicate.

    `session_id` has no foreign key, nor has `HeartRateSample.event_pk`: the event writer, the
    only code that inserts either, does so for sessions it holds locked as active in the same
    transaction (and the samples of events it has just inserted), and sessions are never
    deleted. Checked per row, the keys cost about 40% of the batch insert that every
    acknowledgement waits for (migration 0002). Code that deletes sessions must delete their
    events and samples too.
    """

    __tablename__ = "session_events"
    __table_args__ = (UniqueConstraint("user_id", "event_id", name="uq_session_events_user_event"),)

    id: int | None = Field(
        default=None, sa_column=Column(BigIntId, primary_key=True, autoincrement=True)
    )
    session_id: str = Field(
        sa_column=Column(String, nullable=False, index=True)
    )
    user_id: str = Field(sa_column=Column(String, nullable=False))
    event_id: str = Field(sa_column=Column(String, nullable=False))
    kind: str = Field(sa_column=Column(String, nullable=False))
    """set | hr"""
    device: str | None = Field(default=None, sa_column=Column(String))
    server_ts: int = Field(sa_column=Column(BigInteger, nullable=False))
    exercise: str | None = Field(default=None, sa_column=Column(String))
    reps: int | None = Field(default=None, sa_column=Column(Integer))
    weight_kg: float | None = Field(default=None, sa_column=Column(Float))
    rpe: float | None = Field(default=None, sa_column=Column(Float))
    duration_s: float | None = Field(default=None, sa_column=Column(Float))
    ts: int | None = Field(default=None, sa_column=Column(BigInteger))


class HeartRateSample(SQLModel, table=True):
    """One `[ts_ms, bpm]` pair of an accepted `hr` event."""

    __tablename__ = "heart_rate_samples"

    id: int | None = Field(
        default=None, sa_column=Column(BigIntId, primary_key=True, autoincrement=True)
    )
    event_pk: int = Field(
        sa_column=Column(BigInteger, nullable=False)
    )
    session_id: str = Field(sa_column=Column(String, nullable=False, index=True))
    ts_ms: int = Field(sa_column=Column(BigInteger, nullable=False))
    bpm: int = Field(sa_column=Column(Integer, nullable=False))


class CoachMessage(SQLModel, table=True):
    """A question to the coach or (part of) its answer; answers are updated as they stream.

    At most one answer per user is `streaming` (the partial unique index): the row is the
    lock that keeps a user to one answer at a time on every node, and `heartbeat_at`, renewed
    with each save of the partial text, is its lease (see `models.coach_queries`).
    """

    __tablename__ = "coach_messages"
    __table_args__ = (
        Index("ix_coach_messages_user_created", "user_id", "created_at"),
        Index("uq_coach_messages_one_streaming", "user_id", unique=True,
              sqlite_where=text("status = 'streaming'"),
              postgresql_where=text("status = 'streaming'")),
    )

    id: str = Field(default_factory=new_id, sa_column=Column(String, primary_key=True))
    user_id: str = Field(sa_column=Column(String, nullable=False))
    role: str = Field(sa_column=Column(String, nullable=False))
    """user | assistant"""
    text: str = Field(default="", sa_column=Column(Text, nullable=False))
    status: str = Field(sa_column=Column(String, nullable=False))
    """done | streaming | cancelled | failed"""
    reply_to: str | None = Field(default=None, sa_column=Column(String))
    finish_reason: str | None = Field(default=None, sa_column=Column(String))
    usage: dict[str, Any] | None = Field(default=None, sa_column=Column(JSON))
    created_at: datetime = _created_at()
    heartbeat_at: datetime | None = Field(default=None, sa_column=Column(UTCDateTime()))
    """When the node streaming this answer last saved it; None for anything not streamed."""
    deltas: int = Field(default=0, sa_column=Column(Integer, nullable=False, server_default="0"))
    """How many `delta` publications `text` holds: a client continues from this index."""


def _table(model: type[SQLModel]) -> Table:
    return cast(Table, model.__table__)  # type: ignore[attr-defined]


# Core handles, for the paths that must not pay for the ORM (queries, the event writer).
users = _table(User)
trainer_links = _table(TrainerLink)
workout_sessions = _table(WorkoutSession)
session_events = _table(SessionEvent)
heart_rate_samples = _table(HeartRateSample)
coach_messages = _table(CoachMessage)
