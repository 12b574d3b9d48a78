"""The event writer's PostgreSQL path: raw asyncpg, two batches in flight.

The writer's cost is paid on the hub's busiest core for every acknowledged event, so this path
skips SQLAlchemy and the pool (per-row dicts, checkout, pre-ping) and talks asyncpg on
connections of its own. Every statement's text is the same for any batch, so asyncpg prepares
each once per connection, and a batch is a constant number of round trips in one transaction.
The batch's rows go as one JSON text per statement, expanded by `json_to_recordset`: asyncpg
encodes array parameters element by element with abstract-base-class checks (about 5 us of the
hub's CPU per event row), where `orjson` writes the whole batch in a fraction of that and
PostgreSQL parses it for about 1 us per row.

1. BEGIN
2. lock the batch's active sessions: `SELECT … FOR UPDATE`, in id order (plus one SELECT of the
   refused events' keys, when some event's session is not theirs to write)
3. insert the events: `INSERT … SELECT FROM json_to_recordset(…) ON CONFLICT DO NOTHING RETURNING`
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
import orjson

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
WHERE id IN (SELECT json_array_elements_text($1::text::json)) AND status = 'active'
ORDER BY id
FOR UPDATE
"""
"""$1: the batch's session ids, a JSON array."""

_STORED_KEYS = """
SELECT user_id, event_id FROM session_events
WHERE (user_id, event_id) IN (
    SELECT * FROM json_to_recordset($1::text::json) AS k (user_id varchar, event_id varchar))
"""
"""$1: the keys to look up, JSON objects with `user_id` and `event_id`."""

_INSERT_EVENTS = """
INSERT INTO session_events
    (session_id, user_id, event_id, kind, device, server_ts,
     exercise, reps, weight_kg, rpe, duration_s, ts)
SELECT * FROM json_to_recordset($1::text::json) AS e (
    session_id varchar, user_id varchar, event_id varchar, kind varchar, device varchar,
    server_ts int8, exercise varchar, reps int4, weight_kg float8, rpe float8, duration_s float8,
    ts int8)
ON CONFLICT (user_id, event_id) DO NOTHING
RETURNING id, user_id, event_id
"""
"""$1: one JSON object per event with these keys; a set field that was not sent is absent, so
NULL. Rows are inserted (and get their ids) in batch order; conflicts are skipped, not
returned."""

_STORE_SAMPLES_AND_TOTALS = """
WITH samples AS (
    INSERT INTO heart_rate_samples (event_pk, session_id, ts_ms, bpm)
    SELECT * FROM json_to_recordset($1::text::json)
        AS s (event_pk int8, session_id varchar, ts_ms int8, bpm int4)
)
UPDATE workout_sessions AS ws
SET sets = t.sets, reps = t.reps, volume_kg = t.volume_kg,
    hr_count = t.hr_count, hr_sum = t.hr_sum, max_bpm = t.max_bpm
FROM json_to_recordset($2::text::json) AS t (
    id varchar, sets int4, reps int4, volume_kg float8, hr_count int8, hr_sum int8, max_bpm int4)
WHERE ws.id = t.id
"""
"""One round trip for both: $1 the heart-rate samples (often none), $2 the touched sessions'
new totals."""


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
                    session_ids = _json(list({e.session_id for e in events}))
                    rows = await conn.fetch(_LOCK_SESSIONS, session_ids)
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
    new = _json([_event_row(events[i]) for i in batch.candidates])
    rows = await conn.fetch(_INSERT_EVENTS, new)
    if not rows:
        return batch.outcomes
    samples = _count_stored(events, batch, totals, {(r[1], r[2]): r[0] for r in rows})
    changed = [t.row(session_id) for session_id, t in totals.items() if t.changed]
    await conn.execute(_STORE_SAMPLES_AND_TOTALS, _json(samples), _json(changed))
    return batch.outcomes


async def _settle_refused(
    conn: asyncpg.Connection, events: Sequence[SessionEvent], batch: Triage
) -> None:
    keys = batch.refused_keys(events)
    stored: set[tuple[str, str]] = set()
    if keys:
        lookup = [{"user_id": user_id, "event_id": event_id} for user_id, event_id in keys]
        stored.update((r[0], r[1]) for r in await conn.fetch(_STORED_KEYS, _json(lookup)))
    batch.settle_refused(events, stored)


def _json(value: Any) -> str:
    """A statement's JSON parameter (`$n::text::json`: asyncpg sends the text as is)."""
    return orjson.dumps(value).decode()


def _event_row(event: SessionEvent) -> dict[str, Any]:
    """`_INSERT_EVENTS`'s object for one event; a set's `fields` are its own columns."""
    return {
        "session_id": event.session_id, "user_id": event.user_id, "event_id": event.event_id,
        "kind": event.kind, "device": event.device, "server_ts": event.server_ts,
        **event.fields,
    }


def _count_stored(
    events: Sequence[SessionEvent],
    batch: Triage,
    totals: dict[str, Totals],
    inserted: dict[tuple[str, str], int],
) -> list[dict[str, Any]]:
    """Mark the inserted candidates `stored` with their stats, advancing the totals in batch
    order; return their heart-rate samples as the objects of the samples insert."""
    samples: list[dict[str, Any]] = []
    outcomes = batch.outcomes
    for i in batch.candidates:
        event = events[i]
        pk = inserted.get((event.user_id, event.event_id))
        if pk is None:
            continue
        outcomes[i] = EventOutcome("stored", totals[event.session_id].add(event))
        samples.extend(
            {"event_pk": pk, "session_id": event.session_id, "ts_ms": ts, "bpm": bpm}
            for ts, bpm in event.samples
        )
    return samples
