"""`python -m local.bench [--quick] [--phase NAME ...]`: the benchmark, its phases in order.

A full run takes every phase of `local/bench/phases/`, in this order:

1. `ingest`: ingest at saturation, no consumer running (what the HTTP side alone accepts),
   beside the do-nothing baselines and the direct-write design;
2. `lambda-handler`: the ingest function's Lambda handler in process, warm, per invocation;
3. `rate`: fixed rate (1,000 events/s) with one consumer running, and end-to-end lag;
4. `memory`: Redis memory per buffered event for a backlog of 1M events;
5. `drain`: drain rate from a 1M-event backlog with 1, then 2 consumers, then 1 writing Parquet;
6. `crowd`: a normal client's latency while 500 idle and 100 slow connections are open;
7. `archive`: `event-ingest query`'s group-by over 1M archived events, NDJSON and Parquet;
8. `compaction`: `event-ingest compact`'s throughput and peak memory, and the query after it;
9. `replication`: ingest with REDIS_WAIT_REPLICAS=1 beside without, one replica attached;
10. `metrics`: ingest with METRICS_ENABLED on and off, by server CPU per request;
11. `cluster`: a Redis Cluster of 3 primaries, STREAM_SHARDS=1 beside 6;
12. `rate-limits`: in process, the app without rate limits beside with them;
13. `enrichment`: in process, the app with every enrichment on (a City database of a million
    networks, built once under the results folder) beside off, and its cold start;
14. `plans`: in process, the app with a tracking plan beside without;
15. `privacy`: a deletion's local scan and rewrite, NDJSON and Parquet.

`--phase` (repeatable, or comma-separated) runs only the phases named, in the order above,
and starts only what they need (the stack's Redis, moto's S3 server); `--skip` leaves phases out.

Every server runs with the rate limits on (both buckets taken at each request), at rates far
above what one load generator on loopback sends: the throughput measured is the deployed one.

Phases 1, 3 and 6 also measure the previous server configuration (gunicorn's gthread worker,
4 threads and 8 connections per worker), so both stand side by side in one run.

Between phases the stream is deleted, so each starts from the same state. Whatever happens,
the stack is stopped and the report written (`report`) with what was measured.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import re
import runpy
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import redis

from local.bench import cpu, load, phases, report
from local.bench.context import BENCH_ENV, BUCKET, Bench, Plan
from local.bench.procs import GUNICORN_CONF, ROOT, Stack
from local.redis_server import redis_server_binary

# Measured on the project's 2-core VM: 7 min 50 s for every phase (results-20261206T130357Z,
# docs/performance.md); 1.5 minutes was measured on 2026-11-26, when there were four phases.
QUICK_DURATION = "about 8 minutes on 2 cores"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The options; `phases` is the names of the phases to run, in a full run's order."""
    parser = argparse.ArgumentParser(
        prog="python -m local.bench", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--quick", action="store_true", help=f"short smoke run ({QUICK_DURATION})")
    parser.add_argument(
        "--loadgen", choices=["wrk", "python"], default="wrk", help="wrk if installed (default)"
    )
    parser.add_argument("--connections", type=int, help="connections for saturation runs")
    parser.add_argument("--duration", type=float, help="seconds per saturation run")
    parser.add_argument("--repeat", type=int, help="saturation runs per scenario (median kept)")
    parser.add_argument("--out", type=Path, default=ROOT / ".data" / "bench", help="results folder")
    parser.add_argument(
        "--phase",
        action="append",
        default=[],
        metavar="NAME",
        help=f"run only this phase (repeatable, or comma-separated): {', '.join(phases.PHASES)}",
    )
    parser.add_argument("--skip", action="append", default=[], choices=list(phases.PHASES))
    args = parser.parse_args(argv)
    try:
        only = phases.parse_names(args.phase)
    except ValueError as exc:
        parser.error(str(exc))
    args.phases = phases.select(only, args.skip)
    return args


def plan_of(args: argparse.Namespace) -> Plan:
    plan = Plan.quick() if args.quick else Plan.full()
    if args.connections:
        plan = dataclasses.replace(plan, connections=args.connections)
    if args.duration:
        plan = dataclasses.replace(plan, duration_s=args.duration)
    if args.repeat:
        plan = dataclasses.replace(plan, repeat=args.repeat)
    return plan


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    plan = plan_of(args)
    started = datetime.now(UTC)
    stamp = started.strftime("%Y%m%dT%H%M%SZ")
    run_dir = args.out / f"run-{stamp}"
    run_dir.mkdir(parents=True, exist_ok=True)
    results = new_results(stamp, args, plan)
    print(
        f"benchmark ({results['mode']}): {results['machine']['cpus']} cores, {results['loadgen']}"
    )
    print(f"logs and processes' data in {run_dir}", flush=True)
    bench = Bench(Stack(run_dir, dict(BENCH_ENV)), plan, args.loadgen, results)
    try:
        start_stack(bench, phases.needs(args.phases))
        for name in args.phases:
            results.update(phases.module(name).run(bench))
    finally:
        bench.stack.close()
        _remove_redis_data(run_dir)
        finished = datetime.now(UTC)
        results["finished_at"] = finished.strftime("%Y%m%dT%H%M%SZ")
        results["duration_s"] = round((finished - started).total_seconds())
        path = report.write(results, args.out, stamp)
        print(report.table(results))
        print(f"\nresults: {path}")
    return 0


def new_results(stamp: str, args: argparse.Namespace, plan: Plan) -> dict:
    """The report before any phase: every section present and empty, and what names the run
    (the commit, the machine, the versions, the phases), so a table quoting it can say so."""
    return {
        "started_at": stamp,
        "mode": "quick" if args.quick else "full",
        "phases": list(args.phases),
        "commit": commit(),
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


def start_stack(bench: Bench, needed: frozenset[str]) -> None:
    """The stack's Redis and moto's S3 server, each only if a phase to run needs it."""
    if "redis" in needed:
        bench.stack.start_redis()
        bench.client = redis.Redis.from_url(bench.stack.env["REDIS_URL"])
        bench.results["machine"]["redis"] = bench.client.info("server")["redis_version"]
    if "s3" in needed:
        bench.stack.start_s3(BUCKET)


def commit() -> dict:
    """The checkout measured: HEAD, and whether tracked files differ from it (then the figures
    are of HEAD plus those changes). `--no-optional-locks`: reading never rewrites the index
    while someone else works in the tree."""

    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(
                ["git", "--no-optional-locks", *args],
                cwd=ROOT,
                capture_output=True,
                text=True,
                timeout=30,
            )
        except (OSError, subprocess.TimeoutExpired):
            return None
        return done.stdout.strip() if done.returncode == 0 else None

    sha = git("rev-parse", "HEAD")
    changes = git("status", "--porcelain", "--untracked-files=no") if sha else None
    return {"sha": sha, "dirty": None if changes is None else bool(changes)}


def redis_version(binary: str) -> str | None:
    """`7.0.15` from `redis-server --version`: the stack's Redis, its replica and the cluster
    all run this binary, recorded even when no phase starts the stack's own Redis."""
    try:
        output = subprocess.run(
            [binary, "--version"], capture_output=True, text=True, timeout=30
        ).stdout
    except (OSError, subprocess.TimeoutExpired):
        return None
    match = re.search(r"v=(\d+\.\d+\.\d+)", output)
    return match.group(1) if match else None


def gunicorn_settings() -> dict[str, object]:
    """local/gunicorn.conf.py's settings, read without its side effect on this process: it sets
    PROMETHEUS_MULTIPROC_DIR (a fresh directory) for the server it configures, which would
    send every later in-process metric of this process into files."""
    had_dir = "PROMETHEUS_MULTIPROC_DIR" in os.environ
    conf = runpy.run_path(str(GUNICORN_CONF))
    if not had_dir:
        Path(os.environ.pop("PROMETHEUS_MULTIPROC_DIR")).rmdir()
    return conf


def cpu_model() -> str | None:
    """The first processor's `model name` in /proc/cpuinfo (Linux x86; None elsewhere)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return None
    match = re.search(r"^model name\s*:\s*(.+)$", text, re.MULTILINE)
    return match.group(1).strip() if match else None


def _machine() -> dict:
    load1, load5, _ = Path("/proc/loadavg").read_text().split()[:3]
    conf = gunicorn_settings()
    try:
        binary: str | None = redis_server_binary()
    except (ImportError, RuntimeError):  # a run of phases that start no Redis needs none
        binary = None
    return {
        "cpus": cpu.cores(),
        "cpu_model": cpu_model(),
        "arch": platform.machine(),
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
        "redis": redis_version(binary) if binary else None,
        "redis_server": binary,
        "loadavg_at_start": [float(load1), float(load5)],
        "wrk": bool(load.wrk_path()),
    }


def _remove_redis_data(run_dir: Path) -> None:
    """The AOF of a 1M-event backlog is hundreds of MB; keep the logs only."""
    for path in (run_dir / "redis").glob("**/*"):
        if path.is_file() and path.name != "redis.log":
            path.unlink()


if __name__ == "__main__":
    sys.exit(main())
