"""What the ingest function tells operators about each request: its metrics (shared.metrics
has the names and the exposition) and, at LOG_LEVEL=debug, an access line.

The request path marks what it learned on `flask.g` (`Ingest` sets `ingesting`, `events`,
`source` and `body_bytes`; `error_response` sets `error`, a 429 also `rate_limited`; the
suppression filter `suppressed`, DROP_BOTS `bots_dropped`, the tracking plan `violations`,
`blocked` and `quarantined`); the hook below turns that into counts and the access line once
the request is answered, so the request path itself stays free of metric and log calls.
"""

from __future__ import annotations

import logging
import os
import time
import uuid
from typing import Any

from flask import Flask, Response, abort, g, request

from shared import metrics, metrics_access

log = logging.getLogger(__name__)
access_log = logging.getLogger("event_ingest.access")


def instrument(
    app: Flask,
    collector: metrics.StreamCollector | None,
    token: str | None,
    public: bool,
) -> None:
    """Register the hooks; with a collector (METRICS_ENABLED), count and serve /metrics, to
    scrapers with `token` as a bearer token, or to anyone if `public` (shared.metrics_access)."""

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
    # On Lambda no scraper reaches /metrics (the API does not route it; counts leave as EMF):
    # a notice there would only send operators after a token they do not need.
    on_lambda = "AWS_LAMBDA_FUNCTION_NAME" in os.environ
    if (notice := metrics_access.closed_notice(token, public)) and not on_lambda:
        log.warning(notice)

    @app.get("/metrics")
    def prometheus() -> Response:
        refused = metrics_access.refusal(token, public, request.headers.get("Authorization"))
        if refused is not None:
            abort(refused.status, refused.message)
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
    for labels in g.get("violations", ()):  # (source, event, type): refused requests' too
        _child(metrics.PLAN_VIOLATIONS, *labels).inc()
    if 200 <= status < 300:
        suppressed, bots = g.get("suppressed", 0), g.get("bots_dropped", 0)
        blocked = g.get("blocked", 0)
        _child(metrics.EVENTS_ACCEPTED, route).inc(events - suppressed - bots - blocked)
        if suppressed:
            _child(metrics.EVENTS_SUPPRESSED, route).inc(suppressed)
        if bots:
            _child(metrics.BOT_EVENTS_DROPPED, route).inc(bots)
        if blocked:
            _child(metrics.EVENTS_BLOCKED, route).inc(blocked)
        if quarantined := g.get("quarantined", 0):
            _child(metrics.EVENTS_QUARANTINED, route).inc(quarantined)
        return
    reason = g.get("error", "internal")
    _child(metrics.REQUESTS_REFUSED, reason).inc()
    _child(metrics.EVENTS_REFUSED, reason).inc(events)
    if "rate_limited" in g:  # (source, limit), set by the 429's handler
        _child(metrics.RATE_LIMITED_REQUESTS, *g.rate_limited).inc()
        _child(metrics.RATE_LIMITED_EVENTS, *g.rate_limited).inc(events)


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
