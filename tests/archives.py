"""Archives for the query tests, written by the real writers: gzip NDJSON through `Buffer` and
`ObjectStore` as the consumer writes it, with ARCHIVE_FORMAT ndjson or parquet.

`FLUSHES` holds deliberate duplicates of `messageId`: in two objects of one hour, across hours,
across days, twice in one object, and at the same `receivedAt` in two objects; and one event
whose `messageId` is an empty string. The expected answers below are counted by hand.
"""

from __future__ import annotations

import contextlib
import dataclasses
import uuid
from collections.abc import Iterable, Iterator
from datetime import datetime
from typing import Any

import pyarrow as pa
import redis

from shared.archive import Buffer, ObjectStore, columns
from shared.archive.compaction import Compactor, steps
from shared.archive.compaction.dedup import ORDER
from shared.archive.formats import parquet
from shared.settings import Settings
from tests.conftest import archived_keys

Entry = tuple[bytes, list[dict[str, Any]]]
# The columns every reader sees, as docs/querying.md documents them (restated here, not read from
# `columns.SCHEMA`, so that a change of the schema fails the tests that check it).
DOCUMENTED_COLUMNS = [
    "message_id",
    "type",
    "event",
    "name",
    "user_id",
    "anonymous_id",
    "group_id",
    "previous_id",
    "source",
    "timestamp",
    "original_timestamp",
    "sent_at",
    "received_at",
    "properties",
    "traits",
    "context",
    "integrations",
    "extra",
    # Derived from `context` (issue 26), after the columns older objects hold.
    "country",
    "country_code",
    "region",
    "city",
    "browser",
    "os",
    "device",
    "is_bot",
]
# The columns of every Parquet object written before issue 26.
BEFORE_DERIVED_COLUMNS = DOCUMENTED_COLUMNS[: DOCUMENTED_COLUMNS.index("extra") + 1]


def ev(message_id: str, received_at: str, event: str, user: str, **fields: Any) -> dict[str, Any]:
    """A track event as the consumer archives it (stamped by ingest)."""
    stamp = received_at if "T" in received_at else f"2024-03-05T{received_at}:00.000Z"
    return {
        "type": "track",
        "messageId": message_id,
        "event": event,
        "userId": user,
        "source": "web",
        "properties": {"plan": "pro", **fields.pop("properties", {})},
        "context": {"library": {"name": "analytics-python", "version": "2.3.2"}},
        "timestamp": stamp,
        "receivedAt": stamp,
        **fields,
    }


FLUSHES: list[list[Entry]] = [
    [
        (
            b"1709650000000-0",
            [
                ev("m1", "13:05", "Signed Up", "u1", properties={"copy": 1}),
                ev("m2", "13:06", "Signed Up", "u2", properties={"copy": 1}),
                ev("m3", "13:07", "Page Viewed", "u1", channel="server"),
            ],
        ),
        (b"1709650000001-0", [ev("m4", "14:01", "Signed Up", "u3", properties={"copy": 1})]),
    ],
    [
        # A retry of m2 in the same hour, in another object.
        (b"1709650000002-0", [ev("m2", "13:20", "Signed Up", "u2", properties={"copy": 2})]),
        (b"1709650000003-0", [ev("m5", "14:10", "Order Completed", "u2")]),
    ],
    [
        # A retry of m1 that landed in the next hour.
        (b"1709650000004-0", [ev("m1", "14:30", "Signed Up", "u1", properties={"copy": 2})]),
        (
            b"1709650000005-0",
            [
                ev("m6", "15:00", "Order Completed", "u1"),
                ev("", "15:01", "Page Viewed", "u4"),  # an empty messageId reads as NULL
            ],
        ),
    ],
    [
        (b"1709650000006-0", [ev("m7", "2024-03-04T23:59:00.000Z", "Page Viewed", "u3")]),
        (
            b"1709650000007-0",
            [
                ev("m8", "2024-03-06T00:00:00.000Z", "Signed Up", "u2"),
                # A retry of m4 on the next day.
                ev("m4", "2024-03-06T00:01:00.000Z", "Signed Up", "u3", properties={"copy": 2}),
            ],
        ),
    ],
    [
        # m9 twice in one object at the same receivedAt: the first line wins ...
        (
            b"1709650000008-0",
            [
                ev("m9", "15:30", "Page Viewed", "u1", properties={"copy": 1}),
                ev("m9", "15:30", "Page Viewed", "u1", properties={"copy": 2}),
            ],
        ),
    ],
    [
        # ... and a third copy at the same receivedAt in an object later in key order loses.
        (b"1709650000009-0", [ev("m9", "15:30", "Page Viewed", "u1", properties={"copy": 3})]),
    ],
]

RAW_ROWS = 15
EVENTS = 10
BY_EVENT = {"Signed Up": 4, "Page Viewed": 4, "Order Completed": 2}
BY_HOUR = {
    ("2024-03-04", 23): 1,
    ("2024-03-05", 13): 3,
    ("2024-03-05", 14): 2,
    ("2024-03-05", 15): 3,
    ("2024-03-06", 0): 1,
}
RAW_BY_HOUR = {
    ("2024-03-04", 23): 1,
    ("2024-03-05", 13): 4,
    ("2024-03-05", 14): 3,
    ("2024-03-05", 15): 5,
    ("2024-03-06", 0): 2,
}
BY_USER = {"u1": 4, "u2": 3, "u3": 2, "u4": 1}
# The copy each duplicated messageId keeps (properties.copy).
KEPT_COPY = {"m1": 1, "m2": 1, "m4": 1, "m9": 1}
# --from 2024-03-05T14 --to 2024-03-05T15: m1's copy in hour 14 is the earliest the range holds.
IN_RANGE_BY_EVENT = {"Signed Up": 2, "Order Completed": 2, "Page Viewed": 2}
IN_RANGE_OBJECTS = 6  # hour 14: flushes 1, 2, 3; hour 15: flushes 3, 5, 6


def write_ndjson(store: ObjectStore, prefix: str, entries: Iterable[Entry]) -> list[str]:
    """One flush as the consumer writes it: a gzip NDJSON object per partition."""
    return _write_flush(store, prefix, entries, "ndjson")


def write_parquet(store: ObjectStore, prefix: str, entries: Iterable[Entry]) -> list[str]:
    """One flush as the consumer writes it with ARCHIVE_FORMAT=parquet."""
    return _write_flush(store, prefix, entries, "parquet")


def _write_flush(store: ObjectStore, prefix: str, entries: Iterable[Entry], fmt: str) -> list[str]:
    buffer = Buffer(format=fmt)
    for entry_id, events in entries:
        buffer.add(entry_id, events)
    keys = []
    for key, body, _ in buffer.objects(prefix):
        store.put(key, body, buffer.content_type)
        keys.append(key)
    return keys


def parquet_bytes(events: list[dict[str, Any]]) -> bytes:
    return parquet.write(columns.to_rows(events))


def write_archive(store: ObjectStore, prefix: str, formats: str = "ndjson") -> list[str]:
    """`FLUSHES` into the bucket: `formats` is ndjson, parquet, or mixed (alternating)."""
    keys = []
    for index, flush in enumerate(FLUSHES):
        fmt = formats if formats != "mixed" else ("ndjson", "parquet")[index % 2]
        keys += (write_ndjson if fmt == "ndjson" else write_parquet)(store, prefix, flush)
    return keys


def enriched(
    event: dict[str, Any], country: str | None, code: str | None = None, bot: bool = False
) -> dict[str, Any]:
    """`event` as ingest's enrichment stores it (issue 26's contract): `context.location`,
    `context.parsedUserAgent`, and `context.bot` for a bot's."""
    context = {**event.get("context", {})}
    if country is not None:
        context["location"] = {
            "country": country,
            "countryCode": code,
            "region": f"{country} region",
            "city": f"{country} city",
            "latitude": 48.9,
            "longitude": 2.3,
            "timeZone": "Europe/Paris",
        }
    context["parsedUserAgent"] = {
        "browser": "Chrome",
        "browserVersion": "120.0.0",
        "os": "Mac OS X",
        "osVersion": "10.15.7",
        "device": "Mac",
    }
    if bot:
        context["bot"] = True
    return {**event, "context": context}


@contextlib.contextmanager
def release_before_derived_columns() -> Iterator[None]:
    """The archive's code as the release before issue 26 ran it: `columns.SCHEMA` without the
    derived columns (`columns.to_rows`, the Parquet writer, the readers and compaction's spills
    follow it), nothing derived. What it writes is what that release wrote (the writer is the
    same code over the older schema)."""
    old_schema = pa.schema([columns.SCHEMA.field(name) for name in BEFORE_DERIVED_COLUMNS])
    saved = (columns.SCHEMA, steps._SPILL_SCHEMA)
    columns.SCHEMA = old_schema
    steps._SPILL_SCHEMA = old_schema.append(pa.field(ORDER, pa.int64()))
    try:
        yield
    finally:
        columns.SCHEMA, steps._SPILL_SCHEMA = saved


class Crash(BaseException):
    """The process died here: no `except Exception` of the code under test catches it."""


class Client:
    """The S3 client, passed through, that can die at its n-th change (a put, a copy or a
    delete), as a killed process would, and can look at the bucket after each change."""

    def __init__(self, client: Any, die_at: int | None = None, after_change=None) -> None:
        self._client = client
        self.die_at = die_at
        self.after_change = after_change
        self.changes = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)

    def _change(self, method: str, **kwargs: Any) -> Any:
        if self.die_at is not None and self.changes >= self.die_at:
            raise Crash(f"killed before change {self.changes}: {method} {kwargs.get('Key', '')}")
        self.changes += 1
        answer = getattr(self._client, method)(**kwargs)
        if self.after_change:
            self.after_change()
        return answer

    def put_object(self, **kwargs: Any) -> Any:
        return self._change("put_object", **kwargs)

    def copy_object(self, **kwargs: Any) -> Any:
        return self._change("copy_object", **kwargs)

    def delete_objects(self, **kwargs: Any) -> Any:
        return self._change("delete_objects", **kwargs)

    def delete_object(self, **kwargs: Any) -> Any:
        return self._change("delete_object", **kwargs)


class Calls:
    """The S3 calls a client makes, from boto3's event hooks."""

    def __init__(self, client: Any) -> None:
        self.gets: list[str] = []
        self.lists: list[tuple[str, str | None]] = []
        client.meta.events.register("before-parameter-build.s3.GetObject", self._get)
        client.meta.events.register("before-parameter-build.s3.ListObjectsV2", self._list)

    def _get(self, params: dict[str, Any], **_: Any) -> None:
        self.gets.append(params["Key"])

    def _list(self, params: dict[str, Any], **_: Any) -> None:
        self.lists.append((params.get("Prefix", ""), params.get("Delimiter")))


def objects(s3: Any, bucket: str) -> dict[str, bytes]:
    """Every object in the bucket, by key (staging and set-aside objects included)."""
    store = ObjectStore(s3, bucket)
    return {key: store.get(key) for key in archived_keys(s3, bucket)}


def compactor(settings: Settings, client: Any, now: datetime, **options: Any) -> Compactor:
    """A compactor over `client` (moto's, or a `Client` that dies), whose clock says `now`."""
    store = ObjectStore(client, settings.s3_bucket)
    redis_client = redis.Redis.from_url(settings.redis_url)
    return Compactor(settings, store, redis_client, clock=now.timestamp, **options)


def fresh_bucket(s3: Any, settings: Settings) -> Settings:
    """`settings` with a bucket of their own, created empty."""
    settings = dataclasses.replace(settings, s3_bucket=f"archive-{uuid.uuid4().hex[:10]}")
    s3.create_bucket(Bucket=settings.s3_bucket)
    return settings
