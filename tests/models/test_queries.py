"""models.queries on SQLite and PostgreSQL: users, links, session lifecycle, coach history."""

from __future__ import annotations

import asyncio
import re

import pytest

from models import queries as q
from models.db import Database, normalize_url
from models.event_writer import EventWriter, SessionEvent
from models.tables import User

ISO = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


def test_normalize_url() -> None:
    assert normalize_url(None) == "sqlite+aiosqlite:///fitsync.db"
    assert normalize_url(None, "/tmp/x.db") == "sqlite+aiosqlite:////tmp/x.db"
    assert normalize_url("sqlite:///rel.db") == "sqlite+aiosqlite:///rel.db"
    assert normalize_url("postgres://u:p@h:5432/d") == "postgresql+asyncpg://u:p@h:5432/d"
    assert (
        normalize_url("postgresql://h/d?sslmode=require") == "postgresql+asyncpg://h/d?ssl=require"
    )
    assert normalize_url("postgresql+asyncpg://h/d") == "postgresql+asyncpg://h/d"
    with pytest.raises(ValueError):
        normalize_url("mysql://h/d")


async def test_users(database: Database) -> None:
    assert await q.get_user(database, "ann") is None

    await q.ensure_user(database, "ann", "athlete")
    ann = await q.get_user(database, "ann")
    assert ann is not None
    assert (ann["user_id"], ann["name"], ann["role"]) == ("ann", "", "athlete")
    assert ISO.match(ann["created_at"])

    await q.ensure_user(database, "ann", "trainer")  # never overwrites
    assert await q.get_user(database, "ann") == ann

    updated = await q.upsert_user(database, "ann", "Ann Lee", "trainer")
    assert updated == {**ann, "name": "Ann Lee", "role": "trainer"}  # created_at kept
    assert await q.get_user(database, "ann") == updated

    created = await q.upsert_user(database, "bob", "Bob", "athlete")
    assert created["user_id"] == "bob"
    with pytest.raises(ValueError):
        await q.upsert_user(database, "eve", "Eve", "root")


async def test_trainer_links(database: Database) -> None:
    await q.upsert_user(database, "cara", "Cara", "athlete")
    await q.link(database, "tom", "cara")
    await q.link(database, "tom", "cara")  # idempotent
    await q.link(database, "tom", "dan")  # a client unknown to the users table
    await q.link(database, "tia", "cara")

    assert await q.is_linked(database, "tom", "cara")
    assert not await q.is_linked(database, "cara", "tom")
    assert await q.trainers_of(database, "cara") == ["tia", "tom"]
    assert await q.clients_of(database, "tom") == [
        {"user_id": "cara", "name": "Cara", "live_session_id": None},
        {"user_id": "dan", "name": "", "live_session_id": None},
    ]

    session = await q.start_session(database, "cara", "Legs")
    clients = await q.clients_of(database, "tom")
    assert clients[0]["live_session_id"] == session["session_id"]
    assert clients[1]["live_session_id"] is None
    await q.end_session(database, session["session_id"])
    assert (await q.clients_of(database, "tom"))[0]["live_session_id"] is None

    assert await q.unlink(database, "tom", "cara") is True
    assert await q.unlink(database, "tom", "cara") is False
    assert not await q.is_linked(database, "tom", "cara")
    assert await q.trainers_of(database, "cara") == ["tia"]
    assert await q.clients_of(database, "nobody") == []


async def test_session_lifecycle_and_summary(database: Database) -> None:
    started = await q.start_session(database, "ann", "Push day")
    sid = started["session_id"]
    assert re.fullmatch(r"[0-9a-f]{32}", sid)
    assert started == {
        "session_id": sid,
        "user_id": "ann",
        "title": "Push day",
        "status": "active",
        "started_at": started["started_at"],
        "ended_at": None,
        "summary": {
            "sets": 0,
            "reps": 0,
            "volume_kg": 0.0,
            "duration_s": 0,
            "avg_bpm": None,
            "max_bpm": None,
        },
    }
    assert ISO.match(started["started_at"])
    assert await q.get_session(database, sid) == started
    assert await q.active_session(database, "ann") == started
    assert await q.active_session(database, "bob") is None

    writer = EventWriter(database)
    writer.start()
    try:
        await writer.submit(
            SessionEvent(
                sid,
                "ann",
                "e1",
                "set",
                "watch-1",
                1000,
                {"exercise": "bench", "reps": 10, "weight_kg": 60.0, "rpe": 8.0},
            )
        )
        await writer.submit(
            SessionEvent(
                sid,
                "ann",
                "e2",
                "set",
                None,
                2000,
                {"exercise": "bench", "reps": 8, "weight_kg": 62.5, "duration_s": 40.0, "ts": 1999},
            )
        )
        await writer.submit(
            SessionEvent(
                sid,
                "ann",
                "h1",
                "hr",
                "watch-1",
                3000,
                samples=[(1, 100), (2, 140), (3, 120)],
            )
        )
    finally:
        await writer.close()

    assert await q.get_session_sets(database, sid) == [
        {
            "type": "set",
            "event_id": "e1",
            "exercise": "bench",
            "reps": 10,
            "weight_kg": 60.0,
            "rpe": 8.0,
            "user": "ann",
            "device": "watch-1",
            "server_ts": 1000,
        },
        {
            "type": "set",
            "event_id": "e2",
            "exercise": "bench",
            "reps": 8,
            "weight_kg": 62.5,
            "duration_s": 40.0,
            "ts": 1999,
            "user": "ann",
            "server_ts": 2000,
        },
    ]

    await asyncio.sleep(1.05)
    live = await q.get_session(database, sid)
    assert live is not None and live["summary"]["duration_s"] >= 1

    ended = await q.end_session(database, sid)
    assert ended is not None
    assert ended["status"] == "ended"
    assert ISO.match(ended["ended_at"])
    assert ended["summary"] == {
        "sets": 2,
        "reps": 18,
        "volume_kg": 1100.0,
        "duration_s": ended["summary"]["duration_s"],
        "avg_bpm": 120.0,
        "max_bpm": 140,
    }
    assert ended["summary"]["duration_s"] >= 1
    assert await q.get_session(database, sid) == ended  # duration frozen at the end
    assert await q.end_session(database, sid) is None  # already ended
    assert await q.end_session(database, "no-such-session") is None
    assert await q.get_session(database, "no-such-session") is None
    assert await q.active_session(database, "ann") is None
    assert await q.get_session_sets(database, "no-such-session") == []


async def test_end_session_is_exactly_once(database: Database) -> None:
    sid = (await q.start_session(database, "ann", ""))["session_id"]
    results = await asyncio.gather(*(q.end_session(database, sid) for _ in range(5)))
    assert sum(r is not None for r in results) == 1


async def test_recent_sessions_newest_first(database: Database) -> None:
    ids = []
    for i in range(4):
        ids.append((await q.start_session(database, "ann", f"s{i}"))["session_id"])
    await q.start_session(database, "bob", "other user")
    await q.end_session(database, ids[0])

    recent = await q.recent_sessions(database, "ann", 3)
    assert [s["session_id"] for s in recent] == ids[:0:-1]
    assert [s["title"] for s in recent] == ["s3", "s2", "s1"]
    everything = await q.recent_sessions(database, "ann", 50)
    assert [s["session_id"] for s in everything] == ids[::-1]
    assert everything[-1]["status"] == "ended"
    assert set(everything[0]) == {
        "session_id",
        "user_id",
        "title",
        "status",
        "started_at",
        "ended_at",
        "summary",
    }
    assert (await q.active_session(database, "ann"))["session_id"] == ids[3]
    assert await q.recent_sessions(database, "nobody", 10) == []


async def test_coach_history(database: Database) -> None:
    messages = []
    for i in range(3):
        question = await q.add_coach_message(database, "ann", "user", f"q{i}", "done")
        # At most one answer per user streams at a time (uq_coach_messages_one_streaming).
        answer = await q.add_coach_message(
            database, "ann", "assistant", "", "streaming" if i == 2 else "done",
            reply_to=question["message_id"]
        )
        messages += [question, answer]
    await q.add_coach_message(database, "bob", "user", "not ann's", "done")

    assert set(messages[0]) == {"message_id", "role", "text", "status", "created_at"}
    assert messages[1]["reply_to"] == messages[0]["message_id"]
    assert ISO.match(messages[1]["created_at"])

    assert await q.update_coach_message(
        database,
        messages[5]["message_id"],
        text="Rest 90 s.",
        status="done",
        finish_reason="stop",
        usage={"total_tokens": 12},
    )
    assert await q.update_coach_message(database, messages[3]["message_id"], status="cancelled")
    assert not await q.update_coach_message(database, "missing", status="failed")
    with pytest.raises(ValueError):
        await q.update_coach_message(database, messages[3]["message_id"])

    history = await q.coach_history(database, "ann")
    assert [m["message_id"] for m in history] == [m["message_id"] for m in messages]
    assert history[5] == {**messages[5], "text": "Rest 90 s.", "status": "done"}
    assert history[3]["status"] == "cancelled"

    latest = await q.coach_history(database, "ann", limit=4)
    assert [m["text"] for m in latest] == ["q1", "", "q2", "Rest 90 s."]
    page = await q.coach_history(database, "ann", limit=4, before=latest[0]["message_id"])
    assert [m["message_id"] for m in page] == [m["message_id"] for m in messages[:2]]
    assert await q.coach_history(database, "ann", before=messages[0]["message_id"]) == []
    assert await q.coach_history(database, "bob", before=messages[2]["message_id"]) == []
    assert [m["text"] for m in await q.coach_history(database, "bob")] == ["not ann's"]


async def test_orm_session(database: Database) -> None:
    async with database.session() as session:
        session.add(User(id="orm", name="Orm", role="admin"))
        await session.commit()
    async with database.session() as session:
        user = await session.get(User, "orm")
        assert user is not None
        user.name = "Orm Two"
        await session.commit()
    assert user.created_at.tzinfo is not None  # usable after commit, aware UTC
    assert (await q.get_user(database, "orm"))["name"] == "Orm Two"
