"""Protobuf, the mobile SDKs' encoding: `uvarint(len) || message` repeated in a binary frame.

Commands are parsed as `Command` and replies built as `Reply` from `client.proto`; the rest of
the hub only ever sees the internal dicts described in `hub.protocol.codec`.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import cache
from typing import Any

from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import DecodeError
from google.protobuf.message import Message as ProtoMessage

from hub.protocol.client_pb2 import Command, Reply
from hub.protocol.codec import Codec, Message, put_uvarint, split_uvarint_stream
from hub.protocol.codes import ProtocolError

_Convert = Callable[[Any], Any]


def message_to_dict(message: ProtoMessage) -> Message:
    """The internal dict of a parsed message.

    `ListFields` yields exactly what a client would have put in its JSON: scalars that differ
    from their zero value, non-empty repeated and map fields, and message fields that are
    present even when empty (`{"id": 3, "unsubscribe": {}}` keeps its method key).
    """
    return {field.name: _converter(field)(value) for field, value in message.ListFields()}


def _keep(value: Any) -> Any:
    return value


@cache
def _converter(field: FieldDescriptor) -> _Convert:
    """How one field's value becomes plain Python, worked out once per field of the schema."""
    message_type = field.message_type
    if message_type is None:
        return list if field.is_repeated else _keep
    if message_type.GetOptions().map_entry:
        if message_type.fields_by_name["value"].message_type is None:
            return dict
        return lambda entries: {key: message_to_dict(entry) for key, entry in entries.items()}
    if field.is_repeated:
        return lambda items: [message_to_dict(item) for item in items]
    return message_to_dict


class ProtobufCodec(Codec):
    name = "protobuf"
    subprotocol = "centrifuge-protobuf"
    binary = True
    ping = b"\x00"

    def decode(self, payload: bytes) -> list[Message]:
        commands: list[Message] = []
        for part in split_uvarint_stream(payload):
            try:
                command = Command.FromString(part)
            except DecodeError as exc:
                raise ProtocolError(f"invalid protobuf Command: {exc}") from None
            commands.append(message_to_dict(command))
        return commands

    def encode(self, message: Message) -> bytes:
        """Build the Reply through its constructor, which walks nested dicts in C.

        The constructor takes maps as dicts, repeated messages as lists of dicts, marks a
        message field given as `{}` as present (SDKs look for the result key even when it is
        empty), and raises ValueError on a key the schema does not have. That is several times
        faster than filling the message field by field from Python, and this runs once per
        publication.
        """
        body: bytes = Reply(**message).SerializeToString()
        return put_uvarint(len(body)) + body

    def join(self, parts: list[bytes]) -> bytes:
        return b"".join(parts)
