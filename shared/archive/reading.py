"""Reading the archive back: list the objects of a time range, read one as a table.

Listing prunes by partition: it lists the `dt=` prefixes, then the `hour=` prefixes of the days
at the ends of the range, and lists objects only under the hours inside it, so an object outside
the range is never listed beyond its prefix, nor downloaded. Every object reads as a table of
`columns.SCHEMA`, whatever its format: NDJSON through the same mapping the Parquet writer uses.
"""

from __future__ import annotations

import gzip
import io
import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta

import msgspec
import pyarrow as pa
import pyarrow.parquet as pq

from shared.archive import columns
from shared.archive.naming import ROOTS

FORMAT_OF_SUFFIX = {".ndjson.gz": "ndjson", ".parquet": "parquet"}
_PARTITION = re.compile(r"dt=(\d{4}-\d{2}-\d{2})/hour=(\d{2})/")
_BOUND = re.compile(r"(\d{4}-\d{2}-\d{2})(?:[T ](\d{2})(?::\d{2}(?::\d{2}(?:\.\d+)?)?)?)?Z?")
_ndjson = msgspec.json.Decoder()


class ObjectGone(Exception):
    """An object listed a moment ago is gone (compaction merged and removed it meanwhile)."""


@dataclass(frozen=True, order=True)
class ArchivedObject:
    key: str
    dt: date
    hour: int
    size: int
    format: str

    @property
    def partition(self) -> str:
        return f"dt={self.dt.isoformat()}/hour={self.hour:02d}/"


@dataclass(frozen=True)
class HourRange:
    """Whole UTC hours from `start` to `end`, both included; None is open on that side."""

    start: datetime | None = None
    end: datetime | None = None

    def holds_day(self, day: date) -> bool:
        first, last = self._days()
        return (first is None or day >= first) and (last is None or day <= last)

    def holds_hour(self, day: date, hour: int) -> bool:
        moment = datetime(day.year, day.month, day.day, hour, tzinfo=UTC)
        return (self.start is None or moment >= self.start) and (
            self.end is None or moment <= self.end
        )

    def whole_day(self, day: date) -> bool:
        return self.holds_hour(day, 0) and self.holds_hour(day, 23)

    def _days(self) -> tuple[date | None, date | None]:
        return (
            self.start.date() if self.start else None,
            self.end.date() if self.end else None,
        )


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


def hour_range(start: str | None, end: str | None) -> HourRange:
    """The hours `--from start --to end` name (both included; None is open on that side);
    ValueError names what is wrong."""
    hours = HourRange(
        parse_bound(start) if start else None, parse_bound(end, end=True) if end else None
    )
    if hours.start and hours.end and hours.start > hours.end:
        raise ValueError(f"--from {start} is after --to {end}")
    return hours


def list_objects(client, bucket: str, prefix: str, hours: HourRange) -> list[ArchivedObject]:
    """Every archived object in `hours`, under every root (each format's and the compacted
    one), in key order."""
    found: list[ArchivedObject] = []
    for root in ROOTS:
        found += _objects_in_range(client, bucket, f"{prefix}{root}", hours)
    return sorted(found)


def list_partition(client, bucket: str, prefix: str, day: date, hour: int) -> list[ArchivedObject]:
    """The objects of one hour, under every root, in key order."""
    partition = f"dt={day.isoformat()}/hour={hour:02d}/"
    return sorted(
        item
        for root in ROOTS
        for item in _objects_under(client, bucket, f"{prefix}{root}{partition}")
    )


def _objects_in_range(client, bucket: str, root: str, hours: HourRange) -> list[ArchivedObject]:
    found: list[ArchivedObject] = []
    for day_prefix in _common_prefixes(client, bucket, root):
        day = _day_of(day_prefix)
        if day is None or not hours.holds_day(day):
            continue
        if hours.whole_day(day):
            found += _objects_under(client, bucket, day_prefix)
            continue
        for hour_prefix in _common_prefixes(client, bucket, day_prefix):
            hour = _hour_of(hour_prefix)
            if hour is not None and hours.holds_hour(day, hour):
                found += _objects_under(client, bucket, hour_prefix)
    return found


def read_object(client, bucket: str, item: ArchivedObject) -> pa.Table:
    """The object's rows, as a table of `columns.SCHEMA`."""
    try:
        body = client.get_object(Bucket=bucket, Key=item.key)["Body"].read()
    except client.exceptions.NoSuchKey:
        raise ObjectGone(item.key) from None
    if item.format == "parquet":
        return pq.read_table(io.BytesIO(body), schema=columns.SCHEMA)
    return columns.to_rows(_ndjson.decode_lines(gzip.decompress(body)))


def _common_prefixes(client, bucket: str, prefix: str) -> Iterator[str]:
    pages = client.get_paginator("list_objects_v2").paginate(
        Bucket=bucket, Prefix=prefix, Delimiter="/"
    )
    for page in pages:
        for common in page.get("CommonPrefixes", []):
            yield common["Prefix"]


def _objects_under(client, bucket: str, prefix: str) -> Iterator[ArchivedObject]:
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for item in page.get("Contents", []):
            archived = _archived(item["Key"], item["Size"])
            if archived is not None:
                yield archived


def _archived(key: str, size: int) -> ArchivedObject | None:
    """The object's partition and format from its key; None for anything else in the prefix."""
    match = _PARTITION.search(key)
    fmt = next((f for suffix, f in FORMAT_OF_SUFFIX.items() if key.endswith(suffix)), None)
    if match is None or fmt is None:
        return None
    return ArchivedObject(key, date.fromisoformat(match[1]), int(match[2]), size, fmt)


def _day_of(prefix: str) -> date | None:
    match = re.search(r"dt=(\d{4}-\d{2}-\d{2})/$", prefix)
    return date.fromisoformat(match[1]) if match else None


def _hour_of(prefix: str) -> int | None:
    match = re.search(r"hour=(\d{2})/$", prefix)
    return int(match[1]) if match else None
