"""`session:<session_id>` — a live workout: sets and heart rate streamed by the owner's devices.

Subscribe: the owner and their devices, trainers linked to the owner, admins.
Publish: the owner and their devices, while the session is active; each event is validated,
committed (grouped with other events in one transaction), then broadcast with running stats.
The publish reply is the device's acknowledgement, so it is sent only after the commit; a
repeated `event_id` is acknowledged again but neither stored nor broadcast twice (a unique
constraint enforces it, whichever node the retry lands on).

A broadcast can fail after its commit (the broker unreachable): the device is told to retry and
its retry is a duplicate. The channel's history then tells whether the event went out: when it
holds the publications since the event's commit and the event is not among them, the retry
broadcasts the stored event (counted as `fitsync_session_events_broadcast_late`). When history
no longer reaches back that far (trimmed or expired) nothing is broadcast: the event is old and
in the database. Two retries of one such event racing each other may both broadcast it; clients
tell events apart by `event_id`.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import orjson

from channels import events
from channels.base import (
    DATABASE_UNAVAILABLE,
    Context,
    bad_request,
    deny,
    optional_limit,
    parse_object,
)
from hub.broker.base import HistoryOptions
from hub.protocol.codes import ReplyError
from hub.rules import ChannelOptions, ChannelRule, HubAPI, Principal
from models import queries
from models.event_writer import SessionEvent

log = logging.getLogger("channels.session")

HISTORY_PAGE = 100
"""Publications read at a time when looking for a retried event's broadcast, newest first."""
CLOCK_SKEW_MS = 10_000
"""How much earlier than an event's commit time its broadcast may be stamped (the two come from
the clocks of the nodes that stored and published it, which may be one and the same)."""


def channel_of(session_id: str) -> str:
    return f"session:{session_id}"


class SessionRule(ChannelRule):
    namespace = "session"
    options = ChannelOptions(
        history=HistoryOptions(size=1000, ttl=3600, meta_ttl=86400),
        presence=True,
        join_leave=True,
    )

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx

    async def authorize_subscribe(self, who: Principal, channel_id: str) -> None:
        if who.is_admin:
            return
        owner = await self.ctx.session_owner(channel_id)
        if owner is None or not await self.ctx.may_watch(who, owner):
            raise deny()

    async def publish(self, who: Principal, channel_id: str, data: bytes) -> bytes | None:
        event = parse_object(data, "event")
        fields = events.validate(event)
        event_id = events.event_id(event)
        owner = await self.ctx.session_owner(channel_id)
        if owner is None:
            raise deny("unknown session")
        if who.user != owner or who.role not in ("athlete", "device"):
            raise deny("only the session's athlete and their devices publish here")
        server_ts = int(time.time() * 1000)
        submitted = SessionEvent(
            session_id=channel_id, user_id=owner, event_id=event_id, kind=event["type"],
            device=who.device, server_ts=server_ts,
            fields={k: v for k, v in fields.items() if k != "samples"},
            samples=fields.get("samples", []),
        )
        try:
            outcome = await self.ctx.writer.submit(submitted)
        except Exception:  # whatever the driver raised, the device retries the same event
            log.warning("could not store event %s of %s", event_id, owner, exc_info=True)
            raise ReplyError(DATABASE_UNAVAILABLE) from None
        if outcome.status == "inactive":
            raise deny("session is not active")
        if outcome.status == "duplicate":
            return await self._missed_broadcast(owner, channel_id, event_id)
        event["user"] = owner
        # `device` names the device that sent it, from the token; a client's own is dropped.
        event.pop("device", None)
        if who.device:
            event["device"] = who.device
        event["server_ts"] = server_ts
        event["stats"] = outcome.stats
        return orjson.dumps(event)

    async def _missed_broadcast(self, owner: str, channel_id: str, event_id: str) -> bytes | None:
        """A retried event's broadcast when its first one never went out (module doc)."""
        try:
            stored = await queries.stored_event(self.ctx.db, owner, event_id)
        except Exception:  # as for the commit: the device retries
            log.warning("could not read event %s of %s", event_id, owner, exc_info=True)
            raise ReplyError(DATABASE_UNAVAILABLE) from None
        if stored is None or stored["session_id"] != channel_id:
            return None
        event = stored["event"]
        channel = channel_of(channel_id)
        if await _in_history(self.ctx.hub, channel, event_id, event["server_ts"]) is not False:
            return None
        log.warning("event %s of %s was stored but its broadcast failed: broadcasting it on the "
                    "device's retry", event_id, owner)
        self.ctx.hub.metrics.session_events_broadcast_late.inc()
        return orjson.dumps(event)


async def _in_history(hub: HubAPI, channel: str, event_id: str, since_ms: int) -> bool | None:
    """Whether the channel published the event at `since_ms` or later: True, False, or None
    when its history no longer reaches back that far."""
    needle = orjson.dumps(event_id)
    oldest: int | None = None
    while True:
        page = await hub.retained(channel, before=oldest, limit=HISTORY_PAGE)
        for publication in page.publications:
            if publication.time < since_ms - CLOCK_SKEW_MS:
                return False
            if needle in publication.data and (
                    orjson.loads(publication.data).get("event_id") == event_id):
                return True
        if page.publications:
            oldest = page.publications[-1].offset
        if len(page.publications) < HISTORY_PAGE:
            # Read to the oldest retained: the whole stream if that is its first publication.
            if oldest is None:
                return False if page.position.offset == 0 else None
            return False if oldest == 1 else None


async def start(ctx: Context, who: Principal, params: dict[str, Any]) -> dict[str, Any]:
    """`session.start`: athletes and devices start their own session; trainers hear of it."""
    if who.role not in ("athlete", "device"):
        raise deny("only athletes and their devices start sessions")
    title = params.get("title") or ""
    if not isinstance(title, str) or len(title) > 200:
        raise bad_request("title: must be a string of at most 200 characters")
    session = await queries.start_session(ctx.db, who.user, title)
    channel = channel_of(session["session_id"])
    await ctx.hub.publish(channel, orjson.dumps(
        {"type": "status", "status": "started", "session_id": session["session_id"]}))
    await _tell_trainers(ctx, who.user, {
        "type": "client_session_started", "user_id": who.user,
        "session_id": session["session_id"], "title": session["title"],
        "started_at": session["started_at"],
    })
    return {"session_id": session["session_id"], "channel": channel}


async def end(ctx: Context, who: Principal, params: dict[str, Any]) -> dict[str, Any]:
    """`session.end`: the owner or their device; publishes the summary to watchers."""
    session_id = params.get("session_id")
    if not isinstance(session_id, str) or not session_id:
        raise bad_request("session_id: must be a non-empty string")
    owner = await ctx.session_owner(session_id)
    if owner is None or owner != who.user or who.role not in ("athlete", "device"):
        raise deny("only the session's athlete and their devices end it")
    ended = await queries.end_session(ctx.db, session_id)
    if ended is None:
        raise deny("session is not active")
    summary = ended["summary"]
    await ctx.hub.publish(channel_of(session_id), orjson.dumps(
        {"type": "status", "status": "ended", "session_id": session_id, "summary": summary}))
    await _tell_trainers(ctx, owner, {
        "type": "client_session_ended", "user_id": owner, "session_id": session_id,
        "title": ended["title"], "started_at": ended["started_at"], "summary": summary,
    })
    return {"summary": summary}


async def recent(ctx: Context, who: Principal, params: dict[str, Any]) -> dict[str, Any]:
    """`sessions.recent`: an athlete's own, or a linked client's for a trainer."""
    user_id = params.get("user_id") or who.user
    if not isinstance(user_id, str):
        raise bad_request("user_id: must be a string")
    if not await ctx.may_watch(who, user_id):
        raise deny()
    limit = optional_limit(params)
    return {"sessions": await queries.recent_sessions(ctx.db, user_id, limit)}


async def _tell_trainers(ctx: Context, athlete: str, payload: dict[str, Any]) -> None:
    data = orjson.dumps(payload)
    for trainer in await queries.trainers_of(ctx.db, athlete):
        await ctx.hub.publish(f"trainer:{trainer}", data)


RPC = {"session.start": start, "session.end": end, "sessions.recent": recent}
