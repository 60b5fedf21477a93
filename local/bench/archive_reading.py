"""The archive read back: a group-by over an archive of N events stored as gzip NDJSON, as
Parquet, and as Parquet after compaction; and the compaction's own throughput.

The archive is written by the real writers (`Buffer`, `ObjectStore`) into the benchmark's S3
server, in flushes of `FLUSH_EVENTS`, over closed hours of a past day, with 1% of the events
stored twice (a retried request in a later flush), so that deduplication has work to do.
"""

from __future__ import annotations

import dataclasses
import random
import time
from datetime import UTC, datetime, timedelta
from typing import Any

from local.bench import payloads
from shared import query
from shared.archive import Buffer, ObjectStore
from shared.compaction import Compactor
from shared.settings import Settings

FLUSH_EVENTS = 50_000
HOURS = 4
DUPLICATE_SHARE = 0.01
GROUP_BY = "SELECT event, count(*) AS n FROM events GROUP BY event ORDER BY n DESC"
FIRST_HOUR = datetime(2024, 5, 1, 8, tzinfo=UTC)


def write_archive(store: ObjectStore, prefix: str, events: int, fmt: str) -> int:
    """`events` distinct events (and 1% copies) over `HOURS` hours; returns rows stored."""
    rng = random.Random(7)
    pool = payloads.make_events(1000, rng)
    stored = 0
    entry = 0
    flush: list[dict[str, Any]] = []
    for index in range(events):
        event = dict(pool[index % len(pool)])
        event["messageId"] = f"bench-{index:09d}"
        at = FIRST_HOUR + timedelta(seconds=index * HOURS * 3600 / events)
        event["receivedAt"] = at.isoformat(timespec="milliseconds").replace("+00:00", "Z")
        flush.append(event)
        if rng.random() < DUPLICATE_SHARE:
            flush.append(dict(event))
        if len(flush) >= FLUSH_EVENTS or index == events - 1:
            entry += 1
            stored += _store_flush(store, prefix, fmt, entry, flush)
            flush = []
    return stored


def _store_flush(
    store: ObjectStore, prefix: str, fmt: str, entry: int, events: list[dict[str, Any]]
) -> int:
    buffer = Buffer(format=fmt)
    # One stream entry per 100 events, as ingest writes 100-event batches.
    for start in range(0, len(events), 100):
        buffer.add(f"{entry:06d}-{start}".encode(), events[start : start + 100])
    for key, body, _ in buffer.objects(prefix):
        store.put(key, body, buffer.content_type)
    return len(events)


def time_query(store: ObjectStore, prefix: str) -> dict[str, Any]:
    started = time.monotonic()
    with query.open_archive(store.client, store.bucket, prefix) as archive:
        loaded = time.monotonic()
        answer = list(archive.run(GROUP_BY).rows())
        done = time.monotonic()
        rows = archive.run("SELECT count(*) FROM raw_events").rows()
        raw_rows = next(rows)[0]
        distinct = next(archive.run("SELECT count(*) FROM events").rows())[0]
    return {
        "objects": len(archive.objects),
        "raw_rows": raw_rows,
        "events": distinct,
        "groups": len(answer),
        "load_s": round(loaded - started, 2),
        "query_s": round(done - loaded, 3),
        "total_s": round(done - started, 2),
    }


def compact(settings: Settings, prefix: str) -> dict[str, Any]:
    compactor = Compactor.from_settings(dataclasses.replace(settings, s3_prefix=prefix))
    started = time.monotonic()
    summary = compactor.run()
    seconds = time.monotonic() - started
    read = sum(hour.events_read for hour in summary.hours)
    return {
        "hours": len(summary.hours),
        "events_read": read,
        "events_written": sum(hour.events_written for hour in summary.hours),
        "seconds": round(seconds, 2),
        "events_per_s": round(read / seconds) if seconds else None,
        "errors": [hour.error for hour in summary.hours if hour.error],
    }
