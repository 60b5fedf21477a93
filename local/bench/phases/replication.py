"""Phase `replication`: replica acknowledgement. A local replica joins the stack's Redis, and
ingest with REDIS_WAIT_REPLICAS=1 is measured beside ingest without it (same Redis, same
replica, runs taking turns), at saturation and at 100 requests/s of 10 events."""

from __future__ import annotations

from typing import Any

from local.bench import payloads
from local.bench.context import FIXED_RATE_EVENTS, Bench, say

NEEDS = frozenset({"redis"})
WAIT_ONE = {"REDIS_WAIT_REPLICAS": "1"}
SERVERS = (("no WAIT", "ingest-replicated", {}), ("WAIT 1", "ingest-wait", WAIT_ONE))


def run(bench: Bench) -> dict[str, Any]:
    say("\n== replica acknowledgement: REDIS_WAIT_REPLICAS=1 beside 0, one replica attached")
    bench.stack.start_replica()
    rows = bench.results["replication"]
    ports = bench.side_by_side(SERVERS, rows["saturation"])
    for label, name, _ in SERVERS:
        bench.fixed_rate(
            f"/batch 10 events at 100 req/s, {label}",
            name,
            ports[name],
            payloads.batch_bodies(10),
            FIXED_RATE_EVENTS / 10,
            rows["fixed_rate"],
        )
    bench.stop_servers(SERVERS)
    return {"replication": rows}
