"""The trainer view keeps up: 10 live clients at 1 event/s each, every event rendered.

The page measures its own event-to-render delay (the hub's `server_ts` to the end of the
animation frame that shows the event, `web/src/metrics.js`); this test prints it for the first
and the last third of the run, to show whether it grows. It asserts what does not depend on
the machine's speed: every event reached the screen. Longer runs for a report:

    FITSYNC_WEB_SPEED_SECONDS=120 .venv/bin/python -m pytest tests/test_web_speed.py -s

Then one client's page must hold that client's whole session. With
`FITSYNC_UPDATE_SCREENSHOTS=1` (`scripts/screenshot`) the roster and that page are saved as the
README's screenshots.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

from simulator import Fleet
from simulator.workout import Workout
from tests.harness import RunningHub
from tests.web_fixtures import OpenPage, set_up_demo

CLIENTS = 10
RATE = 1.0
SECONDS = float(os.environ.get("FITSYNC_WEB_SPEED_SECONDS", "15"))
SCREENSHOTS = Path(__file__).resolve().parent.parent / "docs" / "screenshots"
ROWS = "section.session table.sets tbody tr"


def summary(delays: list[float]) -> str:
    ordered = sorted(delays)

    def at(q: float) -> float:
        return ordered[max(0, math.ceil(q * len(ordered)) - 1)]

    return (f"n={len(ordered)} p50 {at(0.5):.0f} ms, p95 {at(0.95):.0f} ms, "
            f"max {ordered[-1]:.0f} ms")


async def test_the_trainer_view_of_ten_live_clients_renders_every_event(
    make_hub: Any, open_page: OpenPage
) -> None:
    hub: RunningHub = await make_hub(dev_login=True)
    clients = [a["user_id"] for a in (await set_up_demo(hub, athletes=CLIENTS))["athletes"]]
    async with Fleet(hub.ws_url, lambda a, d: hub.token(a, "device", device=d),
                     athletes=CLIENTS, devices_per_athlete=1, athlete_ids=clients,
                     events_for=Workout) as fleet:
        web = await open_page(hub, "demo-trainer", "trainer")
        await web.wait_for(
            f"() => window.fitsyncApp.live.size === {CLIENTS} && "
            "[...window.fitsyncApp.live.values()].every(l => l.loaded)")
        result = await fleet.run(rate=RATE, seconds=SECONDS)
        acked = result.acked
        await web.wait_for(f"() => window.fitsyncMetrics.eventsRendered >= {acked}")
        measured = await web.metrics()
        delays: list[float] = measured["renderDelaysMs"]
        in_page: list[float] = measured["pageDelaysMs"]
        cards = await web.page.locator(".card[data-live=true]").count()
        screenshots = os.environ.get("FITSYNC_UPDATE_SCREENSHOTS") == "1"
        if screenshots:
            SCREENSHOTS.mkdir(parents=True, exist_ok=True)
            await web.page.screenshot(path=str(SCREENSHOTS / "trainer-roster.png"))

        first = result.reports[0]
        sets = [event_id for event_id, kind in first.acked.items() if kind == "set"]
        await web.page.click(f'.card[data-user="{clients[0]}"]')
        await web.wait_for(f"() => document.querySelectorAll({ROWS!r}).length >= {len(sets)}")
        shown = await web.page.eval_on_selector_all(
            ROWS, "rows => rows.map(r => r.dataset.eventId)")
        if screenshots:
            await web.page.screenshot(path=str(SCREENSHOTS / "trainer-live.png"), full_page=True)
        await fleet.end_sessions()

    assert result.summary()["failed"] == {} and acked >= CLIENTS
    assert len(delays) == acked, "every event was rendered, once"
    assert cards == CLIENTS
    assert sorted(shown) == sorted(sets), "the client's page holds the whole session"
    third = len(delays) // 3
    print(f"\n{CLIENTS} clients x {RATE:g} event/s for {SECONDS:g} s, {acked} events: "
          f"event-to-render all {summary(delays)}; first third {summary(delays[:third])}; "
          f"last third {summary(delays[-third:])}; of which in the page: first third "
          f"{summary(in_page[:third])}, last third {summary(in_page[-third:])}")
