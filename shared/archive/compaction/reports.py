"""What a compaction run reports: per hour, and for the whole run (`Summary`, which the CLI
prints, the function logs and turns into metrics, and whose lag goes to Redis)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from shared import status
from shared.archive.naming import UNREADABLE_ROOT


@dataclass
class HourResult:
    hour: str
    # compacted | unchanged (nothing to do) | busy (locked by another run) | partial (out of
    # time; the next run resumes) | failed (see error; the next run resumes)
    state: str
    events_read: int = 0
    events_written: int = 0
    objects_written: int = 0
    objects_removed: int = 0
    steps: int = 0
    error: str | None = None
    # busy: when the other run's lease ends unless it renews it (ISO 8601, UTC)
    busy_until: str | None = None
    # The inputs this run set aside under `_unreadable/` (their rows that decode were merged).
    unreadable: list[str] = field(default_factory=list)


@dataclass
class Progress:
    hour: str
    step: str
    hours_done: int
    hours_total: int


@dataclass
class Summary:
    hours: list[HourResult] = field(default_factory=list)
    hours_left: int = 0  # not started: the budget ran out first
    out_of_time: bool = False
    # Objects that could not be decoded, set aside under `_unreadable/` by this run.
    unreadable_objects: int = 0
    # `run` only (it surveys the hours after its work): since the oldest closed hour of its
    # range not yet compacted closed (0 when none is left), and that hour.
    lag_s: float | None = None
    oldest_hour: str | None = None
    report: status.CompactionReport | None = None  # built (and left in Redis) by run(report=True)

    def count(self, state: str) -> int:
        return sum(1 for result in self.hours if result.state == state)

    def failures(self) -> list[str]:
        """`<hour>: <why>` for each hour that failed, or set unreadable objects aside (it is
        compacted, but someone must look at them): what makes the run a failure."""
        found = []
        for r in self.hours:
            if r.state == "failed":
                found.append(f"{r.hour}: {r.error}")
            elif r.unreadable:
                others = f" and {len(r.unreadable) - 1} more" if len(r.unreadable) > 1 else ""
                found.append(
                    f"{r.hour}: unreadable objects set aside under {UNREADABLE_ROOT} (their "
                    f"reasons beside them; what decoded was compacted): {r.unreadable[0]}{others}"
                )
        return found

    def as_dict(self) -> dict[str, Any]:
        read = sum(r.events_read for r in self.hours)
        written = sum(r.events_written for r in self.hours)
        return {
            "hours_compacted": self.count("compacted"),
            "hours_unchanged": self.count("unchanged"),
            "hours_partial": self.count("partial"),
            "hours_busy": self.count("busy"),
            "hours_failed": self.count("failed"),
            "hours_left": self.hours_left,
            "events_read": read,
            "events_written": written,
            "duplicates_dropped": read - written,
            "objects_written": sum(r.objects_written for r in self.hours),
            "objects_removed": sum(r.objects_removed for r in self.hours),
            "steps": sum(r.steps for r in self.hours),
            "out_of_time": self.out_of_time,
            "errors": self.failures(),
            "unreadable_objects": self.unreadable_objects,
            "lag_s": self.lag_s,
            "oldest_hour": self.oldest_hour,
        }


def one_line(exc: BaseException) -> str:
    """`<type>: <first line of its message>`: an error as a report states it."""
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__
