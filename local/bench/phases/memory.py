"""Phase `memory`: Redis memory per buffered event, for a backlog of the plan's size (1M events
in a full run) at each of its batch sizes, beside the same events as MsgPack. No server runs:
the backlog is written straight into the stream (`backlog`)."""

from __future__ import annotations

from typing import Any

from local.bench import backlog, payloads, report
from local.bench.context import STREAM_KEY, Bench, say

NEEDS = frozenset({"redis"})


def run(bench: Bench) -> dict[str, Any]:
    say(f"\n== Redis memory, backlog of {bench.plan.memory_events:,} events")
    rows = bench.results["memory"]
    for size in bench.plan.memory_batch_sizes:
        row, _ = backlog.measure_memory(
            bench.client,
            STREAM_KEY,
            payloads.stream_entries(size),
            bench.plan.memory_events,
            size,
        )
        rows.append(row)
        say(report.memory_line(row))
        backlog.empty_stream(bench.client, STREAM_KEY)
    return {"memory": rows}
