"""Resident memory and CPU time read straight from /proc (Linux only).

Process trees are walked because a server launcher may fork workers: the cost of a connection
is wherever it lives, so RSS and CPU are summed over the process and all its descendants.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

_TICKS = os.sysconf("SC_CLK_TCK")


def process_tree(pid: int) -> list[int]:
    """`pid` and its live descendants, from /proc/PID/task/*/children."""
    found, pending = [], [pid]
    while pending:
        current = pending.pop()
        found.append(current)
        for task in Path(f"/proc/{current}/task").glob("*"):
            try:
                pending.extend(int(c) for c in (task / "children").read_text().split())
            except OSError:
                continue
    return found


def rss_kib(pid: int) -> int:
    """VmRSS of `pid` and its descendants, in KiB."""
    total = 0
    for member in process_tree(pid):
        try:
            status = Path(f"/proc/{member}/status").read_text()
        except OSError:
            continue
        for line in status.splitlines():
            if line.startswith("VmRSS:"):
                total += int(line.split()[1])
    return total


def cpu_seconds(pids: list[int]) -> float:
    """User+system CPU time consumed so far by the given processes (not their children)."""
    total = 0
    for pid in pids:
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])
    return total / _TICKS


def core_busy_ticks() -> dict[int, tuple[int, int, int]]:
    """(busy, irq+softirq, total) jiffies per core from /proc/stat; interrupts count as busy.

    Loopback TCP work runs in softirq on the sending core, so a per-process view alone would
    miss part of the load a core carries; it is also kept apart so that time nobody in the
    benchmark accounts for (other programs) can be told from it.
    """
    cores: dict[int, tuple[int, int, int]] = {}
    for line in Path("/proc/stat").read_text().splitlines():
        name, *values = line.split()
        if not name.startswith("cpu") or name == "cpu":
            continue
        ticks = [int(v) for v in values[:8]]
        idle, interrupts = ticks[3] + ticks[4], ticks[5] + ticks[6]
        cores[int(name[3:])] = (sum(ticks) - idle, interrupts, sum(ticks))
    return cores


@dataclass
class CpuWindow:
    """CPU use of some process groups and of each core between `start()` and `stop()`."""

    groups: dict[str, list[int]]
    _wall: float = 0.0
    _cpu: dict[str, float] | None = None
    _cores: dict[int, tuple[int, int, int]] | None = None

    def start(self) -> None:
        self._wall = time.monotonic()
        self._cpu = {name: cpu_seconds(pids) for name, pids in self.groups.items()}
        self._cores = core_busy_ticks()

    def stop(self) -> dict[str, float]:
        """Percent of one core per group (`cpu_<group>`), per core busy (`core<N>`) and the
        interrupt share of it (`core<N>_irq`)."""
        assert self._cpu is not None and self._cores is not None
        wall = time.monotonic() - self._wall
        result = {
            f"cpu_{name}": round(100 * (cpu_seconds(pids) - self._cpu[name]) / wall, 1)
            for name, pids in self.groups.items()
        }
        for core, (busy, irq, total) in core_busy_ticks().items():
            busy0, irq0, total0 = self._cores.get(core, (busy, irq, total))
            elapsed = max(1, total - total0)
            result[f"core{core}"] = round(100 * (busy - busy0) / elapsed, 1)
            result[f"core{core}_irq"] = round(100 * (irq - irq0) / elapsed, 1)
        return result
