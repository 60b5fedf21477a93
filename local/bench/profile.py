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

from local.bench import backlog, load, payloads
from local.bench.context import BENCH_ENV, BUCKET, GROUP, STREAM_KEY
from local.bench.procs import ROOT, Stack, stop

# Which layer a frame belongs to, by the file it comes from; first match wins, from the leaf.
LAYERS = [
    ("json decode (msgspec)", r"msgspec|decode_json"),
    ("validation (shared/events)", r"shared/events\.py"),
    ("msgpack codec", r"shared/codec\.py"),
    ("archive: encode/compress", r"shared/archive\.py|^gzip\.py|zlib"),
    ("redis client", r"^redis/|hiredis"),
    ("S3 client (boto3)", r"^(boto3|botocore|urllib3|s3transfer)/"),
    ("ingest app", r"functions/ingest/"),
    ("consumer drain loop", r"functions/consumer/"),
    ("flask/werkzeug", r"^(flask|werkzeug)/"),
    ("gunicorn (HTTP, workers)", r"^gunicorn/"),
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


def summarize(collapsed: Path, top: int = 18) -> str:
    """Self and inclusive shares of the samples, and samples per layer."""
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
    lines += [f"    {n / total:6.1%}  {name}" for name, n in layers.most_common()]
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


def _profile_ingest(stack: Stack, client: redis.Redis, out_dir: Path, args) -> str:
    port = stack.start_ingest()
    bodies = payloads.batch_bodies(100)
    load.saturate("127.0.0.1", port, bodies, 2, args.connections, args.loadgen)  # warm up
    client.delete(STREAM_KEY)
    master, _ = stack.servers["ingest"]
    out = out_dir / "ingest-batch100.txt"
    spy = record(master.pid, out, args.duration, args.rate, workers=True)
    time.sleep(0.5)
    result = load.saturate("127.0.0.1", port, bodies, args.duration, args.connections, args.loadgen)
    spy.wait(timeout=args.duration + 30)
    stop(master)
    client.delete(STREAM_KEY)
    head = (
        f"\n== ingest, /batch 100 events at saturation: {result.eps:,.0f} events/s,"
        f" {result.rps:,.0f} req/s, p50 {result.p50_ms:.1f} ms, p99 {result.p99_ms:.1f} ms"
        f" (under py-spy at {args.rate} Hz, GIL holder only)"
    )
    return head + "\n" + summarize(out)


def _profile_drain(stack: Stack, client: redis.Redis, out_dir: Path, args) -> str:
    client.delete(STREAM_KEY)
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
