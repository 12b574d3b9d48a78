"""The three encodings: protobuf through the official SDK, msgpack and the `?format=` switch
through raw clients, and one publication fanned out to every encoding at once."""

from __future__ import annotations

import json
from typing import Any

import centrifuge
import centrifuge.protocol.client_pb2 as sdk_pb2
import pytest
from google.protobuf.json_format import MessageToDict
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import InvalidStatus

from tests.harness import Recorder, RunningHub, eventually
from tests.raw import (
    MakeHub,
    OpenRaw,
    OpenSdk,
    RawClient,
    data_of,
    split_uvarint,
    uvarint,
)

SET_EVENT = {"type": "set", "event_id": "e1", "exercise": "squat", "reps": 5, "weight_kg": 100}


def as_json(data: bytes) -> Any:
    return json.loads(data)


# -- protobuf through the SDK ------------------------------------------------------------------


async def test_protobuf_sdk_connects_subscribes_publishes_receives_and_calls_rpc(
    hub: RunningHub, sdk: OpenSdk
) -> None:
    client, events = await sdk(hub, hub.token("a1"), use_protobuf=True)
    assert [c.id for c in hub.node.clients["a1"]] == [events.named("connected")[0].client]
    await eventually(lambda: events.named("subscribed"))
    assert events.named("subscribed")[0].channel == "user:a1"

    started = as_json((await client.rpc("session.start", b'{"title":"legs"}')).data)
    channel = started["channel"]
    assert channel == f"session:{started['session_id']}"

    sub_events = Recorder()
    sub = client.new_subscription(channel, events=sub_events)
    await sub.subscribe()
    await sub.ready(timeout=5)
    subscribed = sub_events.named("subscribed")[0]
    assert subscribed.recoverable is True and subscribed.stream_position.offset == 1

    await sub.publish(json.dumps(SET_EVENT).encode())
    await eventually(lambda: sub_events.named("publication"))
    pub = sub_events.named("publication")[0].pub
    assert isinstance(pub.data, bytes)
    received = as_json(pub.data)
    assert {k: received[k] for k in SET_EVENT} == SET_EVENT
    assert received["user"] == "a1" and received["stats"]["sets"] == 1
    assert pub.offset == 2
    assert pub.info is not None and pub.info.user == "a1"

    history = await sub.history(limit=-1)
    assert [p.offset for p in history.publications] == [1, 2]
    assert as_json(history.publications[0].data)["status"] == "started"
    stats = await sub.presence_stats()
    assert (stats.num_clients, stats.num_users) == (1, 1)

    async with hub.api() as api:
        await api.post("/api/publish", json={"channel": "user:a1",
                                             "data": {"type": "notification", "n": 1}})
    await eventually(lambda: events.named("publication"))
    assert as_json(events.named("publication")[0].pub.data) == {"type": "notification", "n": 1}

    with pytest.raises(centrifuge.ReplyError) as refused:
        await client.rpc("no.such", b"{}")
    assert refused.value.code == 104


async def test_protobuf_sdk_gets_error_replies(hub: RunningHub, sdk: OpenSdk) -> None:
    client, _ = await sdk(hub, hub.token("a1"), use_protobuf=True)
    sub_events = Recorder()
    sub = client.new_subscription("user:a2", events=sub_events)
    await sub.subscribe()
    await eventually(lambda: sub_events.named("unsubscribed"))
    assert sub_events.named("unsubscribed")[0].code == 103
    with pytest.raises(centrifuge.ReplyError) as refused:
        await client.rpc("session.start", b"[1]")
    assert refused.value.code == 107


async def test_one_publication_reaches_json_protobuf_and_msgpack_subscribers(
    hub: RunningHub, sdk: OpenSdk, raw: OpenRaw
) -> None:
    token = hub.token("boss", "admin")
    json_client, _ = await sdk(hub, token)
    proto_client, _ = await sdk(hub, token, use_protobuf=True)
    recorders = []
    for client in (json_client, proto_client):
        events = Recorder()
        sub = client.new_subscription("session:x1", events=events)
        await sub.subscribe()
        await sub.ready(timeout=5)
        recorders.append(events)
    packed = await raw(hub, subprotocol="centrifuge-msgpack")
    await packed.connect(token)
    await packed.call("subscribe", {"channel": "session:x1"})

    await hub.node.publish("session:x1", b'{"hr":151,"name":"\xc3\xa9"}')
    expected = {"hr": 151, "name": "\u00e9"}
    await eventually(lambda: all(r.named("publication") for r in recorders))
    assert recorders[0].publications() == [expected]
    assert [as_json(d) for d in recorders[1].publications()] == [expected]
    [pub] = await packed.publications(1)
    assert isinstance(pub["data"], bytes) and as_json(pub["data"]) == expected
    assert pub["offset"] == 1


# -- msgpack through a raw client --------------------------------------------------------------


async def test_msgpack_connect_subscribe_publish_and_rpc(hub: RunningHub, raw: OpenRaw) -> None:
    client = await raw(hub, subprotocol="centrifuge-msgpack")
    assert client.ws.subprotocol == "centrifuge-msgpack"
    result = await client.connect(hub.token("a1"))
    assert result["client"] and result["pong"] is True
    assert result["subs"]["user:a1"]["recoverable"] is True

    started = await client.call("rpc", {"method": "session.start", "data": b'{"title":"x"}'})
    assert isinstance(started["data"], bytes)
    channel = as_json(started["data"])["channel"]
    subscribed = await client.call("subscribe", {"channel": channel})
    assert subscribed["offset"] == 1 and subscribed["epoch"]

    assert await client.call("publish", {"channel": channel,
                                         "data": json.dumps(SET_EVENT).encode()}) == {}
    pub = (await client.next_push("pub"))["pub"]
    received = data_of(pub)
    assert received["exercise"] == "squat" and received["stats"]["reps"] == 5
    assert pub["offset"] == 2 and pub["info"]["user"] == "a1"

    reply = await client.command("publish", {"channel": channel, "data": b'{"type":"nope"}'})
    assert reply["error"]["code"] == 107 and "type" in reply["error"]["message"]
    history = await client.call("history", {"channel": channel, "limit": -1})
    assert [p["offset"] for p in history["publications"]] == [1, 2]
    assert all(isinstance(p["data"], bytes) for p in history["publications"])


async def test_msgpack_frames_are_binary_uvarint_prefixed_maps(
    make_hub: MakeHub, raw: OpenRaw
) -> None:
    hub = await make_hub(ping_interval=1.0, pong_timeout=0.5)
    client = await raw(hub, subprotocol="centrifuge-msgpack")
    token = hub.token("u1")
    await client.send({"id": 1, "connect": {"token": token}},
                      {"id": 2, "history": {"channel": "user:u1"}})
    frames: list[bytes] = []
    while len(frames) < 5:
        frame = await client.ws.recv()
        assert isinstance(frame, bytes)
        frames.append(frame)
        if frame == b"\x01\x80":  # the ping: an empty map
            break
    assert frames[-1] == b"\x01\x80"
    replies = [m for f in frames[:-1] for m in client.decode(f)]
    assert all(isinstance(m, dict) for m in replies)
    assert [m["id"] for m in replies] == [1, 2]
    await client.send_raw(b"\x01\x80")  # pong
    await client.send_raw(b"\x00")  # also a pong
    assert (await client.call("history", {"channel": "user:u1"}))["epoch"]


async def test_format_query_selects_msgpack_without_a_subprotocol(
    hub: RunningHub, raw: OpenRaw
) -> None:
    client = await raw(hub, query="format=msgpack")
    assert client.ws.subprotocol is None
    await client.send({"id": 1, "connect": {"token": hub.token("u1")}})
    frame = await client.ws.recv()
    assert isinstance(frame, bytes)
    [reply] = client.decode(frame)
    assert reply["id"] == 1 and reply["connect"]["client"]


async def test_format_query_selects_protobuf(hub: RunningHub) -> None:
    command = sdk_pb2.Command(id=1, connect=sdk_pb2.ConnectRequest(token=hub.token("u1")))
    body = command.SerializeToString()
    async with ws_connect(hub.ws_url + "?format=protobuf", compression=None) as ws:
        await ws.send(uvarint(len(body)) + body)
        frame = await ws.recv()
    assert isinstance(frame, bytes)
    [part] = split_uvarint(frame)
    reply = MessageToDict(sdk_pb2.Reply.FromString(part), preserving_proto_field_name=True)
    assert reply["id"] == 1 and reply["connect"]["client"] and reply["connect"]["pong"] is True


async def test_centrifuge_json_subprotocol_is_json(hub: RunningHub, raw: OpenRaw) -> None:
    client = await raw(hub, subprotocol="centrifuge-json")
    assert client.ws.subprotocol == "centrifuge-json"
    assert (await client.connect(hub.token("u1")))["client"]


async def test_an_unknown_format_is_refused_at_the_handshake(hub: RunningHub) -> None:
    with pytest.raises(InvalidStatus) as refused:
        async with ws_connect(hub.ws_url + "?format=xml", compression=None):
            pass
    assert refused.value.response.status_code == 400


@pytest.mark.parametrize(
    ("subprotocol", "frame"),
    [
        pytest.param("centrifuge-msgpack", b"\x05\xc1\xc1\xc1\xc1\xc1", id="msgpack-invalid"),
        pytest.param("centrifuge-msgpack", b"\x01\x07", id="msgpack-not-a-map"),
        pytest.param("centrifuge-msgpack", b"\x09\x81", id="msgpack-torn-frame"),
        pytest.param("centrifuge-protobuf", b"\x02\xff\xff", id="protobuf-invalid"),
        pytest.param("centrifuge-protobuf", b"\x85", id="protobuf-torn-prefix"),
    ],
)
async def test_a_malformed_binary_frame_closes_3501(
    hub: RunningHub, raw: OpenRaw, subprotocol: str, frame: bytes
) -> None:
    client = await raw(hub, subprotocol=subprotocol)
    await client.send_raw(frame)
    assert await client.close_code() == 3501


async def test_msgpack_receives_http_publications_as_bin_json(
    hub: RunningHub, raw: OpenRaw
) -> None:
    client: RawClient = await raw(hub, subprotocol="centrifuge-msgpack")
    await client.connect(hub.token("boss", "admin"))
    await client.call("subscribe", {"channel": "session:m1"})
    async with hub.api() as api:
        r = await api.post("/api/publish", json={"channel": "session:m1", "data": {"v": [1, 2]}})
        assert r.status_code == 200
    [pub] = await client.publications(1)
    assert data_of(pub) == {"v": [1, 2]}
