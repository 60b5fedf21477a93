"""`event-ingest query`'s own peak memory over compacted archives of growing size (issue 28):
the same group-by over `SMALL` and `LARGE` compacted events, each in a process of its own
running the command as a user does, so that only the query counts.

The archives are written straight as compacted objects (`naming.compacted_key`, the compacted
layout of `columns.SCHEMA`), `HOUR_EVENTS` events an hour: compacting the same events would
take minutes. Each row carries realistic `properties` and `context` text (about 600 bytes), so
that a query reading whole rows would show it; the group-by needs the `event` column alone.

`python -m local.bench.query_memory PREFIX` runs `event-ingest query` over `PREFIX` (the bucket
and endpoint from its environment) and prints one JSON object: its peak RSS (VmHWM: the
program's own, see compaction_memory.peak_rss_bytes), its seconds, and the answer's rows.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from typing import Any

import pyarrow as pa

from local.bench.compaction_memory import ROOT, compacted_hour, peak_rss_bytes, random_ids
from shared.archive import ObjectStore

SMALL, LARGE = 1_000_000, 3_000_000
HOUR_EVENTS = 250_000
FIRST_HOUR = datetime(2024, 6, 1, tzinfo=UTC)
GROUP_BY = "SELECT event, count(*) AS n FROM events GROUP BY event ORDER BY event"
EVENT_NAMES = ("Page Viewed", "Product Viewed", "Added to Cart", "Signed Up", "Order Completed")
PROPERTIES = json.dumps({"path": "/pricing", "title": "Pricing", "revenue": 21.33, "n": 7})
CONTEXT = json.dumps(
    {
        "userAgent": "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, "
        "like Gecko) Chrome/124.0.0.0 Safari/537.36",
        "library": {"name": "analytics.js", "version": "npm:next-1.70.0"},
        "page": {"url": "https://example.com/pricing", "referrer": "https://www.google.com/"},
        "locale": "en-GB",
        "ip": "81.2.69.0",
    }
)


def write_archive(store: ObjectStore, prefix: str, events: int) -> int:
    """`events` compacted events under `prefix`, `HOUR_EVENTS` an hour; the hours written."""
    hours = -(-events // HOUR_EVENTS)

    def write(index: int) -> None:
        count = min(HOUR_EVENTS, events - index * HOUR_EVENTS)
        _write_hour(store, prefix, FIRST_HOUR + timedelta(hours=index), count)

    with ThreadPoolExecutor(4) as pool:
        list(pool.map(write, range(hours)))
    return hours


def _write_hour(store: ObjectStore, prefix: str, hour: datetime, count: int) -> None:
    names = pa.array([EVENT_NAMES[i % len(EVENT_NAMES)] for i in range(count)], pa.string())
    text = {"type": "track", "source": "bench", "properties": PROPERTIES, "context": CONTEXT}
    data = {name: pa.repeat(pa.scalar(value), count) for name, value in text.items()}
    data.update(
        message_id=random_ids(count), event=names, is_bot=pa.repeat(pa.scalar(False), count)
    )
    compacted_hour(store, prefix, hour, count, data)


def measure(env: dict[str, str], prefix: str) -> dict[str, Any]:
    """The group-by over `prefix`, by `event-ingest query` in a process of its own: its peak
    RSS, its seconds from the command's start (`seconds`) and the process's whole wall time,
    interpreter and imports included (`process_s`)."""
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", __name__, prefix],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=1800,
    )
    if done.returncode != 0:
        raise RuntimeError(f"the query failed: {done.stderr.strip()[-2000:]}")
    return {**json.loads(done.stdout), "process_s": round(time.monotonic() - started, 2)}


def process_row(env: dict[str, str], prefix: str, rows: int) -> dict[str, Any]:
    """`measure` over an archive of `rows` stored rows, with the rate the issue counts: rows
    scanned over the whole process's wall seconds."""
    measured = measure(env, prefix)
    return {**measured, "rows": rows, "events_per_s": round(rows / measured["process_s"])}


def compare(
    store: ObjectStore, env: dict[str, str], base: str, sizes: tuple[int, int] = (SMALL, LARGE)
) -> dict[str, Any]:
    """The group-by over `sizes[0]` and over `sizes[1]` compacted events (under `base`): both
    measurements, and the larger's peak RSS over the smaller's."""
    small, large = (
        {"events": events, **measure(env, _written(store, f"{base}{events}/", events))}
        for events in sizes
    )
    ratio = round(large["peak_rss_bytes"] / small["peak_rss_bytes"], 3)
    return {"small": small, "large": large, "rss_ratio": ratio}


def _written(store: ObjectStore, prefix: str, events: int) -> str:
    write_archive(store, prefix, events)
    return prefix


def _query_here(prefix: str) -> dict[str, Any]:
    from functions.cli import main

    os.environ["S3_PREFIX"] = prefix
    started = time.monotonic()
    answer = io.StringIO()
    with contextlib.redirect_stdout(answer):
        main.main(["query", "--format", "csv", GROUP_BY], standalone_mode=False)
    seconds = time.monotonic() - started
    lines = answer.getvalue().strip().splitlines()[1:]
    return {
        "peak_rss_bytes": peak_rss_bytes(),
        "seconds": round(seconds, 2),
        "answer": [line.split(",") for line in lines],
    }


if __name__ == "__main__":
    print(json.dumps(_query_here(sys.argv[1])))
