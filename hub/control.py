"""Node-to-node control messages: server-side actions for a user's connections, on every node,
and the application's own messages to itself on every node.

A user's connections may be on any node, so an action on them (disconnect, re-check what they
may subscribe to) is broadcast through the broker (`Broker.publish_control`) and carried out by
every node on its own connections, the sending node included. The application's messages (a
JSON object of its own) reach `Application.on_node_message` on every node the same way.
Messages are small JSON objects; an unknown or malformed one is logged and ignored, so nodes of
different versions can coexist.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

from hub.protocol.codes import Disconnect


@dataclass(frozen=True, slots=True)
class DisconnectUser:
    user: str
    disconnect: Disconnect


@dataclass(frozen=True, slots=True)
class RecheckUser:
    """Ask the application again whether each of the user's subscriptions is still allowed;
    the ones that are not end with a server unsubscribe."""

    user: str


@dataclass(frozen=True, slots=True)
class ApplicationMessage:
    """For the application on every node; what it means is the application's business."""

    message: dict[str, Any]


Command = DisconnectUser | RecheckUser | ApplicationMessage


class MalformedControl(ValueError):
    pass


def encode(command: Command) -> bytes:
    if isinstance(command, DisconnectUser):
        return orjson.dumps({"op": "disconnect", "user": command.user,
                             "code": command.disconnect.code,
                             "reason": command.disconnect.reason})
    if isinstance(command, ApplicationMessage):
        return orjson.dumps({"op": "app", "message": command.message})
    return orjson.dumps({"op": "recheck", "user": command.user})


def decode(data: bytes) -> Command:
    try:
        message = orjson.loads(data)
        op = message["op"]
        if op == "app":
            if not isinstance(message["message"], dict):
                raise TypeError("message")
            return ApplicationMessage(message["message"])
        user = message["user"]
        if not isinstance(user, str):
            raise TypeError("user")
        if op == "disconnect":
            return DisconnectUser(user, Disconnect(int(message["code"]), str(message["reason"])))
        if op == "recheck":
            return RecheckUser(user)
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise MalformedControl(f"malformed control message: {exc}") from None
    raise MalformedControl(f"unknown control message {op!r}")
