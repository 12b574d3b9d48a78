"""msgpack, our device firmware's encoding: the JSON message tree with `bytes` as bin.

Framed like protobuf, `uvarint(len) || object` repeated in a binary frame: msgpack is
self-delimiting, but the prefix lets a small device check sizes before it decodes.
"""

from __future__ import annotations

import msgpack

from hub.protocol.codec import Codec, Message, put_uvarint, split_uvarint_stream
from hub.protocol.codes import ProtocolError


class MsgpackCodec(Codec):
    name = "msgpack"
    subprotocol = "centrifuge-msgpack"
    binary = True
    ping = b"\x01\x80"

    def decode(self, payload: bytes) -> list[Message]:
        commands: list[Message] = []
        for part in split_uvarint_stream(payload):
            if not part:
                commands.append({})  # a bare zero-length message is a pong too
                continue
            try:
                command = msgpack.unpackb(part, raw=False, strict_map_key=True)
            except (ValueError, msgpack.UnpackException) as exc:
                raise ProtocolError(f"invalid msgpack: {exc}") from None
            if not isinstance(command, dict):
                raise ProtocolError("a command must be a msgpack map")
            commands.append(command)
        return commands

    def encode(self, message: Message) -> bytes:
        body: bytes = msgpack.packb(message, use_bin_type=True)
        return put_uvarint(len(body)) + body

    def join(self, parts: list[bytes]) -> bytes:
        return b"".join(parts)
