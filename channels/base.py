"""What every channel module shares: the context it acts through and small checks.

`Context` is handed to each rule at start: the database, the grouped event writer, and the hub
(to publish, or to take a subscription away). Session owners are cached because a session never
changes hands; its status is not cached, the event writer checks it inside the transaction.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

import orjson

from hub.protocol.codes import ErrorCode, ReplyError
from hub.rules import HubAPI, Principal
from models import queries
from models.db import Database
from models.event_writer import EventWriter

DATABASE_UNAVAILABLE = ErrorCode.INTERNAL.with_message("database unavailable, retry later")
_OWNER_CACHE_SIZE = 10_000


@dataclass
class Context:
    db: Database
    writer: EventWriter
    hub: HubAPI
    _owners: OrderedDict[str, str] = field(default_factory=OrderedDict)

    async def session_owner(self, session_id: str) -> str | None:
        owner = self._owners.get(session_id)
        if owner is not None:
            self._owners.move_to_end(session_id)
            return owner
        session = await queries.get_session(self.db, session_id)
        if session is None:
            return None
        self._owners[session_id] = session["user_id"]
        if len(self._owners) > _OWNER_CACHE_SIZE:
            self._owners.popitem(last=False)
        return str(session["user_id"])

    async def may_watch(self, who: Principal, athlete: str) -> bool:
        """The athlete themself (or their device), an admin, or a trainer linked to them."""
        if who.user == athlete and who.role in ("athlete", "device"):
            return True
        if who.is_admin:
            return True
        return who.role == "trainer" and await queries.is_linked(self.db, who.user, athlete)


def deny(message: str = "permission denied") -> ReplyError:
    return ReplyError(ErrorCode.PERMISSION_DENIED.with_message(message))


def bad_request(message: str) -> ReplyError:
    return ReplyError(ErrorCode.BAD_REQUEST.with_message(message))


def parse_object(data: bytes, what: str = "data") -> dict[str, Any]:
    """Client payloads are JSON objects; anything else is a 107 that says so."""
    try:
        value = orjson.loads(data)
    except orjson.JSONDecodeError:
        raise bad_request(f"{what} must be JSON") from None
    if not isinstance(value, dict):
        raise bad_request(f"{what} must be a JSON object")
    return value


def optional_limit(params: dict[str, Any], default: int = 20, most: int = 100) -> int:
    limit = params.get("limit", default)
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= most:
        raise bad_request(f"limit: must be an integer from 1 to {most}")
    return limit
