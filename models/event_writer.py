"""Grouped commits for live session events.

A device's publish is acknowledged only once its event is committed, so the commit is on the
hot path of every set and heart-rate batch. Committing each event on its own would cost a
transaction (and on SQLite an fsync) per event; instead `submit()` queues the event and the
writer commits everything queued so far in a single transaction, then resolves the waiting
futures. While a batch commits the next one accumulates, so under load batches grow and the
number of transactions stays low, and an idle writer commits a lone event at once.

One batch is in flight at a time. The next one is sent the moment the previous one's result
arrives, before that batch's callers resume: the database works on it while the hub answers
for the last one. On PostgreSQL a batch is one round trip (`models.event_writer_pg`); on SQLite
it goes through SQLAlchemy (below).

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
    """How a backend commits one batch."""

    def commit(self, events: list[SessionEvent]) -> Coroutine[Any, Any, list[EventOutcome]]:
        """The transaction storing the batch, to await; the outcomes are in `events` order."""
        ...

    async def close(self) -> None: ...


class BatchObserver(Protocol):
    """Told of every transaction the writer ends, for metrics: `size` events, `seconds` from
    sending the batch to its result. Called on the event loop; must not block."""

    def batch_finished(self, size: int, seconds: float, committed: bool) -> None: ...


class SqliteBatches:
    """SQLite through SQLAlchemy Core, in a `BEGIN IMMEDIATE` transaction from
    `Database.write()`."""

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

        unsent = dict.fromkeys(_SET_FIELDS)  # an executemany's rows all carry every column
        rows = [{**unsent, **events[i].columns()} for i in batch.candidates]
        result = await conn.execute(self._insert_events, rows)
        inserted = {(r.user_id, r.event_id): r.id for r in result}

        samples: list[dict[str, Any]] = []
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
        self._batches: Batches = (
            PostgresBatches(db) if db.dialect == "postgresql" else SqliteBatches(db)
        )
        self._in_flight: asyncio.Task[None] | None = None
        self._pump_scheduled = False
        self._loop: asyncio.AbstractEventLoop | None = None
        """Set by `start()`. Futures are made on it directly: on Python 3.11 every
        `get_running_loop()` is a `getpid()` system call, a few microseconds per event."""
        self._closing = False
        self._observer: BatchObserver | None = None
        self.batches_committed = 0
        """Transactions committed so far: with `events_committed`, shows how well commits group."""
        self.events_committed = 0

    def start(self, observer: BatchObserver | None = None) -> None:
        """Begin accepting events; `observer` hears of each transaction from now on."""
        self._loop = asyncio.get_running_loop()
        self._observer = observer

    async def close(self) -> None:
        """Refuse new events, commit every queued one, then release the connections."""
        self._closing = True
        try:
            self._pump()
            while self._in_flight is not None:
                await asyncio.wait([self._in_flight])
        finally:
            _fail(self._queue)
            self._queue.clear()
            await self._batches.close()

    async def submit(self, event: SessionEvent) -> EventOutcome:
        """Queue the event and wait until its batch is committed.

        Raises the database's exception when the batch could not be committed (nothing of
        it was stored; retrying the same event is safe).
        """
        loop = self._loop
        if loop is None or self._closing:
            raise RuntimeError("the event writer is not running")
        future: asyncio.Future[EventOutcome] = loop.create_future()
        self._queue.append((event, future))
        if not self._pump_scheduled:
            # Later in this loop iteration, so the events read with this one join its batch.
            self._pump_scheduled = True
            loop.call_soon(self._pump)
        return await future

    def _pump(self) -> None:
        """Send the next batch: everything queued, up to `max_batch`, unless one is in flight
        (its end calls this again)."""
        self._pump_scheduled = False
        if self._in_flight is not None or not self._queue or self._loop is None:
            return
        queue = self._queue
        batch = [queue.popleft() for _ in range(min(len(queue), self._max_batch))]
        transaction = self._batches.commit([event for event, _ in batch])
        sent_at = self._loop.time()
        self._in_flight = self._loop.create_task(self._settle(batch, transaction, sent_at))

    async def _settle(
        self,
        batch: list[_Pending],
        transaction: Coroutine[Any, Any, list[EventOutcome]],
        sent_at: float,
    ) -> None:
        """Await the batch's transaction, send the next batch, then resolve this one's
        futures: outcomes, or the error for all of them. Cancelled (the loop is shutting
        down), it sends nothing more and its callers hear that the writer stopped."""
        try:
            outcomes = await transaction
        except asyncio.CancelledError:
            self._in_flight = None
            raise
        except Exception as exc:  # noqa: BLE001 - whatever failed, the callers must hear
            self._observe(len(batch), sent_at, committed=False)
            self._send_next()
            for _, future in batch:
                if not future.done():
                    future.set_exception(exc)
        else:
            self._observe(len(batch), sent_at, committed=True)
            self._send_next()
            self.batches_committed += 1
            self.events_committed += sum(o.status == "stored" for o in outcomes)
            for (_, future), outcome in zip(batch, outcomes, strict=True):
                if not future.done():
                    future.set_result(outcome)
        finally:
            _fail(batch)

    def _observe(self, size: int, sent_at: float, committed: bool) -> None:
        if self._observer is not None and self._loop is not None:
            self._observer.batch_finished(size, self._loop.time() - sent_at, committed)

    def _send_next(self) -> None:
        self._in_flight = None
        self._pump()


def _fail(pending: deque[_Pending] | list[_Pending]) -> None:
    """Fail the futures nobody will resolve any more (the writer was cancelled)."""
    stopped = RuntimeError("the event writer stopped")
    for _, future in pending:
        if not future.done():
            future.set_exception(stopped)
