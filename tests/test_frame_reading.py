"""Reading frames off the socket: whole data frames take the hub's own fast path, everything
else (control frames, frames split across reads, oversized or unmasked frames) goes through
websockets. These tests write raw bytes, so that one read holds exactly the mix under test."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from websockets.frames import Frame, Opcode

from tests.harness import RunningHub
from tests.raw import MakeHub, OpenRaw, RawClient


def frame(message: dict[str, Any] | bytes, opcode: Opcode = Opcode.TEXT, *,
          mask: bool = True) -> bytes:
    data = message if isinstance(message, bytes) else json.dumps(message).encode()
    return Frame(opcode, data).serialize(mask=mask)


def rpc(command_id: int, padding: int = 0) -> dict[str, Any]:
    """A command with a predictable reply: 104, since no such method exists."""
    return {"id": command_id, "rpc": {"method": "no.such", "data": {"pad": "x" * padding}}}


async def write(client: RawClient, data: bytes) -> None:
    """Put `data` on the wire in one write, under the client's own framing."""
    client.ws.transport.write(data)
    await asyncio.sleep(0)


async def connected(hub: RunningHub, raw: OpenRaw) -> RawClient:
    client = await raw(hub)
    await client.connect(hub.token("ann"))
    client._next_id = 100  # the ids below are chosen by the tests
    return client


async def test_several_frames_in_one_read_are_each_answered_in_order(
        hub: RunningHub, raw: OpenRaw) -> None:
    client = await connected(hub, raw)
    # Short and 16-bit lengths, a ping in the middle (websockets answers it), then more.
    await write(client, frame(rpc(1)) + frame(rpc(2, padding=300)) + frame(b"hi", Opcode.PING)
                + frame(rpc(3)) + frame(rpc(4, padding=70_000 // 2)))
    for command_id in (1, 2, 3, 4):
        assert (await client.reply(command_id))["error"]["code"] == 104
    assert (await client.command("rpc", rpc(5)["rpc"]))["error"]["code"] == 104


async def test_a_frame_split_across_reads_is_reassembled(hub: RunningHub, raw: OpenRaw) -> None:
    client = await connected(hub, raw)
    whole = frame(rpc(1, padding=200)) + frame(rpc(2))
    for cut in (1, 3, 7, 150):
        client.replies.clear()
        await write(client, whole[:cut])
        await asyncio.sleep(0.05)
        await write(client, whole[cut:])
        assert (await client.reply(1))["error"]["code"] == 104
        assert (await client.reply(2))["error"]["code"] == 104


async def test_an_oversized_frame_after_a_good_one_closes_1009(
        make_hub: MakeHub, raw: OpenRaw) -> None:
    hub = await make_hub(max_frame_bytes=1024)
    client = await connected(hub, raw)
    await write(client, frame(rpc(1, padding=900)) + frame(rpc(2, padding=2000)))
    assert await client.close_code() == 1009


async def test_an_unmasked_client_frame_after_a_good_one_is_a_protocol_error(
        hub: RunningHub, raw: OpenRaw) -> None:
    client = await connected(hub, raw)
    await write(client, frame(rpc(1)) + frame(rpc(2), mask=False))
    assert await client.close_code() == 1002
