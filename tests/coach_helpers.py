"""What the coach tests share: a scripted model server, a hub pointed at it, and readers of
the `coach:` stream as an SDK client sees it."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import centrifuge
import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.app_helpers import rpc, subscribe
from tests.harness import Recorder, RunningHub, eventually
from tests.llm_server import Behaviour, LLMServer

CoachHub = Callable[..., Awaitable[RunningHub]]

FAST_COACH = {
    "coach_api_key": "sk-test", "coach_coalesce_ms": 5.0, "coach_save_interval": 0.2,
    "coach_lease": 1.0, "coach_stall_timeout": 2.0, "coach_connect_timeout": 0.5,
}
"""Short intervals so saves, leases and stalls happen within a test."""


@pytest.fixture
async def llm() -> AsyncIterator[LLMServer]:
    server = LLMServer()
    await server.start()
    yield server
    await server.stop()


@pytest.fixture
def coach_hub(make_hub: Callable[..., Awaitable[RunningHub]], llm: LLMServer) -> CoachHub:
    """`await coach_hub(**overrides)`: a hub whose coach talks to the scripted server."""

    async def make(database_url: str | None = None, **overrides: Any) -> RunningHub:
        settings = {**FAST_COACH, "coach_base_url": llm.base_url, **overrides}
        return await make_hub(database_url, **settings)

    return make


def coach_pubs(events: Recorder, reply_id: str | None = None) -> list[dict[str, Any]]:
    """The `coach:` publications a subscription received (of one answer, when given)."""
    pubs = events.publications()
    if reply_id is None:
        return list(pubs)
    return [p for p in pubs if p.get("reply_id") == reply_id]


def terminal(events: Recorder, reply_id: str) -> dict[str, Any] | None:
    for pub in coach_pubs(events, reply_id):
        if pub["type"] in ("done", "cancelled", "error"):
            return pub
    return None


async def until_terminal(events: Recorder, reply_id: str, timeout: float = 15) -> dict[str, Any]:
    found: dict[str, Any] = await eventually(lambda: terminal(events, reply_id), timeout)
    return found


def deltas(events: Recorder, reply_id: str) -> list[dict[str, Any]]:
    return [p for p in coach_pubs(events, reply_id) if p["type"] == "delta"]


async def long_answer_three_deltas_in(
    connect: Callable[..., Awaitable[tuple[centrifuge.Client, Recorder]]], llm: LLMServer,
    node: RunningHub,
) -> tuple[Recorder, str]:
    """Ann on `node`, watching `coach:ann`, with a long, slow answer three deltas in: its
    watcher's events and its reply id."""
    llm.default = Behaviour(text=" ".join(["long"] * 300), tokens_per_second=20)
    phone, _ = await connect("ann", target=node)
    _, events = await subscribe(phone, "coach:ann")
    asked = await rpc(phone, "coach.ask", {"text": "Go on"})
    await eventually(lambda: len(deltas(events, asked["reply_id"])) >= 3)
    return events, str(asked["reply_id"])


async def coach_metrics(hub: RunningHub) -> dict[str, float]:
    """The node's `fitsync_coach_*` samples, by name and labels (`name{label=value}`)."""
    async with httpx.AsyncClient(base_url=hub.http_url) as http:
        text = (await http.get("/metrics")).text
    samples: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name.startswith("fitsync_coach_"):
                labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
                samples[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
    return samples
