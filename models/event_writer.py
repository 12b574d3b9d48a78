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
active and belongs to the event's user (otherwise `inactive`).
"""

from __future__ import annotations

import asyncio
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Literal

from sqlalchemy import bindparam, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from models.db import Database
from models.queries import avg_bpm, round_volume
from models.tables import heart_rate_samples, session_events, workout_sessions

_SET_FIELDS = ("exercise", "reps", "weight_kg", "rpe", "duration_s", "ts")


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


ws = workout_sessions
se = session_events

_LOCK_SESSIONS = (
    select(
        ws.c.id, ws.c.user_id, ws.c.sets, ws.c.reps, ws.c.volume_kg,
        ws.c.hr_count, ws.c.hr_sum, ws.c.max_bpm,
    )
    .where(ws.c.id.in_(bindparam("ids", expanding=True)), ws.c.status == "active")
    .order_by(ws.c.id)
    .with_for_update()
)

_UPDATE_TOTALS = (
    update(ws)
    .where(ws.c.id == bindparam("b_id"))
    .values(
        sets=bindparam("b_sets"),
        reps=bindparam("b_reps"),
        volume_kg=bindparam("b_volume_kg"),
        hr_count=bindparam("b_hr_count"),
        hr_sum=bindparam("b_hr_sum"),
        max_bpm=bindparam("b_max_bpm"),
    )
)


class EventWriter:
    """One per node. `start()` it, `submit()` from any number of tasks, `close()` to drain."""

    def __init__(self, db: Database, max_batch: int = 500) -> None:
        self._db = db
        self._max_batch = max_batch
        self._queue: deque[tuple[SessionEvent, asyncio.Future[EventOutcome]]] = deque()
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self._insert_events = (
            db.insert(se)
            .on_conflict_do_nothing(index_elements=[se.c.user_id, se.c.event_id])
            .returning(se.c.id, se.c.user_id, se.c.event_id)
        )
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
                batch = [self._queue.popleft() for _ in range(min(len(self._queue), self._max_batch))]
                try:
                    outcomes = await self._commit([event for event, _ in batch])
                except Exception as exc:
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

    async def _write_batch(
        self, conn: AsyncConnection, events: list[SessionEvent]
    ) -> list[EventOutcome]:
        ids = sorted({e.session_id for e in events})
        totals = {
            row.id: _Totals(
                row.user_id, row.sets, row.reps, row.volume_kg,
                row.hr_count, row.hr_sum, row.max_bpm,
            )
            for row in await conn.execute(_LOCK_SESSIONS, {"ids": ids})
        }

        outcomes: list[EventOutcome | None] = [None] * len(events)
        candidates: list[int] = []
        seen: set[tuple[str, str]] = set()
        for i, event in enumerate(events):
            session = totals.get(event.session_id)
            if session is None or session.user_id != event.user_id:
                outcomes[i] = _INACTIVE
            elif (event.user_id, event.event_id) in seen:
                outcomes[i] = _DUPLICATE
            else:
                seen.add((event.user_id, event.event_id))
                candidates.append(i)
        if not candidates:
            return outcomes  # type: ignore[return-value]

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
        inserted = {
            (r.user_id, r.event_id): r.id for r in await conn.execute(self._insert_events, rows)
        }

        samples = []
        for i in candidates:
            event = events[i]
            pk = inserted.get((event.user_id, event.event_id))
            if pk is None:
                outcomes[i] = _DUPLICATE
                continue
            outcomes[i] = EventOutcome("stored", totals[event.session_id].add(event))
            samples.extend(
                {"event_pk": pk, "session_id": event.session_id, "ts_ms": ts, "bpm": bpm}
                for ts, bpm in event.samples
            )
        if samples:
            await conn.execute(heart_rate_samples.insert(), samples)

        changed = [
            {
                "b_id": session_id,
                "b_sets": t.sets,
                "b_reps": t.reps,
                "b_volume_kg": t.volume_kg,
                "b_hr_count": t.hr_count,
                "b_hr_sum": t.hr_sum,
                "b_max_bpm": t.max_bpm,
            }
            for session_id, t in totals.items()
            if t.changed
        ]
        if changed:
            await conn.execute(_UPDATE_TOTALS, changed)
        return outcomes  # type: ignore[return-value]
