"""Phase `enrichment`: the cost of enrichment at ingest, in process: the app with every
enrichment on (a synthetic City database of a million networks, built once under the results
folder and reused) beside the same app with enrichment off, analytics.js's requests from one
client and from many, by the app's CPU per request and per event, against issue 26's targets
(`enrichment_cost`); then what it adds to a cold start, in fresh processes."""

from __future__ import annotations

from typing import Any

from local.bench import enrichment_cost, report
from local.bench.context import STREAM_KEY, Bench, say

NEEDS = frozenset({"redis"})


def run(bench: Bench) -> dict[str, Any]:
    say("\n== enrichment's cost: in process, the app with every enrichment on beside off")
    database = enrichment_cost.database(bench.stack.run_dir.parent, say)
    requests = bench.round_requests(500)
    rows = enrichment_cost.measure(bench.stack.env["REDIS_URL"], STREAM_KEY, requests, database)
    for row in rows:
        say(report.enrichment_line(row))
    cold = enrichment_cost.cold_start(database)
    say(report.enrichment_cold_start_line(cold))
    result = {
        "database": {
            "path": str(database),
            "networks": enrichment_cost.NETWORKS,
            "cities": enrichment_cost.CITIES,
        },
        "rows": rows,
        "cold_start": cold,
    }
    return {"enrichment": result}
