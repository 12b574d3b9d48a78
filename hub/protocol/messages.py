"""Builders for the reply and push shapes the SDKs read, in the hub's internal dict form, and
typed reads of the command fields the hub interprets.

Zero values are left out as the reference server does; keys the SDKs dereference (`client`,
`ttl` beside `expires`, `code` and `reason` in pushes, `info` in join/leave) are always present.
"""

from __future__ import annotations

from hub.broker.base import ClientInfo, Publication
from hub.protocol.codec import Message
from hub.protocol.codes import DisconnectCode, DisconnectError, Error, Unsubscribe


def client_info(info: ClientInfo) -> Message:
    out: Message = {"user": info.user, "client": info.client}
    if info.conn_info:
        out["conn_info"] = info.conn_info
    if info.chan_info:
        out["chan_info"] = info.chan_info
    return out


def publication(pub: Publication) -> Message:
    out: Message = {"data": pub.data}
    if pub.offset:
        out["offset"] = pub.offset
    if pub.time:
        out["time"] = pub.time
    if pub.info is not None:
        out["info"] = client_info(pub.info)
    if pub.tags:
        out["tags"] = pub.tags
    return out


def reply(command_id: int, method: str, result: Message) -> Message:
    return {"id": command_id, method: result}


def error_reply(command_id: int, error: Error) -> Message:
    return {"id": command_id, "error": error.as_dict()}


def pub_push(channel: str, pub: Publication) -> Message:
    return {"push": {"channel": channel, "pub": publication(pub)}}


def join_push(channel: str, info: ClientInfo) -> Message:
    return {"push": {"channel": channel, "join": {"info": client_info(info)}}}


def leave_push(channel: str, info: ClientInfo) -> Message:
    return {"push": {"channel": channel, "leave": {"info": client_info(info)}}}


def unsubscribe_push(channel: str, why: Unsubscribe) -> Message:
    return {"push": {"channel": channel, "unsubscribe": {"code": why.code, "reason": why.reason}}}


# JSON and msgpack commands carry no schema, so a field may hold any type. One of the wrong type
# is a malformed command, closed with 3501 as the reference's typed decoding does, not an
# internal error that an SDK would retry for ever.


def int_field(body: Message, name: str) -> int:
    """An integer field of a command body; 0 when absent."""
    value = body.get(name) or 0
    if isinstance(value, bool) or not isinstance(value, int):
        raise DisconnectError(DisconnectCode.BAD_REQUEST)
    return value


def object_field(body: Message, name: str) -> Message:
    """A message or map field of a command body; empty when absent."""
    value = body.get(name) or {}
    if not isinstance(value, dict):
        raise DisconnectError(DisconnectCode.BAD_REQUEST)
    return value
