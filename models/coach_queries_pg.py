"""The coach's per-ask queries on PostgreSQL, on raw asyncpg (`Database.raw_postgres`).

Each ask runs three transactions: `begin_ask`, the prompt's reads (`prompt_rows`) and
`finish_answer`. Through SQLAlchemy they cost about 9 ms of the hub's CPU per ask here, most of
it building statement objects and running them through its async adaptation; the same
statements on asyncpg cost 0.7 ms. Fifty athletes asking at once (the end of a group class)
were half a second of the event loop.

The statements are those of the generic path in `models.coach_queries`, which states the
guarantees, and the model tests run both paths; only `prompt_rows` folds "the active session,
else the latest" into one ordered query.
"""

from __future__ import annotations

from datetime import datetime
from types import SimpleNamespace
from typing import Any

import orjson

from models.coach_refusals import AnswerInProgress, TooManyAsks
from models.db import Database
from models.queries import session_dict
from models.tables import utcnow

_ASKED_SINCE = """SELECT count(*) FROM coach_messages
WHERE user_id = $1 AND role = 'user' AND created_at > $2"""

_FAIL_STALE = """UPDATE coach_messages SET status = 'failed'
WHERE user_id = $1 AND status = 'streaming' AND (heartbeat_at IS NULL OR heartbeat_at < $2)
RETURNING id, user_id, reply_to, text"""

_INSERT_QUESTION = """INSERT INTO coach_messages (id, user_id, role, text, status, reply_to,
created_at) VALUES ($1, $2, $3, $4, $5, $6, $7)"""

_INSERT_ANSWER = """INSERT INTO coach_messages (id, user_id, role, text, status, reply_to,
created_at, heartbeat_at, deltas) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
ON CONFLICT (user_id) WHERE status = 'streaming' DO NOTHING RETURNING id"""

_STREAMING_OF = "SELECT id FROM coach_messages WHERE user_id = $1 AND status = 'streaming'"

_FINISH = """UPDATE coach_messages SET status = $2, heartbeat_at = NULL,
text = COALESCE($3, text), deltas = COALESCE($4, deltas),
finish_reason = COALESCE($5, finish_reason), usage = COALESCE($6::text::json, usage)
WHERE id = $1 AND status = 'streaming' RETURNING user_id, reply_to, text, deltas"""

_ACTIVE_ELSE_LATEST_SESSION = """SELECT * FROM workout_sessions WHERE user_id = $1
ORDER BY status = 'active' DESC, started_at DESC, id DESC LIMIT 1"""

_RECENT_SETS = """SELECT exercise, reps, weight_kg, rpe FROM session_events
WHERE session_id = $1 AND kind = 'set' ORDER BY id DESC LIMIT $2"""

_LATEST_TURNS = """SELECT id AS message_id, role, text, status FROM coach_messages
WHERE user_id = $1 ORDER BY created_at DESC, id DESC LIMIT $2"""


async def begin_ask(
    db: Database, question: dict[str, Any], answer: dict[str, Any], *, asked_since: datetime,
    stale_before: datetime, per_minute: int
) -> list[dict[str, Any]]:
    """`coach_queries.begin_ask`'s transaction: store both rows, or raise with nothing stored."""
    user_id = question["user_id"]
    async with db.raw_postgres() as conn, conn.transaction():
        if await conn.fetchval(_ASKED_SINCE, user_id, asked_since) >= per_minute:
            raise TooManyAsks(per_minute)
        interrupted = [dict(r) for r in await conn.fetch(_FAIL_STALE, user_id, stale_before)]
        q = question
        await conn.execute(_INSERT_QUESTION, q["id"], user_id, q["role"], q["text"],
                           q["status"], q["reply_to"], q["created_at"])
        a = answer
        inserted = await conn.fetchval(
            _INSERT_ANSWER, a["id"], user_id, a["role"], a["text"], a["status"],
            a["reply_to"], a["created_at"], a["heartbeat_at"], a["deltas"])
        if inserted is None:
            raise AnswerInProgress(await conn.fetchval(_STREAMING_OF, user_id))
    return interrupted


async def finish_answer(db: Database, reply_id: str,
                        values: dict[str, Any]) -> dict[str, Any] | None:
    """`coach_queries.finish_answer`'s update: `values` holds `status` and what to store."""
    usage = values.get("usage")
    async with db.raw_postgres() as conn:
        row = await conn.fetchrow(
            _FINISH, reply_id, values["status"], values.get("text"), values.get("deltas"),
            values.get("finish_reason"), None if usage is None else orjson.dumps(usage).decode())
    return None if row is None else dict(row)


async def prompt_rows(
    db: Database, user_id: str, *, sets: int, messages: int
) -> tuple[dict[str, Any] | None, list[dict[str, Any]], list[dict[str, Any]]]:
    """`coach_queries.prompt_rows`, on one connection."""
    async with db.raw_postgres() as conn:
        row = await conn.fetchrow(_ACTIVE_ELSE_LATEST_SESSION, user_id)
        session = None if row is None else session_dict(SimpleNamespace(**row), utcnow())
        recent = [] if row is None else [
            dict(r) for r in reversed(await conn.fetch(_RECENT_SETS, row["id"], sets))]
        turns = [dict(r) for r in reversed(await conn.fetch(_LATEST_TURNS, user_id, messages))]
    return session, recent, turns
