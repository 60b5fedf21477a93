"""A Redis Cluster on loopback, from the same redis-server binary as everything else: for the
tests and the benchmark (`make run` stays on one Redis).

Slots are split into equal ranges, one per primary, as `redis-cli --cluster create` and
ElastiCache split them; nodes are joined with CLUSTER MEET and replicas attached with CLUSTER
REPLICATE, so that no redis-cli is needed and Redis 6.2 works too (ADDSLOTS, not 7.0's
ADDSLOTSRANGE).
"""

from __future__ import annotations

import random
import time
from pathlib import Path

import redis
from redis.crc import REDIS_CLUSTER_HASH_SLOTS

from local.redis_server import RedisServer
from local.stack import port_free

# How long a primary may be unreachable before the cluster fails over to its replica.
NODE_TIMEOUT_MS = 2000
# A node talks to the others on its port + 10,000 (Redis 6.2 cannot choose another).
BUS_OFFSET = 10_000


def free_ports(count: int) -> list[int]:
    """Ports free on loopback together with their bus ports, below 55,536 as Redis needs."""
    ports: list[int] = []
    while len(ports) < count:
        port = random.randrange(20_000, 45_000)
        if port not in ports and all(port_free(p) for p in (port, port + BUS_OFFSET)):
            ports.append(port)
    return ports


class LocalCluster:
    def __init__(self, ports: list[int], data_dir: Path, primaries: int = 3) -> None:
        if len(ports) % primaries:
            raise ValueError("every primary gets the same number of replicas")
        self.primaries = primaries
        args = ("--cluster-enabled", "yes", "--cluster-node-timeout", str(NODE_TIMEOUT_MS))
        # A primary streams its data to a new replica at once, not after Redis 7's 5 s wait
        # for more replicas to join (repl-diskless-sync-delay).
        args += ("--repl-diskless-sync-delay", "0")
        self.servers = [RedisServer(port, Path(data_dir) / str(port), *args) for port in ports]

    @property
    def url(self) -> str:
        """Any node: the cluster client finds the others."""
        return self.servers[0].url

    def start(self, timeout_s: float = 30.0) -> LocalCluster:
        for server in self.servers:
            server.start()
        clients = [redis.Redis(port=s.port, decode_responses=True) for s in self.servers]
        width = REDIS_CLUSTER_HASH_SLOTS // self.primaries
        for index, client in enumerate(clients[: self.primaries]):
            last = REDIS_CLUSTER_HASH_SLOTS if index == self.primaries - 1 else (index + 1) * width
            client.execute_command("CLUSTER ADDSLOTS", *range(index * width, last))
        for server in self.servers[1:]:
            clients[0].execute_command("CLUSTER MEET", "127.0.0.1", server.port)
        self._wait(lambda: all(len(_nodes(c)) == len(clients) for c in clients), timeout_s)
        ids = [c.execute_command("CLUSTER MYID") for c in clients]
        for index, client in enumerate(clients[self.primaries :]):
            client.execute_command("CLUSTER REPLICATE", ids[index % self.primaries])
        self._wait(lambda: all(self._ok(c) for c in clients), timeout_s)
        for server in self.servers[self.primaries :]:
            server.wait_replicating(timeout_s)
        return self

    def primary_ports(self) -> list[int]:
        """The ports of the nodes that are primaries now (a failover changes them)."""
        ports = []
        for server in self.servers:
            if not server.running:
                continue
            info = redis.Redis(port=server.port, socket_timeout=1).info("replication")
            if info["role"] == "master":
                ports.append(server.port)
        return ports

    def add_replica(self, primary_port: int, timeout_s: float = 30.0) -> RedisServer:
        """A new node, on a new port, joining as a replica of the primary on `primary_port`:
        as ElastiCache replaces a failed node (with another address)."""
        (port,) = free_ports(1)
        args = self.servers[0].extra_args
        node = RedisServer(port, self.servers[0].data_dir.parent / str(port), *args).start()
        self.servers.append(node)
        client = redis.Redis(port=port, decode_responses=True)
        client.execute_command("CLUSTER MEET", "127.0.0.1", primary_port)
        primary = redis.Redis(port=primary_port, decode_responses=True)
        primary_id = primary.execute_command("CLUSTER MYID")
        self._wait(lambda: primary_id in str(_nodes(client)), timeout_s)
        client.execute_command("CLUSTER REPLICATE", primary_id)
        node.wait_replicating(timeout_s)
        return node

    def server_on(self, port: int) -> RedisServer:
        return next(server for server in self.servers if server.port == port)

    def wait_healthy(self, timeout_s: float = 30.0) -> None:
        """Until every live node says the cluster is ok (all slots served)."""
        live = [s for s in self.servers if s.running]
        clients = [redis.Redis(port=s.port, decode_responses=True) for s in live]
        self._wait(lambda: all(self._ok(c) for c in clients), timeout_s)

    def kill(self) -> None:
        for server in self.servers:
            server.kill()

    @staticmethod
    def _ok(client: redis.Redis) -> bool:
        try:
            return client.cluster("INFO")["cluster_state"] == "ok"
        except redis.RedisError:
            return False

    @staticmethod
    def _wait(condition, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if condition():
                return
            time.sleep(0.1)
        raise TimeoutError(f"the cluster did not form in {timeout_s}s")


def _nodes(client: redis.Redis) -> dict:
    return client.execute_command("CLUSTER NODES")  # redis-py: address -> node
