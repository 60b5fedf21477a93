"""Who used the CPU during a measurement, in cores (CPU seconds per wall second).

The machine has 2 cores shared by the load generator, the server side and, often, other
people's work; every figure the benchmark prints comes with this split, so a reader can tell
a slow server from a starved one. Linux only (/proc).
"""

from __future__ import annotations

import os
import resource
import time
from collections.abc import Callable, Iterable
from pathlib import Path

_TICKS = os.sysconf("SC_CLK_TCK")


def cores() -> int:
    return os.cpu_count() or 1


def machine_busy_s() -> float:
    """CPU seconds the whole machine spent not idle since boot."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = values[3] + (values[4] if len(values) > 4 else 0)
    return (sum(values[:8]) - idle) / _TICKS


def process_cpu_s(pid: int) -> float:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    fields = stat.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICKS


def tree(pid: int) -> list[int]:
    """A process and all its descendants."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        todo.extend(children.get(current, []))
    return found


def self_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


PidSource = Callable[[], Iterable[int]]


class CpuMeter:
    """Cores used by named groups of processes between `start` and `stop`.

    Groups are re-resolved at both ends (pid lists of process trees); a process that exits
    in between is not counted, so short-lived ones (wrk) are added with `add`.
    """

    def __init__(self, groups: dict[str, PidSource]) -> None:
        self.groups = groups
        self.extra: dict[str, float] = {}

    def _sample(self) -> dict[str, dict[int, float]]:
        return {
            name: {pid: process_cpu_s(pid) for pid in pids()} for name, pids in self.groups.items()
        }

    def start(self) -> CpuMeter:
        self.extra = {}
        self._wall0 = time.monotonic()
        self._busy0 = machine_busy_s()
        self._self0 = self_cpu_s()
        self._first = self._sample()
        return self

    def add(self, name: str, cpu_s: float) -> None:
        self.extra[name] = self.extra.get(name, 0.0) + cpu_s

    def stop(self) -> dict[str, float]:
        wall = time.monotonic() - self._wall0
        last = self._sample()
        used = {
            name: sum(cpu - self._first[name].get(pid, 0.0) for pid, cpu in pids.items())
            for name, pids in last.items()
        }
        used["bench"] = self_cpu_s() - self._self0
        for name, cpu_s in self.extra.items():
            used[name] = used.get(name, 0.0) + cpu_s
        used["other"] = max(0.0, machine_busy_s() - self._busy0 - sum(used.values()))
        return {name: round(cpu_s / wall, 2) for name, cpu_s in used.items()}
