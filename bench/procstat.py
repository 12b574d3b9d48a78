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
_KTHREADD = 2


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


def _stat_fields(pid: int | str) -> list[str] | None:
    """/proc/PID/stat after the command name (which may contain spaces), or None if gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()


def cpu_ticks(pids: list[int]) -> dict[int, int]:
    """User+system CPU ticks consumed so far by each of the given processes that is alive
    (not their children)."""
    ticks = {}
    for pid in pids:
        fields = _stat_fields(pid)
        if fields is not None:
            ticks[pid] = int(fields[11]) + int(fields[12])
    return ticks


def other_programs_ticks(exclude: set[int]) -> dict[int, int]:
    """CPU ticks so far of every user-space process not in `exclude`, by pid.

    Children's reaped time (cutime, cstime) is included so that a short-lived test process
    still shows up through its parent. Kernel threads are left out: softirq threads may be
    doing the benchmark's own network work.
    """
    ticks = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) in exclude:
            continue
        fields = _stat_fields(entry.name)
        if fields is None or entry.name == str(_KTHREADD) or int(fields[1]) == _KTHREADD:
            continue
        ticks[int(entry.name)] = sum(int(f) for f in fields[11:15])
    return ticks


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
    _ticks: dict[str, dict[int, int]] | None = None
    _cores: dict[int, tuple[int, int, int]] | None = None

    def start(self) -> None:
        self._wall = time.monotonic()
        self._ticks = {name: cpu_ticks(pids) for name, pids in self.groups.items()}
        self._cores = core_busy_ticks()

    def stop(self) -> dict[str, float]:
        """Percent of one core per group (`cpu_<group>`), per core busy (`core<N>`) and the
        interrupt share of it (`core<N>_irq`). A process counts while it lives through the
        window: one that exits takes its ticks with it (a PostgreSQL autovacuum worker, say),
        and subtracting them would make its group's share negative."""
        assert self._ticks is not None and self._cores is not None
        wall = time.monotonic() - self._wall
        result = {}
        for name, pids in self.groups.items():
            before, after = self._ticks[name], cpu_ticks(pids)
            spent = sum(after[pid] - ticks for pid, ticks in before.items() if pid in after)
            result[f"cpu_{name}"] = round(100 * spent / _TICKS / wall, 1)
        for core, (busy, irq, total) in core_busy_ticks().items():
            busy0, irq0, total0 = self._cores.get(core, (busy, irq, total))
            elapsed = max(1, total - total0)
            result[f"core{core}"] = round(100 * (busy - busy0) / elapsed, 1)
            result[f"core{core}_irq"] = round(100 * (irq - irq0) / elapsed, 1)
        return result


@dataclass
class OtherProgramsWindow:
    """CPU used by every user-space process outside `ours` between `start()` and `stop()`.

    Other programs share the two cores and skew whatever is measured meanwhile; this says
    how much, directly, rather than as core time left unexplained.
    """

    ours: set[int]
    _wall: float = 0.0
    _before: dict[int, int] | None = None

    def start(self) -> None:
        self._wall = time.monotonic()
        self._before = other_programs_ticks(self.ours)

    def stop(self) -> float:
        """Percent of one core."""
        assert self._before is not None
        wall = time.monotonic() - self._wall
        before = self._before
        spent = sum(t - before.get(pid, 0) for pid, t in other_programs_ticks(self.ours).items())
        return round(100 * spent / _TICKS / wall, 1)
