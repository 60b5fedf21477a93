"""Phase `ingest`: what the HTTP side alone accepts at saturation, no consumer running.

The hot routes (`/batch` and `/v1/batch` of 100, analytics.js's `/v1/t` of one event), each by
turns with the do-nothing WSGI app under the same gunicorn settings on the same bodies (issue
29's targets are their shares of its requests/s) and with the append alone (the floor of this
design: baselines.create_append_only, writing a stream of its own); a bare Flask app; `/batch`
at the plan's other batch sizes, `/batch` of 100 on the previous server configuration
(gthread), gzip bodies, `/events`, and the direct-write design (each request stored in S3
before the answer).
The ingest, previous and direct servers stay up for the `rate` phase.
"""

from __future__ import annotations

from typing import Any

from local.bench import payloads, report
from local.bench.context import (
    DIRECT_APP,
    PREVIOUS_SERVER,
    PREVIOUS_SERVER_ENV,
    STREAM_KEY,
    Bench,
    say,
)
from shared.stream.ledger import accounting_keys

NEEDS = frozenset({"redis", "s3"})
FLOOR_APP = "local.bench.baselines:create_append_only()"
FLOOR_STREAM_KEY = f"{STREAM_KEY}:floor"  # its entries are no events: never consumed
# The routes issue 29 sets targets for (report.INGEST_SHARE_TARGETS), with their bodies.
HOT_ROUTES = {
    "/batch 100 events": lambda: payloads.batch_bodies(100),
    "/v1/batch 100 events (Segment)": lambda: payloads.batch_bodies(100, segment=True),
    "/v1/t 1 event (analytics.js)": lambda: payloads.browser_bodies(1),
}


def run(bench: Bench) -> dict[str, Any]:
    say("\n== ingest at saturation (no consumer running)")
    rows = bench.results["ingest"]
    stack = bench.stack
    ingest = stack.start_ingest()
    previous = stack.start_ingest(PREVIOUS_SERVER, PREVIOUS_SERVER_ENV)
    noop = stack.start_baseline("noop", "local.bench.baselines:noop")
    flask_noop = stack.start_baseline("flask-noop", "local.bench.baselines:create_flask_noop()")
    direct = stack.start_baseline("direct", DIRECT_APP)
    floor = stack.start_baseline("floor", FLOOR_APP, {"STREAM_KEY": FLOOR_STREAM_KEY})
    bench.streams["floor"] = (bench.client, [FLOOR_STREAM_KEY])
    bodies100 = payloads.batch_bodies(100)
    # Issue 29's targets: each hot route at saturation beside the do-nothing app and the append
    # alone, by turns.
    try:
        for label, bodies in HOT_ROUTES.items():
            bench.saturate_side_by_side(
                [
                    (report.INGEST_SHARE_TARGETS[label][0], "noop", noop),
                    (label, "ingest", ingest),
                    (report.floor_of(label), "floor", floor),
                ],
                bodies(),
                rows,
            )
    finally:  # its entries are no events: never left for a consumer of a later phase
        bench.stop_server("floor")
        bench.client.delete(*accounting_keys(FLOOR_STREAM_KEY))
    bench.saturate(
        "baseline: do-nothing Flask, 100-event body", "flask-noop", flask_noop, bodies100, rows
    )
    for size in bench.plan.batch_sizes:
        if f"/batch {size} events" not in HOT_ROUTES:
            bench.saturate(
                f"/batch {size} events", "ingest", ingest, payloads.batch_bodies(size), rows
            )
    bench.saturate(
        "/batch 100 events, previous server (gthread)", PREVIOUS_SERVER, previous, bodies100, rows
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
