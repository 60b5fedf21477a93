"""Phase `drain`: how fast consumers empty a backlog of the plan's size (1M events in a full
run, 100 per entry): 1, then 2 consumer processes writing gzip NDJSON, then 1 writing Parquet
(`ARCHIVE_FORMAT=parquet`) and 1 writing NDJSON by turns, each from the same backlog, with who
used which core.

The formats take turns because this kind of VM drifts: two identical NDJSON
drains minutes apart differ by up to a third, more than the difference being measured. The
report compares each format's best drain (`report.drain_format_line`), every drain listed."""

from __future__ import annotations

import time
from typing import Any

from local.bench import backlog, cpu, payloads, report
from local.bench.context import GROUP, STREAM_KEY, Bench, say
from local.bench.procs import stop

NEEDS = frozenset({"redis", "s3"})
# (consumer processes, ARCHIVE_FORMAT) of each drain run, on the same backlog: NDJSON with 1
# and 2 consumers side by side (the scaling target), then one consumer writing Parquet and
# NDJSON by turns, three drains of each format in all.
DRAIN_RUNS = (
    (1, "ndjson"),
    (2, "ndjson"),
    (1, "parquet"),
    (1, "ndjson"),
    (1, "parquet"),
    (1, "ndjson"),
    (1, "parquet"),
)


def run(bench: Bench) -> dict[str, Any]:
    say(f"\n== drain from a backlog of {bench.plan.drain_events:,} events (100 per entry)")
    rows = bench.results["drain"]
    pool = payloads.stream_entries(100)
    for index, (consumers, archive_format) in enumerate(DRAIN_RUNS, 1):
        row = _drain_once(bench, pool, consumers, archive_format, index)
        rows.append(row)
        say(report.drain_line(row))
    ratio = report.drain_format_line(rows)
    if ratio:
        say(ratio)
    backlog.empty_stream(bench.client, STREAM_KEY)
    return {"drain": rows}


def _drain_once(
    bench: Bench, pool: list[dict[bytes, bytes]], consumers: int, archive_format: str, index: int
) -> dict[str, Any]:
    """Fill the backlog, start `consumers` runners writing `archive_format`, and time them
    until the group has read it all."""
    stack = bench.stack
    backlog.empty_stream(bench.client, STREAM_KEY)
    filled = backlog.fill(bench.client, STREAM_KEY, pool, bench.plan.drain_events, 100)
    tag = f"drain{index}-{consumers}-{archive_format}"
    name = f"runner-{tag}"
    started = time.monotonic()
    runners = stack.start_runners(
        consumers,
        # At info, each invocation logs its summary: what `archived_by_runners` adds up.
        {"S3_PREFIX": f"bench/{tag}/", "ARCHIVE_FORMAT": archive_format, "LOG_LEVEL": "info"},
        name,
    )
    meter = cpu.CpuMeter(
        {
            "consumers": _trees(runners),
            "redis": stack.redis_pids,
            "s3": stack.s3_pids,
        }
    )
    progress = backlog.watch_drain(
        bench.client, STREAM_KEY, GROUP, filled, timeout_s=600, on_first_read=meter.start
    )
    cores = meter.stop()
    for runner in runners:
        stop(runner, sig=2)
    # Seven drains of 1M events would otherwise stay in moto's memory for the rest of the run.
    store = bench.object_store()
    store.delete(store.keys_under(f"bench/{tag}/"))
    first, last = progress.samples[0][0], progress.samples[-1][0]
    return {
        "run": index,
        "consumers": consumers,
        "format": archive_format,
        "events": filled.events,
        "events_per_s": round(filled.events / (last - first)),
        "events_per_s_10_90": round(progress.rate(filled, 0.1, 0.9)),
        "events_per_s_with_startup": round(filled.events / (last - started)),
        "seconds": round(last - first, 2),
        "archived_by_runners": backlog.archived_by_runners(stack.run_dir / f"{name}.log"),
        "cores": cores,
    }


def _trees(processes: list) -> cpu.PidSource:
    return lambda: [pid for process in processes for pid in cpu.tree(process.pid)]
