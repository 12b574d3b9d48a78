"""Grouped commits for live session events.

A device's publish is acknowledged only once its event is committed, so the commit is on the
hot path of every set and heart-rate batch. Committing each event on its own would cost a
transaction (and on SQLite an fsync) per event; instead `submit()` queues the event and a
background task commits everything queued so far in a single transaction, then resolves the
waiting futures. While a batch commits the next one accumulates, so under load batches grow
and the number of transactions stays low, and an idle writer commits a lone event at once.

On PostgreSQL (`models.event_writer_pg`) up to two batches are in flight, on two dedicated
connections: the next batch is sent while the previous one commits. SQLite has one writer,
so there batches go one at a time through SQLAlchemy (below).

Guarantees, per batch (one transaction):
* Atomic: events, their heart-rate samples and the sessions' running totals are committed
  together or not at all. A database error fails every event of the batch with that error
  (the device retries) and the writer carries on with the next batch.
* Idempotent: UNIQUE(user_id, event_id) decides; an event already stored (by any node, or
  earlier in the same batch) is reported `duplicate` and changes nothing.
* Ordered: the session rows are locked (`FOR UPDATE` on PostgreSQL; SQLite has one writer),
  so the running stats each event reports are exact and in submission order, and no event is
  accepted into a session after `end_session` committed.

Callers authorize and validate events first; the writer only checks that the session is
active and belongs to the event's user (otherwise `inactive`, unless the event is already
stored: then it is a retry and `duplicate`). The rules are in `models.event_batch`.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Coroutine
from typing import Any, Protocol

from sqlalchemy import bindparam, select, tuple_, update
from sqlalchemy.dialects import sqlite
from sqlalchemy.ext.asyncio import AsyncConnection

from models.db import Database
from models.event_batch import TOTALS_COLUMNS, EventOutcome, SessionEvent, Totals, triage
from models.event_writer_pg import PostgresBatches
from models.tables import heart_rate_samples, session_events, workout_sessions

__all__ = ["EventOutcome", "EventWriter", "SessionEvent"]

_SET_FIELDS = ("exercise", "reps", "weight_kg", "rpe", "duration_s", "ts")

_Pending = tuple[SessionEvent, "asyncio.Future[EventOutcome]"]


class Batches(Protocol):
    """How a backend commits batches: `depth` of them may be in flight at once."""

    depth: int

    def ready(self) -> bool:
        """Whether to start another batch now (given fewer than `depth` are in flight)."""
        ...

    def commit(self, events: list[SessionEvent]) -> Coroutine[Any, Any, list[EventOutcome]]:
        """The transaction storing the batch, to await; the outcomes are in `events` order.
        Called in submission order, before the previous batch finished when `depth` > 1."""
        ...

    async def close(self) -> None: ...


class SqliteBatches:
    """SQLite: one batch at a time (the file has one writer) through SQLAlchemy Core, in a
    `BEGIN IMMEDIATE` transaction from `Database.write()`."""

    depth = 1

    def __init__(self, db: Database) -> None:
        self._db = db
        ws, se = workout_sessions, session_events
        self._lock_sessions = (
            select(ws.c.id, *(ws.c[name] for name in TOTALS_COLUMNS))
            .where(ws.c.id.in_(bindparam("ids", expanding=True)), ws.c.status == "active")
            .order_by(ws.c.id)
        )
        self._insert_events = (
            sqlite.insert(se)
            .on_conflict_do_nothing(index_elements=[se.c.user_id, se.c.event_id])
            .returning(se.c.id, se.c.user_id, se.c.event_id)
        )
        self._update_totals = (
            update(ws)
            .where(ws.c.id == bindparam("b_id"))
            .values({name: bindparam(f"b_{name}") for name in TOTALS_COLUMNS[1:]})
        )

    def ready(self) -> bool:
        return True

    async def commit(self, events: list[SessionEvent]) -> list[EventOutcome]:
        async with self._db.write() as conn:
            return await self._write(conn, events)

    async def close(self) -> None:
        """Nothing to release: connections belong to the Database's pool."""

    async def _write(self, conn: AsyncConnection, events: list[SessionEvent]) -> list[EventOutcome]:
        ids = sorted({e.session_id for e in events})
        totals = {
            row.id: Totals(*row[1:])
            for row in await conn.execute(self._lock_sessions, {"ids": ids})
        }
        batch = triage(events, totals)
        if batch.refused:
            keys = batch.refused_keys(events)
            stored: set[tuple[str, str]] = set()
            if keys:
                se = session_events
                stmt = select(se.c.user_id, se.c.event_id).where(
                    tuple_(se.c.user_id, se.c.event_id).in_(keys)
                )
                stored.update((r.user_id, r.event_id) for r in await conn.execute(stmt))
            batch.settle_refused(events, stored)
        if not batch.candidates:
            return batch.outcomes

        rows = []
        for i in batch.candidates:
            event = events[i]
            row = {
                "session_id": event.session_id,
                "user_id": event.user_id,
                "event_id": event.event_id,
                "kind": event.kind,
                "device": event.device,
                "server_ts": event.server_ts,
            }
            for name in _SET_FIELDS:
                row[name] = event.fields.get(name)
            rows.append(row)
        result = await conn.execute(self._insert_events, rows)
        inserted = {(r.user_id, r.event_id): r.id for r in result}

        samples = []
        for i in batch.candidates:
            event = events[i]
            pk = inserted.get((event.user_id, event.event_id))
            if pk is None:
                continue
            batch.outcomes[i] = EventOutcome("stored", totals[event.session_id].add(event))
            samples.extend(
                {"event_pk": pk, "session_id": event.session_id, "ts_ms": ts, "bpm": bpm}
                for ts, bpm in event.samples
            )
        if samples:
            await conn.execute(heart_rate_samples.insert(), samples)

        changed = [
            {f"b_{name}": value for name, value in t.row(session_id).items()}
            for session_id, t in totals.items()
            if t.changed
        ]
        if changed:
            await conn.execute(self._update_totals, changed)
        return batch.outcomes


class EventWriter:
    """One per node. `start()` it, `submit()` from any number of tasks, `close()` to drain."""

    def __init__(self, db: Database, max_batch: int = 500) -> None:
        self._max_batch = max_batch
        self._queue: deque[_Pending] = deque()
        self._wakeup = asyncio.Event()
        self._batches: Batches = (
            PostgresBatches(db, wake=self._wakeup.set)
            if db.dialect == "postgresql"
            else SqliteBatches(db)
        )
        self._task: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        """Set by `start()`. Futures are made on it directly: on Python 3.11 every
        `get_running_loop()` is a `getpid()` system call, a few microseconds per event."""
        self._closing = False
        self.batches_committed = 0
        """Transactions committed so far: with `events_committed`, shows how well commits group."""
        self.events_committed = 0

    def start(self) -> None:
        if self._task is None:
            self._loop = asyncio.get_running_loop()
            self._task = self._loop.create_task(self._run(), name="event-writer")

    async def close(self) -> None:
        """Refuse new events, commit every queued one, then stop and release connections."""
        self._closing = True
        self._wakeup.set()
        try:
            if self._task is not None:
                await self._task
        finally:
            await self._batches.close()

    async def submit(self, event: SessionEvent) -> EventOutcome:
        """Queue the event and wait until its batch is committed.

        Raises the database's exception when the batch could not be committed (nothing of
        it was stored; retrying the same event is safe).
        """
        if self._loop is None or self._closing:
            raise RuntimeError("the event writer is not running")
        future: asyncio.Future[EventOutcome] = self._loop.create_future()
        self._queue.append((event, future))
        self._wakeup.set()
        return await future

    async def _run(self) -> None:
        """Start a batch of everything queued (up to `max_batch`) whenever fewer than the
        backend's `depth` are in flight and it is `ready()`; return once closing and nothing
        is left."""
        in_flight: set[asyncio.Task[None]] = set()
        batches = self._batches
        loop = asyncio.get_running_loop()

        def finished(task: asyncio.Task[None]) -> None:
            in_flight.discard(task)
            self._wakeup.set()

        try:
            while True:
                if self._queue and len(in_flight) < batches.depth and batches.ready():
                    count = min(len(self._queue), self._max_batch)
                    batch = [self._queue.popleft() for _ in range(count)]
                    transaction = batches.commit([event for event, _ in batch])
                    task = loop.create_task(self._settle(batch, transaction), name="event-batch")
                    in_flight.add(task)
                    task.add_done_callback(finished)
                    continue
                if self._closing and not self._queue and not in_flight:
                    return
                self._wakeup.clear()
                await self._wakeup.wait()
        finally:
            _fail(self._queue)
            self._queue.clear()

    async def _settle(
        self,
        batch: list[_Pending],
        transaction: Coroutine[Any, Any, list[EventOutcome]],
    ) -> None:
        """Await the batch's transaction and resolve its futures: outcomes, or the error for
        all of them."""
        try:
            outcomes = await transaction
        except Exception as exc:  # noqa: BLE001 - whatever failed, the callers must hear
            for _, future in batch:
                if not future.done():
                    future.set_exception(exc)
        else:
            self.batches_committed += 1
            self.events_committed += sum(o.status == "stored" for o in outcomes)
            for (_, future), outcome in zip(batch, outcomes, strict=True):
                if not future.done():
                    future.set_result(outcome)
        finally:
            _fail(batch)


def _fail(pending: deque[_Pending] | list[_Pending]) -> None:
    """Fail the futures nobody will resolve any more (the writer was cancelled)."""
    stopped = RuntimeError("the event writer stopped")
    for _, future in pending:
        if not future.done():
            future.set_exception(stopped)
