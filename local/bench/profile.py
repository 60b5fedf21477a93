"""`python -m local.bench.profile`: where the CPU goes, with py-spy, on the real stack.

1. ingest: the gunicorn master and its workers are sampled (`py-spy record --subprocesses`)
   while the load generator saturates `/batch` with 100-event batches;
2. consumer: one loop runner is sampled while it drains a pre-filled backlog.

Each profile is kept as collapsed stacks (`.data/bench/profile-<time>/*.txt`; open them in
speedscope or flamegraph.pl) and summarised here: the functions with the most samples on
top of the stack (self) and anywhere in it (inclusive), and a breakdown by layer.
Needs py-spy (`pip install py-spy`, in the `bench` extra) and root or ptrace rights.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import threading
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

import redis

from local.bench import backlog, cpu, load, payloads
from local.bench.context import BENCH_ENV, BUCKET, GROUP, STREAM_KEY
from local.bench.phases.ingest import HOT_ROUTES
from local.bench.procs import ROOT, Stack, stop

# Which stage a frame belongs to, by its file and function (matched against "file function");
# first match wins, from the leaf. The ingest stages are the ones issue 29 names: HTTP and
# Flask, auth, decoding, validation, stamping, encoding, metrics, the Redis round trip (the
# admission script runs in Redis, whose CPU is not sampled here).
LAYERS = [
    (
        "ingest: decoding the body (msgspec)",
        r"shared/events\.py decode_json|functions/ingest/body\.py",
    ),
    (
        "ingest: validation",
        r"shared/events\.py .*(_problems|_is_text|_is_integer|_is_id|stored_size|_shared_size|"
        r"max_stored_bytes|max_events|batch_events|request_problem|InvalidRequest)",
    ),
    ("ingest: stamping (prepare: IDs, times)", r"shared/events\.py"),
    ("ingest: enrichment", r"shared/enrichment/|functions/ingest/client_address\.py"),
    ("ingest: auth (write keys)", r"functions/ingest/auth\.py|shared/secrets\.py"),
    ("ingest: rate limits", r"functions/ingest/rate_limits\.py|shared/token_bucket\.py"),
    (
        "ingest: metrics",
        r"functions/ingest/instrumentation\.py|shared/metrics\.py|^prometheus_client/",
    ),
    ("ingest: tracking plan", r"functions/ingest/tracking_plan\.py|shared/plans/"),
    ("ingest: suppression", r"functions/ingest/suppression\.py|shared/regulations\.py"),
    ("encoding the entry (MsgPack)", r"shared/codec\.py"),
    ("gzip (ingest: bodies; consumer: NDJSON objects)", r"^gzip\.py|zlib"),
    ("archive: staging, columns, formats", r"shared/archive/"),
    (
        "Redis round trip (redis-py, hiredis)",
        r"^redis/|hiredis|shared/stream/|local/gevent_redis\.py",
    ),
    ("S3 client (boto3)", r"^(boto3|botocore|urllib3|s3transfer)/"),
    ("ingest app (routes, the rest)", r"functions/ingest/"),
    ("consumer drain loop", r"functions/consumer/"),
    ("Flask/werkzeug", r"^(flask|werkzeug)/"),
    ("HTTP server (gunicorn, gevent)", r"^(gunicorn|gevent)/|local/server_limits\.py"),
    ("stdlib (threads, sockets, selectors...)", r"^[a-z_]+\.py|^(concurrent|http|email|logging)/"),
]
_FRAME = re.compile(r"^(?P<name>.*) \((?P<file>[^()]*?)(?::\d+)?\)$")


def _frames(stack: str) -> list[tuple[str, str]]:
    out = []
    for frame in stack.split(";"):
        match = _FRAME.match(frame)
        out.append((match["name"], match["file"]) if match else (frame, ""))
    return out


def _short(name: str, file: str) -> str:
    for marker in ("site-packages/", "/work/main/", "/lib/python3.11/"):
        if marker in file:
            file = file.split(marker, 1)[1]
            break
    return f"{name} ({file})" if file else name


def summarize(
    collapsed: Path, top: int = 18, per_request_us: float | None = None, events: int = 1
) -> str:
    """Self and inclusive shares of the samples, and samples per layer; with `per_request_us`
    (the CPU a request cost), each layer's share of it per request and per event too."""
    self_counts: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    layers: Counter[str] = Counter()
    total = 0
    for line in collapsed.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack:
            continue
        count = int(count_text)
        frames = [f for f in _frames(stack) if f[1]]  # drop "process ..." and thread roots
        if not frames:
            continue
        total += count
        self_counts[_short(*frames[-1])] += count
        for key in {_short(*f) for f in frames}:
            inclusive[key] += count
        layers[_layer(frames)] += count
    if not total:
        return "  no samples"
    lines = [f"  {total} samples (non-idle)", "  by layer (the innermost frame that names one):"]
    for name, n in layers.most_common():
        cost = ""
        if per_request_us is not None:
            share_us = n / total * per_request_us
            cost = f"  {share_us:8.1f} µs/request {share_us / events:6.2f} µs/event"
        lines.append(f"    {n / total:6.1%}{cost}  {name}")
    lines.append("  self (on top of the stack):")
    lines += [f"    {n / total:6.1%}  {name}" for name, n in self_counts.most_common(top)]
    lines.append("  inclusive (anywhere in the stack):")
    lines += [f"    {n / total:6.1%}  {name}" for name, n in inclusive.most_common(top)]
    return "\n".join(lines)


def _layer(frames: list[tuple[str, str]]) -> str:
    for name, file in reversed(frames):
        where = f"{file} {name}"
        for layer, pattern in LAYERS:
            if re.search(pattern, where):
                return layer
    return "other"


def py_spy() -> str:
    found = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not Path(found).exists():
        raise SystemExit("py-spy is not installed: .venv/bin/pip install py-spy")
    return found


def record(pid: int, out: Path, duration_s: float, rate: int, workers: bool) -> subprocess.Popen:
    """Sample `pid` without pausing it. For gunicorn (`workers`): its worker processes too, and
    only the thread holding the GIL, since gthread's other threads wait for it and would
    otherwise show up as busy wherever they wait."""
    args = [py_spy(), "record", "--pid", str(pid), "--format", "raw", "--output", str(out)]
    args += ["--duration", str(int(duration_s)), "--rate", str(rate), "--nonblocking"]
    if workers:
        args += ["--subprocesses", "--gil"]
    return subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m local.bench.profile", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--duration", type=float, default=20, help="seconds of ingest load")
    parser.add_argument("--drain-events", type=int, default=1_000_000)
    parser.add_argument("--rate", type=int, default=250, help="samples per second")
    parser.add_argument("--loadgen", choices=["wrk", "python"], default="wrk")
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument(
        "--archive-format", choices=["ndjson", "parquet"], default="ndjson", help="the consumer's"
    )
    parser.add_argument("--only", choices=["ingest", "drain"], help="profile only this side")
    args = parser.parse_args(argv)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    out_dir = ROOT / ".data" / "bench" / f"profile-{stamp}"
    out_dir.mkdir(parents=True, exist_ok=True)
    env = dict(BENCH_ENV)
    stack = Stack(out_dir, env)
    try:
        stack.start_storage(BUCKET)
        client = redis.Redis.from_url(stack.env["REDIS_URL"])
        if args.only != "drain":
            print(_profile_ingest(stack, client, out_dir, args), flush=True)
        if args.only != "ingest":
            print(_profile_drain(stack, client, out_dir, args), flush=True)
    finally:
        stack.close()
        for path in (out_dir / "redis").glob("*"):
            if path.is_file() and path.name != "redis.log":
                path.unlink()
    print(f"\ncollapsed stacks in {out_dir}")
    return 0


# What `--only ingest` profiles: (name, the request bodies) of each saturating load, two of
# the bench's hot routes.
INGEST_LOADS = {
    "batch100": HOT_ROUTES["/batch 100 events"],
    "single": HOT_ROUTES["/v1/t 1 event (analytics.js)"],
}


def _profile_ingest(stack: Stack, client: redis.Redis, out_dir: Path, args) -> str:
    return "\n".join(
        _profile_ingest_load(stack, client, out_dir, args, name, bodies())
        for name, bodies in INGEST_LOADS.items()
    )


def _profile_ingest_load(
    stack: Stack, client: redis.Redis, out_dir: Path, args, name: str, bodies: payloads.Bodies
) -> str:
    """One load at saturation under py-spy: its shares by stage, and what they are in CPU
    microseconds per request (the gunicorn workers' CPU over the requests answered, refused
    ones included) and per event; Redis's CPU per entry beside it (the admission script
    included). A stage's microseconds are its share of the samples (taken while a thread held
    the GIL) times the whole CPU (kernel time included): a split, not a measurement of each."""
    port = stack.start_ingest(f"ingest-{name}")
    load.saturate("127.0.0.1", port, bodies, 2, args.connections, args.loadgen)  # warm up
    backlog.empty_stream(client, STREAM_KEY)
    master, _ = stack.servers[f"ingest-{name}"]
    out = out_dir / f"ingest-{name}.txt"
    server, redis_server = cpu.tree(master.pid), stack.redis_pids()
    spy = record(master.pid, out, args.duration, args.rate, workers=True)
    time.sleep(0.5)
    before = [sum(map(cpu.process_cpu_s, pids)) for pids in (server, redis_server)]
    with backlog.kept_empty(client, [STREAM_KEY]):
        result = load.saturate(
            "127.0.0.1", port, bodies, args.duration, args.connections, args.loadgen
        )
    after = [sum(map(cpu.process_cpu_s, pids)) for pids in (server, redis_server)]
    spy.wait(timeout=args.duration + 30)
    stop(master)
    backlog.empty_stream(client, STREAM_KEY)
    answered = max(1, result.requests)
    server_us, redis_us = ((b - a) * 1e6 / answered for a, b in zip(before, after, strict=True))
    head = (
        f"\n== ingest, {bodies.path} {bodies.events_per_request} event(s) a request, at"
        f" saturation: {result.eps:,.0f} events/s, {result.rps:,.0f} req/s, p50"
        f" {result.p50_ms:.1f} ms, p99 {result.p99_ms:.1f} ms (under py-spy at {args.rate} Hz,"
        f" GIL holder only)\n  CPU per request: the server {server_us:,.0f} µs"
        f" ({server_us / bodies.events_per_request:,.1f} per event), Redis {redis_us:,.1f} µs"
        f" per entry (the admission script included); {result.errors:,} errors"
    )
    return head + "\n" + summarize(out, per_request_us=server_us, events=bodies.events_per_request)


def _profile_drain(stack: Stack, client: redis.Redis, out_dir: Path, args) -> str:
    backlog.empty_stream(client, STREAM_KEY)
    filled = backlog.fill(client, STREAM_KEY, payloads.stream_entries(100), args.drain_events, 100)
    env = {"S3_PREFIX": "bench/profile/", "ARCHIVE_FORMAT": args.archive_format}
    runner = stack.start_runners(1, env, "runner-profile")[0]
    out = out_dir / f"consumer-drain-{args.archive_format}.txt"
    spies: list[subprocess.Popen] = []
    started = threading.Event()

    def start_spy() -> None:
        spies.append(record(runner.pid, out, 600, args.rate, workers=False))
        started.set()

    progress = backlog.watch_drain(client, STREAM_KEY, GROUP, filled, 600, on_first_read=start_spy)
    for spy in spies:
        spy.send_signal(2)  # py-spy writes what it has on SIGINT
        spy.wait(timeout=30)
    stop(runner, 2)
    first, last = progress.samples[0][0], progress.samples[-1][0]
    head = (
        f"\n== consumer, 1 process draining {filled.events:,} events as {args.archive_format}:"
        f" {filled.events / (last - first):,.0f} events/s (under py-spy at {args.rate} Hz)"
    )
    return head + "\n" + summarize(out)


if __name__ == "__main__":
    sys.exit(main())
