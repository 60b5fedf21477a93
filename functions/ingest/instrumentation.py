"""The ingest function's metrics: what every request did, recorded once it is answered, and
`GET /metrics` for Prometheus (shared.metrics has the names and the exposition).

The request path marks what it learned on `flask.g` (`Ingest` sets `ingesting`, `events` and
`body_bytes`; `error_response` sets `error`); the hook below turns that into counts, so the
request path itself stays free of metric calls.
"""

from __future__ import annotations

import hmac
import time

from flask import Flask, Response, g, request
from werkzeug.exceptions import Unauthorized

from shared import metrics


def instrument(app: Flask, collector: metrics.StreamCollector, token: str | None) -> None:
    @app.before_request
    def start_clock() -> None:
        g.started = time.perf_counter()

    @app.after_request
    def record(response: Response) -> Response:
        route = request.url_rule.rule if request.url_rule else "unmatched"
        metrics.HTTP_REQUESTS.labels(route, str(response.status_code)).inc()
        metrics.HTTP_DURATION.labels(route).observe(time.perf_counter() - g.started)
        if g.get("ingesting"):
            _count_events(route, response.status_code)
        return response

    @app.get("/metrics")
    def prometheus() -> Response:
        if token is not None and not _bearer_matches(token):
            raise Unauthorized("/metrics needs METRICS_TOKEN as a bearer token")
        return Response(metrics.exposition(collector), 200, mimetype=metrics.CONTENT_TYPE)


def _count_events(route: str, status: int) -> None:
    events = g.get("events", 0)
    metrics.BODY_BYTES.labels(route).inc(g.get("body_bytes", 0))
    if 200 <= status < 300:
        metrics.EVENTS_ACCEPTED.labels(route).inc(events)
        return
    reason = g.get("error", "internal")
    metrics.REQUESTS_REFUSED.labels(reason).inc()
    metrics.EVENTS_REFUSED.labels(reason).inc(events)


def _bearer_matches(token: str) -> bool:
    scheme, _, given = request.headers.get("Authorization", "").partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(given.encode(), token.encode())
