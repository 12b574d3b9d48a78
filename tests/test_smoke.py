from tests.conftest import ConnectClient
from tests.harness import RunningHub, eventually


async def test_sdk_connects_and_gets_its_user_channel(
        hub: RunningHub, connect: ConnectClient) -> None:
    _client, events = await connect("u1")
    await eventually(lambda: events.named("subscribed"))
    assert events.named("subscribed")[0].channel == "user:u1"
    async with hub.api() as api:
        r = await api.post("/api/publish", json={
            "channel": "user:u1", "data": {"type": "notification", "text": "hi"}})
        assert r.status_code == 200, r.text
    await eventually(lambda: events.named("publication"))
    assert events.named("publication")[0].pub.data == {"type": "notification", "text": "hi"}
