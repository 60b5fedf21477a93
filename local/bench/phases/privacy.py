"""Phase `privacy`: how fast a deletion finds what it must rewrite locally, and rewrites it.

An archive of a fifth of the plan's events (200,000 in a full run, 20,000 with --quick; 1%
stored twice) is written as gzip NDJSON and as Parquet by the real writers
(`archive_reading.write_archive`); three of its userIds are the subjects. Each format's archive
is then searched as a deletion pass searches it without Athena (`LocalFinder`: every object
downloaded from moto's S3 server, decoded and read into DuckDB, then the anonymous IDs linked to
the subjects and the objects holding their events asked in SQL): events scanned per second, the
median of the plan's repeats, the formats taking turns so that a busy spell of a shared machine
falls on both. Last, each object found is rewritten without the subjects as the pass rewrites
one (`rewrite.rewrite`: read, filter, encode by its own writer, PUT): objects rewritten per
second. The pass's hour locks, markers and sweeps of older versions are left out: they need
Redis and a versioned bucket, and this phase starts S3 alone.

The writer repeats a pool of 1,000 events, so nearly every object holds some of the subjects'
events and is rewritten whole: the cost per object of the worst case. A billion events are
extrapolated at the scan's rate, in time and in the memory the local finder would hold.
"""

from __future__ import annotations

import time
from typing import Any

import pyarrow as pa

from local.bench import archive_reading, report
from local.bench.context import Bench, say
from shared.archive import ObjectStore, query, reading
from shared.archive.privacy.finder import LocalFinder
from shared.archive.privacy.rewrite import rewrite
from shared.archive.privacy.subjects import Subjects
from shared.settings import Settings

NEEDS = frozenset({"s3"})
FORMATS = ("ndjson", "parquet")
SUBJECTS = 3
SHARE_OF_ARCHIVE = 5  # this phase's archive is the plan's archive_events divided by this
BILLION = 1_000_000_000


def prefix(fmt: str) -> str:
    """Where the archive of `fmt` is written."""
    return f"bench/privacy-{fmt}/"


def run(bench: Bench) -> dict[str, Any]:
    events = bench.plan.archive_events // SHARE_OF_ARCHIVE
    say(f"\n== privacy deletion: the local scan and rewrite of {events:,} archived events")
    store = bench.object_store()
    level = Settings.from_env(bench.stack.env).gzip_level
    result: dict[str, Any] = {"events": events, "subjects": SUBJECTS, "scan": {}, "rewrite": {}}
    for fmt in FORMATS:
        result["rows_stored"] = archive_reading.write_archive(store, prefix(fmt), events, fmt)
    user_ids = subjects_in(store, prefix(FORMATS[0]), SUBJECTS)
    runs: dict[str, list[dict[str, Any]]] = {fmt: [] for fmt in FORMATS}
    for _ in range(bench.plan.repeat):
        for fmt in FORMATS:
            runs[fmt].append(scan(store, prefix(fmt), user_ids))
    for fmt in FORMATS:
        ordered = sorted(runs[fmt], key=lambda row: row["events_per_s"])
        runs_eps = [row["events_per_s"] for row in ordered]
        result["scan"][fmt] = {**ordered[len(ordered) // 2], "runs_eps": runs_eps}
        say(report.privacy_scan_line(fmt, result["scan"][fmt]))
    for fmt in FORMATS:
        found = result["scan"][fmt].pop("found")
        subjects = Subjects(user_ids=user_ids).with_links(result["scan"][fmt].pop("linked_ids"))
        result["rewrite"][fmt] = rewrite_found(store, prefix(fmt), found, subjects, level)
        say(report.privacy_rewrite_line(fmt, result["rewrite"][fmt]))
    return {"privacy": result}


def subjects_in(store: ObjectStore, at: str, count: int) -> frozenset[str]:
    """The first `count` distinct userIds of the archive's first object."""
    first = reading.list_objects(store, at, query.EVERY_HOUR)[0]
    user_ids = reading.read_object(store, first)["user_id"].drop_null().to_pylist()
    return frozenset(list(dict.fromkeys(user_ids))[:count])


def scan(store: ObjectStore, at: str, user_ids: frozenset[str]) -> dict[str, Any]:
    """One search of the archive under `at` as a deletion pass makes it: its figures, and
    (`found`, `linked_ids`) what it found, for the rewrite."""
    arrow_before = pa.total_allocated_bytes()
    started = time.monotonic()
    finder = LocalFinder(store, at)
    try:
        loaded = time.monotonic()
        # The rows decoded, which DuckDB reads in place: what the process holds per event.
        held = pa.total_allocated_bytes() - arrow_before
        linked = finder.linked(user_ids)
        found = finder.objects(Subjects(user_ids=user_ids).with_links(linked))
        done = time.monotonic()
        rows = finder.archive.rows
    finally:
        finder.close()
    events_per_s = rows / (done - started)
    return {
        "objects": finder.objects_scanned,
        "events": rows,
        "load_s": round(loaded - started, 2),
        "query_s": round(done - loaded, 3),
        "total_s": round(done - started, 2),
        "events_per_s": round(events_per_s),
        "arrow_mb": round(held / 2**20),
        "arrow_bytes_per_event": round(held / rows) if rows else None,
        "linked": len(linked),
        "objects_found": len(found),
        "billion_events_h": round(BILLION / events_per_s / 3600, 1),
        "billion_events_gb": round(held / rows * BILLION / 1e9) if rows else None,
        "found": sorted(found),
        "linked_ids": sorted(linked),
    }


def rewrite_found(
    store: ObjectStore, at: str, keys: list[str], subjects: Subjects, level: int
) -> dict[str, Any]:
    """Every object of `keys` rewritten without `subjects` as the pass rewrites one: timed."""
    wanted = set(keys)
    items = [i for i in reading.list_objects(store, at, query.EVERY_HOUR) if i.key in wanted]
    started = time.monotonic()
    done = [rewrite(store, item, subjects, level) for item in items]
    seconds = time.monotonic() - started
    deleted = sum(result.removed for result in done if result)
    kept = sum(result.kept for result in done if result)
    return {
        "objects": len(items),
        "rewritten": sum(1 for result in done if result),
        "mb": round(sum(item.size for item in items) / 2**20, 1),
        "events_deleted": deleted,
        "events_kept": kept,
        "seconds": round(seconds, 2),
        "objects_per_s": round(len(items) / seconds, 1) if seconds else None,
        "events_per_s": round((deleted + kept) / seconds) if seconds else None,
    }
