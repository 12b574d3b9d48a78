"""The SPEC's channels table, row by row: who may subscribe and who may publish, as the official
SDK sees it, and trainers losing a client's channels when the link is removed."""

from __future__ import annotations

import centrifuge
import pytest

from tests.app_helpers import a_set, link, refusal, reply_error, start_session, subscribe
from tests.conftest import ConnectClient
from tests.harness import RunningHub, eventually

# (user, role, device) of the parties the rules are checked against; "ann" is the athlete whose
# channels are at stake, "tom" her trainer, "tess" a trainer of someone else.
OWNER = ("ann", "athlete", None)
OWNER_DEVICE = ("ann", "device", "ann-watch")
LINKED_TRAINER = ("tom", "trainer", None)
ADMIN = ("root", "admin", None)
UNLINKED_TRAINER = ("tess", "trainer", None)
OTHER_ATHLETE = ("bob", "athlete", None)
OTHER_DEVICE = ("bob", "device", "bob-watch")

PARTIES = {
    "owner": OWNER, "owner_device": OWNER_DEVICE, "linked_trainer": LINKED_TRAINER,
    "admin": ADMIN, "unlinked_trainer": UNLINKED_TRAINER, "other_athlete": OTHER_ATHLETE,
    "other_athlete_device": OTHER_DEVICE,
}


async def connect_as(connect: ConnectClient, party: str) -> centrifuge.Client:
    user, role, device = PARTIES[party]
    client, _ = await connect(user, role, device=device)
    return client


@pytest.mark.parametrize(("party", "allowed"), [
    ("owner", True), ("owner_device", True), ("linked_trainer", True), ("admin", True),
    ("unlinked_trainer", False), ("other_athlete", False), ("other_athlete_device", False),
])
async def test_who_may_subscribe_to_a_session_channel(
        hub: RunningHub, connect: ConnectClient, party: str,
                                           allowed: bool) -> None:
    await link(hub, "tom", "ann")
    owner, _ = await connect("ann")
    session_id = await start_session(owner)

    _, events = await subscribe(await connect_as(connect, party), f"session:{session_id}")

    assert refusal(events) == (None if allowed else 103)


async def test_subscribing_to_an_unknown_session_is_denied(connect: ConnectClient) -> None:
    athlete, _ = await connect("ann")
    _, events = await subscribe(athlete, "session:no-such-session")
    assert refusal(events) == 103


@pytest.mark.parametrize(("party", "allowed"), [
    ("owner", True), ("owner_device", True), ("linked_trainer", True), ("admin", True),
    ("unlinked_trainer", False), ("other_athlete", False),
])
async def test_who_may_subscribe_to_a_coach_channel(
        hub: RunningHub, connect: ConnectClient, party: str,
                                         allowed: bool) -> None:
    await link(hub, "tom", "ann")
    _, events = await subscribe(await connect_as(connect, party), "coach:ann")
    assert refusal(events) == (None if allowed else 103)


@pytest.mark.parametrize("party", ["owner", "owner_device", "linked_trainer", "admin"])
async def test_nobody_publishes_into_a_coach_channel(hub: RunningHub, connect: ConnectClient,
                                                     party: str) -> None:
    await link(hub, "tom", "ann")
    client = await connect_as(connect, party)
    error = await reply_error(client.publish("coach:ann", {"type": "message", "text": "hi"}))
    assert error.code == 103


async def test_user_channel_is_subscribed_by_the_server_at_connect(connect: ConnectClient) -> None:
    _, events = await connect("ann")
    subscribed = await eventually(lambda: events.named("subscribed"))
    assert [ctx.channel for ctx in subscribed] == ["user:ann"]


async def test_subscribing_again_to_the_own_user_channel_is_105(connect: ConnectClient) -> None:
    ann, events = await connect("ann")
    await eventually(lambda: events.named("subscribed"))
    _, again = await subscribe(ann, "user:ann")
    assert refusal(again) == 105


@pytest.mark.parametrize("party", ["other_athlete", "linked_trainer", "admin"])
async def test_only_that_user_may_hold_a_user_channel(hub: RunningHub, connect: ConnectClient,
                                                      party: str) -> None:
    await link(hub, "tom", "ann")
    _, events = await subscribe(await connect_as(connect, party), "user:ann")
    assert refusal(events) == 103


@pytest.mark.parametrize("channel", ["user:ann", "user:bob", "trainer:tom", "trainer:tess"])
async def test_clients_never_publish_into_user_or_trainer_channels(
        connect: ConnectClient, channel: str) -> None:
    for party in ("owner", "linked_trainer"):
        client = await connect_as(connect, party)
        error = await reply_error(client.publish(channel, {"type": "notification"}))
        assert error.code == 103, party


@pytest.mark.parametrize(("party", "allowed"), [
    ("linked_trainer", True), ("admin", True), ("unlinked_trainer", False), ("owner", False),
])
async def test_who_may_subscribe_to_a_trainer_channel(
        hub: RunningHub, connect: ConnectClient, party: str,
                                           allowed: bool) -> None:
    await link(hub, "tom", "ann")
    _, events = await subscribe(await connect_as(connect, party), "trainer:tom")
    assert refusal(events) == (None if allowed else 103)


async def test_an_athlete_named_like_a_trainer_may_not_read_the_trainer_channel(
        connect: ConnectClient) -> None:
    impostor, _ = await connect("tom", "athlete")
    _, events = await subscribe(impostor, "trainer:tom")
    assert refusal(events) == 103


@pytest.mark.parametrize("channel", ["workout:1", "chat:ann", "session", "session:", ":x"])
async def test_unknown_namespaces_are_refused_with_102(connect: ConnectClient,
                                                        channel: str) -> None:
    client, _ = await connect("root", "admin")
    _, events = await subscribe(client, channel)
    assert refusal(events) == 102
    error = await reply_error(client.publish(channel, {"type": "set"}))
    assert error.code == 102


async def test_trainer_is_unsubscribed_from_client_channels_when_the_link_is_removed(
        hub: RunningHub, connect: ConnectClient) -> None:
    await link(hub, "tom", "ann")
    await link(hub, "tom", "bob")
    ann, _ = await connect("ann")
    bob, _ = await connect("bob")
    ann_session, bob_session = await start_session(ann), await start_session(bob)
    trainer, _ = await connect("tom", "trainer")
    subs = {channel: await subscribe(trainer, channel) for channel in (
        f"session:{ann_session}", "coach:ann", f"session:{bob_session}", "coach:bob")}
    tablet, _ = await connect("tom", "trainer")
    _, on_tablet = await subscribe(tablet, "coach:ann")
    assert all(refusal(events) is None for _, events in [*subs.values(), (None, on_tablet)])

    async with hub.api() as api:
        r = await api.delete("/api/trainers/tom/clients/ann")
    assert r.status_code == 200, r.text

    for channel in (f"session:{ann_session}", "coach:ann"):
        sub, events = subs[channel]
        gone = await eventually(lambda events=events: events.named("unsubscribed"))
        assert [ctx.code for ctx in gone] == [2000], channel
        assert sub.state == centrifuge.SubscriptionState.UNSUBSCRIBED
    tablet_gone = await eventually(lambda: on_tablet.named("unsubscribed"))
    assert [ctx.code for ctx in tablet_gone] == [2000]
    for channel in (f"session:{bob_session}", "coach:bob"):
        sub, events = subs[channel]
        assert sub.state == centrifuge.SubscriptionState.SUBSCRIBED, channel
        assert not events.named("unsubscribed"), channel

    # Still live on the other client's channels, and no way back into the removed ones.
    await bob.publish(f"session:{bob_session}", a_set("bob-1"))
    _, bob_events = subs[f"session:{bob_session}"]
    await eventually(lambda: bob_events.publications())
    trainer.remove_subscription(subs["coach:ann"][0])
    _, again = await subscribe(trainer, "coach:ann")
    assert refusal(again) == 103
