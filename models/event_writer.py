"""Grouped commits for live session events.

A device's publish is acknowledged only once its event is committed, so the commit is on the
hot path of every set and heart-rate batch. Committing each event on its own would cost a
transaction (and on SQLite an fsync) per event; instead `submit()` queues the event and one
background task commits everything queued so far in a single transaction, then resolves the
waiting futures. While a batch commits the next one accumulates, so under load batches grow
and the number of transactions stays low, and an idle writer commits a lone event at once.

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
stored: then it is a retry and `duplicate`).
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from sqlalchemy import (
    Column,
    Insert,
    Select,
    String,
    Table,
    any_,
    bindparam,
    func,
    select,
    tuple_,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection

from models.db import Database
from models.queries import avg_bpm, round_volume
from models.tables import heart_rate_samples, session_events, workout_sessions

_SET_FIELDS = ("exercise", "reps", "weight_kg", "rpe", "duration_s", "ts")
_EVENT_COLUMNS = ("session_id", "user_id", "event_id", "kind", "device", "server_ts", *_SET_FIELDS)
_SAMPLE_COLUMNS = ("event_pk", "session_id", "ts_ms", "bpm")


@dataclass(slots=True)
class SessionEvent:
    """A validated client event. `fields` holds a set's fields (exercise, reps, weight_kg,
    and rpe, duration_s, ts when sent); `samples` holds an hr event's `(ts_ms, bpm)` pairs."""

    session_id: str
    user_id: str
    event_id: str
    kind: Literal["set", "hr"]
    device: str | None
    server_ts: int
    fields: dict[str, Any] = field(default_factory=dict)
    samples: list[tuple[int, int]] = field(default_factory=list)


@dataclass(slots=True)
class EventOutcome:
    """`stored` events carry the session's running stats after them; the others carry None."""

    status: Literal["stored", "duplicate", "inactive"]
    stats: dict[str, Any] | None = None


_DUPLICATE = EventOutcome("duplicate")
_INACTIVE = EventOutcome("inactive")


@dataclass(slots=True)
class _Totals:
    """A locked session row's running totals, advanced event by event within a batch."""

    user_id: str
    sets: int
    reps: int
    volume_kg: float
    hr_count: int
    hr_sum: int
    max_bpm: int | None
    changed: bool = False

    def add(self, event: SessionEvent) -> dict[str, Any]:
        self.changed = True
        if event.kind == "set":
            reps = int(event.fields["reps"])
            self.sets += 1
            self.reps += reps
            self.volume_kg += reps * float(event.fields["weight_kg"])
        else:
            bpms = [bpm for _, bpm in event.samples]
            if bpms:
                self.hr_count += len(bpms)
                self.hr_sum += sum(bpms)
                top = max(bpms)
                self.max_bpm = top if self.max_bpm is None else max(self.max_bpm, top)
        stats: dict[str, Any] = {
            "sets": self.sets,
            "reps": self.reps,
            "volume_kg": round_volume(self.volume_kg),
        }
        if event.kind == "hr":
            stats["avg_bpm"] = avg_bpm(self.hr_sum, self.hr_count)
            stats["max_bpm"] = self.max_bpm
        return stats


_TOTALS_COLUMNS = ("user_id", "sets", "reps", "volume_kg", "hr_count", "hr_sum", "max_bpm")
"""Read from the locked session row, in `_Totals` field order."""

_UPDATE_TOTALS = (
    update(workout_sessions)
    .where(workout_sessions.c.id == bindparam("b_id"))
    .values({name: bindparam(f"b_{name}") for name in _TOTALS_COLUMNS[1:]})
)


def _lock_sessions(dialect: str) -> Select[Any]:
    """Lock the active ones among the batch's sessions, in id order (no deadlock between
    nodes locking overlapping sets). PostgreSQL takes the ids as one array so the statement
    text, and its prepared plan, is the same for every batch."""
    ws = workout_sessions
    if dialect == "postgresql":
        matches = ws.c.id == any_(bindparam("ids", type_=postgresql.ARRAY(String)))
    else:
        matches = ws.c.id.in_(bindparam("ids", expanding=True))
    return (
        select(ws.c.id, *(ws.c[name] for name in _TOTALS_COLUMNS))
        .where(matches, ws.c.status == "active")
        .order_by(ws.c.id)
        .with_for_update()
    )


def _unnest_insert(table: Table, names: tuple[str, ...]) -> postgresql.Insert:
    """PostgreSQL: `INSERT … SELECT FROM unnest(<one array per column>)`.

    Any number of rows goes in one statement and one round trip, and the statement text does
    not depend on the row count, so asyncpg prepares it once (a multi-row VALUES list would be
    a new statement for every batch size).
    """
    columns: list[Column[Any]] = [table.c[name] for name in names]
    arrays = [bindparam(c.name, type_=postgresql.ARRAY(c.type)) for c in columns]
    rows = func.unnest(*arrays).table_valued(*names).render_derived()
    return postgresql.insert(table).from_select(list(names), select(*rows.c))


def _columnar(rows: list[dict[str, Any]], names: tuple[str, ...]) -> dict[str, list[Any]]:
    return {name: [row[name] for row in rows] for name in names}


def _rowwise(rows: list[dict[str, Any]], names: tuple[str, ...]) -> list[dict[str, Any]]:
    return rows


class EventWriter:
    """One per node. `start()` it, `submit()` from any number of tasks, `close()` to drain."""

    def __init__(self, db: Database, max_batch: int = 500) -> None:
        self._db = db
        self._max_batch = max_batch
        self._queue: deque[tuple[SessionEvent, asyncio.Future[EventOutcome]]] = deque()
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        # PostgreSQL gets whole columns as arrays (one round trip per table); SQLite, which
        # runs in-process, gets an executemany of rows.
        se = session_events
        insert_events: postgresql.Insert | sqlite.Insert
        self._insert_samples: Insert
        self._params: Callable[[list[dict[str, Any]], tuple[str, ...]], Any]
        if db.dialect == "postgresql":
            insert_events = _unnest_insert(se, _EVENT_COLUMNS)
            self._insert_samples = _unnest_insert(heart_rate_samples, _SAMPLE_COLUMNS)
            self._params = _columnar
        else:
            insert_events = sqlite.insert(se)
            self._insert_samples = heart_rate_samples.insert()
            self._params = _rowwise
        self._insert_events = insert_events.on_conflict_do_nothing(
            index_elements=[se.c.user_id, se.c.event_id]
        ).returning(se.c.id, se.c.user_id, se.c.event_id)
        self._lock_sessions = _lock_sessions(db.dialect)
        self.batches_committed = 0
        """Transactions committed so far: with `events_committed`, shows how well commits group."""
        self.events_committed = 0

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="event-writer")

    async def close(self) -> None:
        """Refuse new events, commit every queued one, then stop."""
        self._closing = True
        self._wakeup.set()
        if self._task is not None:
            await self._task

    async def submit(self, event: SessionEvent) -> EventOutcome:
        """Queue the event and wait until its batch is committed.

        Raises the database's exception when the batch could not be committed (nothing of
        it was stored; retrying the same event is safe).
        """
        if self._task is None or self._closing:
            raise RuntimeError("the event writer is not running")
        future: asyncio.Future[EventOutcome] = asyncio.get_running_loop().create_future()
        self._queue.append((event, future))
        self._wakeup.set()
        return await future

    async def _run(self) -> None:
        batch: list[tuple[SessionEvent, asyncio.Future[EventOutcome]]] = []
        try:
            while True:
                if not self._queue:
                    if self._closing:
                        return
                    self._wakeup.clear()
                    await self._wakeup.wait()
                    continue
                batch = [
                    self._queue.popleft() for _ in range(min(len(self._queue), self._max_batch))
                ]
                try:
                    outcomes = await self._commit([event for event, _ in batch])
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
                batch = []
        finally:
            stopped = RuntimeError("the event writer stopped")
            for _, future in [*batch, *self._queue]:
                if not future.done():
                    future.set_exception(stopped)
            self._queue.clear()

    async def _commit(self, events: list[SessionEvent]) -> list[EventOutcome]:
        async with self._db.write() as conn:
            return await self._write_batch(conn, events)

    async def _refuse(
        self,
        conn: AsyncConnection,
        events: list[SessionEvent],
        refused: list[int],
        seen: set[tuple[str, str]],
        outcomes: list[EventOutcome],
    ) -> None:
        """Events for a session that is not (or no longer) theirs to write are `inactive`,
        unless the event itself is already stored: a device retrying an event whose
        acknowledgement was lost, after the session ended, is acknowledged again."""
        keys = {(events[i].user_id, events[i].event_id) for i in refused} - seen
        stored = set(seen)
        if keys:
            se = session_events
            stmt = select(se.c.user_id, se.c.event_id).where(
                tuple_(se.c.user_id, se.c.event_id).in_(sorted(keys))
            )
            stored.update((r.user_id, r.event_id) for r in await conn.execute(stmt))
        for i in refused:
            if (events[i].user_id, events[i].event_id) not in stored:
                outcomes[i] = _INACTIVE

    async def _write_batch(
        self, conn: AsyncConnection, events: list[SessionEvent]
    ) -> list[EventOutcome]:
        ids = sorted({e.session_id for e in events})
        totals = {
            row.id: _Totals(*row[1:])
            for row in await conn.execute(self._lock_sessions, {"ids": ids})
        }

        # Every event ends up stored, inactive or (the default) a duplicate.
        outcomes = [_DUPLICATE] * len(events)
        candidates: list[int] = []
        refused: list[int] = []
        seen: set[tuple[str, str]] = set()
        for i, event in enumerate(events):
            session = totals.get(event.session_id)
            if session is None or session.user_id != event.user_id:
                refused.append(i)
            elif (event.user_id, event.event_id) not in seen:
                seen.add((event.user_id, event.event_id))
                candidates.append(i)
        if refused:
            await self._refuse(conn, events, refused, seen, outcomes)
        if not candidates:
            return outcomes

        rows = []
        for i in candidates:
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
        result = await conn.execute(self._insert_events, self._params(rows, _EVENT_COLUMNS))
        inserted = {(r.user_id, r.event_id): r.id for r in result}

        samples = []
        for i in candidates:
            event = events[i]
            pk = inserted.get((event.user_id, event.event_id))
            if pk is None:
                continue
            outcomes[i] = EventOutcome("stored", totals[event.session_id].add(event))
            samples.extend(
                {"event_pk": pk, "session_id": event.session_id, "ts_ms": ts, "bpm": bpm}
                for ts, bpm in event.samples
            )
        if samples:
            await conn.execute(self._insert_samples, self._params(samples, _SAMPLE_COLUMNS))

        changed = [
            {"b_id": session_id, **{f"b_{name}": getattr(t, name) for name in _TOTALS_COLUMNS[1:]}}
            for session_id, t in totals.items()
            if t.changed
        ]
        if changed:
            await conn.execute(_UPDATE_TOTALS, changed)
        return outcomes
