"""`python -m local.bench [--quick]`: the whole benchmark in one run, phases in order.

1. ingest at saturation, no consumer running (what the HTTP side alone accepts): the do-nothing
   baselines, `/batch` at 1/10/100/500 events, `/v1/batch`, gzip bodies, `/events`, and the
   direct-write design;
2. fixed rate (1,000 events/s): `/batch` of 100 and `/events` with one consumer running and
   probes for end-to-end lag; the direct-write design at the same rate;
3. Redis memory per buffered event for a backlog of 1M events (several batch sizes);
4. drain rate from a 1M-event backlog with 1, then 2 consumer processes writing gzip NDJSON,
   then 1 writing Parquet (`ARCHIVE_FORMAT=parquet`);
5. a crowd: a normal client's latency while 500 idle keep-alive connections and 100 slow
   senders are open;
6. the archive read back: `event-ingest query`'s group-by over 1M archived events as NDJSON,
   as Parquet and after `event-ingest compact`, and the compaction's throughput and peak RSS
   (alone, and for an hour after a DEDUP_WINDOW of busy compacted hours);
7. replica acknowledgement: a local replica joins Redis, and ingest with REDIS_WAIT_REPLICAS=1
   is measured beside ingest without it (same Redis, same replica, runs taking turns), at
   saturation and at 100 requests/s of 10 events;
8. the cost of the metrics: ingest with METRICS_ENABLED on and off, runs taking turns, compared
   by server CPU per request;
9. Redis Cluster: a local cluster of 3 primaries, ingest with STREAM_SHARDS=1 beside
   STREAM_SHARDS=6 (REDIS_CLUSTER=1), at saturation, runs taking turns;
10. the cost of the rate limits: in process, the app without limits beside the app with a
   source and an address limit, by the app's CPU and Redis's script time, per request and
   per event (local/bench/rate_limit_cost.py).

Every server runs with the rate limits on (both buckets taken at each request), at rates far
above what one load generator on loopback sends: the throughput measured is the deployed one.

Phases 1, 2 and 5 also measure the previous server configuration (gunicorn's gthread worker,
4 threads and 8 connections per worker), so both stand side by side in one run.

Between phases the stream is deleted, so each starts from the same state.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import platform
import runpy
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import redis

from local.bench import (
    archive_reading,
    backlog,
    cpu,
    instrumentation_cost,
    load,
    payloads,
    rate_limit_cost,
    report,
)
from local.bench.crowd import Crowd, crowd_of, normal_requests
from local.bench.procs import GUNICORN_CONF, ROOT, Stack, stop
from local.server_limits import raise_open_files_limit
from shared import shards
from shared.archive import ObjectStore
from shared.settings import Settings

STREAM_KEY = "bench-events"
GROUP = "archiver"
BUCKET = "bench-archive"
FIXED_RATE_EVENTS = 1000
FLUSH_INTERVAL_S = "1"
# The settings every process of the benchmark's stack runs with.
BENCH_ENV = {
    "STREAM_KEY": STREAM_KEY,
    "CONSUMER_GROUP": GROUP,
    "S3_BUCKET": BUCKET,
    "WRITE_KEYS": payloads.WRITE_KEYS,
    "LOG_LEVEL": "warning",
    "FLUSH_INTERVAL_S": FLUSH_INTERVAL_S,
    "CLAIM_IDLE_MS": "30000",
    # The limits on, as deployed, but never reached: the load comes from one address and key.
    "RATE_LIMIT_EVENTS_PER_S": str(rate_limit_cost.UNREACHED),
    "RATE_LIMIT_ADDRESS_EVENTS_PER_S": str(rate_limit_cost.UNREACHED),
}
# The server configuration before the gevent worker, for comparison in the same run.
PREVIOUS_SERVER = "ingest-gthread"
PREVIOUS_SERVER_ENV = {
    "GUNICORN_CMD_ARGS": "--worker-class gthread --threads 4 --worker-connections 8"
}
CROWD_IDLE, CROWD_SLOW, CROWD_REQUESTS = 500, 100, 20
WAIT_ONE = {"REDIS_WAIT_REPLICAS": "1"}
METRICS_OFF = {"METRICS_ENABLED": "false"}
# The cluster phase: its primaries, and shards two per primary.
CLUSTER_PRIMARIES = 3
CLUSTER_SHARDS = 2 * CLUSTER_PRIMARIES
# (consumer processes, ARCHIVE_FORMAT) of each drain run, on the same backlog.
DRAIN_RUNS = ((1, "ndjson"), (2, "ndjson"), (1, "parquet"))


@dataclass(frozen=True)
class Plan:
    duration_s: float
    warmup_s: float
    connections: int
    rate_duration_s: float
    batch_sizes: tuple[int, ...]
    memory_events: int
    memory_batch_sizes: tuple[int, ...]
    drain_events: int
    repeat: int
    archive_events: int = 1_000_000

    @classmethod
    def full(cls) -> Plan:
        sizes = (1, 10, 100, 500)
        return cls(8, 2, 16, 20, sizes, 1_000_000, sizes, 1_000_000, repeat=3)

    @classmethod
    def quick(cls) -> Plan:
        return cls(
            3, 1, 16, 5, (1, 100, 500), 100_000, (100,), 200_000, repeat=1, archive_events=100_000
        )


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m local.bench", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--quick", action="store_true", help="short smoke run (about 1.5 minutes)")
    parser.add_argument(
        "--loadgen", choices=["wrk", "python"], default="wrk", help="wrk if installed (default)"
    )
    parser.add_argument("--connections", type=int, help="connections for saturation runs")
    parser.add_argument("--duration", type=float, help="seconds per saturation run")
    parser.add_argument("--repeat", type=int, help="saturation runs per scenario (median kept)")
    parser.add_argument("--out", type=Path, default=ROOT / ".data" / "bench", help="results folder")
    parser.add_argument(
        "--skip",
        action="append",
        default=[],
        choices=[
            "ingest",
            "rate",
            "memory",
            "drain",
            "crowd",
            "archive",
            "replication",
            "metrics",
            "cluster",
            "rate-limits",
        ],
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    plan = Plan.quick() if args.quick else Plan.full()
    if args.connections:
        plan = Plan(**{**plan.__dict__, "connections": args.connections})
    if args.duration:
        plan = Plan(**{**plan.__dict__, "duration_s": args.duration})
    if args.repeat:
        plan = Plan(**{**plan.__dict__, "repeat": args.repeat})
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    run_dir = args.out / f"run-{stamp}"
    run_dir.mkdir(parents=True, exist_ok=True)
    results = {
        "started_at": stamp,
        "mode": "quick" if args.quick else "full",
        "machine": _machine(),
        "loadgen": load.describe_loadgen(args.loadgen),
        "plan": plan.__dict__,
        "ingest": [],
        "fixed_rate": [],
        "lag": None,
        "memory": [],
        "drain": [],
        "crowd": [],
        "archive": None,
        "replication": {"saturation": [], "fixed_rate": []},
        "metrics": [],
        "cluster": [],
        "rate_limits": [],
        "notes": [],
    }
    env = dict(BENCH_ENV)
    print(
        f"benchmark ({results['mode']}): {results['machine']['cpus']} cores, {results['loadgen']}"
    )
    print(f"logs and processes' data in {run_dir}", flush=True)
    bench = Bench(Stack(run_dir, env), plan, args.loadgen, results)
    try:
        bench.stack.start_storage(BUCKET)
        bench.client = redis.Redis.from_url(bench.stack.env["REDIS_URL"])
        results["machine"]["redis"] = bench.client.info("server")["redis_version"]
        if "ingest" not in args.skip:
            bench.ingest_phase()
        if "rate" not in args.skip:
            bench.rate_phase()
        if "memory" not in args.skip:
            bench.memory_phase()
        if "drain" not in args.skip:
            bench.drain_phase()
        if "crowd" not in args.skip:
            bench.crowd_phase()
        if "archive" not in args.skip:
            bench.archive_phase()
        if "replication" not in args.skip:
            bench.replication_phase()
        if "metrics" not in args.skip:
            bench.metrics_phase()
        if "cluster" not in args.skip:
            bench.cluster_phase()
        if "rate-limits" not in args.skip:
            bench.rate_limits_phase()
    finally:
        bench.stack.close()
        _remove_redis_data(run_dir)
        results["finished_at"] = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
        path = report.write(results, args.out, stamp)
        print(report.table(results))
        print(f"\nresults: {path}")
    return 0


def _machine() -> dict:
    load1, load5, _ = Path("/proc/loadavg").read_text().split()[:3]
    conf = runpy.run_path(str(GUNICORN_CONF))
    return {
        "cpus": cpu.cores(),
        "gunicorn": {
            **{
                name: conf[name]
                for name in ("workers", "worker_class", "worker_connections", "keepalive")
            },
            **(
                {"cmd_args": os.environ["GUNICORN_CMD_ARGS"]}
                if "GUNICORN_CMD_ARGS" in os.environ
                else {}
            ),
        },
        "platform": platform.platform(),
        "python": platform.python_version(),
        "loadavg_at_start": [float(load1), float(load5)],
        "wrk": bool(load.wrk_path()),
    }


def _remove_redis_data(run_dir: Path) -> None:
    """The AOF of a 1M-event backlog is hundreds of MB; keep the logs only."""
    for path in (run_dir / "redis").glob("**/*"):
        if path.is_file() and path.name != "redis.log":
            path.unlink()


class Bench:
    def __init__(self, stack: Stack, plan: Plan, loadgen: str, results: dict) -> None:
        self.stack, self.plan, self.loadgen, self.results = stack, plan, loadgen, results
        self.client: redis.Redis | None = None
        self.noop_eps: dict[int, float] = {}
        # Servers whose stream is not the stack's STREAM_KEY: their client and stream keys.
        self.streams: dict[str, tuple[redis.RedisCluster, list[str]]] = {}

    # --- phase 1: ingest at saturation ------------------------------------------------------

    def ingest_phase(self) -> None:
        _say("\n== ingest at saturation (no consumer running)")
        ingest = self.stack.start_ingest()
        previous = self.stack.start_ingest(PREVIOUS_SERVER, PREVIOUS_SERVER_ENV)
        noop = self.stack.start_baseline("noop", "local.bench.baselines:noop")
        flask_noop = self.stack.start_baseline(
            "flask-noop", "local.bench.baselines:create_flask_noop()"
        )
        direct = self.stack.start_baseline("direct", "local.bench.baselines:create_direct_app()")
        bodies100 = payloads.batch_bodies(100)
        self.saturate("baseline: do-nothing WSGI, 100-event body", "noop", noop, bodies100)
        self.saturate(
            "baseline: do-nothing Flask, 100-event body", "flask-noop", flask_noop, bodies100
        )
        for size in self.plan.batch_sizes:
            self.saturate(f"/batch {size} events", "ingest", ingest, payloads.batch_bodies(size))
        self.saturate(
            "/batch 100 events, previous server (gthread)", PREVIOUS_SERVER, previous, bodies100
        )
        self.saturate(
            "/v1/batch 100 events (Segment)",
            "ingest",
            ingest,
            payloads.batch_bodies(100, segment=True),
        )
        self.saturate(
            "/batch 100 events, gzip", "ingest", ingest, payloads.batch_bodies(100, gzipped=True)
        )
        self.saturate("/events (1 event)", "ingest", ingest, payloads.single_bodies())
        self.saturate("baseline: direct write to S3, /batch 100", "direct", direct, bodies100)
        for name in ("noop", "flask-noop"):
            process, _ = self.stack.servers.pop(name)
            stop(process)

    def saturate(
        self,
        label: str,
        server: str,
        port: int,
        bodies: payloads.Bodies,
        into: list[dict] | None = None,
    ) -> None:
        self.saturate_side_by_side([(label, server, port)], bodies, into)

    def saturate_side_by_side(
        self,
        scenarios: list[tuple[str, str, int]],
        bodies: payloads.Bodies,
        into: list[dict] | None = None,
    ) -> None:
        """Each (label, server, port) at saturation, `plan.repeat` times, the median kept. With
        several, their runs take turns (A B A B ...), so that a noisy spell of a shared machine
        falls on all of them alike and their ratio holds."""
        rows = self.results["ingest"] if into is None else into
        runs: dict[str, list[dict]] = {}
        for label, _, port in scenarios:
            available = self._probe(port, bodies)
            if available is not True:
                rows.append({"scenario": label, "available": False, "why": available})
                _say(f"  {label:44} not available: {available}")
                continue
            runs[label] = []
            with contextlib.suppress(RuntimeError):  # warm-up: workers import lazily
                load.saturate(
                    "127.0.0.1",
                    port,
                    bodies,
                    self.plan.warmup_s,
                    self.plan.connections,
                    self.loadgen,
                )
        for _ in range(self.plan.repeat):
            for label, server, port in scenarios:
                if label in runs:
                    runs[label].append(self._saturate_once(server, port, bodies))
        for label, server, _ in scenarios:
            if label not in runs:
                continue
            ordered = sorted(runs[label], key=lambda run: run["rps"])
            row = {
                "scenario": label,
                "available": True,
                "server": server,
                "body_bytes": bodies.mean_bytes,
                "events_per_request": bodies.events_per_request,
                **ordered[len(ordered) // 2],  # the median run
                "runs_eps": [run["eps"] for run in ordered],
            }
            rows.append(row)
            _say(report.ingest_line(row))

    def _saturate_once(self, server: str, port: int, bodies: payloads.Bodies) -> dict:
        self._empty_stream(server)
        master, _ = self.stack.servers[server]
        workers = [pid for pid in cpu.tree(master.pid) if pid != master.pid]
        workers_before = {pid: cpu.process_cpu_s(pid) for pid in workers}
        started = time.monotonic()
        meter = cpu.CpuMeter(
            {
                "server": lambda: self.stack.server_pids(server),
                "redis": self.stack.redis_pids,
                "s3": self.stack.s3_pids,
            }
        ).start()
        result = load.saturate(
            "127.0.0.1", port, bodies, self.plan.duration_s, self.plan.connections, self.loadgen
        )
        meter.add("loadgen", result.loadgen_cpu_s)
        run = {**result.as_dict(), "cores": meter.stop()}
        # Keep-alive connections stay with the worker that accepted them; when one worker
        # wins every accept, the others idle and throughput halves. Shown per run.
        wall = time.monotonic() - started
        run["worker_cores"] = sorted(
            (
                round((cpu.process_cpu_s(pid) - cpu_s) / wall, 2)
                for pid, cpu_s in workers_before.items()
            ),
            reverse=True,
        )
        # CPU the server side (gunicorn + Redis) spent per request: steadier than throughput
        # on a shared machine, since other people's work delays it but hardly adds to it.
        server_cores = run["cores"].get("server", 0) + run["cores"].get("redis", 0)
        run["server_cpu_us_per_request"] = (
            round(server_cores * 1e6 / run["rps"]) if run["rps"] else None
        )
        if server == "ingest":
            # One entry per accepted request; in-flight requests at the end may add a few.
            run["stream_entries"] = self.client.xlen(STREAM_KEY)
        return run

    def _probe(self, port: int, bodies: payloads.Bodies) -> bool | str:
        """True if one request of these bodies is accepted, else why not."""
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}{bodies.path}", data=bodies.bodies[0], headers=bodies.headers
        )
        try:
            with urllib.request.urlopen(request, timeout=30) as answer:
                return True if answer.status < 300 else f"HTTP {answer.status}"
        except urllib.error.HTTPError as exc:
            detail = exc.read()[:160].decode(errors="replace")
            return f"HTTP {exc.code} {detail}".strip()

    # --- phase 2: fixed rate, with a consumer and lag probes --------------------------------

    def rate_phase(self) -> None:
        _say(f"\n== fixed rate: {FIXED_RATE_EVENTS} events/s, one consumer running")
        ingest = self._port("ingest") or self.stack.start_ingest()
        direct = self._port("direct") or self.stack.start_baseline(
            "direct", "local.bench.baselines:create_direct_app()"
        )
        self.client.delete(STREAM_KEY)
        prefix = "bench/lag/"
        runners = self.stack.start_runners(1, {"S3_PREFIX": prefix}, "runner-lag")
        time.sleep(2)  # let the runner import and create its group before the clock starts
        duration = self.plan.rate_duration_s
        bodies = payloads.batch_bodies(100)
        rate = FIXED_RATE_EVENTS / 100
        count = int(rate * duration)
        probes = payloads.Bodies(
            bodies.path,
            [payloads.with_probe(bodies.bodies[i % len(bodies.bodies)], i) for i in range(count)],
            100,
            bodies.headers,
        )
        acked: dict[int, float] = {}
        watcher = backlog.ArchiveWatcher(self.stack.env["S3_ENDPOINT_URL"], BUCKET, prefix)
        watcher.start()
        self.fixed_rate(
            "/batch 100 events at 10 req/s",
            "ingest",
            ingest,
            probes,
            rate,
            on_done=lambda i, status, t: acked.__setitem__(i, t) if status == 202 else None,
        )
        self.fixed_rate(
            "/batch 10 events at 100 req/s", "ingest", ingest, payloads.batch_bodies(10), rate * 10
        )
        self.fixed_rate(
            "/events at 1,000 req/s", "ingest", ingest, payloads.single_bodies(), FIXED_RATE_EVENTS
        )
        wait_until = time.monotonic() + float(FLUSH_INTERVAL_S) + 15
        while len(watcher.seen) < len(acked) and time.monotonic() < wait_until:
            time.sleep(0.1)
        watcher.stop()
        for runner in runners:
            stop(runner, sig=2)
        lags = sorted(watcher.seen[i] - acked[i] for i in acked if i in watcher.seen)
        self.results["lag"] = {
            "probes": len(acked),
            "found": len(lags),
            "flush_interval_s": float(FLUSH_INTERVAL_S),
            "poll_interval_s": watcher.interval_s,
            "p50_ms": _pct(lags, 0.5),
            "p99_ms": _pct(lags, 0.99),
            "max_ms": _pct(lags, 1.0),
        }
        _say(report.lag_line(self.results["lag"]))
        self.fixed_rate(
            "baseline: direct write, /batch 100 at 10 req/s", "direct", direct, bodies, rate
        )
        previous = self._port(PREVIOUS_SERVER) or self.stack.start_ingest(
            PREVIOUS_SERVER, PREVIOUS_SERVER_ENV
        )
        self.fixed_rate(
            "/batch 100 events at 10 req/s, previous server (gthread)",
            PREVIOUS_SERVER,
            previous,
            bodies,
            rate,
        )
        for name in ("ingest", "direct", PREVIOUS_SERVER):
            process, _ = self.stack.servers.pop(name)
            stop(process)

    def fixed_rate(
        self,
        label: str,
        server: str,
        port: int,
        bodies: payloads.Bodies,
        rate: float,
        on_done=None,
        into: list[dict] | None = None,
    ) -> None:
        meter = cpu.CpuMeter(
            {"server": lambda: self.stack.server_pids(server), "redis": self.stack.redis_pids}
        ).start()
        result = load.fixed_rate(
            "127.0.0.1", port, bodies, rate, self.plan.rate_duration_s, on_done=on_done
        )
        row = {"scenario": label, "server": server, "rate_rps": rate, **result.as_dict()}
        row["cores"] = meter.stop()
        (self.results["fixed_rate"] if into is None else into).append(row)
        _say(report.rate_line(row))

    def _port(self, name: str) -> int | None:
        entry = self.stack.servers.get(name)
        return entry[1] if entry else None

    # --- phase 3: memory per buffered event -------------------------------------------------

    def memory_phase(self) -> None:
        _say(f"\n== Redis memory, backlog of {self.plan.memory_events:,} events")
        for size in self.plan.memory_batch_sizes:
            row, _ = backlog.measure_memory(
                self.client,
                STREAM_KEY,
                payloads.stream_entries(size),
                self.plan.memory_events,
                size,
            )
            self.results["memory"].append(row)
            _say(report.memory_line(row))
            self.client.delete(STREAM_KEY)

    # --- phase 6: the archive read back -----------------------------------------------------

    def archive_phase(self) -> None:
        events = self.plan.archive_events
        _say(f"\n== the archive read back: a group-by over {events:,} events, and compaction")
        settings = Settings.from_env(self.stack.env)
        store = ObjectStore.from_settings(settings)
        result: dict = {"events": events, "query": {}}
        for fmt in ("ndjson", "parquet"):
            prefix = f"bench/archive-{fmt}/"
            result["rows_stored"] = archive_reading.write_archive(store, prefix, events, fmt)
            result["query"][fmt] = archive_reading.time_query(store, prefix)
            _say(report.archive_query_line(fmt, result["query"][fmt]))
        env = {**os.environ, **self.stack.env}
        result["compaction"] = archive_reading.compact(env, "bench/archive-ndjson/")
        _say(report.compaction_line(result["compaction"]))
        result["compaction_memory"] = archive_reading.compaction_memory_by_window(store, env)
        _say(report.compaction_memory_line(result["compaction_memory"]))
        result["query"]["compacted"] = archive_reading.time_query(store, "bench/archive-ndjson/")
        _say(report.archive_query_line("compacted", result["query"]["compacted"]))
        self.results["archive"] = result

    # --- phase 7: replica acknowledgement -------------------------------------------------

    def replication_phase(self) -> None:
        _say("\n== replica acknowledgement: REDIS_WAIT_REPLICAS=1 beside 0, one replica attached")
        self.stack.start_replica()
        rows = self.results["replication"]
        servers = (("no WAIT", "ingest-replicated", {}), ("WAIT 1", "ingest-wait", WAIT_ONE))
        ports = self.side_by_side(servers, rows["saturation"])
        for label, name, _ in servers:
            self.fixed_rate(
                f"/batch 10 events at 100 req/s, {label}",
                name,
                ports[name],
                payloads.batch_bodies(10),
                FIXED_RATE_EVENTS / 10,
                into=rows["fixed_rate"],
            )
        self.stop_servers(servers)

    def side_by_side(self, servers, rows: list[dict]) -> dict[str, int]:
        """Start ingest servers of (label, name, env) and saturate each with /batch of 1 and of
        100 events, their runs taking turns; their ports."""
        ports = {name: self.stack.start_ingest(name, env) for _, name, env in servers}
        for size in (1, 100):
            self.saturate_side_by_side(
                [
                    (f"/batch {size} events, {label}", name, ports[name])
                    for label, name, _ in servers
                ],
                payloads.batch_bodies(size),
                into=rows,
            )
        return ports

    def stop_servers(self, servers) -> None:
        for _, name, _ in servers:
            process, _ = self.stack.servers.pop(name)
            stop(process)

    # --- phase 8: the cost of the metrics --------------------------------------------------

    def metrics_phase(self) -> None:
        _say("\n== the metrics' cost: ingest with METRICS_ENABLED on beside off")
        servers = (
            ("metrics on", "ingest-metrics-on", {}),
            ("metrics off", "ingest-metrics-off", METRICS_OFF),
        )
        self.side_by_side(servers, self.results["metrics"])
        self.stop_servers(servers)
        requests = 2000 if self.plan.repeat > 1 else 500
        in_process = instrumentation_cost.measure(self.stack.env["REDIS_URL"], STREAM_KEY, requests)
        # Its share of what a request costs the whole server (gunicorn and Redis included),
        # from the saturation runs without metrics just above.
        off = {
            row["events_per_request"]: row.get("server_cpu_us_per_request")
            for row in self.results["metrics"]
            if row.get("available", True) and row["scenario"].endswith("metrics off")
        }
        for row in in_process:
            server_us = off.get(row["events_per_request"])
            row["server_cpu_us_per_request"] = server_us
            row["share_of_server"] = round(row["cost_us"] / server_us, 4) if server_us else None
        self.results["metrics_in_process"] = in_process
        for row in in_process:
            _say(report.metrics_in_process_line(row))

    # --- phase 10: the cost of the rate limits ----------------------------------------------

    def rate_limits_phase(self) -> None:
        _say("\n== the rate limits' cost: in process, no limits beside a source and an address")
        requests = 2000 if self.plan.repeat > 1 else 500
        rows = rate_limit_cost.measure(self.stack.env["REDIS_URL"], STREAM_KEY, requests)
        self.results["rate_limits"] = rows
        for row in rows:
            _say(report.rate_limits_line(row))

    # --- phase 9: Redis Cluster --------------------------------------------------------------

    def cluster_phase(self) -> None:
        _say(
            f"\n== Redis Cluster of {CLUSTER_PRIMARIES} primaries: "
            f"STREAM_SHARDS=1 beside {CLUSTER_SHARDS}"
        )
        cluster = self.stack.start_cluster(CLUSTER_PRIMARIES)
        self.results["cluster_layout"] = {"primaries": CLUSTER_PRIMARIES, "shards": CLUSTER_SHARDS}
        client = redis.RedisCluster.from_url(cluster.url)
        on_cluster = {"REDIS_URL": cluster.url, "REDIS_CLUSTER": "true"}
        servers = []
        for count in (1, CLUSTER_SHARDS):
            name = f"ingest-cluster-{count}"
            self.streams[name] = (client, shards.shard_keys(STREAM_KEY, count))
            label = f"cluster, {count} shard{'s' if count > 1 else ''}"
            servers.append((label, name, {**on_cluster, "STREAM_SHARDS": str(count)}))
        self.side_by_side(servers, self.results["cluster"])
        self.stop_servers(servers)

    def _empty_stream(self, server: str) -> None:
        """Each run starts from an empty stream: the server's keys (the stack's by default)."""
        client, keys = self.streams.get(server, (self.client, [STREAM_KEY]))
        for key in keys:
            client.delete(key)

    # --- phase 5: a crowd of idle and slow connections --------------------------------------

    def crowd_phase(self) -> None:
        _say(
            f"\n== a normal client's {CROWD_REQUESTS} requests while {CROWD_IDLE} idle keep-alive"
            f" connections and {CROWD_SLOW} slow senders are open"
        )
        raise_open_files_limit(2 * (CROWD_IDLE + CROWD_SLOW) + 1024)  # one fd per connection
        servers = [("ingest", None), (PREVIOUS_SERVER, PREVIOUS_SERVER_ENV)]
        for name, env in servers:
            port = self._port(name) or self.stack.start_ingest(name, env)
            self.client.delete(STREAM_KEY)
            crowd = asyncio.run(self._crowd(port))
            statuses = crowd.statuses
            row = {
                "server": name,
                "idle": CROWD_IDLE,
                "idle_opened": crowd.idle_opened,
                "slow": CROWD_SLOW,
                "requests": len(statuses),
                "answered_2xx": sum(1 for s in statuses if s is not None and 200 <= s < 300),
                "median_ms": round(crowd.median_ms, 1),
                "worst_ms": round(crowd.worst_ms, 1),
                "slow_cut_after_s": sorted(
                    round(s, 1) for s in crowd.slow_cut_after_s if s is not None
                )[-1:],
            }
            self.results["crowd"].append(row)
            _say(report.crowd_line(row))
            process, _ = self.stack.servers.pop(name)
            stop(process)

    async def _crowd(self, port: int) -> Crowd:
        body = payloads.batch_bodies(10).bodies[0]
        auth = payloads.auth_headers()["Authorization"]
        async with crowd_of(
            "127.0.0.1", port, body, auth, idle=CROWD_IDLE, slow=CROWD_SLOW
        ) as crowd:
            await normal_requests(crowd, "127.0.0.1", port, body, auth, count=CROWD_REQUESTS)
            await crowd.all_slow_cut(timeout_s=10)
        return crowd

    # --- phase 4: drain ---------------------------------------------------------------------

    def drain_phase(self) -> None:
        _say(f"\n== drain from a backlog of {self.plan.drain_events:,} events (100 per entry)")
        pool = payloads.stream_entries(100)
        for consumers, archive_format in DRAIN_RUNS:
            self.client.delete(STREAM_KEY)
            filled = backlog.fill(self.client, STREAM_KEY, pool, self.plan.drain_events, 100)
            tag = f"drain{consumers}" + ("" if archive_format == "ndjson" else f"-{archive_format}")
            name = f"runner-{tag}"
            started = time.monotonic()
            runners = self.stack.start_runners(
                consumers,
                {"S3_PREFIX": f"bench/{tag}/", "ARCHIVE_FORMAT": archive_format},
                name,
            )
            meter = cpu.CpuMeter(
                {
                    "consumers": _trees(runners),
                    "redis": self.stack.redis_pids,
                    "s3": self.stack.s3_pids,
                }
            )
            progress = backlog.watch_drain(
                self.client, STREAM_KEY, GROUP, filled, timeout_s=600, on_first_read=meter.start
            )
            cores = meter.stop()
            for runner in runners:
                stop(runner, sig=2)
            first, last = progress.samples[0][0], progress.samples[-1][0]
            row = {
                "consumers": consumers,
                "format": archive_format,
                "events": filled.events,
                "events_per_s": round(filled.events / (last - first)),
                "events_per_s_10_90": round(progress.rate(filled, 0.1, 0.9)),
                "events_per_s_with_startup": round(filled.events / (last - started)),
                "seconds": round(last - first, 2),
                "archived_by_runners": backlog.archived_by_runners(
                    self.stack.run_dir / f"{name}.log"
                ),
                "cores": cores,
            }
            self.results["drain"].append(row)
            _say(report.drain_line(row))
        self.client.delete(STREAM_KEY)


def _trees(processes: list) -> cpu.PidSource:
    return lambda: [pid for process in processes for pid in cpu.tree(process.pid)]


def _pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    return round(values[min(len(values) - 1, int(q * len(values)))] * 1000, 1)


def _say(text: str) -> None:
    print(text, flush=True)


if __name__ == "__main__":
    sys.exit(main())
