"""Browser tests' machinery: Debian's chromium driven by Playwright, pages signed in to a hub.

Playwright's own browser download does not work here: chromium is Debian's, launched by path
(scripts/test installs it with apt-get when it is missing).
"""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from playwright.async_api import Browser, BrowserContext, Page, async_playwright
from playwright.async_api import TimeoutError as PlaywrightTimeoutError

from tests.harness import RunningHub

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run",
                 "--disable-quic"]
WAIT_MS = 15_000
"""Generous: the machine is shared and has two cores."""


@pytest.fixture(scope="session")
async def browser() -> AsyncIterator[Browser]:
    if not os.access(CHROMIUM, os.X_OK):
        pytest.fail(f"{CHROMIUM} is missing: scripts/test installs it (apt-get install chromium)")
    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(executable_path=CHROMIUM, headless=True,
                                                    args=CHROMIUM_ARGS)
        yield launched
        await launched.close()


@dataclass
class WebPage:
    """One signed-in page and what went wrong in it (uncaught errors fail the test)."""

    page: Page
    context: BrowserContext
    errors: list[str] = field(default_factory=list)

    async def state(self) -> str:
        return str(await self.page.get_attribute("#conn", "data-state"))

    async def metrics(self) -> dict[str, Any]:
        result: dict[str, Any] = await self.page.evaluate(
            "() => ({...window.fitsyncMetrics, state: window.fitsyncState.history})")
        return result

    async def shows(self, selector: str) -> None:
        """Wait until `selector` is visible; when it never is, fail saying what the page shows
        (its address and the start of its body), so a failure can be read afterwards."""
        try:
            await self.page.wait_for_selector(selector, timeout=2 * WAIT_MS)
        except PlaywrightTimeoutError:
            shown = await self.page.evaluate(
                "() => location.href + '\\n' + document.body.outerHTML.slice(0, 3000)")
            raise AssertionError(f"{selector} was never shown; the page:\n{shown}") from None

    async def wait_for(self, expression: str, arg: Any = None) -> Any:
        """Wait until the JavaScript function `expression` returns something truthy."""
        handle = await self.page.wait_for_function(expression, arg=arg, timeout=WAIT_MS)
        return await handle.json_value()


OpenPage = Callable[..., Awaitable[WebPage]]


@pytest.fixture
async def open_page(browser: Browser) -> AsyncIterator[OpenPage]:
    """Open the web app of `hub` signed in as `user` with `role` through the dev sign-in (or
    not signed in with `user=None`); `query` is appended to the URL."""
    opened: list[WebPage] = []

    async def open_(hub: RunningHub, user: str | None, role: str = "athlete", *,
                    query: str = "", fragment: str = "") -> WebPage:
        context = await browser.new_context(viewport={"width": 1280, "height": 900})
        page = await context.new_page()
        web = WebPage(page, context)
        page.on("pageerror", lambda error: web.errors.append(str(error)))
        if user is not None:
            sign_in = json.dumps({"kind": "dev", "user": user, "role": role})
            await context.add_init_script(
                f"sessionStorage.setItem('fitsync.signin', {json.dumps(sign_in)})")
        await page.goto(f"{hub.http_url}/{query}{fragment}")
        if user is not None:
            await page.wait_for_selector("#conn[data-state=live]", timeout=WAIT_MS)
        opened.append(web)
        return web

    yield open_
    for web in opened:
        await web.context.close()
    errors = [e for web in opened for e in web.errors]
    assert not errors, f"uncaught errors in the page: {errors}"


async def set_up_demo(hub: RunningHub, athletes: int = 1, trainers: int = 1) -> dict[str, Any]:
    async with httpx.AsyncClient(base_url=hub.http_url) as http:
        response = await http.post("/dev/demo", json={"athletes": athletes, "trainers": trainers})
    assert response.status_code == 200, response.text
    demo: dict[str, Any] = response.json()
    return demo
