"""Phase `archive`: the archive read back. The plan's archive (1M events in a full run, 1%
stored twice) is written as gzip NDJSON and as Parquet by the real writers, and
`event-ingest query`'s group-by timed over each, in this process (`archive_reading`) and as a
process of its own: its wall time and peak RSS (`query_memory.process_row`). The `compaction`
phase compacts the NDJSON archive written here."""

from __future__ import annotations

import os
from typing import Any

from local.bench import archive_reading, query_memory, report
from local.bench.context import Bench, say

NEEDS = frozenset({"s3"})
FORMATS = ("ndjson", "parquet")


def prefix(fmt: str) -> str:
    """Where the archive of `fmt` is written."""
    return f"bench/archive-{fmt}/"


def run(bench: Bench) -> dict[str, Any]:
    events = bench.plan.archive_events
    say(f"\n== the archive read back: a group-by over {events:,} events, as NDJSON and Parquet")
    store = bench.object_store()
    env = {**os.environ, **bench.stack.env}
    result: dict[str, Any] = {"events": events, "query": {}, "process": {}}
    for fmt in FORMATS:
        result["rows_stored"] = archive_reading.write_archive(store, prefix(fmt), events, fmt)
        result["query"][fmt] = archive_reading.time_query(store, prefix(fmt))
        say(report.archive_query_line(fmt, result["query"][fmt]))
        row = query_memory.process_row(env, prefix(fmt), result["rows_stored"])
        result["process"][fmt] = row
        say(report.query_process_line(fmt, row))
    return {"archive": result}
