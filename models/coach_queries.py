"""The AI coach's database side: asking, the one-answer-per-user lease, and finishing once.

The guarantee, on SQLite and PostgreSQL, across any number of nodes and without Redis:

* **One answer at a time per user.** `begin_ask` inserts the question and a `streaming` answer
  row in one transaction; the partial unique index `uq_coach_messages_one_streaming` (one
  `streaming` row per user) makes the answer insert a no-op when the user already has one, and
  then the whole ask is rolled back (the caller answers 106). Two nodes racing for the same user
  serialise on the index: exactly one wins.
* **A lease a dead node cannot hold forever.** The node streaming an answer renews
  `heartbeat_at` each time it saves the partial text (`save_partials`, every
  `HUB_COACH_SAVE_INTERVAL`, for all of a node's answers at once). An answer whose
  heartbeat is older than the lease (`HUB_COACH_LEASE`) is taken for dead and marked
  `failed`: by `begin_ask` when it is in the way of the user's next question, and by
  `fail_stale_answers` (each node at start and periodically). A node that merely starts
  never fails another live node's answer: its heartbeat is fresh. Node clocks are assumed
  to agree to well within the lease.
* **Finished exactly once.** Every write to an answer is conditional on it still being
  `streaming`: the first of done / cancelled / failed wins, whoever writes it (the streaming
  node, a cancel arriving on another node, a sweep); the loser is told (`False` / None) and
  publishes nothing. A streaming node whose save finds its row no longer streaming has lost the
  answer and stops.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import bindparam, case, func, or_, select, update
from sqlalchemy import text as sql_text
from sqlalchemy.ext.asyncio import AsyncConnection

from models import coach_queries_pg, queries
from models.coach_refusals import AnswerInProgress as AnswerInProgress
from models.coach_refusals import TooManyAsks as TooManyAsks
from models.db import Database
from models.queries import COACH_STATUSES, iso
from models.tables import coach_messages, new_id, session_events, utcnow

RATE_WINDOW_S = 60.0
"""Asks are counted over the last minute (`HUB_COACH_ASKS_PER_MINUTE`)."""

_FINAL_STATUSES = tuple(s for s in COACH_STATUSES if s != "streaming")


def _item(values: dict[str, Any]) -> dict[str, Any]:
    """A `coach.history` item from a new row's values."""
    item: dict[str, Any] = {
        "message_id": values["id"],
        "role": values["role"],
        "text": values["text"],
        "status": values["status"],
    }
    if values.get("reply_to") is not None:
        item["reply_to"] = values["reply_to"]
    item["created_at"] = iso(values["created_at"])
    return item


def _stale(cm: Any, before: datetime) -> Any:
    """Streaming answers whose lease was last renewed before `before` (or never)."""
    return (cm.c.status == "streaming") & or_(cm.c.heartbeat_at.is_(None),
                                               cm.c.heartbeat_at < before)


async def begin_ask(
    db: Database, user_id: str, text: str, *, lease: float, per_minute: int
) -> tuple[dict[str, Any], dict[str, Any], list[dict[str, Any]]]:
    """Store the question and start its answer as `streaming`, atomically.

    Returns (question, answer, interrupted): the two `coach.history` items, and the user's
    answers found dead in the way (stale lease) and marked `failed` on the way. Raises
    `TooManyAsks` or `AnswerInProgress` with nothing stored.
    """
    now = utcnow()
    question = {"id": new_id(), "user_id": user_id, "role": "user", "text": text,
                "status": "done", "reply_to": None, "created_at": now}
    # The answer sorts after its question even when both carry the same clock reading.
    answer = {"id": new_id(), "user_id": user_id, "role": "assistant", "text": "",
              "status": "streaming", "reply_to": question["id"],
              "created_at": now + timedelta(microseconds=1), "heartbeat_at": now, "deltas": 0}
    ask = coach_queries_pg.begin_ask if db.dialect == "postgresql" else _begin_ask
    interrupted = await ask(db, question, answer, asked_since=now - timedelta(
        seconds=RATE_WINDOW_S), stale_before=now - timedelta(seconds=lease),
        per_minute=per_minute)
    return _item(question), _item(answer), interrupted


async def _begin_ask(
    db: Database, question: dict[str, Any], answer: dict[str, Any], *, asked_since: datetime,
    stale_before: datetime, per_minute: int
) -> list[dict[str, Any]]:
    cm = coach_messages
    user_id = question["user_id"]
    async with db.write() as conn:
        recent = (await conn.execute(
            select(func.count()).select_from(cm).where(
                cm.c.user_id == user_id, cm.c.role == "user", cm.c.created_at > asked_since)
        )).scalar_one()
        if recent >= per_minute:
            raise TooManyAsks(per_minute)
        interrupted = [dict(r._mapping) for r in (await conn.execute(
            update(cm).where(cm.c.user_id == user_id, _stale(cm, stale_before))
            .values(status="failed").returning(cm.c.id, cm.c.user_id, cm.c.reply_to, cm.c.text)
        )).all()]
        await conn.execute(cm.insert().values(question))
        inserted = (await conn.execute(
            db.insert(cm).values(answer).on_conflict_do_nothing(
                # A literal, not a parameter: PostgreSQL must see that the conflict target is
                # the partial index, and a generic plan (a prepared statement's sixth run on)
                # knows no parameter values.
                index_elements=[cm.c.user_id], index_where=sql_text("status = 'streaming'"),
            ).returning(cm.c.id)
        )).first()
        if inserted is None:
            holder = (await conn.execute(select(cm.c.id).where(
                cm.c.user_id == user_id, cm.c.status == "streaming"))).scalar()
            raise AnswerInProgress(holder)
    return interrupted


async def save_partials(db: Database, answers: list[tuple[str, str, int]]) -> set[str]:
    """Save the text streamed so far of each `(reply_id, text, deltas)` and renew its lease,
    in one transaction; returns the ids still `streaming`. One missing was finished elsewhere
    or failed as dead: its streamer must stop.

    The updates lock the rows they change until the commit, so the check that follows sees
    exactly the rows saved: one that was not streaming can never be again."""
    cm = coach_messages
    ids = [reply_id for reply_id, _, _ in answers]
    now = utcnow()
    async with db.write() as conn:
        await conn.execute(
            update(cm).where(cm.c.id == bindparam("b_id"), cm.c.status == "streaming")
            .values(text=bindparam("b_text"), deltas=bindparam("b_deltas"), heartbeat_at=now),
            [{"b_id": i, "b_text": text, "b_deltas": deltas} for i, text, deltas in answers])
        kept = await conn.execute(
            select(cm.c.id).where(cm.c.id.in_(ids), cm.c.status == "streaming"))
    return {row.id for row in kept}


async def finish_answer(
    db: Database,
    reply_id: str,
    status: str,
    *,
    text: str | None = None,
    deltas: int | None = None,
    finish_reason: str | None = None,
    usage: dict[str, Any] | None = None,
) -> dict[str, Any] | None:
    """Move a `streaming` answer to its final status (with its text when given).

    Returns the stored answer (`user_id`, `reply_to`, `text`, `deltas`), or None when it was
    not streaming any more: someone else finished it first, and nothing must be published.
    """
    if status not in _FINAL_STATUSES:
        raise ValueError(f"final status must be one of {', '.join(_FINAL_STATUSES)}")
    cm = coach_messages
    values: dict[str, Any] = {"status": status, "heartbeat_at": None}
    for name, value in (("text", text), ("deltas", deltas), ("finish_reason", finish_reason),
                        ("usage", usage)):
        if value is not None:
            values[name] = value
    if db.dialect == "postgresql":
        return await coach_queries_pg.finish_answer(db, reply_id, values)
    async with db.write() as conn:
        row = (await conn.execute(
            update(cm).where(cm.c.id == reply_id, cm.c.status == "streaming").values(values)
            .returning(cm.c.user_id, cm.c.reply_to, cm.c.text, cm.c.deltas)
        )).first()
    return None if row is None else dict(row._mapping)


async def cancel_elsewhere(db: Database, reply_id: str, lease: float) -> dict[str, Any] | None:
    """End a `streaming` answer as `cancelled` from a node that is not streaming it.

    Returns the answer (`reply_to`, `text`, `announce`), or None when it was not streaming.
    The streaming node sees the status at its next save, stops, stores its full text and
    announces the cancel itself (`settle_cancel`), so `cancelled` comes after its last delta.
    Only when that node is dead (its lease ran out) is `announce` True: the caller announces.
    """
    cm = coach_messages
    cutoff = utcnow() - timedelta(seconds=lease)
    async with db.write() as conn:
        row = (await conn.execute(
            update(cm).where(cm.c.id == reply_id, cm.c.status == "streaming")
            .values(status="cancelled", heartbeat_at=case(
                (cm.c.heartbeat_at < cutoff, None), else_=cm.c.heartbeat_at))
            .returning(cm.c.reply_to, cm.c.text, cm.c.heartbeat_at)
        )).first()
    if row is None:
        return None
    return {"reply_to": row.reply_to, "text": row.text, "announce": row.heartbeat_at is None}


async def settle_cancel(db: Database, reply_id: str, text: str, deltas: int) -> bool:
    """The streaming node's side of `cancel_elsewhere`: store the full text and claim the
    announcement; True exactly once, and only if the cancelling node left it to us."""
    cm = coach_messages
    async with db.write() as conn:
        result = await conn.execute(
            update(cm).where(cm.c.id == reply_id, cm.c.status == "cancelled",
                             cm.c.heartbeat_at.is_not(None))
            .values(text=text, deltas=deltas, heartbeat_at=None))
    return result.rowcount > 0


async def fail_stale_answers(db: Database, lease: float) -> list[dict[str, Any]]:
    """Mark every `streaming` answer whose lease ran out as `failed`; returns them
    (`id`, `user_id`, `reply_to`, `text`) so their watchers can be told."""
    cm = coach_messages
    async with db.write() as conn:
        rows = (await conn.execute(
            update(cm).where(_stale(cm, utcnow() - timedelta(seconds=lease)))
            .values(status="failed")
            .returning(cm.c.id, cm.c.user_id, cm.c.reply_to, cm.c.text)
        )).all()
    return [dict(r._mapping) for r in rows]


async def get_answer(db: Database, reply_id: str) -> dict[str, Any] | None:
    """An assistant message's owner, status, question and text, or None."""
    cm = coach_messages
    async with db.read() as conn:
        row = (await conn.execute(
            select(cm.c.id, cm.c.user_id, cm.c.status, cm.c.reply_to, cm.c.text, cm.c.deltas)
            .where(cm.c.id == reply_id, cm.c.role == "assistant")
        )).first()
    return None if row is None else dict(row._mapping)


async def recent_sets(
    db: Database | AsyncConnection, session_id: str, limit: int
) -> list[dict[str, Any]]:
    """The session's last `limit` sets, oldest first: exercise, reps, weight and RPE."""
    se = session_events
    stmt = (
        select(se.c.exercise, se.c.reps, se.c.weight_kg, se.c.rpe)
        .where(se.c.session_id == session_id, se.c.kind == "set")
        .order_by(se.c.id.desc()).limit(limit)
    )
    async with Database.reading(db) as conn:
        rows = (await conn.execute(stmt)).all()
    return [dict(r._mapping) for r in reversed(rows)]


async def prompt_rows(
    db: Database, user_id: str, *, sets: int, messages: int
) -> tuple[dict[str, Any] | None, list[dict[str, Any]], list[dict[str, Any]]]:
    """What the coach's prompt is made of, read on one connection: the user's active session
    (else the latest; None without any), its last `sets` sets (as `recent_sets`), and the last
    `messages` turns of the conversation, oldest first, each only what a prompt uses:
    `message_id`, `role`, `text` and `status` (`coach.history` items less their times)."""
    if db.dialect == "postgresql":
        return await coach_queries_pg.prompt_rows(db, user_id, sets=sets, messages=messages)
    cm = coach_messages
    latest_turns = (
        select(cm.c.id.label("message_id"), cm.c.role, cm.c.text, cm.c.status)
        .where(cm.c.user_id == user_id)
        .order_by(cm.c.created_at.desc(), cm.c.id.desc()).limit(messages)
    )
    async with db.read() as conn:
        session = await queries.active_session(conn, user_id)
        if session is None:
            latest = await queries.recent_sessions(conn, user_id, 1)
            session = latest[0] if latest else None
        recent = [] if session is None else await recent_sets(conn, session["session_id"], sets)
        turns = [dict(r._mapping) for r in reversed((await conn.execute(latest_turns)).all())]
    return session, recent, turns
