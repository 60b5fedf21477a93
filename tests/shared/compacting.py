"""What the compaction tests share (tests/shared/test_compaction*.py): a compactor on moto's
S3 at a fixed clock, the archive as `event-ingest query` sees it, the busy hours that need
several parts, and the scenarios that the kill tests run.

`view` is what `event-ingest query` answers (each `source` and `message_id` once: the earliest
`received_at`, then the first object in key order, then the first row), computed here in Python
so these tests do not need DuckDB, as the compactor does not.
"""

from __future__ import annotations

import itertools
from collections import Counter
from datetime import UTC, datetime
from typing import Any

from shared.archive import ObjectStore, columns, reading
from shared.archive.compaction import Compactor
from shared.archive.naming import ROOTS, compacted_part
from shared.archive.partitions import HourRange
from shared.settings import Settings
from tests import archives
from tests.archives import ev
from tests.conftest import archived_keys

NOW = datetime(2024, 3, 7, tzinfo=UTC)
HOURS = ["2024-03-04T23", "2024-03-05T13", "2024-03-05T14", "2024-03-05T15", "2024-03-06T00"]


def at(label: str) -> datetime:
    return datetime.strptime(label, "%Y-%m-%dT%H").replace(tzinfo=UTC)


def make(settings: Settings, s3: Any, client: Any = None, now=NOW, **options: Any) -> Compactor:
    return archives.compactor(settings, client or s3, now, **options)


def store_of(s3: Any, settings: Settings) -> ObjectStore:
    return ObjectStore(s3, settings.s3_bucket)


def objects(s3: Any, settings: Settings) -> dict[str, bytes]:
    return archives.objects(s3, settings.s3_bucket)


def listed(s3: Any, settings: Settings) -> list[reading.ArchivedObject]:
    """Every archived object, raw and compacted, of every root, in key order."""
    found = set()
    for root in ROOTS:
        prefix = settings.s3_prefix + root
        found.update(reading.list_objects(ObjectStore(s3, settings.s3_bucket), prefix, HourRange()))
    return sorted(found)


def rows(
    s3: Any, settings: Settings, items: list[reading.ArchivedObject] | None = None
) -> list[dict[str, Any]]:
    """Every archived row, in key order, with its object's key, hour and place in it (of
    `items`, the archive `listed` a moment ago, when given)."""
    found = []
    for item in listed(s3, settings) if items is None else items:
        for place, row in enumerate(
            reading.read_object(ObjectStore(s3, settings.s3_bucket), item).to_pylist()
        ):
            hour = f"{item.dt.isoformat()}T{item.hour:02d}"
            found.append({**row, "_key": item.key, "_hour": hour, "_place": place})
    return found


def essence(row: dict[str, Any]) -> tuple:
    """What a query shows of a row: its columns and partition (not which object held it)."""
    return (row["_hour"], *(row[name] for name in columns.SCHEMA.names))


def view(s3: Any, settings: Settings) -> Counter:
    """What `event-ingest query` answers over the whole archive, as a multiset of rows."""
    first: dict[tuple, tuple] = {}
    unkeyed = []
    for row in rows(s3, settings):
        if row["message_id"] is None:
            unkeyed.append(essence(row))
            continue
        key = (row["source"], row["message_id"])
        rank = (row["received_at"], row["_key"], row["_place"])
        if key not in first or rank < first[key][0]:
            first[key] = (rank, essence(row))
    return Counter([e for _, e in first.values()] + unkeyed)


def stored(
    s3: Any, settings: Settings, items: list[reading.ArchivedObject] | None = None
) -> Counter:
    """Every stored row, duplicates included."""
    return Counter(essence(row) for row in rows(s3, settings, items))


def archive_keys(s3: Any, settings: Settings) -> list[str]:
    return [item.key for item in listed(s3, settings)]


def assert_fully_compacted(s3: Any, settings: Settings, expected: Counter) -> None:
    """Each event stored once, as the query chose it; only compacted objects; no staging.
    The archive is listed once for both checks, and the bucket's keys without their bodies:
    the kill tests call this after every kill, where listing was most of its cost."""
    items = listed(s3, settings)
    assert stored(s3, settings, items) == expected
    keys = archived_keys(s3, settings.s3_bucket)  # every object, staging and set-aside too
    assert keys == [item.key for item in items], "staging or stray objects left"
    assert all(compacted_part(key) for key in keys), keys


# Small enough that the busy hours need several parts and split steps.
SMALL = {"object_bytes": 2500, "step_bytes": 3000}


def write_busy_hours(store: ObjectStore, prefix: str) -> None:
    """Hour 13: 8 objects of 30 events over 120 IDs (many copies, at times equal to the
    minute), from two sources that share IDs; hour 14: copies of some of them (a retry across
    the boundary), new ones, and anonymous ones (no source) with the same IDs."""
    entry = itertools.count(1)
    for obj in range(8):
        events = [
            ev(
                f"m{(obj * 23 + i * 7) % 120}",
                f"13:{(obj * 7 + i) % 60:02d}",
                "e",
                f"u{i % 5}",
                properties={"o": obj, "i": i},
                source="backend" if obj == 4 else "web",
            )
            for i in range(30)
        ]
        write = archives.write_parquet if obj % 3 == 0 else archives.write_ndjson
        write(store, prefix, [(f"{next(entry):03d}-0".encode(), events)])
    for obj in range(3):
        events = [
            ev(
                f"{'m' if i % 2 else 'n'}{obj * 10 + i}",
                f"14:{i:02d}",
                "e",
                "u",
                properties={"o": obj},
            )
            for i in range(20)
        ]
        if obj == 2:
            for event in events:
                del event["source"]  # anonymous mode
        archives.write_ndjson(store, prefix, [(f"{next(entry):03d}-0".encode(), events)])


# --- the kill tests' scenarios ---------------------------------------------------------------


def prepare_direct(s3: Any, settings: Settings) -> dict[str, Any]:
    archives.write_archive(store_of(s3, settings), settings.s3_prefix, "mixed")
    return {}


def prepare_parts(s3: Any, settings: Settings) -> dict[str, Any]:
    write_busy_hours(store_of(s3, settings), settings.s3_prefix)
    return {"object_bytes": 8000, "step_bytes": 8000}  # hour 13: 4 parts, 4 split steps


def prepare_late(s3: Any, settings: Settings) -> dict[str, Any]:
    """A compacted archive, then late objects: one in hour 13 with an earlier copy of an event
    compacted in hour 14 (which must drop its own), and one in hour 15."""
    store = store_of(s3, settings)
    archives.write_archive(store, settings.s3_prefix, "mixed")
    make(settings, s3).run()
    archives.write_ndjson(
        store,
        settings.s3_prefix,
        [
            (
                b"1709650000000-1",
                [
                    ev("m5", "13:59", "Order Completed", "u2", properties={"late": 1}),
                    ev("m11", "13:58", "Signed Up", "u6"),
                ],
            )
        ],
    )
    archives.write_parquet(
        store,
        settings.s3_prefix,
        [
            (
                b"1709650000000-2",
                [
                    ev("m6", "15:20", "Order Completed", "u1", properties={"late": 1}),
                    ev("m12", "15:21", "Signed Up", "u6"),
                ],
            )
        ],
    )
    return {}


SCENARIOS = {"one part": prepare_direct, "parts": prepare_parts, "late objects": prepare_late}


def snapshot(s3: Any, settings: Settings) -> dict[str, tuple[bytes, str]]:
    found = {}
    for key in objects(s3, settings):
        answer = s3.get_object(Bucket=settings.s3_bucket, Key=key)
        found[key] = (answer["Body"].read(), answer["ContentType"])
    return found


def restore(s3: Any, settings: Settings, snapped: dict[str, tuple[bytes, str]]) -> None:
    for key, (body, content_type) in snapped.items():
        s3.put_object(Bucket=settings.s3_bucket, Key=key, Body=body, ContentType=content_type)
