"""The event writer's PostgreSQL path: raw asyncpg, two batches in flight.

The writer's cost is paid on the hub's busiest core for every acknowledged event, so this path
skips SQLAlchemy and the pool (per-row dicts, checkout, pre-ping) and talks asyncpg on
connections of its own. Every statement's text is the same for any batch (whole columns go as
arrays and are `unnest`ed), so asyncpg prepares each once per connection, and a batch is a
constant number of round trips in one transaction:

1. BEGIN
2. lock the batch's active sessions: `SELECT … FOR UPDATE`, in id order (plus one SELECT of the
   refused events' keys, when some event's session is not theirs to write)
3. insert the events: `INSERT … SELECT FROM unnest(…) ON CONFLICT DO NOTHING RETURNING`
4. insert the heart-rate samples and write every touched session's totals (one statement)
5. COMMIT

The running stats are computed here from the totals step 2 returned, so they are exact.

Two batches in flight. Once a batch sends COMMIT, the next one starts on the other connection;
the core that runs the hub would otherwise idle while PostgreSQL commits. (Starting it earlier
only splits the queue into smaller batches: more round trips per event.) This is safe because:

* Lock turns: a batch sends its lock statement only once the batch before it holds its locks
  (or has failed). A session both batches touch is therefore locked by the earlier one first;
  the later one waits for that commit (or rollback), and `FOR UPDATE` under READ COMMITTED then
  returns the newest committed row and re-checks `status = 'active'`. Each batch's stats come
  from the totals returned inside its own transaction, never from stale ones, and each
  session's events are applied in submission order, as with a single connection. Batches on
  different sessions commit in parallel.
* No deadlock between the two: the earlier batch holds all its row locks before the later one
  asks for any, and both lock in id order (which is also what keeps several hub nodes safe).
  A batch holds no lock while it waits for its turn, so any remaining wait (two batches
  inserting the same event) is one PostgreSQL sees and resolves.
* The same event in both: the later insert waits on the unique index for the earlier
  transaction, then reports `duplicate` if it committed, or stores the event if it rolled back.
* A retry after `end_session`: ending waits for the session's row lock, so the batch that
  stored the event had committed before the end did; the later batch sees the session ended
  and finds the event stored (`duplicate`).

An event refused here whose copy a concurrent, uncommitted transaction is storing in another
session is judged without that copy (`inactive`), as it always was for another node's.

Connections are opened on first use and reopened by the next batch after they were lost (an
outage, a server restart, a terminated backend). A batch that fails fails only its events;
it is rolled back, and a connection that cannot roll back is dropped. A connection that died
without the client noticing fails the one batch that next uses it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine, Sequence
from typing import Any

import asyncpg

from models.db import (
    POSTGRES_APPLICATION_NAME,
    POSTGRES_CONNECT_TIMEOUT_S,
    Database,
    libpq_url,
)
from models.event_batch import EventOutcome, SessionEvent, Totals, Triage, triage

_LOCK_SESSIONS = """
SELECT id, user_id, sets, reps, volume_kg, hr_count, hr_sum, max_bpm
FROM workout_sessions
WHERE id = ANY($1::varchar[]) AND status = 'active'
ORDER BY id
FOR UPDATE
"""

_STORED_KEYS = """
SELECT user_id, event_id FROM session_events
WHERE (user_id, event_id) IN (SELECT * FROM unnest($1::varchar[], $2::varchar[]))
"""

_INSERT_EVENTS = """
INSERT INTO session_events
    (session_id, user_id, event_id, kind, device, server_ts,
     exercise, reps, weight_kg, rpe, duration_s, ts)
SELECT * FROM unnest(
    $1::varchar[], $2::varchar[], $3::varchar[], $4::varchar[], $5::varchar[], $6::int8[],
    $7::varchar[], $8::int4[], $9::float8[], $10::float8[], $11::float8[], $12::int8[])
ON CONFLICT (user_id, event_id) DO NOTHING
RETURNING id, user_id, event_id
"""
"""Rows are inserted (and get their ids) in batch order; conflicts are skipped, not returned."""

_SET_FIELDS = ("exercise", "reps", "weight_kg", "rpe", "duration_s", "ts")
"""The set columns of `_INSERT_EVENTS`, read from `SessionEvent.fields` (None when absent)."""

_STORE_SAMPLES_AND_TOTALS = """
WITH samples AS (
    INSERT INTO heart_rate_samples (event_pk, session_id, ts_ms, bpm)
    SELECT * FROM unnest($1::int8[], $2::varchar[], $3::int8[], $4::int4[])
)
UPDATE workout_sessions AS ws
SET sets = t.sets, reps = t.reps, volume_kg = t.volume_kg,
    hr_count = t.hr_count, hr_sum = t.hr_sum, max_bpm = t.max_bpm
FROM unnest($5::varchar[], $6::int4[], $7::int4[], $8::float8[], $9::int8[], $10::int8[],
            $11::int4[]) AS t (id, sets, reps, volume_kg, hr_count, hr_sum, max_bpm)
WHERE ws.id = t.id
"""
"""One round trip for both; with no samples the insert is empty. Totals columns are in
`Totals.values()` order."""


class _Link:
    """One dedicated connection: opened on first use, reopened after it was lost."""

    def __init__(self, dsn: str) -> None:
        self._dsn = dsn
        self._conn: asyncpg.Connection | None = None

    async def connection(self) -> asyncpg.Connection:
        conn = self._conn
        if conn is None or conn.is_closed():
            self._conn = None
            conn = self._conn = await asyncpg.connect(
                self._dsn,
                timeout=POSTGRES_CONNECT_TIMEOUT_S,
                server_settings={"application_name": POSTGRES_APPLICATION_NAME},
            )
        return conn

    async def abort(self, cancelled: bool) -> None:
        """After a failed batch: roll back, so the connection serves the next one. It is
        dropped instead when it is lost, was interrupted mid-statement (`cancelled`), or the
        rollback fails; the next batch then opens a new one."""
        conn = self._conn
        if conn is None:
            return
        if cancelled or conn.is_closed():
            self._drop(conn)
            return
        try:
            if conn.is_in_transaction():
                await conn.execute("ROLLBACK")
        except Exception:  # noqa: BLE001 - whatever failed, the next batch starts afresh
            self._drop(conn)

    def _drop(self, conn: asyncpg.Connection) -> None:
        conn.terminate()
        self._conn = None

    async def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is None or conn.is_closed():
            return
        try:
            await conn.close(timeout=POSTGRES_CONNECT_TIMEOUT_S)
        except Exception:  # noqa: BLE001 - closing anyway
            conn.terminate()


class _Turn:
    """How far a batch got, for the batches after it: `locked` once it holds its row locks,
    `committing` once it sent COMMIT; both also when it failed before."""

    __slots__ = ("committing", "locked")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.locked: asyncio.Future[None] = loop.create_future()
        self.committing: asyncio.Future[None] = loop.create_future()

    @staticmethod
    def reach(step: asyncio.Future[None]) -> None:
        if not step.done():
            step.set_result(None)

    def end(self) -> None:
        self.reach(self.locked)
        self.reach(self.committing)


class PostgresBatches:
    """Commits batches on two dedicated connections, two at a time (see the module doc)."""

    depth = 2
    """Batches in flight: one committing while the next is sent. `EventWriter` keeps to it."""

    def __init__(self, db: Database, wake: Callable[[], None]) -> None:
        """`wake` is called when `ready()` may have turned true."""
        dsn = libpq_url(db.url)
        self._idle = [_Link(dsn) for _ in range(self.depth)]
        self._wake = wake
        self._latest: _Turn | None = None

    def ready(self) -> bool:
        """Whether to start the next batch now: once the previous one is committing. Starting
        it earlier would only split the queue into smaller batches (more round trips per
        event) while its lock statement could not be sent yet anyway."""
        return self._latest is None or self._latest.committing.done()

    def commit(self, events: list[SessionEvent]) -> Coroutine[Any, Any, list[EventOutcome]]:
        """The batch's transaction, to await; its lock turn is taken now, in call order."""
        previous, self._latest = self._latest, _Turn(asyncio.get_running_loop())
        self._latest.committing.add_done_callback(lambda _: self._wake())
        return self._commit(events, previous, self._latest)

    async def close(self) -> None:
        """Close the connections; call once no batch is in flight."""
        for link in self._idle:
            await link.close()

    async def _commit(
        self, events: list[SessionEvent], previous: _Turn | None, turn: _Turn
    ) -> list[EventOutcome]:
        link = self._idle.pop()
        try:
            conn = await link.connection()
            await conn.execute("BEGIN")
            try:
                if previous is not None:
                    await previous.locked
                try:
                    rows = await conn.fetch(_LOCK_SESSIONS, list({e.session_id for e in events}))
                finally:
                    turn.reach(turn.locked)
                outcomes = await _write(conn, events, {r[0]: Totals(*r[1:]) for r in rows})
                turn.reach(turn.committing)
                await conn.execute("COMMIT")
            except BaseException as exc:
                await link.abort(cancelled=not isinstance(exc, Exception))
                raise
            return outcomes
        finally:
            turn.end()
            self._idle.append(link)


async def _write(
    conn: asyncpg.Connection, events: list[SessionEvent], totals: dict[str, Totals]
) -> list[EventOutcome]:
    """Steps 2 (refused events) to 4 of the batch, on the sessions locked for it."""
    batch = triage(events, totals)
    if batch.refused:
        await _settle_refused(conn, events, batch)
    if not batch.candidates:
        return batch.outcomes
    rows = await conn.fetch(_INSERT_EVENTS, *_event_columns([events[i] for i in batch.candidates]))
    if not rows:
        return batch.outcomes
    samples = _count_stored(events, batch, totals, {(r[1], r[2]): r[0] for r in rows})
    changed = [(session_id, *t.values()) for session_id, t in totals.items() if t.changed]
    await conn.execute(_STORE_SAMPLES_AND_TOTALS, *samples, *zip(*changed, strict=True))
    return batch.outcomes


async def _settle_refused(
    conn: asyncpg.Connection, events: Sequence[SessionEvent], batch: Triage
) -> None:
    keys = batch.refused_keys(events)
    stored: set[tuple[str, str]] = set()
    if keys:
        users, event_ids = zip(*keys, strict=True)
        stored.update((r[0], r[1]) for r in await conn.fetch(_STORED_KEYS, users, event_ids))
    batch.settle_refused(events, stored)


def _event_columns(new: list[SessionEvent]) -> list[list[Any]]:
    """`_INSERT_EVENTS`'s arrays, one per column."""
    fields = [e.fields for e in new]
    return [
        [e.session_id for e in new],
        [e.user_id for e in new],
        [e.event_id for e in new],
        [e.kind for e in new],
        [e.device for e in new],
        [e.server_ts for e in new],
        *([f.get(name) for f in fields] for name in _SET_FIELDS),
    ]


def _count_stored(
    events: Sequence[SessionEvent],
    batch: Triage,
    totals: dict[str, Totals],
    inserted: dict[tuple[str, str], int],
) -> tuple[list[int], list[str], list[int], list[int]]:
    """Mark the inserted candidates `stored` with their stats, advancing the totals in batch
    order; return their heart-rate samples as the four arrays of the samples insert."""
    pks: list[int] = []
    session_ids: list[str] = []
    times: list[int] = []
    bpms: list[int] = []
    outcomes = batch.outcomes
    for i in batch.candidates:
        event = events[i]
        pk = inserted.get((event.user_id, event.event_id))
        if pk is None:
            continue
        session = totals[event.session_id]
        if event.kind == "set":
            fields = event.fields
            outcomes[i] = EventOutcome(
                "stored", session.add_set(fields["reps"], fields["weight_kg"])
            )
        elif event.samples:
            event_times, event_bpms = zip(*event.samples, strict=True)
            count = len(event_bpms)
            pks.extend([pk] * count)
            session_ids.extend([event.session_id] * count)
            times.extend(event_times)
            bpms.extend(event_bpms)
            outcomes[i] = EventOutcome("stored", session.add_hr(event_bpms))
        else:
            outcomes[i] = EventOutcome("stored", session.add_hr(()))
    return pks, session_ids, times, bpms
