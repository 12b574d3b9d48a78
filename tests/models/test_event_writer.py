"""models.event_writer on SQLite and PostgreSQL: running stats, idempotency, inactive sessions,
grouped commits under concurrency, and recovery from database errors."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from sqlalchemy import Table, func, select, text

from models import queries as q
from models.db import Database
from models.event_writer import EventOutcome, EventWriter, SessionEvent
from models.tables import heart_rate_samples, session_events


@pytest.fixture
async def writer(database: Database) -> AsyncIterator[EventWriter]:
    w = EventWriter(database)
    w.start()
    yield w
    await w.close()


def a_set(
    sid: str, event_id: str, reps: int = 5, weight_kg: float = 100.0, user: str = "ann"
) -> SessionEvent:
    return SessionEvent(
        sid,
        user,
        event_id,
        "set",
        None,
        int(time.time() * 1000),
        {"exercise": "squat", "reps": reps, "weight_kg": weight_kg},
    )


def an_hr(sid: str, event_id: str, bpms: list[int], user: str = "ann") -> SessionEvent:
    return SessionEvent(
        sid,
        user,
        event_id,
        "hr",
        "band",
        int(time.time() * 1000),
        samples=[(1000 + i, bpm) for i, bpm in enumerate(bpms)],
    )


async def count(db: Database, table: Table, **where: str) -> int:
    stmt = select(func.count()).select_from(table)
    for column, value in where.items():
        stmt = stmt.where(table.c[column] == value)
    async with db.read() as conn:
        return (await conn.execute(stmt)).scalar_one()


async def test_running_stats_in_event_order(database: Database, writer: EventWriter) -> None:
    sid = (await q.start_session(database, "ann", "Legs"))["session_id"]

    first = await writer.submit(a_set(sid, "s1", reps=5, weight_kg=100))
    assert first == EventOutcome("stored", {"sets": 1, "reps": 5, "volume_kg": 500.0})

    # One batch: the stats advance event by event, in submission order.
    outcomes = await asyncio.gather(
        writer.submit(an_hr(sid, "h1", [100, 120])),
        writer.submit(a_set(sid, "s2", reps=3, weight_kg=102.5)),
        writer.submit(an_hr(sid, "h2", [150, 131, 90])),
        writer.submit(a_set(sid, "s3", reps=1, weight_kg=0.1)),
    )
    assert [o.status for o in outcomes] == ["stored"] * 4
    assert [o.stats for o in outcomes] == [
        {"sets": 1, "reps": 5, "volume_kg": 500.0, "avg_bpm": 110.0, "max_bpm": 120},
        {"sets": 2, "reps": 8, "volume_kg": 807.5},
        {"sets": 2, "reps": 8, "volume_kg": 807.5, "avg_bpm": 118.2, "max_bpm": 150},
        {"sets": 3, "reps": 9, "volume_kg": 807.6},
    ]

    # The totals were persisted with the events, for every node to read.
    summary = (await q.get_session(database, sid))["summary"]
    assert {k: summary[k] for k in ("sets", "reps", "volume_kg", "avg_bpm", "max_bpm")} == {
        "sets": 3,
        "reps": 9,
        "volume_kg": 807.6,
        "avg_bpm": 118.2,
        "max_bpm": 150,
    }
    assert await count(database, heart_rate_samples, session_id=sid) == 5
    assert await count(database, session_events, session_id=sid) == 5

    # A new writer (another node) continues from the stored totals.
    other = EventWriter(database)
    other.start()
    try:
        later = await other.submit(an_hr(sid, "h3", [200]))
    finally:
        await other.close()
    assert later.stats == {
        "sets": 3,
        "reps": 9,
        "volume_kg": 807.6,
        "avg_bpm": 131.8,
        "max_bpm": 200,
    }


async def test_stored_volume_is_the_sum_the_stats_were_computed_from(
    database: Database, writer: EventWriter
) -> None:
    """A batch's set volume is summed apart and added to the stored total as a whole, by the
    hub and by PostgreSQL's batch function alike. Float addition is not associative: with these
    weights the other grouping, (0.1 + 0.2) + 0.3, ends on 0.6000000000000001."""
    sid = (await q.start_session(database, "ann", ""))["session_id"]
    await writer.submit(a_set(sid, "v1", reps=1, weight_kg=0.1))
    batches = writer.batches_committed
    await asyncio.gather(
        writer.submit(a_set(sid, "v2", reps=1, weight_kg=0.2)),
        writer.submit(a_set(sid, "v3", reps=1, weight_kg=0.3)),
    )
    assert writer.batches_committed == batches + 1
    async with database.read() as conn:
        stored = (
            await conn.execute(
                text("SELECT volume_kg FROM workout_sessions WHERE id = :id"), {"id": sid}
            )
        ).scalar_one()
    assert stored == 0.1 + (0.2 + 0.3) == 0.6


async def test_duplicates_are_acknowledged_and_stored_once(
    database: Database, writer: EventWriter
) -> None:
    sid = (await q.start_session(database, "ann", ""))["session_id"]
    batches = writer.batches_committed
    same_batch = await asyncio.gather(
        writer.submit(a_set(sid, "dup")),
        writer.submit(a_set(sid, "dup")),
        writer.submit(an_hr(sid, "hr-dup", [100])),
        writer.submit(an_hr(sid, "hr-dup", [100])),
    )
    assert writer.batches_committed == batches + 1
    assert [o.status for o in same_batch] == ["stored", "duplicate", "stored", "duplicate"]
    assert same_batch[1].stats is None

    again = await writer.submit(a_set(sid, "dup"))
    assert again == EventOutcome("duplicate", None)
    again_hr = await writer.submit(an_hr(sid, "hr-dup", [100]))
    assert again_hr.status == "duplicate"

    # Event ids are per athlete: another athlete may use the same one.
    bob_sid = (await q.start_session(database, "bob", ""))["session_id"]
    assert (await writer.submit(a_set(bob_sid, "dup", user="bob"))).status == "stored"

    assert await count(database, session_events, session_id=sid) == 2
    assert await count(database, heart_rate_samples, session_id=sid) == 1
    summary = (await q.get_session(database, sid))["summary"]
    assert (summary["sets"], summary["reps"], summary["avg_bpm"]) == (1, 5, 100.0)


async def test_inactive_sessions_store_nothing(database: Database, writer: EventWriter) -> None:
    ended = (await q.start_session(database, "ann", ""))["session_id"]
    await q.end_session(database, ended)
    live = (await q.start_session(database, "ann", ""))["session_id"]

    outcomes = await asyncio.gather(
        writer.submit(a_set(ended, "x1")),
        writer.submit(a_set("no-such-session", "x2")),
        writer.submit(a_set(live, "x3", user="mallory")),  # not the owner's event
        writer.submit(an_hr(ended, "x4", [99])),
        writer.submit(a_set(live, "ok")),
    )
    assert [o.status for o in outcomes] == ["inactive"] * 4 + ["stored"]
    assert outcomes[0].stats is None
    assert await count(database, session_events) == 1
    assert await count(database, heart_rate_samples) == 0
    assert (await q.get_session(database, ended))["summary"]["sets"] == 0

    # An inactive event's id is not consumed: once the session is right it is stored.
    assert (await writer.submit(a_set(live, "x1"))).status == "stored"


async def test_burst_is_committed_in_few_transactions(
    database: Database, writer: EventWriter
) -> None:
    submitters, per_submitter = 200, 10
    sessions = [
        (await q.start_session(database, f"athlete{i}", ""))["session_id"]
        for i in range(submitters // 4)
    ]

    async def device(n: int) -> list[EventOutcome]:
        sid, user = sessions[n % len(sessions)], f"athlete{n % len(sessions)}"
        results = []
        for k in range(per_submitter):
            event = (
                an_hr(sid, f"d{n}-{k}", [80 + k] * 5, user=user)
                if k % 2
                else a_set(sid, f"d{n}-{k}", reps=2, weight_kg=10, user=user)
            )
            results.append(await writer.submit(event))
        return results

    batches = writer.batches_committed
    started = time.perf_counter()
    results = await asyncio.gather(*(device(n) for n in range(submitters)))
    elapsed = time.perf_counter() - started
    events = submitters * per_submitter
    committed = writer.batches_committed - batches

    assert all(o.status == "stored" for r in results for o in r)
    assert committed < events / 5, f"{committed} transactions for {events} events"
    assert await count(database, session_events) == events
    assert await count(database, heart_rate_samples) == events // 2 * 5
    for sid in sessions:
        summary = (await q.get_session(database, sid))["summary"]
        assert (summary["sets"], summary["reps"], summary["volume_kg"]) == (20, 40, 400.0)
    print(
        f"\n{database.dialect}: {events} events in {committed} transactions, "
        f"{events / elapsed:,.0f} events/s"
    )


async def test_database_error_fails_the_batch_and_writer_recovers(
    database: Database, writer: EventWriter
) -> None:
    sid = (await q.start_session(database, "ann", ""))["session_id"]
    await writer.submit(a_set(sid, "before"))

    # The samples table vanishes: the batch's events insert fine, its samples fail, and the
    # whole transaction must roll back.
    async with database.write() as conn:
        await conn.execute(text("ALTER TABLE heart_rate_samples RENAME TO hr_samples_away"))
    failed = await asyncio.gather(
        writer.submit(a_set(sid, "s-during")),
        writer.submit(an_hr(sid, "h-during", [120, 130])),
        return_exceptions=True,
    )
    assert all(isinstance(r, Exception) for r in failed), failed
    assert await count(database, session_events, session_id=sid) == 1
    assert (await q.get_session(database, sid))["summary"]["sets"] == 1

    async with database.write() as conn:
        await conn.execute(text("ALTER TABLE hr_samples_away RENAME TO heart_rate_samples"))
    # The device retries the same events: they are new, not duplicates.
    retried = await asyncio.gather(
        writer.submit(a_set(sid, "s-during")),
        writer.submit(an_hr(sid, "h-during", [120, 130])),
    )
    assert [o.status for o in retried] == ["stored", "stored"]
    assert retried[1].stats == {
        "sets": 2,
        "reps": 10,
        "volume_kg": 1000.0,
        "avg_bpm": 125.0,
        "max_bpm": 130,
    }
    assert await count(database, heart_rate_samples, session_id=sid) == 2


async def test_close_drains_the_queue(database: Database) -> None:
    sid = (await q.start_session(database, "ann", ""))["session_id"]
    writer = EventWriter(database, max_batch=3)
    writer.start()
    pending = [asyncio.ensure_future(writer.submit(a_set(sid, f"e{i}"))) for i in range(10)]
    await asyncio.sleep(0)  # every submit is queued
    await writer.close()
    assert [p.result().status for p in pending] == ["stored"] * 10
    assert writer.batches_committed >= 4  # max_batch caps a transaction
    with pytest.raises(RuntimeError):
        await writer.submit(a_set(sid, "late"))
    assert (await q.get_session(database, sid))["summary"]["sets"] == 10


async def test_end_session_racing_the_writer_counts_exactly_the_stored_events(
    database: Database, writer: EventWriter
) -> None:
    sid = (await q.start_session(database, "ann", ""))["session_id"]

    async def device(n: int) -> list[EventOutcome]:
        return [await writer.submit(a_set(sid, f"d{n}-{k}", reps=1)) for k in range(20)]

    async def end_midway() -> dict[str, Any] | None:
        while writer.events_committed < 60:
            await asyncio.sleep(0.001)
        return await q.end_session(database, sid)

    *devices, ended = await asyncio.gather(*(device(n) for n in range(20)), end_midway())
    stored = sum(o.status == "stored" for r in devices for o in r)
    assert ended is not None
    assert ended["summary"]["sets"] == stored
    assert await count(database, session_events, session_id=sid) == stored
    assert all(o.status in ("stored", "inactive") for r in devices for o in r)
    assert 60 <= stored < 400, stored  # the end really landed in the middle


async def test_retry_after_the_end_of_an_event_stored_before_is_a_duplicate(
    database: Database, writer: EventWriter
) -> None:
    sid = (await q.start_session(database, "ann", ""))["session_id"]
    assert (await writer.submit(a_set(sid, "s1"))).status == "stored"
    assert (await writer.submit(an_hr(sid, "h1", [90]))).status == "stored"
    await q.end_session(database, sid)

    # The acknowledgements were lost; the device retries after the end.
    retries = await asyncio.gather(
        writer.submit(a_set(sid, "s1")),
        writer.submit(an_hr(sid, "h1", [90])),
        writer.submit(a_set(sid, "s2")),  # never stored: refused
    )
    assert [o.status for o in retries] == ["duplicate", "duplicate", "inactive"]
    assert await count(database, session_events, session_id=sid) == 2
