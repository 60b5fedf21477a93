"""Phase `drain`: how fast consumers empty a backlog of the plan's size (1M events in a full
run, 100 per entry): 1, then 2 consumer processes writing gzip NDJSON, then 1 writing Parquet
(`ARCHIVE_FORMAT=parquet`), each from the same backlog, with who used which core."""

from __future__ import annotations

import time
from typing import Any

from local.bench import backlog, cpu, payloads, report
from local.bench.context import GROUP, STREAM_KEY, Bench, say
from local.bench.procs import stop

NEEDS = frozenset({"redis", "s3"})
# (consumer processes, ARCHIVE_FORMAT) of each drain run, on the same backlog.
DRAIN_RUNS = ((1, "ndjson"), (2, "ndjson"), (1, "parquet"))


def run(bench: Bench) -> dict[str, Any]:
    say(f"\n== drain from a backlog of {bench.plan.drain_events:,} events (100 per entry)")
    rows = bench.results["drain"]
    pool = payloads.stream_entries(100)
    for consumers, archive_format in DRAIN_RUNS:
        row = _drain_once(bench, pool, consumers, archive_format)
        rows.append(row)
        say(report.drain_line(row))
    ratio = report.drain_format_line(rows)
    if ratio:
        say(ratio)
    bench.client.delete(STREAM_KEY)
    return {"drain": rows}


def _drain_once(
    bench: Bench, pool: list[dict[bytes, bytes]], consumers: int, archive_format: str
) -> dict[str, Any]:
    """Fill the backlog, start `consumers` runners writing `archive_format`, and time them
    until the group has read it all."""
    stack = bench.stack
    bench.client.delete(STREAM_KEY)
    filled = backlog.fill(bench.client, STREAM_KEY, pool, bench.plan.drain_events, 100)
    tag = f"drain{consumers}" + ("" if archive_format == "ndjson" else f"-{archive_format}")
    name = f"runner-{tag}"
    started = time.monotonic()
    runners = stack.start_runners(
        consumers,
        {"S3_PREFIX": f"bench/{tag}/", "ARCHIVE_FORMAT": archive_format},
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
    first, last = progress.samples[0][0], progress.samples[-1][0]
    return {
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
