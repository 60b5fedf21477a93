"""The archive read back: a group-by over an archive of N events stored as gzip NDJSON, as
Parquet, and as Parquet after compaction; and the compaction's own throughput and peak memory
(in a process of its own: `compaction_memory`).

The archive is written by the real writers (`Buffer`, `ObjectStore`) into the benchmark's S3
server, in flushes of `FLUSH_EVENTS`, over closed hours of a past day, with 1% of the events
stored twice (a retried request in a later flush), so that deduplication has work to do.
"""

from __future__ import annotations

import random
import time
from datetime import UTC, datetime, timedelta
from typing import Any

from local.bench import compaction_memory, payloads
from shared.archive import Buffer, ObjectStore, query

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
    with query.open_archive(store, prefix) as archive:
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


def compact(env: dict[str, str], prefix: str) -> dict[str, Any]:
    """Compact every closed hour under `prefix`, in a process of its own (the settings of
    `env`): its throughput, and its peaks of RSS and of Arrow's memory pool."""
    row = compaction_memory.measure({**env, "S3_PREFIX": prefix})
    seconds = row["seconds"]
    return {
        **row,
        "events_per_s": round(row["events_read"] / seconds) if seconds else None,
        "peak_rss_mb": round(row["peak_rss_bytes"] / 2**20),
        "arrow_peak_mb": round(row["arrow_peak_bytes"] / 2**20),
    }


def compaction_memory_by_window(store: ObjectStore, env: dict[str, str]) -> dict[str, Any]:
    """An hour of 20,000 events compacted alone, then after 24 compacted hours of 200,000:
    the peaks of both (the DEDUP_WINDOW check must not grow with what the window holds)."""
    return memory_row(compaction_memory.compare(store, {**env, "S3_PREFIX": "bench/memory/"}))


def memory_row(measured: dict[str, Any]) -> dict[str, Any]:
    """`compaction_memory.compare`'s measurements as the report shows them, in MiB."""
    return {
        "alone_rss_mb": round(measured["alone"]["peak_rss_bytes"] / 2**20),
        "alone_arrow_mb": round(measured["alone"]["arrow_peak_bytes"] / 2**20),
        "after_rss_mb": round(measured["after_window"]["peak_rss_bytes"] / 2**20),
        "after_arrow_mb": round(measured["after_window"]["arrow_peak_bytes"] / 2**20),
        "rss_ratio": measured["rss_ratio"],
        "arrow_ratio": measured["arrow_ratio"],
    }
