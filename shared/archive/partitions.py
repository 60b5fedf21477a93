"""Hours and partitions: the one owner of the archive's Hive-style layout.

Every object of the archive lies under `dt=YYYY-MM-DD/hour=HH/` of its events' `receivedAt`
(UTC), so Athena, Spark or DuckDB can prune by `dt` and `hour`. This module builds those paths,
parses them back out of keys and listing prefixes, and reads the hour ranges people type
(`--from 2024-03-05 --to 2024-03-05T14`); nothing else in the product spells `dt=` or `hour=`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

HOUR = timedelta(hours=1)
# A partition anywhere in a key; named groups, so that other patterns can embed it.
PARTITION_PATTERN = r"dt=(?P<dt>\d{4}-\d{2}-\d{2})/hour=(?P<hour>\d{2})/"
_PARTITION = re.compile(PARTITION_PATTERN)
_DAY_PREFIX = re.compile(r"dt=(\d{4}-\d{2}-\d{2})/$")
_HOUR_PREFIX = re.compile(r"hour=(\d{2})/$")
_BOUND = re.compile(r"(\d{4}-\d{2}-\d{2})(?:[T ](\d{2})(?::\d{2}(?::\d{2}(?:\.\d+)?)?)?)?Z?")


class UnarchivableEvent(ValueError):
    """An event the archive cannot place (no usable `receivedAt`)."""


# --- building paths -------------------------------------------------------------------------


def partition_path(event: dict[str, Any]) -> str:
    """Hive-style partition of an event by the server's `receivedAt` (ISO-8601 UTC)."""
    received_at = event.get("receivedAt")
    # Shape check, not a full parse: the server wrote this string as YYYY-MM-DDTHH:MM:SS.mmmZ.
    if not (
        isinstance(received_at, str)
        and len(received_at) >= 13
        and received_at[4] == "-"
        and received_at[10] == "T"
    ):
        raise UnarchivableEvent(f"event has no usable receivedAt: {received_at!r}")
    return f"dt={received_at[:10]}/hour={received_at[11:13]}/"


def day_partition(day: date) -> str:
    """`dt=YYYY-MM-DD/`: a day's prefix (dead letters are partitioned by day alone)."""
    return f"dt={day.isoformat()}/"


def partition(day: date, hour: int) -> str:
    """`dt=YYYY-MM-DD/hour=HH/`"""
    return f"{day_partition(day)}hour={hour:02d}/"


def partition_of(hour: datetime) -> str:
    """The partition of a UTC hour."""
    return partition(hour.date(), hour.hour)


# --- reading them back ----------------------------------------------------------------------


def hour_at(day: date, hour: int) -> datetime:
    """The UTC hour `hour` of `day`."""
    return datetime(day.year, day.month, day.day, hour, tzinfo=UTC)


def partition_in(key: str) -> tuple[date, int] | None:
    """The day and hour of the partition a key lies in; None when it lies in none."""
    match = _PARTITION.search(key)
    if match is None:
        return None
    return date.fromisoformat(match["dt"]), int(match["hour"])


def hour_in(key: str) -> datetime | None:
    """The UTC hour of the partition a key lies in; None when it lies in none."""
    found = partition_in(key)
    return hour_at(*found) if found else None


def day_of_prefix(prefix: str) -> date | None:
    """The day of a listed `.../dt=YYYY-MM-DD/` prefix; None for any other prefix."""
    match = _DAY_PREFIX.search(prefix)
    return date.fromisoformat(match[1]) if match else None


def hour_of_prefix(prefix: str) -> int | None:
    """The hour of a listed `.../hour=HH/` prefix; None for any other prefix."""
    match = _HOUR_PREFIX.search(prefix)
    return int(match[1]) if match else None


# --- hours as people name them --------------------------------------------------------------


def hour_label(hour: datetime) -> str:
    """`YYYY-MM-DDTHH`: how reports and the CLI name an hour."""
    return hour.strftime("%Y-%m-%dT%H")


def parse_bound(text: str, end: bool = False) -> datetime:
    """`YYYY-MM-DD` or `YYYY-MM-DDTHH` (or `YYYY-MM-DD HH`), UTC; minutes and seconds after the
    hour (`THH:MM[:SS]`, an optional `Z`) are allowed and do not narrow it. As an end, a date
    means its last hour."""
    match = _BOUND.fullmatch(text.strip())
    try:
        if match is None:
            raise ValueError
        day = datetime.strptime(match[1], "%Y-%m-%d").replace(tzinfo=UTC)
        if match[2] is None:
            return day + timedelta(hours=23) if end else day
        return day.replace(hour=int(match[2]))
    except ValueError:
        raise ValueError(
            f"{text.strip()!r} is not a UTC date (YYYY-MM-DD) or hour (YYYY-MM-DDTHH)"
        ) from None


def parse_hour(text: str) -> datetime:
    """`YYYY-MM-DDTHH` (or `YYYY-MM-DD HH`), UTC: a bound `parse_bound` reads, but not a bare
    date."""
    if re.fullmatch(r"\d{4}-\d{2}-\d{2}", text.strip()):
        raise ValueError(f"{text.strip()!r} is not an hour (YYYY-MM-DDTHH)")
    return parse_bound(text)


@dataclass(frozen=True)
class HourRange:
    """Whole UTC hours from `start` to `end`, both included; None is open on that side."""

    start: datetime | None = None
    end: datetime | None = None

    def holds_day(self, day: date) -> bool:
        first = self.start.date() if self.start else None
        last = self.end.date() if self.end else None
        return (first is None or day >= first) and (last is None or day <= last)

    def holds_hour(self, day: date, hour: int) -> bool:
        moment = hour_at(day, hour)
        return (self.start is None or moment >= self.start) and (
            self.end is None or moment <= self.end
        )

    def whole_day(self, day: date) -> bool:
        return self.holds_hour(day, 0) and self.holds_hour(day, 23)


def hour_range(start: str | None, end: str | None) -> HourRange:
    """The hours `--from start --to end` name (both included; None is open on that side);
    ValueError names what is wrong."""
    hours = HourRange(
        parse_bound(start) if start else None, parse_bound(end, end=True) if end else None
    )
    if hours.start and hours.end and hours.start > hours.end:
        raise ValueError(f"--from {start} is after --to {end}")
    return hours
