"""Phase `metrics`: the cost of the metrics. Ingest with METRICS_ENABLED on beside off, runs
taking turns, compared by server CPU per request; then the app's own cost in process
(`instrumentation_cost`), as a share of what a request costs the whole server."""

from __future__ import annotations

from typing import Any

from local.bench import instrumentation_cost, report
from local.bench.context import STREAM_KEY, Bench, say

NEEDS = frozenset({"redis"})
METRICS_OFF = {"METRICS_ENABLED": "false"}
SERVERS = (
    ("metrics on", "ingest-metrics-on", {}),
    ("metrics off", "ingest-metrics-off", METRICS_OFF),
)


def run(bench: Bench) -> dict[str, Any]:
    say("\n== the metrics' cost: ingest with METRICS_ENABLED on beside off")
    rows = bench.results["metrics"]
    bench.side_by_side(SERVERS, rows)
    bench.stop_servers(SERVERS)
    requests = bench.round_requests(500)
    in_process = instrumentation_cost.measure(bench.stack.env["REDIS_URL"], STREAM_KEY, requests)
    # Its share of what a request costs the whole server (gunicorn and Redis included),
    # from the saturation runs without metrics just above.
    off = {
        row["events_per_request"]: row.get("server_cpu_us_per_request")
        for row in rows
        if row.get("available", True) and row["scenario"].endswith("metrics off")
    }
    for row in in_process:
        server_us = off.get(row["events_per_request"])
        row["server_cpu_us_per_request"] = server_us
        row["share_of_server"] = round(row["cost_us"] / server_us, 4) if server_us else None
    for row in in_process:
        say(report.metrics_in_process_line(row))
    return {"metrics": rows, "metrics_in_process": in_process}
