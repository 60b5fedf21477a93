"""Phase `cluster`: Redis Cluster. A local cluster of 3 primaries, and ingest with
STREAM_SHARDS=1 beside STREAM_SHARDS=6 (REDIS_CLUSTER=1), at saturation, runs taking turns.
The servers write to the cluster, not to the stack's Redis."""

from __future__ import annotations

from typing import Any

import redis

from local.bench.context import STREAM_KEY, Bench, say
from shared import shards

NEEDS: frozenset[str] = frozenset()  # the cluster is its own
# The cluster's primaries, and shards two per primary.
CLUSTER_PRIMARIES = 3
CLUSTER_SHARDS = 2 * CLUSTER_PRIMARIES


def run(bench: Bench) -> dict[str, Any]:
    say(
        f"\n== Redis Cluster of {CLUSTER_PRIMARIES} primaries: "
        f"STREAM_SHARDS=1 beside {CLUSTER_SHARDS}"
    )
    cluster = bench.stack.start_cluster(CLUSTER_PRIMARIES)
    layout = {"primaries": CLUSTER_PRIMARIES, "shards": CLUSTER_SHARDS}
    bench.results["cluster_layout"] = layout
    client = redis.RedisCluster.from_url(cluster.url)
    on_cluster = {"REDIS_URL": cluster.url, "REDIS_CLUSTER": "true"}
    servers = []
    for count in (1, CLUSTER_SHARDS):
        name = f"ingest-cluster-{count}"
        bench.streams[name] = (client, shards.shard_keys(STREAM_KEY, count))
        label = f"cluster, {count} shard{'s' if count > 1 else ''}"
        servers.append((label, name, {**on_cluster, "STREAM_SHARDS": str(count)}))
    rows = bench.results["cluster"]
    bench.side_by_side(servers, rows)
    bench.stop_servers(servers)
    return {"cluster": rows, "cluster_layout": layout}
