"""Phase `compaction`: `event-ingest compact` over the NDJSON archive of the `archive` phase
(written here first when that phase did not run), in a process of its own: its throughput and
peak RSS; its peak memory for an hour alone and after a DEDUP_WINDOW of busy compacted hours;
the group-by over the compacted archive; and `event-ingest query`'s own peak RSS over 1M and
3M compacted events (`query_memory`). Its figures join the `archive` section."""

from __future__ import annotations

import os
from typing import Any

from local.bench import archive_reading, query_memory, report
from local.bench.context import Bench, say
from local.bench.phases import archive

NEEDS = frozenset({"redis", "s3"})  # compaction takes its hour locks in Redis


def run(bench: Bench) -> dict[str, Any]:
    events = bench.plan.archive_events
    say(f"\n== compaction of {events:,} archived events, its peak memory, and the group-by after")
    store = bench.object_store()
    ndjson = archive.prefix("ndjson")
    result = bench.results["archive"]
    if result is None:
        rows = archive_reading.write_archive(store, ndjson, events, "ndjson")
        result = {"events": events, "query": {}, "process": {}, "rows_stored": rows}
    env = {**os.environ, **bench.stack.env}
    result["compaction"] = archive_reading.compact(env, ndjson)
    say(report.compaction_line(result["compaction"]))
    result["compaction_memory"] = archive_reading.compaction_memory_by_window(store, env)
    say(report.compaction_memory_line(result["compaction_memory"]))
    result["query"]["compacted"] = archive_reading.time_query(store, ndjson)
    say(report.archive_query_line("compacted", result["query"]["compacted"]))
    compacted = result["compaction"]["events_written"]
    row = query_memory.process_row(env, ndjson, compacted)
    result.setdefault("process", {})["compacted"] = row
    say(report.query_process_line("compacted", row))
    result["query_memory"] = query_memory.compare(store, env, "bench/query-memory/")
    say(report.query_memory_line(result["query_memory"]))
    return {"archive": result}
