"""Scenarios 7 and 8: STREAM_SHARDS=6 on a Redis Cluster of three primaries (started on
loopback from the same redis-server), through gunicorn and the loop runner as everywhere else.

7. The consumer is SIGKILLed twice under load: another runner takes over its pending entries
   on every shard.
8. A primary is SIGKILLed under load, with REDIS_WAIT_REPLICAS=1: the cluster promotes its
   replica (after the node timeout), redis-py's cluster client follows the new slot map, and
   a new node, on another port, joins as a replica of the promoted one (as ElastiCache
   replaces a failed node, with another address), so that ingest has a replica to wait for
   again. The killed node's address stays dead: ingest must have moved to the promoted
   replica, and the shards it owns must take writes again. A CLUSTER FAILOVER would be
   lossless by design and prove nothing.

Both check the events were spread over all three primaries, then that every acknowledged
event was archived.
"""

from __future__ import annotations

import random
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from local.redis_cluster import LocalCluster, free_ports
from shared import shards
from tests.conftest import wait_until
from tests.faults.harness import LoadClient, Pipeline, assert_nothing_lost, settle

SHARDS = 6
PRIMARIES = 3


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[LocalCluster]:
    """Three primaries, each with one replica."""
    started = LocalCluster(free_ports(2 * PRIMARIES), tmp_path / "cluster", PRIMARIES)
    try:
        yield started.start()
    finally:
        started.kill()


def primaries_written(pipeline: Pipeline) -> set[int]:
    """The ports of the primaries that hold a shard that ingest wrote to."""
    client = pipeline.redis
    written = set()
    for key in shards.shard_keys(pipeline.settings.stream_key, SHARDS):
        if client.exists(key) and client.xinfo_stream(key)["last-generated-id"] != b"0-0":
            written.add(client.get_node_from_key(key).port)
    return written


def test_sharded_on_a_cluster_a_sigkilled_consumer_loses_nothing(
    cluster, start_pipeline, report, seed
):
    rng = random.Random(seed)
    started = time.monotonic()
    pipeline = start_pipeline(redis_server=cluster, shards=SHARDS)
    load = LoadClient(pipeline.url, threads=2, requests_per_s=60, seed=seed).start()
    pipeline.start_runner()
    in_flight = 0
    try:
        for _ in range(2):
            time.sleep(rng.uniform(1.0, 2.5))
            in_flight += pipeline.kill_runner()
            pipeline.start_runner()
        time.sleep(1.0)
    finally:
        load.stop()
    outcome = settle(
        pipeline, load, "cluster: consumer SIGKILL", started, notes=f"{SHARDS} shards, 2 kills"
    )
    report(outcome.figures)
    assert pipeline.stop_runner() == 0
    assert primaries_written(pipeline) == set(cluster.primary_ports())
    assert_nothing_lost(outcome, max_duplicates=in_flight)


def test_sharded_on_a_cluster_a_primary_failover_loses_nothing(
    cluster, start_pipeline, report, seed
):
    started = time.monotonic()
    pipeline = start_pipeline(redis_server=cluster, shards=SHARDS, REDIS_WAIT_REPLICAS="1")
    load = LoadClient(pipeline.url, threads=3, requests_per_s=90, seed=seed).start()
    pipeline.start_runner()
    try:
        load.wait_for(lambda c: c.accepted_requests >= 60, timeout_s=30, what="some load")
        # The consumer connected before the failover (its group on every key), as the scenario
        # means: one started while REDIS_URL's one node is down finds no cluster to ask
        # (docs/architecture.md), and the victim may be that node.
        wait_until(
            lambda: pipeline.undelivered() is not None, timeout_s=30, what="the consumer to read"
        )
        victim_port = pipeline.redis.get_node_from_key(
            shards.shard_keys(pipeline.settings.stream_key, SHARDS)[0]
        ).port
        victim = cluster.server_on(victim_port)
        primaries_before = set(cluster.primary_ports())
        accepted_before = len(load.accepted)
        victim.kill()
        accepted_at_failover = len(load.accepted)
        wait_until(
            lambda: (
                victim_port not in cluster.primary_ports()
                and len(cluster.primary_ports()) == PRIMARIES
            ),
            timeout_s=30,
            what="the cluster to promote the replica",
        )
        cluster.wait_healthy()
        (promoted,) = set(cluster.primary_ports()) - primaries_before
        cluster.add_replica(promoted)  # a replica to WAIT for again
        written = _last_ids(pipeline, promoted)
        load.wait_for(
            lambda c: len(c.accepted) > accepted_before + 300, timeout_s=30, what="load after"
        )
        wait_until(
            lambda: all(_last_ids(pipeline, promoted)[k] != v for k, v in written.items()),
            timeout_s=30,
            what="the promoted node's shards to take writes again",
        )
    finally:
        load.stop()
    outcome = settle(
        pipeline,
        load,
        "cluster: primary failover",
        started,
        notes=f"{SHARDS} shards, WAIT_REPLICAS=1, replica promoted",
    )
    report(outcome.figures)
    assert pipeline.stop_runner() == 0
    assert len(primaries_written(pipeline)) == PRIMARIES
    # A refused request may still have been written, and is retried by the client; the
    # consumer's acknowledgements on the killed primary may be lost with it, so what it archived
    # before is archived again. Duplicates of those only, never a loss.
    refused = sum(load.events_refused_by_error.values())
    assert_nothing_lost(outcome, max_duplicates=refused + accepted_at_failover)


def _last_ids(pipeline: Pipeline, port: int) -> dict[str, bytes]:
    """The last entry ID of each shard the node on `port` owns."""
    client = pipeline.redis
    return {
        key: client.xinfo_stream(key)["last-generated-id"]
        for key in shards.shard_keys(pipeline.settings.stream_key, SHARDS)
        if client.get_node_from_key(key).port == port
    }
