"""The metrics worth alerting on move when the thing they count happens, read from /metrics
over HTTP as Prometheus reads them."""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from hub import __version__
from hub.loop_histogram import LoopHistogram
from tests.app_helpers import a_set, connection_switch, reply_error, start_session
from tests.db_fixtures import create_postgres_database, drop_postgres_database
from tests.harness import SECRET, RunningHub
from tests.raw import MakeHub, OpenRaw, OpenSdk
from tests.serve_process import serve

Scraped = dict[tuple[str, frozenset[tuple[str, str]]], float]
"""A scrape's samples by name and labels."""


async def scrape(hub: RunningHub) -> Scraped:
    async with httpx.AsyncClient() as http:
        response = await http.get(f"{hub.http_url}/metrics")
    assert response.status_code == 200
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


def value(samples: Scraped, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


async def test_a_set_event_acked_is_one_commit_of_one_event_and_one_timed_publish(
    make_hub: MakeHub, sdk: OpenSdk, database_url: str,
) -> None:
    hub = await make_hub(database_url)
    device, _ = await sdk(hub, hub.token("ann", "device", device="ann-watch"))
    channel = f"session:{await start_session(device)}"
    before = await scrape(hub)

    await device.publish(channel, a_set("s1", reps=5))

    after = await scrape(hub)

    def grew(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert grew("fitsync_db_commit_seconds_count") == 1
    assert grew("fitsync_db_commit_seconds_sum") > 0
    assert grew("fitsync_event_batch_size_count") == 1
    assert grew("fitsync_event_batch_size_sum") == 1
    assert grew("fitsync_event_batch_size_bucket", le="1.0") == 1
    assert grew("fitsync_command_duration_seconds_count", method="publish") == 1
    assert grew("fitsync_command_duration_seconds_bucket", method="publish", le="+Inf") == 1
    assert grew("fitsync_broker_round_trip_seconds_count", operation="publish") == 1
    assert grew("fitsync_db_commit_failures_total") == 0


async def test_a_commit_that_fails_is_counted_and_not_timed_as_committed(
    make_hub: MakeHub, sdk: OpenSdk, postgres_url: str,
) -> None:
    hub = await make_hub(postgres_url)
    device, _ = await sdk(hub, hub.token("ann", "device", device="ann-watch"))
    channel = f"session:{await start_session(device)}"
    await device.publish(channel, a_set("s1"))
    before = await scrape(hub)
    async with connection_switch(postgres_url) as allow:
        await allow(False)
        assert (await reply_error(device.publish(channel, a_set("s2")))).temporary
    after = await scrape(hub)
    assert value(after, "fitsync_db_commit_failures_total") - value(
        before, "fitsync_db_commit_failures_total") == 1
    assert value(after, "fitsync_db_commit_seconds_count") == value(
        before, "fitsync_db_commit_seconds_count")


async def test_a_client_that_stops_answering_pings_is_a_slow_client_cut_for_no_pong(
    make_hub: MakeHub, raw: OpenRaw,
) -> None:
    hub = await make_hub(ping_interval=1.0, pong_timeout=0.5)
    silent = await raw(hub)
    await silent.connect(hub.token("quiet"))
    assert await silent.close_code(timeout=10) == 3012
    samples = await eventually_scraped(hub, "fitsync_slow_client_disconnects_total",
                                       reason="no_pong")
    assert value(samples, "fitsync_slow_client_disconnects_total", reason="write_buffer") == 0
    assert value(samples, "fitsync_disconnects_total", code="3012") == 1


async def eventually_scraped(hub: RunningHub, name: str, **labels: str) -> Scraped:
    """Scrape until the sample is 1 (the client may see its close before the node counts it)."""
    for _ in range(100):
        samples = await scrape(hub)
        if value(samples, name, **labels) == 1:
            return samples
        await asyncio.sleep(0.05)
    raise AssertionError(f"{name}{labels} never reached 1")


async def test_build_info_names_this_version_and_a_running_node_is_not_draining(
    make_hub: MakeHub, sdk: OpenSdk,
) -> None:
    hub = await make_hub()
    await sdk(hub, hub.token("ann"))
    samples = await scrape(hub)
    [(labels, build)] = [(dict(k[1]), v) for k, v in samples.items()
                         if k[0] == "fitsync_build_info"]
    assert build == 1 and labels["version"] == __version__ and labels["python"]
    assert value(samples, "fitsync_draining") == 0
    assert value(samples, "fitsync_connections") == 1
    assert value(samples, "fitsync_broker_round_trip_seconds_count", operation="subscribe") >= 1


@pytest.fixture
async def postgres_url() -> AsyncIterator[str]:
    """A fresh PostgreSQL database (an outage can only be staged there)."""
    url = await create_postgres_database()
    yield url
    await drop_postgres_database(url)


def test_a_loop_histogram_counts_each_observation_in_its_bucket_bounds_included() -> None:
    registry = CollectorRegistry()
    latency = LoopHistogram("t_seconds", "test", ["op"], buckets=(0.1, 1.0), registry=registry)
    for amount in (0.05, 0.1, 0.5, 1.0, 3.0):
        latency.labels("publish").observe(amount)
    samples = {(s.name, s.labels.get("le")): s.value
               for family in text_string_to_metric_families(generate_latest(registry).decode())
               for s in family.samples}
    assert samples == {("t_seconds_bucket", "0.1"): 2, ("t_seconds_bucket", "1.0"): 4,
                       ("t_seconds_bucket", "+Inf"): 5, ("t_seconds_count", None): 5,
                       ("t_seconds_sum", None): 4.65}


def test_a_node_reports_draining_from_the_signal_until_it_exits(tmp_path: Path) -> None:
    hub = serve({"HUB_JWT_SECRET": SECRET, "HUB_DATABASE_URL": f"sqlite:///{tmp_path / 'hub.db'}",
                 "HUB_DRAIN_REFUSE_DELAY": "5", "HUB_DRAIN_SECONDS": "0.5",
                 "HUB_SHUTDOWN_TIMEOUT": "8"}, tmp_path / "hub.log")
    try:
        def draining() -> float:
            text = httpx.get(f"{hub.http_url}/metrics", timeout=5).text
            [sample] = [s for family in text_string_to_metric_families(text)
                        for s in family.samples if s.name == "fitsync_draining"]
            return sample.value

        assert draining() == 0
        hub.process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 4  # within HUB_DRAIN_REFUSE_DELAY: still listening
        while draining() != 1:
            assert time.monotonic() < deadline, "fitsync_draining did not turn 1"
            time.sleep(0.05)
        assert httpx.get(f"{hub.http_url}/readyz", timeout=5).status_code == 503
    finally:
        hub.stop()
