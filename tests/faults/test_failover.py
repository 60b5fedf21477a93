"""Scenario 6: the primary fails over to its replica after the replication link stalled.

As in production (ElastiCache Multi-AZ): a primary and a replica, every client reaching the
primary through one endpoint that moves to the replica when it is promoted. Under load, the
replication link stops forwarding for a couple of seconds while the consumer lags behind
(paused), the primary is SIGKILLed, the replica promoted and the endpoint moved. What the
primary acknowledged but never passed on is gone with it, unless ingest waited for the replica
(REDIS_WAIT_REPLICAS=1) before answering.
Then, as ElastiCache replaces the failed node, a new replica joins the promoted one: until it
has synced, ingest with REDIS_WAIT_REPLICAS=1 has no replica to wait for and refuses.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis

from local.redis_server import RedisServer
from tests.conftest import SYNC_REPLICAS_AT_ONCE, free_port
from tests.faults.harness import MAX_BATCH, LoadClient, assert_nothing_lost, settle
from tests.faults.tcp_proxy import TcpProxy

STALL_S = 2.0
THREADS = 3


@dataclass
class Topology:
    """A primary, a replica fed through a link that can stall, and the movable endpoint."""

    primary: RedisServer
    link: TcpProxy
    replica: RedisServer
    endpoint: TcpProxy
    data_dir: Path
    replacement: RedisServer | None = None

    def start_replacement(self) -> None:
        """The replica that replaces the dead primary, as ElastiCache replaces a failed node.
        Its port is picked now: one picked earlier may since be some connection's own."""
        args = ("--replicaof", "127.0.0.1", str(self.replica.port))
        self.replacement = RedisServer(free_port(), self.data_dir / "replacement", *args)
        self.replacement.start().wait_replicating()


@pytest.fixture
def topology(tmp_path: Path) -> Iterator[Topology]:
    primary = RedisServer(free_port(), tmp_path / "primary", *SYNC_REPLICAS_AT_ONCE).start()
    link = TcpProxy(primary.port)
    replica_args = ("--replicaof", "127.0.0.1", str(link.port), *SYNC_REPLICAS_AT_ONCE)
    replica = RedisServer(free_port(), tmp_path / "replica", *replica_args)
    endpoint = TcpProxy(primary.port)
    servers = Topology(primary, link, replica, endpoint, tmp_path)
    try:
        replica.start().wait_replicating()
        yield servers
    finally:
        for closeable in (endpoint, link):
            closeable.close()
        for server in (servers.replacement, replica, primary):
            if server is not None:
                server.kill()


@pytest.mark.parametrize("wait_replicas", ["1", "0"])
def test_a_failover_after_a_stalled_link_loses_nothing_acknowledged_with_wait_replicas(
    topology, start_pipeline, report, seed, wait_replicas
):
    primary, link, replica, endpoint = (
        topology.primary,
        topology.link,
        topology.replica,
        topology.endpoint,
    )
    started = time.monotonic()
    pipeline = start_pipeline(
        redis_server=primary,
        redis_url=f"redis://127.0.0.1:{endpoint.port}/0",
        REDIS_WAIT_REPLICAS=wait_replicas,
        REDIS_WAIT_TIMEOUT_MS="300",
    )
    runner = pipeline.start_runner()
    load = LoadClient(pipeline.url, threads=THREADS, requests_per_s=90, seed=seed).start()
    try:
        load.wait_for(lambda c: len(c.accepted) > 300, 20, "some load before the stall")
        # The consumer falls behind (paused): what the primary acknowledged in the stall is
        # then in Redis only, so the default's loss is certain, not a race with the consumer.
        runner.send_signal(signal.SIGSTOP)
        link.stall()
        accepted_before_stall = len(load.accepted)
        time.sleep(STALL_S)
        accepted_in_stall = len(load.accepted) - accepted_before_stall
        primary.kill()
        accepted_at_failover = len(load.accepted)
        redis.Redis(port=replica.port).replicaof("NO", "ONE")
        endpoint.switch_to(replica.port)
        runner.send_signal(signal.SIGCONT)
        topology.start_replacement()
        accepted = len(load.accepted)
        load.wait_for(lambda c: len(c.accepted) > accepted + 300, 30, "ingest on the new primary")
    finally:
        load.stop()

    waited = wait_replicas != "0"
    scenario = f"failover, WAIT_REPLICAS={wait_replicas}"
    outcome = settle(
        pipeline,
        load,
        scenario,
        started,
        notes=f"link stalled {STALL_S:.0f}s, {accepted_in_stall} events got a 2xx in it; 503s: "
        + ", ".join(f"{n} {code}" for code, n in sorted(load.unavailable_by_error.items())),
    )
    report(outcome.figures)
    assert runner.poll() is None, "the runner died in the failover"
    if not waited:
        # What the default costs: what was acknowledged while the link stalled and not yet
        # archived (here, with the consumer behind, all of it).
        assert outcome.figures.lost > 0, "the stall lost nothing: the scenario proved nothing"
        assert outcome.figures.lost <= accepted_in_stall + THREADS * MAX_BATCH
        return
    # Nothing got a 2xx that the replica did not hold: the stall was felt as refusals.
    assert accepted_in_stall <= THREADS * MAX_BATCH, "events were acknowledged in the stall"
    assert load.unavailable_by_error["replication_timeout"] > 0
    # A refused request may still have been written on the primary, and archived from there
    # before the retry that got a 2xx; the consumer's acknowledgements of the stall were lost
    # with the primary, so what it archived then is archived again. Duplicates, never a loss
    # (compaction removes them), and only of events sent before the failover.
    refused = sum(load.events_refused_by_error.values())
    assert_nothing_lost(outcome, max_duplicates=refused + accepted_at_failover)
    assert pipeline.stop_runner() == 0
