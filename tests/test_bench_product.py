"""The product benchmark's clients against a real hub: open-loop devices, trainers, a storm."""

from __future__ import annotations

import asyncio
import json
import random
import subprocess
import sys
import time
from pathlib import Path

from tests.harness import RunningHub, eventually
from tests.test_simulator import device_tokens

# bench/ is a directory of scripts, not a package; its modules import each other by name.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
from product_clients import Ledger, OpenLoopFleet, StormClient, StormTally, Watcher

ROOT = Path(__file__).resolve().parents[1]


async def test_open_loop_events_are_acked_once_and_reach_the_watching_trainer(
    hub: RunningHub,
) -> None:
    ledger = Ledger()
    async with OpenLoopFleet(
        hub.ws_url, device_tokens(hub), athletes=3, devices_per_athlete=1
    ) as fleet:
        async with hub.api() as api:
            for athlete in fleet.athletes:
                response = await api.put(f"/api/trainers/coach-1/clients/{athlete}")
                assert response.status_code == 200
        watcher = Watcher("coach-1", hub.token("coach-1", "trainer"), ledger)
        await watcher.connect("127.0.0.1", hub.settings.port, "/connection/websocket")
        await watcher.subscribe([f"session:{s}" for s in fleet.sessions])

        start = time.perf_counter()
        fleet.schedule(ledger, rate=20.0, jitter=0.5, start=start, end=start + 1.0)
        await eventually(lambda: len(ledger.sent) == 3 * 20 and ledger.settled(), timeout=30)
        watcher.abort()

    run = ledger.window(start, start + 2.0)  # jitter may put a last send past 1.0 s
    assert run["sent"] == run["acked"] == run["delivered"] == 60
    assert run["not_acked"] == run["acked_not_delivered"] == 0
    assert ledger.duplicate_acks == ledger.duplicate_deliveries == 0
    assert set(run["device_to_trainer_ms"]) == {"p50", "p99", "max"}
    assert set(ledger.acked) == set(ledger.delivered)


async def test_a_storm_connects_everyone_and_counts_refusals_by_close_code(
    hub: RunningHub,
) -> None:
    tally = StormTally(started=time.perf_counter())
    rng = random.Random(1)
    tokens = [hub.token(f"storm-{i}") for i in range(30)] + ["not-a-token"]
    clients = [
        StormClient("127.0.0.1", hub.settings.port, "/connection/websocket", t, tally, rng)
        for t in tokens
    ]
    for client in clients:
        client.start(time.perf_counter() + 30, 10.0)
    await eventually(lambda: len(tally.connect_s) + tally.gave_up == len(clients), timeout=30)
    summary = tally.summary(len(clients))
    for client in clients:
        client.abort()
    await asyncio.sleep(0)

    assert summary["connected"] == 30 and summary["gave_up"] == 1
    assert summary["errors"] == {"close 3500": 1}  # an invalid token is terminal: no retry
    assert summary["all_connected_s"] is None


def test_the_product_bench_on_two_nodes_delivers_every_event_across_redis(
    tmp_path: Path,
) -> None:
    """Devices on node 1, trainers on node 2: each delivery crossed a private Redis. Nothing
    here reads a rate or a latency."""
    report = tmp_path / "product.json"
    done = subprocess.run(
        [sys.executable, "bench/product.py", "--quick", "--nodes", "2", "--athletes", "20",
         "--trainers", "4", "--clients-per-trainer", "5", "--rate", "100",
         "--quiet-wait-seconds", "0", "--json", str(report)],
        cwd=ROOT, capture_output=True, text=True, timeout=300, check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    document = json.loads(report.read_text())
    assert document["config"]["nodes"] == 2
    run, check = document["result"]["run"], document["result"]["check"]
    assert run["sent"] > 0 and run["sent"] == run["acked"] == run["delivered"]
    assert run["not_acked"] == run["acked_not_delivered"] == 0
    assert check["ok"] is True
    assert "2 nodes on Redis" in done.stdout


def test_the_storm_baseline_answers_every_connect(tmp_path: Path) -> None:
    """`--storm-server websockets`: the same storm clients against the connect-only server."""
    report = tmp_path / "storm.json"
    done = subprocess.run(
        [sys.executable, "bench/product.py", "--storm", "50", "--storm-server", "websockets",
         "--quiet-wait-seconds", "0", "--json", str(report)],
        cwd=ROOT, capture_output=True, text=True, timeout=120, check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    storm = json.loads(report.read_text())["result"]["storm"]
    assert storm["connected"] == storm["clients"] == 50
    assert not storm["errors"]
    assert "connect-only websockets server" in done.stdout
