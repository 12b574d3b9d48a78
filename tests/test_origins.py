"""Origin checks at the WebSocket handshake: a browser page from an origin not in
`HUB_ALLOWED_ORIGINS` gets 403; devices and servers (no `Origin`) always get in."""

from __future__ import annotations

import asyncio
import json

import centrifuge
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import InvalidStatus
from websockets.typing import Origin

from hub.config import Settings
from hub.origins import OriginPolicy
from tests.harness import Recorder, RunningHub
from tests.raw import MakeHub

FITSYNC = ("https://*.fitsync.app", "https://fitsync.app")


async def open_from(hub: RunningHub, origin: str | None) -> ClientConnection:
    """A WebSocket as a browser page on `origin` opens it (None: no Origin header)."""
    return await connect(hub.ws_url, origin=Origin(origin) if origin else None, proxy=None,
                         open_timeout=5)


async def refused_status(hub: RunningHub, origin: str) -> int | None:
    """The HTTP status of a refused handshake; None when the WebSocket opened."""
    try:
        ws = await open_from(hub, origin)
    except InvalidStatus as exc:
        return exc.response.status_code
    await ws.close()
    return None


async def connects(hub: RunningHub, origin: str | None) -> bool:
    """Whether a page on `origin` gets a WebSocket and a successful Centrifuge connect."""
    ws = await open_from(hub, origin)
    try:
        await ws.send(json.dumps({"id": 1, "connect": {"token": hub.token("ann")}}))
        reply = json.loads(await asyncio.wait_for(ws.recv(), 5))
        return "connect" in reply
    finally:
        await ws.close()


async def test_a_page_from_an_origin_not_allowed_gets_403_at_the_handshake(
        make_hub: MakeHub) -> None:
    hub = await make_hub(allowed_origins=FITSYNC)
    assert await refused_status(hub, "https://evil.example") == 403
    assert await refused_status(hub, "https://fitsync.app.evil.example") == 403
    assert await refused_status(hub, "http://app.fitsync.app") == 403  # scheme matters
    assert await refused_status(hub, "null") == 403  # sandboxed frames, file:// pages


async def test_listed_origins_and_their_wildcards_get_in_whatever_the_case(
        make_hub: MakeHub) -> None:
    hub = await make_hub(allowed_origins=FITSYNC)
    assert await connects(hub, "https://fitsync.app")
    assert await connects(hub, "https://coach.fitsync.app")
    assert await connects(hub, "HTTPS://Coach.FitSync.App")


async def test_clients_without_an_origin_always_get_in(make_hub: MakeHub) -> None:
    hub = await make_hub(allowed_origins=FITSYNC)
    assert await connects(hub, None)
    plain = await make_hub()  # nothing allowed: still every device and server
    assert await connects(plain, None)


async def test_with_no_list_only_the_hubs_own_pages_get_in(make_hub: MakeHub) -> None:
    hub = await make_hub()
    assert await connects(hub, f"http://127.0.0.1:{hub.settings.port}")
    assert await refused_status(hub, "https://fitsync.app") == 403
    assert await refused_status(hub, "http://localhost:5173") == 403


async def test_development_mode_allows_pages_on_localhost(make_hub: MakeHub) -> None:
    hub = await make_hub(dev_mode=True)
    for origin in ("http://localhost:5173", "http://127.0.0.1:3000", "http://[::1]:8080"):
        assert await connects(hub, origin), origin
    assert await refused_status(hub, "https://evil.example") == 403
    assert await refused_status(hub, "http://localhost.evil.example") == 403


async def test_a_star_allows_every_origin(make_hub: MakeHub) -> None:
    hub = await make_hub(allowed_origins=("*",))
    assert await connects(hub, "https://anywhere.example")


async def test_the_official_sdk_connects_with_and_without_an_allowed_origin(
        make_hub: MakeHub) -> None:
    hub = await make_hub(allowed_origins=FITSYNC)
    for headers in ({}, {"Origin": "https://app.fitsync.app"}):
        client = centrifuge.Client(hub.ws_url, events=Recorder(), token=hub.token("ann"),
                                   headers=headers)
        await client.connect()
        await client.ready(timeout=5)
        assert client.state == centrifuge.ClientState.CONNECTED
        await client.disconnect()


async def test_the_official_sdk_from_a_refused_origin_does_not_connect(
        make_hub: MakeHub) -> None:
    hub = await make_hub(allowed_origins=FITSYNC)
    recorder = Recorder()
    client = centrifuge.Client(hub.ws_url, events=recorder, token=hub.token("ann"),
                               headers={"Origin": "https://evil.example"})
    await client.connect()
    try:
        with pytest.raises(Exception):  # noqa: B017 - the SDK's timeout type is its own
            await client.ready(timeout=2)
        assert client.state != centrifuge.ClientState.CONNECTED
        assert "403" in " ".join(str(ctx) for ctx in recorder.named("error"))
    finally:
        await client.disconnect()


def test_allowed_origins_are_read_as_a_comma_separated_list() -> None:
    settings = Settings.from_env({"HUB_ALLOWED_ORIGINS": " https://a.example ,https://*.b.example,",
                                  "HUB_JWT_SECRET": "s" * 32})
    assert settings.allowed_origins == ("https://a.example", "https://*.b.example")


def test_a_wildcard_stands_for_any_run_of_characters_and_nothing_else_is_special() -> None:
    policy = OriginPolicy(["https://*.fitsync.app", "http://[::1]:3000", "https://a?.example"])
    assert policy.allows("https://x.y.fitsync.app")
    assert not policy.allows("https://fitsync.app")
    assert policy.allows("http://[::1]:3000")
    assert not policy.allows("http://[::2]:3000")
    assert not policy.allows("https://ab.example")  # `?` is a plain character
    assert not policy.allows("http://[::1")  # malformed, and not listed


async def test_two_origin_headers_are_refused(make_hub: MakeHub) -> None:
    hub = await make_hub(allowed_origins=FITSYNC)
    reader, writer = await asyncio.open_connection("127.0.0.1", hub.settings.port)
    try:
        writer.write((
            f"GET /connection/websocket HTTP/1.1\r\nHost: 127.0.0.1:{hub.settings.port}\r\n"
            "Upgrade: websocket\r\nConnection: Upgrade\r\nOrigin: https://app.fitsync.app\r\n"
            "Origin: https://evil.example\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
            "Sec-WebSocket-Version: 13\r\n\r\n").encode())
        status_line = await asyncio.wait_for(reader.readline(), 5)
        assert status_line.split()[1] == b"403", status_line
    finally:
        writer.close()
