"""Phase `ingest`: what the HTTP side alone accepts at saturation, no consumer running.

The do-nothing baselines (a bare WSGI app and a bare Flask app under the same gunicorn
settings), `/batch` at each of the plan's batch sizes, `/batch` of 100 on the previous server
configuration (gthread), `/v1/batch` (Segment), gzip bodies, `/events`, and the direct-write
design (each request stored in S3 before the answer). The ingest, previous and direct servers
stay up for the `rate` phase.
"""

from __future__ import annotations

from typing import Any

from local.bench import payloads
from local.bench.context import DIRECT_APP, PREVIOUS_SERVER, PREVIOUS_SERVER_ENV, Bench, say

NEEDS = frozenset({"redis", "s3"})


def run(bench: Bench) -> dict[str, Any]:
    say("\n== ingest at saturation (no consumer running)")
    rows = bench.results["ingest"]
    stack = bench.stack
    ingest = stack.start_ingest()
    previous = stack.start_ingest(PREVIOUS_SERVER, PREVIOUS_SERVER_ENV)
    noop = stack.start_baseline("noop", "local.bench.baselines:noop")
    flask_noop = stack.start_baseline("flask-noop", "local.bench.baselines:create_flask_noop()")
    direct = stack.start_baseline("direct", DIRECT_APP)
    bodies100 = payloads.batch_bodies(100)
    bench.saturate("baseline: do-nothing WSGI, 100-event body", "noop", noop, bodies100, rows)
    bench.saturate(
        "baseline: do-nothing Flask, 100-event body", "flask-noop", flask_noop, bodies100, rows
    )
    for size in bench.plan.batch_sizes:
        bench.saturate(f"/batch {size} events", "ingest", ingest, payloads.batch_bodies(size), rows)
    bench.saturate(
        "/batch 100 events, previous server (gthread)", PREVIOUS_SERVER, previous, bodies100, rows
    )
    bench.saturate(
        "/v1/batch 100 events (Segment)",
        "ingest",
        ingest,
        payloads.batch_bodies(100, segment=True),
        rows,
    )
    bench.saturate(
        "/batch 100 events, gzip",
        "ingest",
        ingest,
        payloads.batch_bodies(100, gzipped=True),
        rows,
    )
    bench.saturate("/events (1 event)", "ingest", ingest, payloads.single_bodies(), rows)
    bench.saturate("baseline: direct write to S3, /batch 100", "direct", direct, bodies100, rows)
    for name in ("noop", "flask-noop"):
        bench.stop_server(name)
    return {"ingest": rows}
