"""The web app in a real browser (Debian's chromium through Playwright) against a real hub:
what a trainer and an athlete see, and that reconnects lose and repeat nothing."""

from __future__ import annotations

import asyncio
from typing import Any

import centrifuge

from hub.protocol.codes import DisconnectCode
from simulator import Device, DeviceReport
from tests.harness import RunningHub
from tests.llm_server import Behaviour, LLMServer
from tests.web_fixtures import OpenPage, WebPage, set_up_demo

ROWS = "section.session table.sets tbody tr"


async def dev_hub(make_hub: Any) -> RunningHub:
    hub: RunningHub = await make_hub(dev_login=True)
    return hub


def device(hub: RunningHub, athlete: str, name: str, hr_share: float) -> Device:
    device_id = f"{athlete}-{name}"
    return Device(hub.ws_url, hub.token(athlete, "device", device=device_id), device_id,
                  hr_share=hr_share)


def acked_sets(*reports: DeviceReport) -> set[str]:
    return {event_id for r in reports for event_id, kind in r.acked.items() if kind == "set"}


async def shown_sets(web: WebPage) -> list[str]:
    ids: list[str] = await web.page.eval_on_selector_all(
        ROWS, "rows => rows.map(r => r.dataset.eventId)")
    return ids


async def wait_for_rows(web: WebPage, count: int) -> None:
    await web.wait_for(f"() => document.querySelectorAll({ROWS!r}).length >= {count}")


async def chart_points(web: WebPage, chart: str) -> int:
    return int(await web.page.get_attribute(f"[data-testid={chart}]", "data-points") or 0)


async def trainer_watching(open_page: OpenPage, hub: RunningHub, client: str) -> WebPage:
    """The demo trainer's page, on the client's page; the client is live already."""
    web = await open_page(hub, "demo-trainer", "trainer")
    await web.page.click(f'.card[data-user="{client}"][data-live=true]', timeout=15_000)
    await web.shows("section.session")
    return web


async def test_trainer_sees_a_simulated_clients_sets_appear_live_and_the_chart_grow(
    make_hub: Any, open_page: OpenPage
) -> None:
    hub = await dev_hub(make_hub)
    client = (await set_up_demo(hub, athletes=1))["athletes"][0]["user_id"]
    web = await open_page(hub, "demo-trainer", "trainer")
    strap, watch = device(hub, client, "strap", 1.0), device(hub, client, "watch", 0.0)
    for d in (strap, watch):
        await d.connect()
    session_id = await watch.start_session("leg day")

    await web.page.click(f'.card[data-user="{client}"][data-live=true]', timeout=15_000)
    await web.shows("section.session")
    first = await watch.run(session_id, count=4)
    beats = await strap.run(session_id, count=3)
    await wait_for_rows(web, 4)
    volume_before, hr_before = await chart_points(web, "volume-chart"), await chart_points(
        web, "hr-chart")
    second = await watch.run(session_id, count=4)
    await strap.run(session_id, count=2)
    await wait_for_rows(web, 8)
    await web.wait_for("() => document.querySelector('[data-testid=hr-chart]').dataset.points"
                       " >= 25")

    assert sorted(await shown_sets(web)) == sorted(acked_sets(first, second))
    assert (volume_before, await chart_points(web, "volume-chart")) == (4, 8)
    assert hr_before >= 15 and beats.acked, "3 hr events of 5 samples were shown before"

    await watch.end_session(session_id)
    await web.page.wait_for_selector("[data-testid=summary]:has-text('Session ended: 8 sets')")
    past = f"[data-testid=past-sessions] tr[data-session='{session_id}']"
    await web.page.wait_for_selector(f"{past}:has-text('ended'):has-text('8 sets')")
    for d in (strap, watch):
        await d.close()


async def test_presence_shows_a_second_watcher_joining_and_leaving(
    make_hub: Any, open_page: OpenPage
) -> None:
    hub = await dev_hub(make_hub)
    client = (await set_up_demo(hub, athletes=1, trainers=2))["athletes"][0]["user_id"]
    watch = device(hub, client, "watch", 0.0)
    await watch.connect()
    session_id = await watch.start_session()
    web = await trainer_watching(open_page, hub, client)
    watchers = "[data-testid=watchers]"
    await web.page.wait_for_selector(f"{watchers}:has-text('demo-trainer (you)')")

    other = centrifuge.Client(hub.ws_url, token=hub.token("demo-trainer-2", "trainer"))
    await other.connect()
    sub = other.new_subscription(f"session:{session_id}")
    await sub.subscribe()
    await web.page.wait_for_selector(f"{watchers}:has-text('demo-trainer-2')")
    await sub.unsubscribe()
    await web.wait_for(
        "() => !document.querySelector('[data-testid=watchers]').textContent"
        ".includes('demo-trainer-2')")
    await other.disconnect()
    await watch.close()


async def test_athlete_logs_a_set_by_hand_and_sees_the_validation_error_for_a_bad_one(
    make_hub: Any, open_page: OpenPage
) -> None:
    hub = await dev_hub(make_hub)
    web = await open_page(hub, None)
    page = web.page
    await page.click("[data-testid=demo-athlete]")
    await page.wait_for_selector("#conn[data-state=live]")
    await page.click("text=Start session")
    await page.fill("input[name=exercise]", "bench press")
    await page.fill("input[name=reps]", "5")
    await page.fill("input[name=weight_kg]", "80")
    await page.click("text=Log set")
    await wait_for_rows(web, 1)
    assert "bench press" in await page.inner_text(ROWS)

    await page.fill("input[name=reps]", "5000")
    await page.click("text=Log set")
    reps_error = "[data-error-for=reps]"
    await page.wait_for_selector(f"{reps_error}:has-text('from 0 to 1000')")
    await page.fill("input[name=reps]", "5")
    await page.fill("input[name=weight_kg]", "2000")
    await page.click("text=Log set")
    await page.wait_for_selector("[data-error-for=weight_kg]:not(:empty)")
    assert await page.inner_text(reps_error) == "", "the old error is cleared"
    await asyncio.sleep(0.5)  # a bad set that was broadcast anyway would show by now
    assert len(await shown_sets(web)) == 1


async def test_after_the_socket_is_cut_by_the_server_every_event_is_shown_exactly_once(
    make_hub: Any, open_page: OpenPage
) -> None:
    hub = await dev_hub(make_hub)
    client = (await set_up_demo(hub, athletes=1))["athletes"][0]["user_id"]
    watch = device(hub, client, "watch", 0.0)
    await watch.connect()
    session_id = await watch.start_session()
    web = await trainer_watching(open_page, hub, client)

    streaming = asyncio.create_task(watch.run(session_id, count=40, rate=20))
    await wait_for_rows(web, 5)
    await hub.node.disconnect_user("demo-trainer", DisconnectCode.FORCE_RECONNECT)
    await web.page.wait_for_selector("#conn:not([data-state=live])")
    report = await streaming
    await wait_for_rows(web, 40)

    shown = await shown_sets(web)
    assert sorted(shown) == sorted(acked_sets(report)) and len(shown) == 40
    history = (await web.metrics())["state"]
    assert "reconnecting" in history and history[-1] == "recovered", history
    assert await chart_points(web, "volume-chart") == 40
    await watch.close()


async def test_events_the_hub_can_no_longer_recover_are_reloaded_and_shown_exactly_once(
    make_hub: Any, open_page: OpenPage
) -> None:
    hub = await dev_hub(make_hub)
    client = (await set_up_demo(hub, athletes=1))["athletes"][0]["user_id"]
    watch = device(hub, client, "watch", 0.0)
    await watch.connect()
    session_id = await watch.start_session()
    web = await trainer_watching(open_page, hub, client)
    before = await watch.run(session_id, count=3)
    await wait_for_rows(web, 3)

    await web.context.set_offline(True)  # the page cannot reconnect until it is back online
    await hub.node.disconnect_user("demo-trainer", DisconnectCode.FORCE_RECONNECT)
    await web.wait_for("() => document.querySelector('#conn').dataset.state !== 'live'")
    # More than the session channel's history keeps (1,000): recovery cannot succeed.
    missed = await watch.run(session_id, count=1010)
    await web.context.set_offline(False)
    await web.page.wait_for_selector("#conn[data-state=reloaded]", timeout=30_000)
    await wait_for_rows(web, 1013)

    shown = await shown_sets(web)
    assert len(shown) == len(set(shown)) == 1013
    assert set(shown) == acked_sets(before, missed)
    await watch.close()


async def test_in_production_mode_there_are_no_demo_buttons_and_a_pasted_token_signs_in(
    hub: RunningHub, open_page: OpenPage
) -> None:
    web = await open_page(hub, None)
    page = web.page
    await page.wait_for_selector("textarea[name=token]")
    await asyncio.sleep(0.5)  # the page has asked /dev/login by now
    assert await page.locator("[data-testid^=demo-]").count() == 0
    await page.fill("textarea[name=token]", hub.token("pasted-athlete", ttl=600))
    await page.click("button:has-text('Sign in')")
    await page.wait_for_selector("#conn[data-state=live]")
    assert "pasted-athlete" in await page.inner_text("#who")
    await page.wait_for_selector("text=Start session")


async def test_the_dev_sign_in_refreshes_its_token_through_get_token_and_stays_live(
    make_hub: Any, open_page: OpenPage
) -> None:
    hub = await dev_hub(make_hub)
    web = await open_page(hub, "demo-athlete", query="?token_ttl=5")
    await web.wait_for("() => window.fitsyncMetrics.tokensFetched >= 3")
    metrics = await web.metrics()
    assert "disconnected" not in metrics["state"] and await web.state() == "live"


ANSWER = ("Keep the bar path over mid-foot, brace before each rep, and rest two minutes "
          "between your heavy sets of squats today.")


async def test_the_athlete_asks_the_coach_sees_the_answer_stream_and_can_cancel_it(
    make_hub: Any, open_page: OpenPage
) -> None:
    async with LLMServer() as llm:
        hub: RunningHub = await make_hub(dev_login=True, coach_api_key="sk-test",
                                         coach_base_url=llm.base_url, coach_coalesce_ms=5.0)
        await set_up_demo(hub, athletes=0)  # the demo trainer watches the demo athlete
        web = await open_page(hub, "demo-athlete")
        trainer = await open_page(hub, "demo-trainer", "trainer", fragment="#/trainer/demo-athlete")
        page = web.page
        answers = "[data-testid=coach-messages] .message.assistant"
        await trainer.page.wait_for_selector("text=Coach chat (read only)")

        llm.script(Behaviour(text=ANSWER * 3, tokens_per_second=8))
        await page.fill("textarea[name=question]", "How should I squat today?")
        await page.click("button:has-text('Ask')")
        await page.wait_for_selector(".message.user:has-text('How should I squat today?')")
        streaming = page.locator(f"{answers}[data-status=streaming]")
        await web.wait_for(f"() => document.querySelector({answers!r})?.textContent.length > 5")
        early = await streaming.inner_text()
        await web.wait_for("(early) => document.querySelector("
                           f"{answers!r}).textContent.length > early.length + 5", early)
        # The trainer sees the same answer stream, read only.
        await trainer.page.locator(f"{answers}[data-status=streaming]").wait_for()
        assert await trainer.page.locator("textarea[name=question]").count() == 0
        await page.click("button:has-text('Cancel')")
        cancelled = page.locator(f"{answers}[data-status=cancelled]")
        await cancelled.wait_for(timeout=15_000)
        assert await page.locator("button:has-text('Cancel')").is_hidden()
        partial = (await cancelled.inner_text()).replace("(cancelled)", "").strip()
        assert partial and (ANSWER * 3).startswith(partial), partial

        llm.script(Behaviour(status=500, error_message="upstream down"),
                   Behaviour(text=ANSWER, tokens_per_second=200))
        await page.fill("textarea[name=question]", "And tomorrow?")
        await page.click("button:has-text('Ask')")
        await page.locator(f"{answers}[data-status=failed]").wait_for(timeout=15_000)
        await page.click("[data-testid=retry]")
        done = page.locator(f"{answers}[data-status=done]")
        await done.wait_for(timeout=15_000)
        assert await done.inner_text() == ANSWER
        watched = trainer.page.locator(f"{answers}[data-status=done]")
        await watched.wait_for()
        assert await watched.inner_text() == ANSWER
        assert await trainer.page.locator(f"{answers}[data-status=cancelled]").count() == 1

        await page.reload()  # the conversation comes back from coach.history
        await page.locator(f"{answers}[data-status=done]").wait_for()
        statuses = await page.eval_on_selector_all(answers, "els => els.map(e => e.dataset.status)")
        assert statuses == ["cancelled", "failed", "done"]


async def test_the_coach_panel_says_so_when_the_hub_has_no_coach(
    make_hub: Any, open_page: OpenPage
) -> None:
    hub: RunningHub = await make_hub(dev_login=True, coach_api_key=None)
    web = await open_page(hub, "demo-athlete")
    await web.page.fill("textarea[name=question]", "Anyone there?")
    await web.page.click("button:has-text('Ask')")
    notice = web.page.locator("[data-testid=coach-notice]")
    await notice.wait_for()
    assert "OPENAI_API_KEY" in await notice.inner_text()
