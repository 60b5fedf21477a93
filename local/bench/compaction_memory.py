"""Compaction's peak memory, measured in a process of its own so that nothing else counts:
one closed hour compacted alone, then the same hour after a DEDUP_WINDOW of busy compacted
hours, whose keys compaction checks the hour against.

The hour is `HOUR_EVENTS` realistic events (`payloads`) stored as the consumer stores them
(gzip NDJSON through `Buffer`); the earlier hours are `EARLIER_EVENTS` events each, written
directly as compacted objects (named by `naming.compacted_key`),
which costs seconds instead of the minutes compacting them would. A share of the hour's events
(`REPEATED_SHARE`) is stored in the earlier hours too, so that the check has copies to drop.

`python -m local.bench.compaction_memory [HOUR]` compacts `HOUR` (YYYY-MM-DDTHH), or every
closed hour that needs it, with the settings of its environment, and prints one JSON object:
the Arrow memory pool's peak (`pa.default_memory_pool().max_memory()`), the process's peak RSS
(`ru_maxrss`), the events read and written, and the seconds compacting took. `measure` runs it.
"""

from __future__ import annotations

import json
import os
import random
import resource
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from local.bench import payloads
from shared.archive import Buffer, ObjectStore, columns
from shared.archive.formats import parquet
from shared.archive.naming import Part, compacted_key
from shared.archive.partitions import hour_label, parse_hour

HOUR_EVENTS = 20_000
EARLIER_HOURS = 24
EARLIER_EVENTS = 200_000
REPEATED_SHARE = 0.01
HOUR = datetime(2024, 3, 5, 13, tzinfo=UTC)
FLUSH_EVENTS = 5_000  # the hour's events per stored object
SOURCE = "bench"
ROOT = Path(__file__).resolve().parents[2]


def write_hour(store: ObjectStore, prefixes: list[str], hour: datetime, events: int) -> list[str]:
    """`events` distinct events received in `hour`, as gzip NDJSON objects under each of
    `prefixes`; their IDs."""
    rng = random.Random(22)
    batch = payloads.make_events(events, rng)
    step = timedelta(hours=1) / (events + 1)
    for index, event in enumerate(batch):
        at = hour + step * (index + 1)
        event["receivedAt"] = at.isoformat(timespec="milliseconds").replace("+00:00", "Z")
        event["source"] = SOURCE
    for start in range(0, events, FLUSH_EVENTS):
        buffer = Buffer(format="ndjson")
        for offset in range(start, min(start + FLUSH_EVENTS, events), 100):
            buffer.add(f"{hour:%Y%m%d%H}-{offset}".encode(), batch[offset : offset + 100])
        for prefix in prefixes:
            for key, body, _ in buffer.objects(prefix):
                store.put(key, body, buffer.content_type)
    return [event["messageId"] for event in batch]


def write_compacted(store: ObjectStore, prefix: str, hour: datetime, ids: pa.Array) -> None:
    """One compacted object of `hour` holding an event for each of `ids` (`compacted_hour`).
    Only the keys and times are set: the check reads the keys alone."""
    count = len(ids)
    compacted_hour(
        store, prefix, hour, count, {"message_id": ids, "source": _repeat(SOURCE, count)}
    )


def compacted_hour(
    store: ObjectStore, prefix: str, hour: datetime, count: int, data: dict[str, pa.Array]
) -> None:
    """One compacted object of `hour` holding `count` events, their columns `data` (the others
    NULL; `received_at` spread over the hour unless given), in the compacted layout
    (`columns.SCHEMA`, sorted by `received_at`, zstd, named by `compacted_key`). zstd runs at
    level 1 with dictionaries for repeated text only: writing 200,000 rows costs 50 ms instead
    of 500."""
    step_us = 3_600_000_000 // (count + 1)
    start_us = int(hour.timestamp() * 1_000_000)
    received = pa.array(range(start_us, start_us + step_us * count, step_us), pa.int64())
    data = {"received_at": received.cast(columns.TIMESTAMP), **data}
    rows = pa.table(
        [data.get(f.name, pa.nulls(count, f.type)) for f in columns.SCHEMA], schema=columns.SCHEMA
    )
    sink = pa.BufferOutputStream()
    pq.write_table(
        rows,
        sink,
        row_group_size=parquet.ROW_GROUP_ROWS,
        compression="zstd",
        compression_level=1,
        use_dictionary=[name for name in data if name not in ("message_id", "received_at")],
        sorting_columns=[pq.SortingColumn(columns.SCHEMA.get_field_index("received_at"))],
    )
    body = sink.getvalue().to_pybytes()
    store.put(compacted_key(prefix, hour, Part(0, 1), body), body, parquet.CONTENT_TYPE)


def _repeat(value: object, count: int) -> pa.Array:
    return pa.repeat(pa.scalar(value), count)


def random_ids(count: int) -> pa.Array:
    """`count` random 32-digit hex IDs (a UUID's digits), built without a Python loop."""
    digits = os.urandom(16 * count).hex().encode()
    offsets = pa.array(range(0, 32 * count + 1, 32), pa.int32()).buffers()[1]
    return pa.StringArray.from_buffers(count, offsets, pa.py_buffer(digits))


def write_window(
    store: ObjectStore,
    prefix: str,
    hour: datetime,
    repeated: list[str],
    hours: int = EARLIER_HOURS,
    events: int = EARLIER_EVENTS,
) -> None:
    """`hours` compacted hours before `hour`, `events` each; `repeated` spread among them."""

    def write(back: int) -> None:
        share = pa.array(repeated[back - 1 :: hours], pa.string())
        ids = pa.concat_arrays([share, random_ids(events - len(share))])
        write_compacted(store, prefix, hour - timedelta(hours=back), ids)

    with ThreadPoolExecutor(4) as pool:  # compressing and storing overlap
        list(pool.map(write, range(1, hours + 1)))


def compare(store: ObjectStore, env: dict[str, str], hour: datetime = HOUR) -> dict[str, Any]:
    """The same hour compacted alone (under `<S3_PREFIX>alone/`), then after a window of busy
    compacted hours (under `<S3_PREFIX>window/`): both measurements, and the second's peaks
    over the first's."""
    prefix = env.get("S3_PREFIX", "events/")
    alone_prefix, window_prefix = f"{prefix}alone/", f"{prefix}window/"
    ids = write_hour(store, [alone_prefix, window_prefix], hour, HOUR_EVENTS)
    alone_run = _start({**env, "S3_PREFIX": alone_prefix}, hour)  # while the window is written
    write_window(store, window_prefix, hour, ids[: int(len(ids) * REPEATED_SHARE)])
    after = _finish(_start({**env, "S3_PREFIX": window_prefix}, hour))
    alone = _finish(alone_run)
    return {
        "alone": alone,
        "after_window": after,
        "arrow_ratio": round(after["arrow_peak_bytes"] / alone["arrow_peak_bytes"], 3),
        "rss_ratio": round(after["peak_rss_bytes"] / alone["peak_rss_bytes"], 3),
    }


def measure(env: dict[str, str], hour: datetime | None = None) -> dict[str, Any]:
    """Compact `hour` (default: every closed hour that needs it) in a new process with the
    settings of `env`; what that process printed."""
    return _finish(_start(env, hour))


def _start(env: dict[str, str], hour: datetime | None) -> subprocess.Popen:
    label = [hour_label(hour)] if hour else []
    return subprocess.Popen(
        [sys.executable, "-m", __name__, *label],
        env=env,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _finish(process: subprocess.Popen) -> dict[str, Any]:
    out, err = process.communicate(timeout=1800)
    if process.returncode != 0:
        raise RuntimeError(f"compacting failed: {err.strip()[-2000:]}")
    return json.loads(out)


def peak_rss_bytes() -> int:
    """This process's peak RSS since it started its program. Linux's `ru_maxrss` is not that:
    it keeps, across exec, the peak of the process that forked it, so a compaction started by
    a large process (a test holding moto's objects) would report that one's size. VmHWM is the
    same peak for this program's memory alone."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024  # macOS counts bytes


def _compact_here(label: str | None) -> dict[str, Any]:
    from shared.archive.compaction import Compactor
    from shared.settings import Settings

    compactor = Compactor.from_settings(Settings.from_env())
    started = time.monotonic()
    summary = compactor.compact([parse_hour(label)]) if label else compactor.run()
    seconds = time.monotonic() - started
    totals = summary.as_dict()
    return {
        "arrow_peak_bytes": pa.default_memory_pool().max_memory(),
        "peak_rss_bytes": peak_rss_bytes(),
        "hours": len(summary.hours),
        "events_read": totals["events_read"],
        "events_written": totals["events_written"],
        "seconds": round(seconds, 2),
        "errors": totals["errors"],
    }


if __name__ == "__main__":
    print(json.dumps(_compact_here(sys.argv[1] if len(sys.argv) > 1 else None)))
