"""The protocol's vocabulary as named values: error codes, disconnect codes, unsubscribe codes.

Numbers follow centrifugal/centrifuge (errors.go, disconnect.go, unsubscribe.go) because the
official SDKs decide from them whether to reconnect: disconnect codes 3000-3499 and 4000-4499
reconnect, 3500-3999 and 4500-4999 are terminal; unsubscribe codes below 2500 are terminal.
Nothing else in the code base spells one of these numbers.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Error:
    """An error reply. `temporary` tells the SDK to retry the command with backoff."""

    code: int
    message: str
    temporary: bool = False

    def with_message(self, message: str) -> Error:
        """The same code with a message that names the field or setting at fault."""
        return Error(self.code, message, self.temporary)

    def as_dict(self) -> dict[str, object]:
        out: dict[str, object] = {"code": self.code, "message": self.message}
        if self.temporary:
            out["temporary"] = True
        return out


class ErrorCode:
    INTERNAL = Error(100, "internal server error", temporary=True)
    BROKER_UNAVAILABLE = Error(100, "broker unavailable, retry later", temporary=True)
    """Redis cannot be reached: nothing was acknowledged or stored by it; the SDK retries."""
    UNAUTHORIZED = Error(101, "unauthorized")
    UNKNOWN_CHANNEL = Error(102, "unknown channel")
    PERMISSION_DENIED = Error(103, "permission denied")
    METHOD_NOT_FOUND = Error(104, "method not found")
    ALREADY_SUBSCRIBED = Error(105, "already subscribed")
    LIMIT_EXCEEDED = Error(106, "limit exceeded")
    BAD_REQUEST = Error(107, "bad request")
    NOT_AVAILABLE = Error(108, "not available")
    TOKEN_EXPIRED = Error(109, "token expired")
    EXPIRED = Error(110, "expired")
    TOO_MANY_REQUESTS = Error(111, "too many requests", temporary=True)
    UNRECOVERABLE_POSITION = Error(112, "unrecoverable position")


@dataclass(frozen=True, slots=True)
class Disconnect:
    """A reason to close a connection, sent as the WebSocket close code and reason.

    Reasons are plain words on purpose: centrifuge-js first tries JSON.parse(reason), and a
    reason that parses (such as "42") would stop it from reconnecting.
    """

    code: int
    reason: str


class DisconnectCode:
    SHUTDOWN = Disconnect(3001, "shutdown")
    INTERNAL = Disconnect(3004, "internal server error")
    EXPIRED = Disconnect(3005, "connection expired")
    SUBSCRIPTION_EXPIRED = Disconnect(3006, "subscription expired")
    SLOW = Disconnect(3008, "slow")
    WRITE_ERROR = Disconnect(3009, "write error")
    INSUFFICIENT_STATE = Disconnect(3010, "insufficient state")
    FORCE_RECONNECT = Disconnect(3011, "force reconnect")
    NO_PONG = Disconnect(3012, "no pong")
    TOO_MANY_REQUESTS = Disconnect(3013, "too many requests")
    INVALID_TOKEN = Disconnect(3500, "invalid token")
    BAD_REQUEST = Disconnect(3501, "bad request")
    STALE = Disconnect(3502, "stale")
    FORCE_NO_RECONNECT = Disconnect(3503, "force disconnect")
    CONNECTION_LIMIT = Disconnect(3504, "connection limit")
    CHANNEL_LIMIT = Disconnect(3505, "channel limit")
    INAPPROPRIATE_PROTOCOL = Disconnect(3506, "inappropriate protocol")
    PERMISSION_DENIED = Disconnect(3507, "permission denied")
    NOT_AVAILABLE = Disconnect(3508, "not available")
    TOO_MANY_ERRORS = Disconnect(3509, "too many errors")
    MESSAGE_TOO_BIG = Disconnect(1009, "message too big")


@dataclass(frozen=True, slots=True)
class Unsubscribe:
    code: int
    reason: str


class UnsubscribeCode:
    SERVER = Unsubscribe(2000, "server unsubscribe")
    INSUFFICIENT_STATE = Unsubscribe(2500, "insufficient state")
    EXPIRED = Unsubscribe(2501, "subscription expired")


class ProtocolError(Exception):
    """Raised by codecs on a frame that cannot be decoded; the connection closes with 3501."""


class ReplyError(Exception):
    """Raised anywhere below the client state machine to answer a command with an error."""

    def __init__(self, error: Error) -> None:
        super().__init__(error.message)
        self.error = error


class DisconnectError(Exception):
    """Raised below the client state machine when the command must close the connection."""

    def __init__(self, disconnect: Disconnect) -> None:
        super().__init__(disconnect.reason)
        self.disconnect = disconnect
