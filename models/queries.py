"""Everything the hub asks of the database, as async functions returning plain values.

Callers never hold a session or an ORM object: each function is one short transaction (reads
through `Database.read`, writes through `Database.write`) and returns dicts shaped like the
SPEC's wire objects, with times as ISO 8601 UTC strings from `iso()`.
"""

from __future__ import annotations

from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any

from sqlalchemy import Row, and_, delete, func, or_, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from models.db import Database
from models.tables import (
    coach_messages,
    heart_rate_samples,
    new_id,
    session_events,
    trainer_links,
    users,
    utcnow,
    workout_sessions,
)

USER_ROLES = ("athlete", "trainer", "device", "admin")
COACH_ROLES = ("user", "assistant")
COACH_STATUSES = ("done", "streaming", "cancelled", "failed")


def iso(dt: datetime) -> str:
    """The one time format of the hub: UTC, millisecond precision, `Z` suffix."""
    dt = dt.astimezone(UTC)
    return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{dt.microsecond // 1000:03d}Z"


def round_volume(volume_kg: float) -> float:
    """Volume as shown to people: float sums of reps × weight, without binary noise."""
    return round(volume_kg, 3)


def avg_bpm(hr_sum: int, hr_count: int) -> float | None:
    """Mean heart rate to one decimal, None before the first sample."""
    return round(hr_sum / hr_count, 1) if hr_count else None


# --- users and trainer links -------------------------------------------------------------


def _user_dict(row: Row[Any]) -> dict[str, Any]:
    return {
        "user_id": row.id,
        "name": row.name,
        "role": row.role,
        "created_at": iso(row.created_at),
    }


def _check_role(role: str) -> None:
    if role not in USER_ROLES:
        raise ValueError(f"role must be one of {', '.join(USER_ROLES)}, got {role!r}")


async def upsert_user(db: Database, user_id: str, name: str, role: str) -> dict[str, Any]:
    """Create the user or overwrite name and role, atomically; `created_at` is kept."""
    _check_role(role)
    insert = db.insert(users).values(id=user_id, name=name, role=role, created_at=utcnow())
    stmt = insert.on_conflict_do_update(
        index_elements=[users.c.id],
        set_={"name": insert.excluded.name, "role": insert.excluded.role},
    ).returning(*users.c)
    async with db.write() as conn:
        row = (await conn.execute(stmt)).one()
    return _user_dict(row)


async def ensure_user(db: Database, user_id: str, role: str) -> None:
    """Insert the user if unknown; never overwrites (safe when two nodes race on a connect)."""
    _check_role(role)
    stmt = db.insert(users).values(id=user_id, name="", role=role, created_at=utcnow())
    async with db.write() as conn:
        await conn.execute(stmt.on_conflict_do_nothing(index_elements=[users.c.id]))


async def get_user(db: Database, user_id: str) -> dict[str, Any] | None:
    async with db.read() as conn:
        row = (await conn.execute(select(users).where(users.c.id == user_id))).first()
    return None if row is None else _user_dict(row)


async def link(db: Database, trainer_id: str, client_id: str) -> None:
    """Let the trainer watch the client. Idempotent: linking twice keeps the first link."""
    stmt = db.insert(trainer_links).values(
        trainer_id=trainer_id, client_id=client_id, created_at=utcnow()
    )
    async with db.write() as conn:
        await conn.execute(stmt.on_conflict_do_nothing())


async def unlink(db: Database, trainer_id: str, client_id: str) -> bool:
    """Remove the link; True when it existed."""
    stmt = delete(trainer_links).where(
        trainer_links.c.trainer_id == trainer_id, trainer_links.c.client_id == client_id
    )
    async with db.write() as conn:
        result = await conn.execute(stmt)
    return result.rowcount > 0


async def is_linked(db: Database, trainer_id: str, client_id: str) -> bool:
    stmt = select(trainer_links.c.trainer_id).where(
        trainer_links.c.trainer_id == trainer_id, trainer_links.c.client_id == client_id
    )
    async with db.read() as conn:
        return (await conn.execute(stmt)).first() is not None


async def trainers_of(db: Database, client_id: str) -> list[str]:
    """Ids of the trainers linked to the client, sorted."""
    stmt = (
        select(trainer_links.c.trainer_id)
        .where(trainer_links.c.client_id == client_id)
        .order_by(trainer_links.c.trainer_id)
    )
    async with db.read() as conn:
        return list((await conn.execute(stmt)).scalars())


async def clients_of(db: Database, trainer_id: str) -> list[dict[str, Any]]:
    """The trainer's clients sorted by id, each with the id of its newest active session."""
    ws = workout_sessions
    live = (
        select(ws.c.id)
        .where(ws.c.user_id == trainer_links.c.client_id, ws.c.status == "active")
        .order_by(ws.c.started_at.desc(), ws.c.id.desc())
        .limit(1)
        .correlate(trainer_links)
        .scalar_subquery()
    )
    stmt = (
        select(trainer_links.c.client_id, func.coalesce(users.c.name, ""), live)
        .select_from(trainer_links.outerjoin(users, users.c.id == trainer_links.c.client_id))
        .where(trainer_links.c.trainer_id == trainer_id)
        .order_by(trainer_links.c.client_id)
    )
    async with db.read() as conn:
        rows = (await conn.execute(stmt)).all()
    return [{"user_id": r[0], "name": r[1], "live_session_id": r[2]} for r in rows]


# --- workout sessions --------------------------------------------------------------------


def _summary(row: Any, now: datetime) -> dict[str, Any]:
    end = row.ended_at or now
    return {
        "sets": row.sets,
        "reps": row.reps,
        "volume_kg": round_volume(row.volume_kg),
        "duration_s": max(0, int((end - row.started_at).total_seconds())),
        "avg_bpm": avg_bpm(row.hr_sum, row.hr_count),
        "max_bpm": row.max_bpm,
    }


def session_dict(row: Any, now: datetime | None = None) -> dict[str, Any]:
    """A session as the API hands it out, from a row (anything with its columns as
    attributes); `now` ends the duration of an active one."""
    return {
        "session_id": row.id,
        "user_id": row.user_id,
        "title": row.title,
        "status": row.status,
        "started_at": iso(row.started_at),
        "ended_at": None if row.ended_at is None else iso(row.ended_at),
        "summary": _summary(row, now or utcnow()),
    }


async def start_session(db: Database, user_id: str, title: str) -> dict[str, Any]:
    """Create an active session. A user may have several active ones (one per device, say);
    `active_session` reports the newest."""
    values: dict[str, Any] = {
        "id": new_id(),
        "user_id": user_id,
        "title": title,
        "status": "active",
        "started_at": utcnow(),
        "ended_at": None,
        "sets": 0,
        "reps": 0,
        "volume_kg": 0.0,
        "hr_count": 0,
        "hr_sum": 0,
        "max_bpm": None,
    }
    async with db.write() as conn:
        await conn.execute(workout_sessions.insert().values(values))
    return session_dict(SimpleNamespace(**values), values["started_at"])


async def end_session(db: Database, session_id: str) -> dict[str, Any] | None:
    """End an active session and return it with its final summary.

    Atomic and exactly-once: the status test and the update are one statement, so of two
    concurrent calls (two nodes, two devices) one gets the summary and the other None, as does
    a call for an unknown session. The event writer locks the same row, so the summary counts
    every event acknowledged before the end and none after.
    """
    now = utcnow()
    stmt = (
        update(workout_sessions)
        .where(workout_sessions.c.id == session_id, workout_sessions.c.status == "active")
        .values(status="ended", ended_at=now)
        .returning(*workout_sessions.c)
    )
    async with db.write() as conn:
        row = (await conn.execute(stmt)).first()
    return None if row is None else session_dict(row, now)


async def get_session(db: Database, session_id: str) -> dict[str, Any] | None:
    async with db.read() as conn:
        stmt = select(workout_sessions).where(workout_sessions.c.id == session_id)
        row = (await conn.execute(stmt)).first()
    return None if row is None else session_dict(row)


async def get_session_sets(db: Database, session_id: str) -> list[dict[str, Any]]:
    """The session's sets in the order they were accepted, shaped like their broadcasts
    (without `stats`): optional fields appear only when the device sent them."""
    se = session_events
    stmt = select(se).where(se.c.session_id == session_id, se.c.kind == "set").order_by(se.c.id)
    async with db.read() as conn:
        rows = (await conn.execute(stmt)).all()
    return [_event_dict(r, []) for r in rows]


def _event_dict(r: Any, samples: list[list[int]]) -> dict[str, Any]:
    """A stored event (a `session_events` row, and an `hr` event's samples) shaped like its
    broadcast without `stats`: optional fields appear only when the device sent them."""
    item: dict[str, Any] = {"type": r.kind, "event_id": r.event_id}
    if r.kind == "set":
        item.update(exercise=r.exercise, reps=r.reps, weight_kg=r.weight_kg)
        for name in ("rpe", "duration_s", "ts"):
            if getattr(r, name) is not None:
                item[name] = getattr(r, name)
    else:
        item["samples"] = samples
    item["user"] = r.user_id
    if r.device is not None:
        item["device"] = r.device
    item["server_ts"] = r.server_ts
    return item


async def stored_event(db: Database, user_id: str, event_id: str) -> dict[str, Any] | None:
    """The user's stored event `event_id` shaped like its broadcast, with its `session_id`
    apart and, as `stats`, its session's totals now (not as they were after the event); None
    when no such event is stored."""
    se, ws, hr = session_events, workout_sessions, heart_rate_samples
    stmt = (
        select(se, ws.c.sets, ws.c.reps, ws.c.volume_kg, ws.c.hr_count, ws.c.hr_sum,
               ws.c.max_bpm)
        .join(ws, ws.c.id == se.c.session_id)
        .where(se.c.user_id == user_id, se.c.event_id == event_id)
    )
    async with db.read() as conn:
        row = (await conn.execute(stmt)).first()
        if row is None:
            return None
        samples: list[list[int]] = []
        if row.kind == "hr":
            found = await conn.execute(select(hr.c.ts_ms, hr.c.bpm)
                                       .where(hr.c.event_pk == row.id).order_by(hr.c.id))
            samples = [[ts, bpm] for ts, bpm in found]
    event = _event_dict(row, samples)
    stats: dict[str, Any] = {"sets": row.sets, "reps": row.reps,
                             "volume_kg": round_volume(row.volume_kg)}
    if row.kind == "hr":
        stats.update(avg_bpm=avg_bpm(row.hr_sum, row.hr_count), max_bpm=row.max_bpm)
    event["stats"] = stats
    return {"session_id": row.session_id, "event": event}


async def recent_sessions(
    db: Database | AsyncConnection, user_id: str, limit: int
) -> list[dict[str, Any]]:
    """The user's latest `limit` sessions, newest first."""
    ws = workout_sessions
    stmt = (
        select(ws)
        .where(ws.c.user_id == user_id)
        .order_by(ws.c.started_at.desc(), ws.c.id.desc())
        .limit(limit)
    )
    async with Database.reading(db) as conn:
        rows = (await conn.execute(stmt)).all()
    now = utcnow()
    return [session_dict(r, now) for r in rows]


async def active_session(
    db: Database | AsyncConnection, user_id: str
) -> dict[str, Any] | None:
    """The user's newest active session, if any."""
    ws = workout_sessions
    stmt = (
        select(ws)
        .where(ws.c.user_id == user_id, ws.c.status == "active")
        .order_by(ws.c.started_at.desc(), ws.c.id.desc())
        .limit(1)
    )
    async with Database.reading(db) as conn:
        row = (await conn.execute(stmt)).first()
    return None if row is None else session_dict(row)


# --- coach messages ----------------------------------------------------------------------


def _message_dict(row: Any) -> dict[str, Any]:
    """A `coach.history` item from a row (anything with its columns as attributes)."""
    item: dict[str, Any] = {
        "message_id": row.id,
        "role": row.role,
        "text": row.text,
        "status": row.status,
    }
    if row.reply_to is not None:
        item["reply_to"] = row.reply_to
    if row.status == "streaming" and getattr(row, "deltas", None) is not None:
        # How many `delta` publications the text holds: a client continues from that index.
        item["deltas"] = row.deltas
    item["created_at"] = iso(row.created_at)
    return item


async def add_coach_message(
    db: Database,
    user_id: str,
    role: str,
    text: str,
    status: str,
    reply_to: str | None = None,
) -> dict[str, Any]:
    """Store a question or an answer (an answer starts as `streaming`); returns the
    `coach.history` item, whose `message_id` the server made."""
    if role not in COACH_ROLES:
        raise ValueError(f"role must be one of {', '.join(COACH_ROLES)}, got {role!r}")
    if status not in COACH_STATUSES:
        raise ValueError(f"status must be one of {', '.join(COACH_STATUSES)}, got {status!r}")
    values: dict[str, Any] = {
        "id": new_id(),
        "user_id": user_id,
        "role": role,
        "text": text,
        "status": status,
        "reply_to": reply_to,
        "finish_reason": None,
        "usage": None,
        "created_at": utcnow(),
    }
    async with db.write() as conn:
        await conn.execute(coach_messages.insert().values(values))
    return _message_dict(SimpleNamespace(**values))


async def update_coach_message(
    db: Database,
    message_id: str,
    *,
    text: str | None = None,
    status: str | None = None,
    finish_reason: str | None = None,
    usage: dict[str, Any] | None = None,
) -> bool:
    """Set the given fields (the others stay); True when the message exists."""
    if status is not None and status not in COACH_STATUSES:
        raise ValueError(f"status must be one of {', '.join(COACH_STATUSES)}, got {status!r}")
    values = {
        name: value
        for name, value in (
            ("text", text),
            ("status", status),
            ("finish_reason", finish_reason),
            ("usage", usage),
        )
        if value is not None
    }
    if not values:
        raise ValueError("nothing to update")
    stmt = update(coach_messages).where(coach_messages.c.id == message_id).values(values)
    async with db.write() as conn:
        result = await conn.execute(stmt)
    return result.rowcount > 0


async def coach_history(
    db: Database | AsyncConnection, user_id: str, limit: int = 50, before: str | None = None
) -> list[dict[str, Any]]:
    """The user's latest `limit` messages, oldest first (newest last).

    `before` is a `message_id`: only messages older than it are returned, so a client pages
    back by passing the first id it holds. An id that is not this user's gives an empty page.
    Messages are ordered by (created_at, message_id), a total order, so pages never overlap.
    """
    cm = coach_messages
    stmt = select(cm).where(cm.c.user_id == user_id)
    if before is not None:
        anchor = (
            select(cm.c.created_at)
            .where(cm.c.id == before, cm.c.user_id == user_id)
            .scalar_subquery()
        )
        stmt = stmt.where(
            or_(cm.c.created_at < anchor, and_(cm.c.created_at == anchor, cm.c.id < before))
        )
    stmt = stmt.order_by(cm.c.created_at.desc(), cm.c.id.desc()).limit(limit)
    async with Database.reading(db) as conn:
        rows = (await conn.execute(stmt)).all()
    return [_message_dict(r) for r in reversed(rows)]
