"""What every encoding of the protocol provides, and the varint stream framing two of them share.

Inside the hub a command, reply or push is a plain dict shaped like the JSON protocol
(`{"id": 1, "publish": {"channel": ..., "data": ...}}`), with one rule: fields that the
schema declares as `bytes` (`data`, `conn_info`, `chan_info`) hold the payload's raw JSON as
`bytes`. JSON embeds those bytes verbatim, protobuf and msgpack carry them as bytes, so a
publication's payload is serialised once and reused by every encoding.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, ClassVar

from hub.protocol.codes import ProtocolError

Message = dict[str, Any]


class Codec(ABC):
    """A pure encoder/decoder for one WebSocket subprotocol; no I/O, no state."""

    name: ClassVar[str]
    subprotocol: ClassVar[str | None]
    binary: ClassVar[bool]
    ping: ClassVar[bytes]
    """One frame's payload holding a single server ping."""

    @abstractmethod
    def decode(self, payload: bytes) -> list[Message]:
        """Split one inbound frame into commands, in order; ProtocolError if it is malformed."""

    @abstractmethod
    def encode(self, message: Message) -> bytes:
        """One reply or push, ready to be joined with others into a frame."""

    @abstractmethod
    def join(self, parts: list[bytes]) -> bytes:
        """Several encoded messages as the payload of one frame."""


def put_uvarint(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def split_uvarint_stream(payload: bytes) -> list[bytes]:
    """The messages of a `uvarint(len) || message` stream; ProtocolError on a torn stream."""
    parts: list[bytes] = []
    view = memoryview(payload)
    pos, end = 0, len(payload)
    while pos < end:
        length = shift = 0
        while True:
            if pos >= end or shift > 63:
                raise ProtocolError("truncated length prefix")
            byte = payload[pos]
            pos += 1
            length |= (byte & 0x7F) << shift
            shift += 7
            if not byte & 0x80:
                break
        if pos + length > end:
            raise ProtocolError("message longer than its frame")
        parts.append(bytes(view[pos : pos + length]))
        pos += length
    return parts
