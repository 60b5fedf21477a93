"""What the ingest function tells operators about each request: its metrics (shared.metrics
has the names and the exposition) and, at LOG_LEVEL=debug, an access line.

The request path marks what it learned on `flask.g` (`Ingest` sets `ingesting`, `events`,
`source` and `body_bytes`; `error_response` sets `error`); the hook below turns that into counts
and the access line once the request is answered, so the request path itself stays free of
metric and log calls.
"""

from __future__ import annotations

import hmac
import logging
import time
import uuid
from typing import Any

from flask import Flask, Response, g, request
from werkzeug.exceptions import Unauthorized

from shared import metrics

access_log = logging.getLogger("event_ingest.access")


def instrument(app: Flask, collector: metrics.StreamCollector | None, token: str | None) -> None:
    """Register the hooks; with a collector (METRICS_ENABLED), count and serve /metrics."""

    @app.before_request
    def start_clock() -> None:
        g.started = time.perf_counter()

    @app.after_request
    def record(response: Response) -> Response:
        route = request.url_rule.rule if request.url_rule else "unmatched"
        duration_s = time.perf_counter() - g.started
        if collector is not None:
            _count(route, response.status_code, duration_s)
        if access_log.isEnabledFor(logging.DEBUG):
            _log_access(route, response.status_code, duration_s)
        return response

    if collector is None:
        return

    @app.get("/metrics")
    def prometheus() -> Response:
        if token is not None and not _bearer_matches(token):
            raise Unauthorized("/metrics needs METRICS_TOKEN as a bearer token")
        return Response(metrics.exposition(collector), 200, mimetype=metrics.CONTENT_TYPE)


def request_id() -> str:
    """This request's ID, made when first asked for (an error answer and its log line share it)."""
    if "request_id" not in g:
        g.request_id = uuid.uuid4().hex
    return g.request_id


def _count(route: str, status: int, duration_s: float) -> None:
    _child(metrics.HTTP_REQUESTS, route, str(status)).inc()
    _child(metrics.HTTP_DURATION, route).observe(duration_s)
    if not g.get("ingesting"):
        return
    events = g.get("events", 0)
    _child(metrics.BODY_BYTES, route).inc(g.get("body_bytes", 0))
    if 200 <= status < 300:
        _child(metrics.EVENTS_ACCEPTED, route).inc(events)
        return
    reason = g.get("error", "internal")
    _child(metrics.REQUESTS_REFUSED, reason).inc()
    _child(metrics.EVENTS_REFUSED, reason).inc(events)


_children: dict[tuple, Any] = {}


def _child(metric: Any, *labels: str) -> Any:
    """`metric.labels(*labels)`, looked up once: prometheus_client's lookup takes a lock and
    builds a key each time, and this runs several times per request."""
    key = (metric, labels)
    child = _children.get(key)
    if child is None:
        child = _children[key] = metric.labels(*labels)
    return child


def _log_access(route: str, status: int, duration_s: float) -> None:
    fields = {
        "request_id": request_id(),
        "method": request.method,
        "route": route,
        "status": status,
        "duration_ms": round(duration_s * 1000, 2),
        "events": g.get("events"),
        "source": g.get("source"),
        "error": g.get("error"),
    }
    access_log.debug("%s %s %d", request.method, route, status, extra=fields)


def _bearer_matches(token: str) -> bool:
    scheme, _, given = request.headers.get("Authorization", "").partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(given.encode(), token.encode())
