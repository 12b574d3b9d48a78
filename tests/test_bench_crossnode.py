"""The cross-node benchmark runs end to end on a tiny load: every deployment starts, its
subscribers connect, both phases run and are reported, and the hub's correctness figures hold
(nothing lost, one Redis PUBLISH per publication). Nothing here reads a rate or a latency:
speed is measured by the benchmark, not the suite."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PEER = "broadcaster x2"
PEER_INSTALLED = importlib.util.find_spec("broadcaster") is not None
"""The peer comes with the `bench` extras (`pip install -e .[bench]`), not the suite's."""
DEPLOYMENTS = {"hub", "hub+redis", "hub x2", "baseline"} | ({PEER} if PEER_INSTALLED else set())


def test_every_deployment_runs_and_two_hub_nodes_lose_nothing_with_one_publish_each(
        tmp_path: Path) -> None:
    report = tmp_path / "crossnode.json"
    done = subprocess.run(
        [sys.executable, "bench/crossnode.py", "--subscribers", "20", "--rate", "10",
         "--fixed-seconds", "1", "--max-seconds", "1", "--settle-seconds", "0.5",
         "--drain-seconds", "20", "--quiet-wait-seconds", "0", "--only", ",".join(DEPLOYMENTS),
         "--json", str(report)],
        cwd=ROOT, capture_output=True, text=True, timeout=400, check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    document = json.loads(report.read_text())
    results = document["results"]
    assert set(results) == DEPLOYMENTS
    for name, result in results.items():
        assert result["memory"]["subscribers"] == 20, name
        for phase in ("fixed", "max"):
            assert result[phase]["published"] > 0, (name, phase)
            assert result[phase]["received"] > 0, (name, phase)
    assert results["hub x2"]["nodes"] == 2
    for name in ("hub", "hub+redis", "hub x2"):
        for phase in ("fixed", "max"):
            assert results[name][phase]["lost"] == 0, (name, phase)
            assert results[name][phase]["duplicates"] == 0, (name, phase)
    for name in ("hub+redis", "hub x2"):
        for phase in ("fixed", "max"):
            redis = results[name][phase]["redis"]
            assert redis["commands_per_publication"]["publish"] == 1.0, (name, phase, redis)
            assert redis["commands_per_publication"]["evalsha"] >= 1.0, (name, phase, redis)
            assert redis["cpu_us_per_publication"] > 0, (name, phase, redis)
    for name, result in results.items():
        for phase in ("fixed", "max"):
            # Reported for every side; on this tiny load a server's CPU can round to 0 ticks.
            assert result[phase]["server_cpu_us_per_delivery"] >= 0, (name, phase)
    verdict = document["verdict"]
    assert verdict["one_publish_per_publication"] is True
    assert {"fixed_p99_cross_over_single", "max_deliveries_two_nodes_over_one",
            "lost"} <= set(verdict)
    if PEER_INSTALLED:
        assert results[PEER]["nodes"] == 2
        assert results[PEER]["fixed"]["redis"]["commands_per_publication"]["publish"] == 1.0
        assert "max_deliveries_hub_x2_over_broadcaster_x2" in verdict
    assert "Redis PUBLISH/publication" in done.stdout
