"""What every phase of `make bench` shares: the run's settings (`BENCH_ENV`), its `Plan`, and
`Bench`, the context a phase is given (the stack of processes, the plan, the load generator,
the results so far, a Redis client) with the measurements several phases make: an HTTP server
at saturation (alone, or side by side with others, runs taking turns) and at a fixed rate.

It starts and stops HTTP servers through the stack (`procs.Stack`) and loads them (`load`);
it prints one line per measurement (`report`) and appends the row to the list it is given.
"""

from __future__ import annotations

import contextlib
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass

import redis

from local.bench import backlog, cpu, load, payloads, rate_limit_cost, report
from local.bench.procs import Stack, stop
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
DIRECT_APP = "local.bench.baselines:create_direct_app()"

# (label, server name, its env on top of the stack's) of servers measured side by side.
Servers = list[tuple[str, str, dict[str, str]]] | tuple[tuple[str, str, dict[str, str]], ...]


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
    # A smoke run (`--quick`): in-process rounds are shorter, and fixed-rate runs do not
    # stretch to the requests the latency targets name (report.LATENCY_TARGETS).
    smoke: bool = False

    @classmethod
    def full(cls) -> Plan:
        sizes = (1, 10, 100, 500)
        return cls(8, 2, 16, 20, sizes, 1_000_000, sizes, 1_000_000, repeat=3)

    @classmethod
    def quick(cls) -> Plan:
        return cls(
            3,
            1,
            16,
            5,
            (1, 100, 500),
            100_000,
            (100,),
            200_000,
            repeat=1,
            archive_events=100_000,
            smoke=True,
        )


def say(text: str) -> None:
    print(text, flush=True)


class Bench:
    """The context each phase runs in. `results` is the run's report: phases append their rows
    to its lists as they are measured, so a phase that fails midway leaves the rows it made."""

    def __init__(self, stack: Stack, plan: Plan, loadgen: str, results: dict) -> None:
        self.stack, self.plan, self.loadgen, self.results = stack, plan, loadgen, results
        self.client: redis.Redis | None = None
        # Servers whose stream is not the stack's STREAM_KEY: their client and stream keys.
        self.streams: dict[str, tuple[redis.RedisCluster, list[str]]] = {}

    def object_store(self) -> ObjectStore:
        """The stack's S3 bucket, through the archive's own store."""
        return ObjectStore.from_settings(Settings.from_env(self.stack.env))

    # --- servers -------------------------------------------------------------------------

    def port(self, name: str) -> int | None:
        """The port of server `name` if a previous phase left it running."""
        entry = self.stack.servers.get(name)
        return entry[1] if entry else None

    def stop_server(self, name: str) -> None:
        process, _ = self.stack.servers.pop(name)
        stop(process)

    def side_by_side(self, servers: Servers, rows: list[dict]) -> dict[str, int]:
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
                rows,
            )
        return ports

    def in_process(
        self,
        measure: Callable[[str, str, int], list[dict]],
        line: Callable[[dict], str],
        quick: int,
    ) -> list[dict]:
        """The rows of an in-process measurement, `measure(REDIS_URL, STREAM_KEY, requests)`,
        each printed with `line`, `round_requests(quick)` requests a round."""
        rows = measure(self.stack.env["REDIS_URL"], STREAM_KEY, self.round_requests(quick))
        for row in rows:
            say(line(row))
        return rows

    def round_requests(self, quick: int) -> int:
        """Requests a round of an in-process measurement: 2,000 in a full run, `quick` in a
        quick one."""
        return quick if self.plan.smoke else 2000

    def stop_servers(self, servers: Servers) -> None:
        for _, name, _ in servers:
            self.stop_server(name)

    def _streams_of(self, server: str) -> tuple[redis.Redis | redis.RedisCluster, list[str]]:
        """The stream keys `server` writes (the stack's by default), and their client."""
        return self.streams.get(server, (self.client, [STREAM_KEY]))

    def _empty_stream(self, server: str) -> None:
        """Each run starts from an empty stream."""
        backlog.empty_streams(*self._streams_of(server))

    # --- saturation ----------------------------------------------------------------------

    def saturate(
        self, label: str, server: str, port: int, bodies: payloads.Bodies, rows: list[dict]
    ) -> None:
        self.saturate_side_by_side([(label, server, port)], bodies, rows)

    def saturate_side_by_side(
        self, scenarios: list[tuple[str, str, int]], bodies: payloads.Bodies, rows: list[dict]
    ) -> None:
        """Each (label, server, port) at saturation, `plan.repeat` times, the median kept. With
        several, their runs take turns (A B A B ...), so that a noisy spell of a shared machine
        falls on all of them alike and their ratio holds."""
        runs: dict[str, list[dict]] = {}
        for label, _, port in scenarios:
            available = self._probe(port, bodies)
            if available is not True:
                rows.append({"scenario": label, "available": False, "why": available})
                say(f"  {label:44} not available: {available}")
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
            say(report.ingest_line(row))

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
        with backlog.kept_empty(*self._streams_of(server)):
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
        return run

    def rate_duration_s(self, rate: float, requests: int = 0) -> float:
        """How long a fixed-rate run lasts: the plan's duration, or long enough for `requests`
        in a full run."""
        floor = 0.0 if self.plan.smoke else requests / rate
        return max(self.plan.rate_duration_s, floor)

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

    # --- fixed rate ----------------------------------------------------------------------

    def fixed_rate(
        self,
        label: str,
        server: str,
        port: int,
        bodies: payloads.Bodies,
        rate: float,
        rows: list[dict],
        on_done: load.OnDone | None = None,
        requests: int = 0,
    ) -> None:
        """`bodies` at `rate` requests/s for the plan's duration, or longer if that sends fewer
        than `requests` (a full run's floor: a p99 over too few requests says little)."""
        meter = cpu.CpuMeter(
            {"server": lambda: self.stack.server_pids(server), "redis": self.stack.redis_pids}
        ).start()
        result = load.fixed_rate(
            "127.0.0.1", port, bodies, rate, self.rate_duration_s(rate, requests), on_done=on_done
        )
        row = {"scenario": label, "server": server, "rate_rps": rate, **result.as_dict()}
        row["cores"] = meter.stop()
        rows.append(row)
        say(report.rate_line(row))
