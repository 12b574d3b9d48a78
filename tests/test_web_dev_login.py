"""The web app's HTTP side: pages served in public, the dev login only in development, and the
session snapshot the page reloads from, guarded by the page's own token."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from hub.config import Settings
from tests.conftest import ConnectClient
from tests.harness import RunningHub


async def test_the_web_app_is_served_at_the_root_without_the_api_key(hub: RunningHub) -> None:
    async with httpx.AsyncClient(base_url=hub.http_url) as http:
        page = await http.get("/")
        sdk = await http.get("/vendor/centrifuge.mjs")
        own = await http.get("/static/main.js")
        hidden = await http.get("/vendor/package.json")
        health = await http.get("/healthz")
        api = await http.post("/api/publish", json={})
    assert page.status_code == 200 and '<script type="importmap">' in page.text
    assert sdk.status_code == 200 and "export { Centrifuge" in sdk.text
    assert own.status_code == 200 and "javascript" in own.headers["content-type"]
    assert hidden.status_code == 404, "only the allow-listed vendor files are served"
    assert health.json() == {"status": "ok"}
    assert api.status_code == 401, "the HTTP API keeps its key"


@pytest.mark.parametrize("path,method", [("/dev/login", "GET"), ("/dev/token", "POST"),
                                         ("/dev/demo", "POST")])
async def test_the_dev_login_does_not_exist_in_production_mode(
    hub: RunningHub, path: str, method: str
) -> None:
    assert not hub.settings.dev_mode and not hub.settings.dev_login
    async with httpx.AsyncClient(base_url=hub.http_url) as http:
        response = await http.request(method, path, json={"user": "x", "role": "admin"})
    assert response.status_code == 404


async def test_dev_tokens_connect_as_the_user_and_role_asked_for(
    make_hub: Any, connect: ConnectClient
) -> None:
    dev = await make_hub(dev_login=True)
    async with httpx.AsyncClient(base_url=dev.http_url) as http:
        minted = (await http.post("/dev/token", json={"user": "t-1", "role": "trainer",
                                                       "ttl": 60})).json()
        refused = await http.post("/dev/token", json={"user": "d-1", "role": "device"})
    assert minted["user"] == "t-1" and minted["role"] == "trainer"
    assert refused.status_code == 400 and "device" in refused.json()["error"]["message"]
    client, _ = await connect("ignored", token=minted["token"], target=dev)
    result = await client.rpc("trainer.clients", {})
    assert result.data == {"clients": []}, "a trainer token: trainer.clients answers"


async def test_the_demo_links_the_demo_trainer_to_the_demo_athlete_and_clients(
    make_hub: Any, connect: ConnectClient
) -> None:
    dev = await make_hub(dev_mode=True)
    async with httpx.AsyncClient(base_url=dev.http_url) as http:
        identities = (await http.get("/dev/login")).json()
        demo = (await http.post("/dev/demo", json={"athletes": 3, "trainers": 2})).json()
        again = (await http.post("/dev/demo", json={"athletes": 3, "trainers": 2})).json()
    trainer = identities["trainer"]["user"]
    assert demo == again, "setting up the demo twice changes nothing"
    assert demo["trainers"][0] == trainer
    client, _ = await connect(trainer, "trainer", target=dev)
    clients = (await client.rpc("trainer.clients", {})).data["clients"]
    expected = {identities["athlete"]["user"], *(a["user_id"] for a in demo["athletes"])}
    assert {c["user_id"] for c in clients} == expected
    assert all(c["name"] for c in clients)


def test_dev_login_is_read_from_the_environment_and_needs_an_hs256_secret() -> None:
    assert Settings.from_env({"HUB_JWT_SECRET": "s" * 32, "HUB_DEV_LOGIN": "1"}).dev_login_enabled
    assert not Settings.from_env({"HUB_JWT_SECRET": "s" * 32}).dev_login_enabled
    assert Settings.from_env({}).dev_login_enabled, "development mode has it"
    with pytest.raises(ValueError, match="HUB_DEV_LOGIN"):
        Settings.from_env({"HUB_JWT_PUBLIC_KEY": "pem", "HUB_DEV_LOGIN": "1"})
    with pytest.raises(ValueError, match="HUB_DEV_LOGIN"):
        Settings.from_env({"HUB_JWT_SECRET": "s" * 32, "HUB_DEV_LOGIN": "maybe"})


async def test_the_session_snapshot_is_for_those_who_may_watch_it(
    hub: RunningHub, connect: ConnectClient
) -> None:
    athlete, _ = await connect("snap-athlete")
    session_id = (await athlete.rpc("session.start", {})).data["session_id"]
    channel = f"session:{session_id}"
    await athlete.publish(channel, {"type": "set", "event_id": "s1", "exercise": "squat",
                                    "reps": 5, "weight_kg": 100})
    await athlete.publish(channel, {"type": "hr", "event_id": "h1",
                                    "samples": [[1000, 120], [2000, 125]]})
    url = f"/app/sessions/{session_id}"
    async with httpx.AsyncClient(base_url=hub.http_url) as http:
        def get(token: str | None) -> Any:
            headers = {"Authorization": f"Bearer {token}"} if token else {}
            return http.get(url, headers=headers)

        own = await get(hub.token("snap-athlete"))
        stranger = await get(hub.token("someone-else"))
        anonymous = await get(None)
        expired = await get(hub.token("snap-athlete", ttl=-10))
    assert own.status_code == 200
    body = own.json()
    assert [s["event_id"] for s in body["sets"]] == ["s1"]
    assert body["hr"] == [{"type": "hr", "event_id": "h1", "server_ts": body["hr"][0]["server_ts"],
                           "samples": [[1000, 120], [2000, 125]]}]
    assert body["session"]["summary"]["sets"] == 1
    assert stranger.status_code == 404
    assert anonymous.status_code == 401
    assert expired.status_code == 401 and "expired" in expired.json()["error"]["message"]
