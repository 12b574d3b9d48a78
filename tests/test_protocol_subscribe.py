"""Subscriptions and the commands around them: errors, unsubscribe, server unsubscribe,
presence, history, join/leave, and the commands no SDK sends (`ping`, id-less `send`)."""

from __future__ import annotations

import time
from typing import Any

import centrifuge
import jwt
import pytest

from tests.conftest import ConnectClient
from tests.harness import SECRET, Recorder, RunningHub, eventually
from tests.raw import (
    MakeHub,
    OpenRaw,
    OpenSdk,
    RawClient,
)


async def subscribe(client: centrifuge.Client, channel: str,
                    **options: Any) -> tuple[centrifuge.Subscription, Recorder]:
    events = Recorder()
    sub = client.new_subscription(channel, events=events, **options)
    await sub.subscribe()
    return sub, events


async def subscribed(client: centrifuge.Client, channel: str,
                     **options: Any) -> tuple[centrifuge.Subscription, Recorder]:
    sub, events = await subscribe(client, channel, **options)
    await sub.ready(timeout=5)
    return sub, events


async def unsubscribed_code(client: centrifuge.Client, channel: str) -> tuple[int, str]:
    """Subscribe through the SDK and return the code and reason it was refused with."""
    sub, events = await subscribe(client, channel)
    await eventually(lambda: events.named("unsubscribed"))
    assert sub.state == centrifuge.SubscriptionState.UNSUBSCRIBED
    ctx = events.named("unsubscribed")[0]
    return ctx.code, ctx.reason


def sub_token(user: str, channel: str, ttl: int) -> str:
    claims = {"sub": user, "channel": channel, "exp": int(time.time()) + ttl}
    return jwt.encode(claims, SECRET, algorithm="HS256")


async def start_session(client: centrifuge.Client) -> str:
    result = await client.rpc("session.start", {"title": "legs"})
    channel: str = result.data["channel"]
    assert channel == f"session:{result.data['session_id']}"
    return channel


async def connected_raw(raw: OpenRaw, hub: RunningHub, user: str,
                        role: str = "athlete") -> RawClient:
    client = await raw(hub)
    await client.connect(hub.token(user, role))
    return client


# -- refusals --------------------------------------------------------------------------------


@pytest.mark.parametrize("channel", ["chat:1", "nonamespace", "session:", ":1"])
async def test_unknown_namespace_is_error_102(connect: ConnectClient, channel: str) -> None:
    client, _ = await connect("u1")
    assert await unsubscribed_code(client, channel) == (102, "unknown channel")


async def test_another_users_channel_is_error_103(connect: ConnectClient) -> None:
    client, _ = await connect("u1")
    assert await unsubscribed_code(client, "user:u2") == (103, "permission denied")


async def test_someone_elses_session_is_error_103(connect: ConnectClient) -> None:
    owner, _ = await connect("a1")
    channel = await start_session(owner)
    other, _ = await connect("a2")
    trainer, _ = await connect("t1", "trainer")
    assert (await unsubscribed_code(other, channel))[0] == 103
    assert (await unsubscribed_code(trainer, channel))[0] == 103


async def test_admin_may_subscribe_to_any_session_even_unknown(connect: ConnectClient) -> None:
    admin, _ = await connect("boss", "admin")
    _, events = await subscribed(admin, "session:does-not-exist")
    assert events.named("subscribed")[0].recoverable is True


async def test_subscribing_twice_is_error_105(hub: RunningHub, raw: OpenRaw) -> None:
    client = await connected_raw(raw, hub, "boss", "admin")
    await client.call("subscribe", {"channel": "session:s1"})
    reply = await client.command("subscribe", {"channel": "session:s1"})
    assert reply["error"] == {"code": 105, "message": "already subscribed"}


async def test_sdk_subscribing_to_its_server_side_channel_is_error_105(
    connect: ConnectClient
) -> None:
    client, _ = await connect("u1")
    assert (await unsubscribed_code(client, "user:u1"))[0] == 105


async def test_over_max_subscriptions_is_error_106_naming_the_setting(
    make_hub: MakeHub, raw: OpenRaw
) -> None:
    hub = await make_hub(max_subscriptions=2)
    client = await connected_raw(raw, hub, "boss", "admin")  # user:boss is the first
    await client.call("subscribe", {"channel": "session:s1"})
    reply = await client.command("subscribe", {"channel": "session:s2"})
    assert reply["error"]["code"] == 106
    assert "HUB_MAX_SUBSCRIPTIONS" in reply["error"]["message"]
    await client.call("unsubscribe", {"channel": "session:s1"})
    await client.call("subscribe", {"channel": "session:s2"})


async def test_a_channel_over_max_channel_length_is_error_107_naming_the_setting(
    make_hub: MakeHub, raw: OpenRaw
) -> None:
    hub = await make_hub(max_channel_length=32)
    client = await connected_raw(raw, hub, "boss", "admin")
    reply = await client.command("subscribe", {"channel": "session:" + "x" * 25})
    assert reply["error"]["code"] == 107
    assert "HUB_MAX_CHANNEL_LENGTH" in reply["error"]["message"]
    await client.call("subscribe", {"channel": "session:" + "x" * 24})


@pytest.mark.parametrize("body", [{"channel": ""}, {}, {"channel": 5}])
async def test_an_empty_or_missing_channel_closes_3501(
    hub: RunningHub, raw: OpenRaw, body: dict[str, Any]
) -> None:
    client = await connected_raw(raw, hub, "u1")
    await client.send({"id": 2, "subscribe": body})
    assert await client.close_code() == 3501


async def test_a_command_without_id_other_than_send_closes_3501(
    hub: RunningHub, raw: OpenRaw
) -> None:
    client = await connected_raw(raw, hub, "boss", "admin")
    await client.send({"subscribe": {"channel": "session:s1"}})
    assert await client.close_code() == 3501


async def test_map_subscriptions_are_error_108(hub: RunningHub, raw: OpenRaw) -> None:
    client = await connected_raw(raw, hub, "boss", "admin")
    reply = await client.command("subscribe", {"channel": "session:s1", "type": 1})
    assert reply["error"]["code"] == 108


# -- commands no SDK sends ---------------------------------------------------------------------


async def test_ping_command_is_error_108(hub: RunningHub, raw: OpenRaw) -> None:
    client = await connected_raw(raw, hub, "u1")
    reply = await client.command("ping")
    assert reply["error"] == {"code": 108, "message": "not available"}
    assert (await client.call("history", {"channel": "user:u1"}))["epoch"]


async def test_send_without_id_is_accepted_and_the_connection_goes_on(
    hub: RunningHub, raw: OpenRaw
) -> None:
    client = await connected_raw(raw, hub, "u1")
    await client.send({"send": {"data": {"hello": 1}}})
    await client.send({"send": {"data": {"hello": 2}}},
                      {"id": 7, "history": {"channel": "user:u1"}})
    reply = await client.reply(7)
    assert "error" not in reply and reply["history"]["epoch"]
    assert not client.replies  # `send` got no reply


# -- unsubscribing -----------------------------------------------------------------------------


async def test_unsubscribe_stops_delivery_and_resubscribe_recovers_what_was_missed(
    hub: RunningHub, connect: ConnectClient
) -> None:
    client, _ = await connect("boss", "admin")
    sub, events = await subscribed(client, "session:s1")
    await hub.node.publish("session:s1", b'{"n":1}')
    await eventually(lambda: events.publications() == [{"n": 1}])
    await sub.unsubscribe()
    await eventually(lambda: "session:s1" not in next(iter(hub.node.clients["boss"])).subs)
    await hub.node.publish("session:s1", b'{"n":2}')
    await sub.subscribe()
    await sub.ready(timeout=5)
    await hub.node.publish("session:s1", b'{"n":3}')
    await eventually(lambda: len(events.publications()) == 3)
    assert events.publications() == [{"n": 1}, {"n": 2}, {"n": 3}]
    assert [p.pub.offset for p in events.named("publication")] == [1, 2, 3]
    second = events.named("subscribed")[1]
    assert second.was_recovering is True and second.recovered is True


async def test_raw_unsubscribe_stops_delivery_at_once(hub: RunningHub, raw: OpenRaw) -> None:
    client = await connected_raw(raw, hub, "boss", "admin")
    await client.call("subscribe", {"channel": "session:s1"})
    assert await client.call("unsubscribe", {"channel": "session:s1"}) == {}
    await hub.node.publish("session:s1", b'{"n":1}')
    await hub.node.publish("user:boss", b'{"n":2}')
    [pub] = await client.publications(1)
    assert pub["data"] == {"n": 2}
    assert [(p["channel"], sorted(p)) for p in client.seen] == [
        ("session:s1", ["channel", "join"]),  # its own join, before the unsubscribe
        ("user:boss", ["channel", "pub"]),
    ]


async def test_unsubscribing_from_a_channel_not_subscribed_is_harmless(
    hub: RunningHub, raw: OpenRaw
) -> None:
    client = await connected_raw(raw, hub, "u1")
    assert await client.call("unsubscribe", {"channel": "session:nope"}) == {}


async def test_removing_a_trainer_link_sends_an_unsubscribe_push_with_code_and_reason(
    hub: RunningHub, connect: ConnectClient, raw: OpenRaw
) -> None:
    athlete, _ = await connect("a1")
    trainer_sdk, _ = await connect("t1", "trainer")
    async with hub.api() as api:
        assert (await api.put("/api/trainers/t1/clients/a1")).status_code == 200
        channel = await start_session(athlete)
        sub, events = await subscribed(trainer_sdk, channel)
        trainer_raw = await connected_raw(raw, hub, "t1", "trainer")
        await trainer_raw.call("subscribe", {"channel": channel})
        assert (await api.delete("/api/trainers/t1/clients/a1")).status_code == 200
    push = await trainer_raw.next_push("unsubscribe")
    assert push == {"channel": channel,
                    "unsubscribe": {"code": 2000, "reason": "server unsubscribe"}}
    await eventually(lambda: events.named("unsubscribed"))
    assert events.named("unsubscribed")[0].code == 2000
    assert sub.state == centrifuge.SubscriptionState.UNSUBSCRIBED
    assert all(channel not in c.subs for c in hub.node.clients["t1"])


# -- presence, history, join/leave ---------------------------------------------------------------


async def test_presence_history_and_join_leave_on_a_session_channel(
    connect: ConnectClient,
) -> None:
    athlete, _ = await connect("a1")
    channel = await start_session(athlete)
    own, own_events = await subscribed(athlete, channel, join_leave=True)
    admin, _ = await connect("boss", "admin")
    watcher, watcher_events = await subscribed(admin, channel, join_leave=True)

    await eventually(lambda: [j.info.user for j in own_events.named("join")] == ["a1", "boss"])
    assert own_events.named("join")[1].info.client == admin.client_id

    presence = await own.presence()
    assert set(presence.clients) == {athlete.client_id, admin.client_id}
    assert presence.clients[admin.client_id].user == "boss"
    assert presence.clients[athlete.client_id].user == "a1"
    stats = await watcher.presence_stats()
    assert (stats.num_clients, stats.num_users) == (2, 2)

    await own.publish({"type": "set", "event_id": "e1", "exercise": "squat", "reps": 5,
                       "weight_kg": 100})
    await eventually(lambda: watcher_events.publications() and own_events.publications())
    history = await watcher.history(limit=-1)
    assert [p.offset for p in history.publications] == [1, 2]
    assert history.publications[0].data["status"] == "started"
    assert history.publications[1].data["exercise"] == "squat"
    assert history.offset == 2 and history.epoch
    top = await watcher.history(limit=0)
    assert top.publications == [] and top.offset == 2

    await watcher.unsubscribe()
    await eventually(lambda: own_events.named("leave"))
    assert own_events.named("leave")[0].info.client == admin.client_id
    stats = await own.presence_stats()
    assert (stats.num_clients, stats.num_users) == (1, 1)


async def test_a_closed_connection_leaves_presence_with_a_leave_push(
    connect: ConnectClient, hub: RunningHub, raw: OpenRaw
) -> None:
    athlete, _ = await connect("a1")
    channel = await start_session(athlete)
    own, events = await subscribed(athlete, channel)
    watcher = await connected_raw(raw, hub, "boss", "admin")
    await watcher.call("subscribe", {"channel": channel})
    await eventually(lambda: events.named("join"))
    await watcher.close()
    await eventually(lambda: events.named("leave"))
    assert (await own.presence_stats()).num_clients == 1


async def test_presence_without_a_subscription_needs_the_right_to_subscribe(
    connect: ConnectClient,
) -> None:
    athlete, _ = await connect("a1")
    channel = await start_session(athlete)
    stranger, _ = await connect("a2")
    with pytest.raises(centrifuge.ReplyError) as refused:
        await stranger.presence(channel)
    assert refused.value.code == 103
    with pytest.raises(centrifuge.ReplyError) as refused:
        await stranger.history(channel)
    assert refused.value.code == 103
    assert (await athlete.presence_stats(channel)).num_clients == 0


async def test_presence_on_a_channel_without_presence_is_error_108(
    connect: ConnectClient,
) -> None:
    client, _ = await connect("u1")
    with pytest.raises(centrifuge.ReplyError) as refused:
        await client.presence("user:u1")
    assert refused.value.code == 108


# -- subscription tokens -------------------------------------------------------------------------


async def test_sdk_refreshes_a_subscription_token_and_stays_subscribed(
    make_hub: MakeHub, sdk: OpenSdk
) -> None:
    hub = await make_hub(expired_close_delay=0.3)
    client, _ = await sdk(hub, hub.token("boss", "admin"))
    tokens: list[str] = []

    async def get_token(channel: str) -> str:
        tokens.append(sub_token("boss", channel, 2))
        return tokens[-1]

    _, events = await subscribed(client, "session:tok", get_token=get_token)
    assert events.named("subscribed")[0].channel == "session:tok"
    # The first token and two refreshes: past the first token's expiry plus the grace.
    await eventually(lambda: len(tokens) >= 3, timeout=8)
    await hub.node.publish("session:tok", b'{"n":1}')
    await eventually(lambda: events.publications())
    assert events.publications() == [{"n": 1}]
    assert len(events.named("subscribed")) == 1
    assert not events.named("unsubscribed") and not events.named("error")


async def test_a_subscription_token_not_refreshed_ends_with_unsubscribe_push_2501(
    make_hub: MakeHub, raw: OpenRaw
) -> None:
    hub = await make_hub(expired_close_delay=0.2)
    client = await connected_raw(raw, hub, "boss", "admin")
    result = await client.call("subscribe", {"channel": "session:tok",
                                             "token": sub_token("boss", "session:tok", 2)})
    assert result["expires"] is True and 0 < result["ttl"] <= 2
    push = await client.next_push("unsubscribe")
    assert push == {"channel": "session:tok",
                    "unsubscribe": {"code": 2501, "reason": "subscription expired"}}
    await eventually(lambda: "session:tok" not in only_client(hub, "boss").subs)
    assert (await client.call("history", {"channel": "user:boss"}))["epoch"]


async def test_sdk_resubscribes_with_a_fresh_token_after_its_subscription_expired(
    make_hub: MakeHub, sdk: OpenSdk
) -> None:
    """The hub ends the subscription only once the token is really expired, so the SDK's
    resubscribe with the old token gets 109 and it fetches a new one."""
    hub = await make_hub(expired_close_delay=0.2)
    client, _ = await sdk(hub, hub.token("boss", "admin"))
    calls: list[str] = []

    async def get_token(channel: str) -> str:
        calls.append(channel)
        if len(calls) == 2:
            raise RuntimeError("token service unavailable")  # the refresh fails
        return sub_token("boss", channel, 2 if len(calls) == 1 else 60)

    _, events = await subscribed(client, "session:tok", get_token=get_token,
                                 min_resubscribe_delay=0.05)
    await eventually(lambda: len(events.named("subscribed")) == 2, timeout=8)
    assert [s.code for s in events.named("subscribing")] == [0, 2501]
    assert [getattr(e.error, "code", None) for e in events.named("error")] == [None, 109]
    assert len(calls) == 3


@pytest.mark.parametrize(
    ("token", "code"),
    [
        pytest.param(lambda: sub_token("boss", "session:other", 60), 103, id="other-channel"),
        pytest.param(lambda: sub_token("someone", "session:tok", 60), 103, id="other-user"),
        pytest.param(lambda: "garbage", 103, id="garbage"),
        pytest.param(lambda: sub_token("boss", "session:tok", -10), 109, id="expired"),
    ],
)
async def test_a_wrong_subscription_token_is_refused(
    hub: RunningHub, raw: OpenRaw, token: Any, code: int
) -> None:
    client = await connected_raw(raw, hub, "boss", "admin")
    reply = await client.command("subscribe", {"channel": "session:tok", "token": token()})
    assert reply["error"]["code"] == code
    assert "session:tok" not in only_client(hub, "boss").subs


def only_client(hub: RunningHub, user: str) -> Any:
    [client] = hub.node.clients[user]
    return client
