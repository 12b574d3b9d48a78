"""models.coach_queries on SQLite and PostgreSQL: the ask transaction, the one-answer lock and
its lease, and final statuses written exactly once."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import pytest
from sqlalchemy import insert, select, update

from models import coach_queries as cq
from models import queries
from models.db import Database
from models.tables import coach_messages, session_events, utcnow


async def _age(database: Database, reply_id: str, seconds: float) -> None:
    """Make an answer look as if its node last saved it `seconds` ago."""
    async with database.write() as conn:
        await conn.execute(update(coach_messages).where(coach_messages.c.id == reply_id)
                           .values(heartbeat_at=utcnow() - timedelta(seconds=seconds)))


async def test_an_ask_stores_the_question_and_a_streaming_answer_after_it(
        database: Database) -> None:
    question, answer, interrupted = await cq.begin_ask(database, "ann", "why?", lease=10,
                                                       per_minute=5)
    assert interrupted == []
    history = await queries.coach_history(database, "ann")
    assert history == [question, {**answer, "deltas": 0}]
    assert answer["reply_to"] == question["message_id"] and answer["status"] == "streaming"


async def test_a_second_ask_while_one_streams_is_refused_and_stores_nothing(
        database: Database) -> None:
    _, first, _ = await cq.begin_ask(database, "ann", "one", lease=10, per_minute=5)
    with pytest.raises(cq.AnswerInProgress) as busy:
        await cq.begin_ask(database, "ann", "two", lease=10, per_minute=5)
    assert busy.value.reply_id == first["message_id"]
    assert [m["text"] for m in await queries.coach_history(database, "ann")] == ["one", ""]
    await cq.begin_ask(database, "bob", "mine", lease=10, per_minute=5)  # others are free


async def test_racing_asks_of_one_user_let_exactly_one_through(database: Database) -> None:
    outcomes = await asyncio.gather(
        *(cq.begin_ask(database, "ann", f"q{i}", lease=10, per_minute=50) for i in range(8)),
        return_exceptions=True)
    assert sum(isinstance(o, tuple) for o in outcomes) == 1
    assert all(isinstance(o, (tuple, cq.AnswerInProgress)) for o in outcomes), outcomes
    assert len(await queries.coach_history(database, "ann")) == 2


async def test_asks_keep_working_past_the_prepared_statements_generic_plan(
        database: Database) -> None:
    for n in range(12):  # PostgreSQL may switch a prepared statement to a generic plan at 6
        _, answer, _ = await cq.begin_ask(database, "ann", f"q{n}", lease=10, per_minute=50)
        assert await cq.finish_answer(database, answer["message_id"], "done", text="ok")
    assert len(await queries.coach_history(database, "ann", limit=100)) == 24


async def _saved(database: Database, reply_id: str, text: str, deltas: int) -> bool:
    return reply_id in await cq.save_partials(database, [(reply_id, text, deltas)])


async def test_one_save_covers_every_answer_and_reports_those_still_streaming(
        database: Database) -> None:
    _, ann, _ = await cq.begin_ask(database, "ann", "q", lease=10, per_minute=5)
    _, bob, _ = await cq.begin_ask(database, "bob", "q", lease=10, per_minute=5)
    assert await cq.finish_answer(database, bob["message_id"], "done", text="Done.", deltas=1)
    kept = await cq.save_partials(database, [(ann["message_id"], "So far", 2),
                                             (bob["message_id"], "Overwritten?", 9)])
    assert kept == {ann["message_id"]}
    stored = [await cq.get_answer(database, m["message_id"]) for m in (ann, bob)]
    assert [(a["status"], a["text"]) for a in stored if a] == [("streaming", "So far"),
                                                              ("done", "Done.")]


async def test_asks_are_counted_over_the_last_minute(database: Database) -> None:
    for n in range(3):
        _, answer, _ = await cq.begin_ask(database, "ann", f"q{n}", lease=10, per_minute=3)
        assert await cq.finish_answer(database, answer["message_id"], "done", text="ok")
    with pytest.raises(cq.TooManyAsks):
        await cq.begin_ask(database, "ann", "q3", lease=10, per_minute=3)


async def test_an_answer_whose_lease_ran_out_is_failed_when_in_the_way(
        database: Database) -> None:
    _, dead, _ = await cq.begin_ask(database, "ann", "before", lease=10, per_minute=5)
    assert await _saved(database, dead["message_id"], "half an", 2)
    await _age(database, dead["message_id"], 11)
    _, fresh, interrupted = await cq.begin_ask(database, "ann", "after", lease=10, per_minute=5)
    assert interrupted == [{"id": dead["message_id"], "user_id": "ann",
                            "reply_to": dead["reply_to"], "text": "half an"}]
    assert not await _saved(database, dead["message_id"], "half an answer", 3)
    statuses = [m["status"] for m in await queries.coach_history(database, "ann")]
    assert statuses == ["done", "failed", "done", "streaming"]
    assert fresh["status"] == "streaming"


async def test_the_sweep_fails_only_answers_whose_lease_ran_out(database: Database) -> None:
    _, live, _ = await cq.begin_ask(database, "ann", "live", lease=10, per_minute=5)
    _, dead, _ = await cq.begin_ask(database, "bob", "dead", lease=10, per_minute=5)
    await _age(database, dead["message_id"], 60)
    failed = await cq.fail_stale_answers(database, lease=10)
    assert [row["id"] for row in failed] == [dead["message_id"]]
    assert await _saved(database, live["message_id"], "still here", 1)
    assert await cq.fail_stale_answers(database, lease=10) == []


async def test_an_answer_ends_once_whoever_ends_it(database: Database) -> None:
    _, answer, _ = await cq.begin_ask(database, "ann", "q", lease=10, per_minute=5)
    reply = answer["message_id"]
    ended = await cq.finish_answer(database, reply, "done", text="All of it.", deltas=3,
                                   finish_reason="stop", usage={"total_tokens": 9})
    assert ended == {"user_id": "ann", "reply_to": answer["reply_to"], "text": "All of it.",
                     "deltas": 3}
    assert await cq.finish_answer(database, reply, "cancelled") is None
    assert await cq.cancel_elsewhere(database, reply, lease=10) is None
    assert not await _saved(database, reply, "more", 4)
    with pytest.raises(ValueError):
        await cq.finish_answer(database, reply, "streaming")
    stored = await cq.get_answer(database, reply)
    assert stored is not None and (stored["status"], stored["text"]) == ("done", "All of it.")
    async with database.read() as conn:
        row = (await conn.execute(select(coach_messages.c.finish_reason, coach_messages.c.usage)
                                  .where(coach_messages.c.id == reply))).one()
    assert (row.finish_reason, row.usage) == ("stop", {"total_tokens": 9})


async def test_a_cancel_from_another_node_is_announced_once_by_the_streaming_node(
        database: Database) -> None:
    _, answer, _ = await cq.begin_ask(database, "ann", "q", lease=10, per_minute=5)
    reply = answer["message_id"]
    assert await _saved(database, reply, "Par", 1)
    cancelled = await cq.cancel_elsewhere(database, reply, lease=10)
    assert cancelled == {"reply_to": answer["reply_to"], "text": "Par", "announce": False}
    assert not await _saved(database, reply, "Partial", 2)
    assert await cq.settle_cancel(database, reply, "Partial", 2)
    assert not await cq.settle_cancel(database, reply, "Partial", 2)
    stored = await cq.get_answer(database, reply)
    assert stored is not None and (stored["status"], stored["text"]) == ("cancelled", "Partial")


async def test_a_cancel_of_an_answer_whose_node_died_is_announced_by_the_canceller(
        database: Database) -> None:
    _, answer, _ = await cq.begin_ask(database, "ann", "q", lease=10, per_minute=5)
    await _age(database, answer["message_id"], 30)
    cancelled = await cq.cancel_elsewhere(database, answer["message_id"], lease=10)
    assert cancelled is not None and cancelled["announce"] is True
    assert not await cq.settle_cancel(database, answer["message_id"], "late", 1)



async def _sets(database: Database, session_id: str, *reps: int) -> None:
    async with database.write() as conn:
        await conn.execute(insert(session_events), [
            {"session_id": session_id, "user_id": "ann", "event_id": f"{session_id}-{n}",
             "kind": "set", "server_ts": n, "exercise": "squat", "reps": r, "weight_kg": 100.0,
             "rpe": None} for n, r in enumerate(reps)])


async def test_the_prompt_reads_the_active_session_else_the_latest_and_the_latest_turns(
        database: Database) -> None:
    assert await cq.prompt_rows(database, "ann", sets=2, messages=3) == (None, [], [])
    older = await queries.start_session(database, "ann", "Older")
    await queries.end_session(database, older["session_id"])
    await asyncio.sleep(0.01)  # started later, by the database's clock too
    latest = await queries.start_session(database, "ann", "Latest")
    await queries.end_session(database, latest["session_id"])
    await _sets(database, latest["session_id"], 5, 6, 7)
    session, sets, _ = await cq.prompt_rows(database, "ann", sets=2, messages=3)
    assert session is not None and session["session_id"] == latest["session_id"]
    assert [s["reps"] for s in sets] == [6, 7]  # the last two, oldest first
    assert sets[0] == {"exercise": "squat", "reps": 6, "weight_kg": 100.0, "rpe": None}

    await asyncio.sleep(0.01)
    active = await queries.start_session(database, "ann", "Now")
    await asyncio.sleep(0.01)
    newer = await queries.start_session(database, "ann", "Newer, ended")
    await queries.end_session(database, newer["session_id"])
    session, sets, _ = await cq.prompt_rows(database, "ann", sets=2, messages=3)
    assert session is not None and session["session_id"] == active["session_id"]
    assert session["status"] == "active" and sets == []

    for n in range(3):
        _, answer, _ = await cq.begin_ask(database, "ann", f"q{n}", lease=10, per_minute=9)
        await cq.finish_answer(database, answer["message_id"], "done", text=f"a{n}")
    _, _, turns = await cq.prompt_rows(database, "ann", sets=2, messages=3)
    assert turns == [{key: item[key] for key in ("message_id", "role", "text", "status")}
                     for item in (await queries.coach_history(database, "ann"))[-3:]]
    assert [t["text"] for t in turns] == ["a1", "q2", "a2"]
