"""What a batch of live session events means, whichever database stores it.

`models.event_writer` groups events into one transaction per batch; the backends
(SQLAlchemy for SQLite in `event_writer`, raw asyncpg in `event_writer_pg`) differ only in how
they talk to the database. The rules shared here decide each event's outcome:

* An event whose session is not locked as active, or belongs to another user, is refused
  (`inactive`), unless it is already stored: a retry whose acknowledgement was lost is
  acknowledged again (`duplicate`).
* Of the others, the first copy of each `(user_id, event_id)` in the batch is a candidate for
  insertion; later copies are `duplicate`. A candidate the unique constraint turns away (stored
  before, by any node) is `duplicate` too.
* Every stored event reports its session's running stats right after it, in batch order,
  computed from the totals read under the session's row lock in the same transaction.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from models.queries import avg_bpm, round_volume

TOTALS_COLUMNS = ("user_id", "sets", "reps", "volume_kg", "hr_count", "hr_sum", "max_bpm")
"""The session row's columns a batch reads under lock, in `Totals` argument order; all but
`user_id` are written back when the batch stored something in the session."""


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

    def columns(self) -> dict[str, Any]:
        """Its `session_events` columns by name; a set field that was not sent is absent."""
        return {
            "session_id": self.session_id,
            "user_id": self.user_id,
            "event_id": self.event_id,
            "kind": self.kind,
            "device": self.device,
            "server_ts": self.server_ts,
            **self.fields,
        }


@dataclass(slots=True)
class EventOutcome:
    """`stored` events carry the session's running stats after them; the others carry None."""

    status: Literal["stored", "duplicate", "inactive"]
    stats: dict[str, Any] | None = None


DUPLICATE = EventOutcome("duplicate")
INACTIVE = EventOutcome("inactive")


@dataclass(slots=True)
class Totals:
    """A locked session row's running totals, advanced event by event within a batch.

    The batch's set volume is summed apart (`batch_volume_kg`, in batch order) and added to the
    row's `volume_kg` as a whole, as PostgreSQL's `store_event_batch` does: float addition is
    not associative, and this way the stats reported equal the stored total to the last bit.
    """

    user_id: str
    sets: int
    reps: int
    volume_kg: float
    hr_count: int
    hr_sum: int
    max_bpm: int | None
    changed: bool = False
    batch_volume_kg: float = 0.0

    def add(self, event: SessionEvent) -> dict[str, Any]:
        """Count the event; return the stats it reports."""
        if event.kind == "set":
            fields = event.fields
            return self.add_set(fields["reps"], fields["weight_kg"])
        return self.add_hr([bpm for _, bpm in event.samples])

    def add_set(self, reps: int, weight_kg: float) -> dict[str, Any]:
        self.changed = True
        self.sets += 1
        self.reps += int(reps)
        self.batch_volume_kg += int(reps) * float(weight_kg)
        return {"sets": self.sets, "reps": self.reps, "volume_kg": round_volume(self.volume)}

    def add_hr(self, bpms: Sequence[int]) -> dict[str, Any]:
        self.changed = True
        if bpms:
            self.hr_count += len(bpms)
            self.hr_sum += sum(bpms)
            top = max(bpms)
            if self.max_bpm is None or top > self.max_bpm:
                self.max_bpm = top
        return {
            "sets": self.sets,
            "reps": self.reps,
            "volume_kg": round_volume(self.volume),
            "avg_bpm": avg_bpm(self.hr_sum, self.hr_count),
            "max_bpm": self.max_bpm,
        }

    @property
    def volume(self) -> float:
        """The session's volume after the events counted so far."""
        return self.volume_kg + self.batch_volume_kg

    def row(self, session_id: str) -> dict[str, Any]:
        """The session's columns to write back, by name, with its id."""
        return {
            "id": session_id,
            "sets": self.sets,
            "reps": self.reps,
            "volume_kg": self.volume,
            "hr_count": self.hr_count,
            "hr_sum": self.hr_sum,
            "max_bpm": self.max_bpm,
        }


@dataclass(slots=True)
class Triage:
    """A batch sorted by the locked sessions: `outcomes` starts as all `duplicate`; the writer
    sets `stored` candidates and the refused events that are not stored elsewhere."""

    outcomes: list[EventOutcome]
    candidates: list[int]
    """Indexes of the events to insert, each `(user_id, event_id)` once, in batch order."""
    refused: list[int]
    """Indexes of the events whose session is not theirs to write."""
    seen: set[tuple[str, str]]
    """The candidates' keys: a refused copy of one of them is a duplicate, not inactive."""

    def refused_keys(self, events: Sequence[SessionEvent]) -> list[tuple[str, str]]:
        """The refused events' keys still to look up in the database, sorted."""
        return sorted({(events[i].user_id, events[i].event_id) for i in self.refused} - self.seen)

    def settle_refused(self, events: Sequence[SessionEvent], stored: set[tuple[str, str]]) -> None:
        """Refused events not already stored (`stored` from the database, or a candidate of
        this batch) are `inactive`; the rest stay `duplicate`."""
        for i in self.refused:
            key = (events[i].user_id, events[i].event_id)
            if key not in stored and key not in self.seen:
                self.outcomes[i] = INACTIVE


def triage(events: Sequence[SessionEvent], totals: Mapping[str, Totals]) -> Triage:
    """Sort the batch's events against the sessions locked for it (`totals`, by session id)."""
    candidates: list[int] = []
    refused: list[int] = []
    seen: set[tuple[str, str]] = set()
    for i, event in enumerate(events):
        session = totals.get(event.session_id)
        if session is None or session.user_id != event.user_id:
            refused.append(i)
            continue
        key = (event.user_id, event.event_id)
        if key not in seen:
            seen.add(key)
            candidates.append(i)
    return Triage([DUPLICATE] * len(events), candidates, refused, seen)
