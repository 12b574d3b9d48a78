"""Differential fuzz of the frame fast path (hub/connection.py) against websockets alone.

The hub reads whole masked data frames itself and hands everything else to websockets'
sans-I/O parser; it must make no difference. Both sides here get the same random byte
streams (valid, fragmented and control frames, oversized ones, bad opcodes, reserved bits,
unmasked frames, non-minimal lengths, garbage), cut into the same random reads: one side feeds
each read as `HubWebSocketProtocol.data_received` does, the other gives it to websockets
alone. After every read both must have delivered the same messages and control frames, queued
the same bytes to send (pongs, close frames), and be in the same state, down to the bytes
websockets holds of a partial frame.

A short run is part of the suite; `FRAME_FUZZ_EXAMPLES=200000` runs a long one
(docs/FUZZING.md).
"""

from __future__ import annotations

import asyncio
import json
import os
from dataclasses import dataclass, field
from itertools import pairwise
from typing import Any

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from websockets.frames import Frame, Opcode
from websockets.http11 import Request
from websockets.server import ServerProtocol
from websockets.utils import apply_mask

from hub.connection import at_frame_boundary, server_protocol, take_data_frames
from hub.protocol.codes import ErrorCode
from tests.harness import RunningHub
from tests.raw import OpenRaw

LIMIT = 300
"""The frame size limit of both sides: small, so oversized frames cost little."""
EXAMPLES = int(os.environ.get("FRAME_FUZZ_EXAMPLES", "300"))
HANDSHAKE = (
    b"GET /connection/websocket HTTP/1.1\r\nHost: hub\r\nUpgrade: websocket\r\n"
    b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
    b"Sec-WebSocket-Version: 13\r\n\r\n"
)
VALID_OPCODES = [op.value for op in Opcode]
INVALID_OPCODES = [3, 4, 5, 6, 7, 11, 12, 13, 14, 15]
CLOSE_CODES = [1000, 1001, 1002, 1005, 1006, 1009, 1011, 999, 1004, 2999, 3001, 3501, 4000, 5000]


def opened() -> ServerProtocol:
    """A server protocol configured as the hub's, after its opening handshake."""
    ws = server_protocol(LIMIT)
    ws.receive_data(HANDSHAKE)
    [request] = ws.events_received()
    assert isinstance(request, Request)
    ws.send_response(ws.accept(request))
    ws.data_to_send()
    assert at_frame_boundary(ws)
    return ws


@dataclass
class Side:
    """One parser and what it produced so far."""

    ws: ServerProtocol = field(default_factory=opened)
    seen: list[tuple[str, bytes]] = field(default_factory=list)
    """Whole messages (fragments joined, as the hub joins them) and control frames."""
    sent: bytearray = field(default_factory=bytearray)
    fragments: list[bytes] = field(default_factory=list)
    failure: str = ""

    def deliver(self, payload: bytes) -> None:
        self.seen.append(("message", payload))

    def collect(self) -> None:
        for event in self.ws.events_received():
            assert isinstance(event, Frame)
            data = bytes(event.data)
            if event.opcode in (Opcode.TEXT, Opcode.BINARY, Opcode.CONT):
                self.fragments.append(data)
                if event.fin:
                    self.deliver(b"".join(self.fragments))
                    self.fragments.clear()
            else:
                self.seen.append((event.opcode.name, data))
        for chunk in self.ws.data_to_send():
            self.sent += chunk or b"<end of stream>"

    def state(self) -> tuple[Any, ...]:
        ws = self.ws
        exc = ws.parser_exc
        return (ws.state, ws.close_rcvd, ws.close_sent, ws.close_rcvd_then_sent,
                type(exc).__name__ if exc else None, str(exc) if exc else None,
                ws.current_size, bytes(ws.reader.buffer), ws.eof_sent, self.failure)


def feed_hub(side: Side, data: bytes) -> None:
    """What `HubWebSocketProtocol.data_received` does with one read."""
    try:
        if at_frame_boundary(side.ws):
            data = take_data_frames(side.ws, data, LIMIT, side.deliver)
            if not data:
                return
        side.ws.receive_data(data)
        side.collect()
    except Exception as exc:  # noqa: BLE001 - compared with the other side's
        side.failure = repr(exc)


def feed_websockets(side: Side, data: bytes) -> None:
    try:
        side.ws.receive_data(data)
        side.collect()
    except Exception as exc:  # noqa: BLE001 - compared with the other side's
        side.failure = repr(exc)


def encode_frame(*, fin: bool, rsv: int, opcode: int, payload: bytes, masked: bool,
                 key: bytes, length_form: str) -> bytes:
    """A client frame, spelt out byte by byte so that every malformation can be written."""
    head = bytes([(0x80 if fin else 0) | (rsv << 4) | opcode])
    n = len(payload)
    mask_bit = 0x80 if masked else 0
    if length_form == "64" or n > 0xFFFF:
        head += bytes([mask_bit | 127]) + n.to_bytes(8, "big")
    elif length_form == "16" or n > 125:
        head += bytes([mask_bit | 126]) + n.to_bytes(2, "big")
    else:
        head += bytes([mask_bit | n])
    return head + key + apply_mask(payload, key) if masked else head + payload


def payloads(max_size: int = LIMIT + 40) -> st.SearchStrategy[bytes]:
    """Mostly short, sometimes around the limit: exactly at it, one under, one over."""
    sizes = st.one_of(st.integers(0, 125), st.integers(126, max_size),
                      st.sampled_from([LIMIT - 1, LIMIT, LIMIT + 1]))
    return sizes.flatmap(lambda n: st.binary(min_size=n, max_size=n))


keys = st.binary(min_size=4, max_size=4)
length_forms = st.sampled_from(["minimal"] * 8 + ["16", "64"])


@st.composite
def good_frames(draw: st.DrawFn) -> bytes:
    """What clients send: final masked data frames mostly, pings and pongs, and now and then
    a message in fragments."""
    kind = draw(st.sampled_from(["data"] * 6 + ["ping", "pong", "fragments"]))
    if kind == "data":
        parts = [(draw(st.sampled_from([Opcode.TEXT, Opcode.BINARY])), draw(payloads()), True)]
    elif kind in ("ping", "pong"):
        opcode = Opcode.PING if kind == "ping" else Opcode.PONG
        parts = [(opcode, draw(st.binary(max_size=125)), True)]
    else:
        pieces = draw(st.lists(st.binary(max_size=LIMIT // 2), min_size=2, max_size=4))
        parts = [(Opcode.TEXT if i == 0 else Opcode.CONT, piece, i == len(pieces) - 1)
                 for i, piece in enumerate(pieces)]
    return b"".join(
        encode_frame(fin=fin, rsv=0, opcode=opcode.value, payload=payload, masked=True,
                     key=draw(keys), length_form=draw(length_forms))
        for opcode, payload, fin in parts)


@st.composite
def any_frames(draw: st.DrawFn) -> bytes:
    """Any frame at all: every opcode (unknown ones too), reserved bits, unmasked, close frames
    with good and bad codes and reasons."""
    opcode = draw(st.sampled_from(VALID_OPCODES * 3 + INVALID_OPCODES))
    if opcode == Opcode.CLOSE.value and draw(st.booleans()):
        code = draw(st.sampled_from(CLOSE_CODES)).to_bytes(2, "big")
        reason = draw(st.one_of(st.text(max_size=20).map(str.encode), st.binary(max_size=20)))
        payload = code + reason
    else:
        payload = draw(payloads())
    return encode_frame(
        fin=draw(st.sampled_from([True, True, False])),
        rsv=draw(st.sampled_from([0] * 5 + [1, 2, 4, 7])),
        opcode=opcode,
        payload=payload,
        masked=draw(st.sampled_from([True] * 3 + [False])),
        key=draw(keys),
        length_form=draw(length_forms),
    )


@st.composite
def near_misses(draw: st.DrawFn) -> bytes:
    """A final masked data frame but for one thing: where the fast path must stop."""
    defect = draw(st.sampled_from(["unmasked", "reserved bit", "not final", "continuation",
                                   "unknown opcode", "64-bit length", "16-bit length",
                                   "over the limit"]))
    frame: dict[str, Any] = {
        "fin": True, "rsv": 0, "opcode": draw(st.sampled_from([1, 2])), "masked": True,
        "key": draw(keys), "length_form": "minimal", "payload": draw(payloads(LIMIT)),
    }
    if defect == "unmasked":
        frame["masked"] = False
    elif defect == "reserved bit":
        frame["rsv"] = draw(st.sampled_from([1, 2, 4]))
    elif defect == "not final":
        frame["fin"] = False
    elif defect == "continuation":
        frame["opcode"] = Opcode.CONT.value
    elif defect == "unknown opcode":
        frame["opcode"] = draw(st.sampled_from(INVALID_OPCODES))
    elif defect == "64-bit length":
        frame["length_form"] = "64"
    elif defect == "16-bit length":  # where a byte-order slip would go unnoticed otherwise
        frame["length_form"] = "16"
        frame["payload"] = draw(st.binary(max_size=3))
    else:
        frame["payload"] = draw(st.binary(min_size=LIMIT + 1, max_size=LIMIT + 40))
    return encode_frame(**frame)


@st.composite
def streams(draw: st.DrawFn) -> tuple[bytes, list[int]]:
    """Good frames, then anything (good frames, near misses, any frames, garbage), and where
    the reads end."""
    good = draw(st.lists(good_frames(), max_size=6))
    rest = draw(st.lists(st.one_of(good_frames(), near_misses(), near_misses(), any_frames(),
                                   st.binary(max_size=12)), max_size=6))
    return draw(cut_up(good + rest))


@st.composite
def near_miss_streams(draw: st.DrawFn) -> tuple[bytes, list[int]]:
    """Whole data frames, a near miss, then more frames: the fast path's hand-over, each time."""
    data_frames = good_frames().filter(lambda f: f[0] & 0x80 and f[0] & 0x0F in (1, 2))
    parts = [*draw(st.lists(data_frames, max_size=3)), draw(near_misses()),
             *draw(st.lists(good_frames(), min_size=1, max_size=3))]
    return draw(cut_up(parts))


@st.composite
def cut_up(draw: st.DrawFn, parts: list[bytes]) -> tuple[bytes, list[int]]:
    """The stream, and where its reads end: between frames as often as inside them, as a
    client's writes arrive."""
    data = b"".join(parts)
    boundaries = [sum(map(len, parts[:i])) for i in range(1, len(parts))]
    anywhere = st.integers(0, len(data))
    cuts = draw(st.lists(st.sampled_from(boundaries) | anywhere if boundaries else anywhere,
                         max_size=8))
    return data, sorted(set(cuts))


def reads(data: bytes, cuts: list[int]) -> list[bytes]:
    bounds = [0, *cuts, len(data)]
    return [data[a:b] for a, b in pairwise(bounds) if b > a]


def masked(opcode: Opcode, payload: bytes, fin: bool = True) -> bytes:
    return encode_frame(fin=fin, rsv=0, opcode=opcode.value, payload=payload, masked=True,
                        key=b"\x01\x02\x03\x04", length_form="minimal")


fuzz = settings(max_examples=EXAMPLES, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                       HealthCheck.filter_too_much])


@fuzz
@given(streams(), st.booleans())
# A whole frame of exactly the limit, then one byte over it: 1009 on both sides.
@example((masked(Opcode.TEXT, b"x" * LIMIT) + masked(Opcode.TEXT, b"y" * (LIMIT + 1)), []),
         False)
# A fragmented message whose continuation arrives in the next read: websockets reassembles.
@example((masked(Opcode.TEXT, b"ab", fin=False) + masked(Opcode.CONT, b"cd"), [7]), True)
# A ping between two data frames, cut inside the second one's mask.
@example((masked(Opcode.TEXT, b"{}") + masked(Opcode.PING, b"p") + masked(Opcode.BINARY, b"z"),
          [15]), False)
def test_the_fast_path_reads_every_stream_exactly_as_websockets_does(
        stream: tuple[bytes, list[int]], end_of_stream: bool) -> None:
    assert_same_reading(*stream, end_of_stream)


@fuzz
@given(near_miss_streams(), st.booleans())
# Found by a long run: a frame's header alone in one read, its payload (which looks like a
# frame) in the next; websockets, done with the header, had an empty buffer.
@example((encode_frame(fin=True, rsv=0, opcode=1, masked=True, key=b"\0\0\0\0", length_form="64",
                       payload=masked(Opcode.BINARY, b"") + b"\0" * 10), [14]), False)
# A one-byte payload with a 16-bit length, then a long frame: read little-endian, the length
# would be 256 and swallow the next frame's start.
@example((encode_frame(fin=True, rsv=0, opcode=1, payload=b"a", masked=True, key=b"kkkk",
                       length_form="16") + masked(Opcode.BINARY, b"b" * 280), []), False)
def test_the_fast_path_hands_over_to_websockets_at_the_first_frame_not_its_own(
        stream: tuple[bytes, list[int]], end_of_stream: bool) -> None:
    assert_same_reading(*stream, end_of_stream)


def assert_same_reading(data: bytes, cuts: list[int], end_of_stream: bool) -> None:
    hub, reference = Side(), Side()
    for chunk in reads(data, cuts):
        feed_hub(hub, chunk)
        feed_websockets(reference, chunk)
        assert hub.seen == reference.seen
        assert hub.sent == reference.sent
        assert hub.state() == reference.state()
    if end_of_stream:
        for side in (hub, reference):
            side.ws.receive_eof()
            side.collect()
        assert (hub.seen, hub.sent, hub.state()) == (reference.seen, reference.sent,
                                                      reference.state())


def test_the_fast_path_takes_whole_masked_data_frames_and_leaves_the_rest() -> None:
    """The fuzz above would pass if the fast path took nothing: it does take frames."""
    ws, seen = opened(), list[bytes]()
    first, second = masked(Opcode.TEXT, b'{"id":1}'), masked(Opcode.BINARY, b"\x00" * 200)
    rest = masked(Opcode.PING, b"p") + masked(Opcode.TEXT, b"later")
    assert take_data_frames(ws, first + second + rest, LIMIT, seen.append) == rest
    assert seen == [b'{"id":1}', b"\x00" * 200]
    partial = masked(Opcode.TEXT, b"cut short")[:-3]
    assert take_data_frames(ws, partial, LIMIT, seen.append) == partial


async def test_a_frame_whose_header_and_payload_arrive_in_separate_reads_is_read_once(
        hub: RunningHub, raw: OpenRaw) -> None:
    """Found by the fuzz above: once websockets had read a frame's header, its buffer was
    empty, and the fast path took the payload that followed for a frame of its own."""
    client = await raw(hub)
    await client.connect(hub.token("ann"))
    command = json.dumps({"id": 7, "rpc": {"method": "no.such", "data": {"pad": "x" * 200}}})
    # A mask that makes the payload's first bytes look like a frame header (a final text
    # frame, masked, empty), as one in so many random masks does.
    key = bytes([ord("{") ^ 0x81, ord('"') ^ 0x80, 0, 0])
    whole = encode_frame(fin=True, rsv=0, opcode=Opcode.TEXT.value, payload=command.encode(),
                         masked=True, key=key, length_form="minimal")
    header = 8  # 16-bit length and mask
    client.ws.transport.write(whole[:header])
    await asyncio.sleep(0.2)  # its own read
    client.ws.transport.write(whole[header:])
    assert (await client.reply(7))["error"]["code"] == ErrorCode.METHOD_NOT_FOUND.code
    followed = await client.command("rpc", {"method": "no.such"})
    assert followed["error"]["code"] == ErrorCode.METHOD_NOT_FOUND.code


async def test_a_bad_command_read_with_broken_framing_gets_websockets_close_not_a_crash(
        hub: RunningHub, raw: OpenRaw) -> None:
    """Seen while fixing the above: websockets had failed the connection (1002) while an
    earlier frame of the same read still reached the client, whose own close then raised."""
    client = await raw(hub)
    await client.connect(hub.token("ann"))
    malformed = masked(Opcode.TEXT, b"{not json")
    unmasked = encode_frame(fin=True, rsv=0, opcode=Opcode.TEXT.value, payload=b"{}",
                            masked=False, key=b"", length_form="minimal")
    # The ping first, so that websockets, not the fast path, reads the whole lot.
    client.ws.transport.write(masked(Opcode.PING, b"p") + malformed + unmasked)
    assert await client.close_code() == 1002
