"""The encodings a connection may speak, chosen by WebSocket subprotocol or `?format=`."""

from __future__ import annotations

from hub.protocol.codec import Codec
from hub.protocol.json_codec import JsonCodec
from hub.protocol.msgpack_codec import MsgpackCodec
from hub.protocol.protobuf_codec import ProtobufCodec

CODECS: tuple[Codec, ...] = (JsonCodec(), ProtobufCodec(), MsgpackCodec())
"""Index in this tuple is how the fan-out caches one encoding per codec."""

SUBPROTOCOLS = [c.subprotocol for c in CODECS if c.subprotocol]
_BY_SUBPROTOCOL = {c.subprotocol: i for i, c in enumerate(CODECS)}
_BY_FORMAT = {c.name: i for i, c in enumerate(CODECS)}


def codec_index(subprotocol: str | None, query_format: str | None) -> int | None:
    """Which codec a handshake asks for; JSON when it asks for none; None when unknown."""
    if subprotocol:
        return _BY_SUBPROTOCOL.get(subprotocol)
    if query_format:
        return _BY_FORMAT.get(query_format)
    return 0
