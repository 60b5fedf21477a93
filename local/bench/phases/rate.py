"""Phase `rate`: latency at a fixed rate (1,000 events/s) with one consumer running, and the
end-to-end lag from a request's `202` to its event being readable in the archive.

`/batch` of 100 first (in a full run at least 1,000 of them, issue 29's latency target), then
`/batch` of 10 carrying probes (events with known IDs) that an `ArchiveWatcher` looks for in
S3, then `/events` and analytics.js's `/v1/t` (at least 10,000 in a full run) at the same event
rate, and the direct-write design and the previous server configuration at the same rate. The
watcher lists the archive every 50 ms in the process that sends the load, which inflates that
run's latency: it runs only beside the probes' run, never beside a target's. Servers left up
by the `ingest` phase are reused; all are stopped at the end.
"""

from __future__ import annotations

import time
from typing import Any

from local.bench import backlog, payloads, report
from local.bench.context import (
    BUCKET,
    DIRECT_APP,
    FIXED_RATE_EVENTS,
    FLUSH_INTERVAL_S,
    PREVIOUS_SERVER,
    PREVIOUS_SERVER_ENV,
    STREAM_KEY,
    Bench,
    say,
)
from local.bench.procs import stop

NEEDS = frozenset({"redis", "s3"})
PREFIX = "bench/lag/"
# Issue 29's latency targets: p99 over at least so many 100-event batches and single events.
BATCHES = report.LATENCY_TARGETS[report.BATCHES_AT_RATE]
SINGLES = report.LATENCY_TARGETS[report.SINGLES_AT_RATE]


def run(bench: Bench) -> dict[str, Any]:
    say(f"\n== fixed rate: {FIXED_RATE_EVENTS} events/s, one consumer running")
    rows = bench.results["fixed_rate"]
    stack = bench.stack
    ingest = bench.port("ingest") or stack.start_ingest()
    direct = bench.port("direct") or stack.start_baseline("direct", DIRECT_APP)
    backlog.empty_stream(bench.client, STREAM_KEY)
    runners = stack.start_runners(1, {"S3_PREFIX": PREFIX}, "runner-lag")
    time.sleep(2)  # let the runner import and create its group before the clock starts
    bodies = payloads.batch_bodies(100)
    rate = FIXED_RATE_EVENTS / 100
    bench.fixed_rate(report.BATCHES_AT_RATE, "ingest", ingest, bodies, rate, rows, requests=BATCHES)
    probe_rate = rate * 10
    probes = _with_probes(
        payloads.batch_bodies(10), int(probe_rate * bench.rate_duration_s(probe_rate))
    )
    acked: dict[int, float] = {}
    watcher = backlog.ArchiveWatcher(stack.env["S3_ENDPOINT_URL"], BUCKET, PREFIX)
    watcher.start()
    bench.fixed_rate(
        "/batch 10 events at 100 req/s, with the lag probes",
        "ingest",
        ingest,
        probes,
        probe_rate,
        rows,
        on_done=lambda i, status, t: acked.__setitem__(i, t) if status == 202 else None,
    )
    lag = _lag(watcher, acked)
    bench.results["lag"] = lag
    say(report.lag_line(lag))
    bench.fixed_rate(
        "/events at 1,000 req/s",
        "ingest",
        ingest,
        payloads.single_bodies(),
        FIXED_RATE_EVENTS,
        rows,
    )
    bench.fixed_rate(
        report.SINGLES_AT_RATE,
        "ingest",
        ingest,
        payloads.browser_bodies(1),
        FIXED_RATE_EVENTS,
        rows,
        requests=SINGLES,
    )
    for runner in runners:
        stop(runner, sig=2)
    bench.fixed_rate(
        "baseline: direct write, /batch 100 at 10 req/s", "direct", direct, bodies, rate, rows
    )
    previous = bench.port(PREVIOUS_SERVER) or stack.start_ingest(
        PREVIOUS_SERVER, PREVIOUS_SERVER_ENV
    )
    bench.fixed_rate(
        "/batch 100 events at 10 req/s, previous server (gthread)",
        PREVIOUS_SERVER,
        previous,
        bodies,
        rate,
        rows,
    )
    for name in ("ingest", "direct", PREVIOUS_SERVER):
        bench.stop_server(name)
    return {"fixed_rate": rows, "lag": lag}


def _with_probes(bodies: payloads.Bodies, count: int) -> payloads.Bodies:
    """`count` requests of `bodies`, the i-th carrying probe i (an event the watcher finds)."""
    return payloads.Bodies(
        bodies.path,
        [payloads.with_probe(bodies.bodies[i % len(bodies.bodies)], i) for i in range(count)],
        100,
        bodies.headers,
    )


def _lag(watcher: backlog.ArchiveWatcher, acked: dict[int, float]) -> dict[str, Any]:
    """Wait for the acknowledged probes to be readable (a flush interval and some), then
    stop watching; the lags' percentiles."""
    wait_until = time.monotonic() + float(FLUSH_INTERVAL_S) + 15
    while len(watcher.seen) < len(acked) and time.monotonic() < wait_until:
        time.sleep(0.1)
    watcher.stop()
    lags = sorted(watcher.seen[i] - acked[i] for i in acked if i in watcher.seen)
    return {
        "probes": len(acked),
        "found": len(lags),
        "flush_interval_s": float(FLUSH_INTERVAL_S),
        "poll_interval_s": watcher.interval_s,
        "p50_ms": _pct(lags, 0.5),
        "p99_ms": _pct(lags, 0.99),
        "max_ms": _pct(lags, 1.0),
    }


def _pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    return round(values[min(len(values) - 1, int(q * len(values)))] * 1000, 1)
