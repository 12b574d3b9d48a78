"""JSON, the browsers' encoding: compact objects joined by newlines in text frames."""

from __future__ import annotations

from typing import Any

import orjson

from hub.protocol.codec import Codec, Message
from hub.protocol.codes import ProtocolError

_DATA_FIELDS = ("data",)


def _embed_raw(value: Any) -> Any:
    """orjson's fallback: `bytes` fields are raw JSON and go out verbatim, not as strings."""
    if isinstance(value, bytes):
        return orjson.Fragment(value)
    raise TypeError(f"cannot encode {type(value).__name__}")


class JsonCodec(Codec):
    name = "json"
    subprotocol = "centrifuge-json"
    binary = False
    ping = b"{}"

    def decode(self, payload: bytes) -> list[Message]:
        commands: list[Message] = []
        for line in payload.strip().split(b"\n"):
            if not line.strip():
                continue
            try:
                command = orjson.loads(line)
            except orjson.JSONDecodeError as exc:
                raise ProtocolError(f"invalid JSON: {exc}") from None
            if not isinstance(command, dict):
                raise ProtocolError("a command must be a JSON object")
            for key, body in command.items():
                if key != "id" and isinstance(body, dict):
                    for field in _DATA_FIELDS:
                        if field in body:
                            body[field] = orjson.dumps(body[field])
            commands.append(command)
        return commands

    def encode(self, message: Message) -> bytes:
        # A copy of just the encoded bytes: orjson's result holds its whole growth buffer
        # (4 KB or more however short the message), and a lagging connection's queue, bounded
        # by encoded length, would otherwise hold many times its limit in memory.
        return bytes(memoryview(orjson.dumps(message, default=_embed_raw)))

    def join(self, parts: list[bytes]) -> bytes:
        return b"\n".join(parts)
