"""The ingest benchmark runs end to end on a small load: its three sides, its correctness check
and its report. Nothing here reads a rate: speed is measured by the benchmark, not the suite."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.db_fixtures import postgres_admin_url

ROOT = Path(__file__).resolve().parents[1]


def test_three_sides_run_and_every_acknowledged_event_is_stored_once(tmp_path: Path) -> None:
    report = tmp_path / "ingest.json"
    done = subprocess.run(
        [
            sys.executable,
            "bench/ingest.py",
            "--devices",
            "8",
            "--seconds",
            "1",
            "--warmup-seconds",
            "0.5",
            "--pool-size",
            "4",
            "--quiet-wait-seconds",
            "0",
            "--postgres",
            postgres_admin_url(),
            "--json",
            str(report),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    document = json.loads(report.read_text())
    results = document["results"]
    assert set(results) == {"baseline", "pooled", "hub"}
    assert results["baseline"]["pool_size"] == 1
    assert results["pooled"]["pool_size"] == 4
    for side in results.values():
        assert side["check"]["ok"], side["check"]
        assert side["run"]["acked"] > 0
    verdict = document["verdict"]
    assert verdict["all_checks_ok"]
    assert {"ratio_hub_over_baseline", "ratio_hub_over_pooled", "hub_p99_ms"} <= set(verdict)
    assert "hub/pooled baseline (4 connections)" in done.stdout
