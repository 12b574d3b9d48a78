"""The coach benchmark runs end to end on a small load and reports every figure it promises.
Nothing here reads a speed: that is the benchmark's job, not the suite's."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def run_coach_bench(tmp_path: Path, *options: str) -> tuple[list[dict[str, Any]], str]:
    """bench/coach.py with `options` on a small load: its results and what it printed."""
    report = tmp_path / "coach.json"
    done = subprocess.run(
        [sys.executable, "bench/coach.py", *options, "--quiet-seconds", "0.3",
         "--quiet-wait-seconds", "0", "--json", str(report)],
        cwd=ROOT, capture_output=True, text=True, timeout=180, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    return json.loads(report.read_text())["results"], done.stdout


def test_the_coach_bench_streams_every_answer_to_every_watcher_and_reports(
        tmp_path: Path) -> None:
    (coalesced, each_chunk), printed = run_coach_bench(
        tmp_path, "--answers", "3", "--watchers", "2", "--tokens", "30", "--rounds", "2",
        "--windows", "10,0", "--ask-spread", "0.2")
    for result in (coalesced, each_chunk):
        assert result["answers"] == 2 * 3 and result["tokens_per_answer"] == 30  # all rounds
        latency = result["latency_ms"]
        assert latency["tokens_measured"] == 2 * 3 * 2 * 30  # rounds × answers × watchers × tokens
        # The hub publishes a delta before anyone reads it (its clock in whole ms).
        assert latency["to_publication_p50"] <= latency["p50"] + 1
        for part in ("first_tenth_p99", "rest_p99"):
            assert latency[part] == latency[part]  # measured: not NaN
        first = result["ask_to_first_delta_ms"]
        assert 0 < first["p50"] <= first["p99"]
        assert set(result["hub_stalls"]["gc"]) == {"0", "1", "2"}  # read from the hub
        assert result["hub_stalls"]["loop_lag_over_25ms"] >= 0
        for acks in (result["live_ack_ms_alone"], result["live_ack_ms_during"]):
            assert acks["acks"] > 0 and acks["p50"] <= acks["p90"] <= acks["p99"]
        assert result["hub_cpu_ms_per_answer"] > 0
        assert result["publishes_on_coach_hub"] > 0  # the live device's events
    assert each_chunk["publications_per_answer"] == 30
    assert coalesced["publications_per_answer"] <= 30
    assert coalesced["most_deltas_within_one_window"] >= 1  # read times: a busy reader bunches
    # By the hub's own publication times (whole ms, a timer may fire up to 1 ms early), one
    # answer's deltas are a window apart: never two in one window, however slow the machine.
    assert coalesced["closest_deltas_published_ms"] >= 8
    assert "| 10 ms | 30 |" in printed


def test_the_coach_baseline_streams_the_same_load_and_is_reported_as_the_baseline(
        tmp_path: Path) -> None:
    (result,), printed = run_coach_bench(
        tmp_path, "--server", "baseline", "--answers", "3", "--watchers", "2", "--tokens", "30",
        "--rounds", "2", "--windows", "10")
    assert result["server"] == "baseline" and result["hub_stalls"] is None  # no hub metrics
    assert result["latency_ms"]["tokens_measured"] == 2 * 3 * 2 * 30  # every token, everyone
    assert 0 < result["publications_per_answer"] <= 30  # coalesced by the hub's own reader
    assert result["closest_deltas_published_ms"] >= 8
    for acks in (result["live_ack_ms_alone"], result["live_ack_ms_during"]):
        assert acks["acks"] > 0  # each one answered after its commit
    assert "| 10 ms (baseline) | 30 |" in printed


def test_the_coach_bench_can_put_the_live_device_on_a_hub_of_its_own(tmp_path: Path) -> None:
    (result,), printed = run_coach_bench(
        tmp_path, "--live-node", "own", "--answers", "2", "--watchers", "1", "--tokens", "20",
        "--rounds", "1", "--windows", "10")
    assert result["live_node"] == "own" and result["publishes_on_coach_hub"] == 0
    assert result["latency_ms"]["tokens_measured"] == 2 * 20
    for acks in (result["live_ack_ms_alone"], result["live_ack_ms_during"]):
        assert acks["acks"] > 0
    assert "| 10 ms (live device on its own hub) | 20 |" in printed


def test_the_coach_queries_bench_reports_cpu_per_ask_and_step(tmp_path: Path) -> None:
    report = tmp_path / "coach_queries.json"
    done = subprocess.run(
        [sys.executable, "bench/coach_queries.py", "--asks", "5", "--warmup", "1",
         "--json", str(report)],
        cwd=ROOT, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    result = json.loads(report.read_text())["results"]
    assert result["database"] == "sqlite" and result["asks"] == 5
    steps = result["cpu_ms_per_step"]
    assert set(steps) == {"begin_ask", "prompt", "finish_answer"}
    assert result["cpu_ms_per_ask"] == round(sum(steps.values()), 3) > 0
    assert "ms of CPU per ask" in done.stdout
