"""The event writer's PostgreSQL path: one round trip per batch, on raw asyncpg.

The writer's cost is paid on the hub's busiest core for every acknowledged event, so this path
skips SQLAlchemy and the pool (per-row dicts, checkout, pre-ping) and talks asyncpg on a
connection of its own. A batch is one call of `store_event_batch` (migration 0003), a PL/pgSQL
function that runs the whole transaction where the data is:

1. lock the batch's active sessions, `FOR UPDATE` in id order, and return their totals;
2. when some event's session is not theirs to write (rare: an ended or unknown session), look
   up which of those events are stored already: retries whose acknowledgement was lost;
3. insert the events whose session is locked and is their user's, in batch order, skipping
   those already stored (`ON CONFLICT DO NOTHING`);
4. insert their heart-rate samples and add them to their sessions' totals.

Five round trips (BEGIN, lock, insert, totals, COMMIT) became one. Under load every round trip
waited for the backend to be scheduled again (~0.2 ms each on two busy cores), and the next
batch waited behind them. The rows go as JSON text, expanded by `json_to_recordset`: asyncpg
encodes array parameters element by element with abstract-base-class checks (about 5 us of the
hub's CPU per event row), where `orjson` writes the whole batch in a fraction of that.

From the totals as locked, the inserted keys and the refused-but-stored keys the function
returns, the hub derives each event's outcome and running stats (`models.event_batch`),
adding the events in batch order as the function did, so they are exact.

Safety with other nodes writing the same sessions: each call locks in id order, so two calls
never deadlock; a session both touch is locked by one first, and the other waits for that
commit and then reads the newest totals and re-checks `status = 'active'` (READ COMMITTED).
The same event in both: the later insert waits on the unique index for the earlier
transaction, then skips it if it committed, or stores it if it rolled back. A retry after
`end_session`: ending waits for the session's row lock, so the batch that stored the event had
committed before the end did.

The connection is opened on first use and reopened by the next batch after it was lost (an
outage, a server restart, a terminated backend). A batch that fails fails only its events; its
transaction ended with its statement. A connection that died without the client noticing
fails the one batch that next uses it.
"""

from __future__ import annotations

from collections.abc import Coroutine, Sequence
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

_STORE_BATCH = "SELECT store_event_batch($1::text::json, $2::text::json, $3::text::json)"
"""The batch's transaction (migration 0003): $1 the events, $2 their heart-rate samples, $3 the
distinct `[session_id, user_id]` pairs, each a JSON array."""


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

    def after_failure(self, cancelled: bool) -> None:
        """After a failed batch. Its transaction is gone with its statement, so the connection
        serves the next batch, unless it is lost or was interrupted mid-statement
        (`cancelled`): then it is dropped, and the next batch opens a new one."""
        conn = self._conn
        if conn is not None and (cancelled or conn.is_closed()):
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


class PostgresBatches:
    """Commits each batch with one `store_event_batch` call on a dedicated connection."""

    def __init__(self, db: Database) -> None:
        self._link = _Link(libpq_url(db.url))

    def commit(self, events: list[SessionEvent]) -> Coroutine[Any, Any, list[EventOutcome]]:
        return self._commit(events)

    async def close(self) -> None:
        """Close the connection; call once no batch is in flight."""
        await self._link.close()

    async def _commit(self, events: list[SessionEvent]) -> list[EventOutcome]:
        link = self._link
        conn = await link.connection()
        try:
            result = await conn.fetchval(_STORE_BATCH, *_batch_parameters(events))
        except BaseException as exc:
            link.after_failure(cancelled=not isinstance(exc, Exception))
            raise
        locked, inserted, known = orjson.loads(result)
        totals = {row[0]: Totals(*row[1:]) for row in locked}
        batch = triage(events, totals)
        if batch.refused:
            batch.settle_refused(events, {(user, event) for user, event in known})
        _count_stored(events, batch, totals, {(user, event) for user, event in inserted})
        return batch.outcomes


def _batch_parameters(events: Sequence[SessionEvent]) -> tuple[str, str, str]:
    """`store_event_batch`'s three JSON arguments. Each event goes once per session (a later
    copy could only be a duplicate) with its batch position `ord`; a set field not sent is
    absent, so NULL."""
    rows: list[dict[str, Any]] = []
    samples: list[dict[str, Any]] = []
    sent: set[tuple[str, str, str]] = set()
    for ord_, event in enumerate(events):
        key = (event.session_id, event.user_id, event.event_id)
        if key in sent:
            continue
        sent.add(key)
        rows.append({"ord": ord_, **event.columns()})
        samples.extend(
            {"session_id": key[0], "user_id": key[1], "event_id": key[2], "ts_ms": ts, "bpm": bpm}
            for ts, bpm in event.samples
        )
    writers = {(event.session_id, event.user_id) for event in events}
    return _json(rows), _json(samples), _json(list(writers))


def _json(value: Any) -> str:
    """A statement's JSON parameter (`$n::text::json`: asyncpg sends the text as is)."""
    return orjson.dumps(value).decode()


def _count_stored(
    events: Sequence[SessionEvent],
    batch: Triage,
    totals: dict[str, Totals],
    inserted: set[tuple[str, str]],
) -> None:
    """Mark the inserted candidates `stored` with their stats, advancing the totals in batch
    order as `store_event_batch` did."""
    outcomes = batch.outcomes
    for i in batch.candidates:
        event = events[i]
        if (event.user_id, event.event_id) in inserted:
            outcomes[i] = EventOutcome("stored", totals[event.session_id].add(event))
