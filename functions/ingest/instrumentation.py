"""What the ingest function tells operators about each request: its metrics (shared.metrics
has the names and the exposition) and, at LOG_LEVEL=debug, an access line.

Each request has a `RequestRecord`: the request path marks on it what it learned (`Ingest`
sets `events`, `source` and `body_bytes`; an error answer `error`, a 429 also `rate_limited`;
the suppression filter `suppressed`, DROP_BOTS `bots_dropped`, the tracking plan `violations`,
`blocked` and `quarantined`), and `finish` turns that into counts and the access line once
the request is answered, so the request path itself stays free of metric and log calls. The
event routes keep their record themselves (functions/ingest/event_routes.py); Flask's routes
keep theirs on `flask.g`.
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


class RequestRecord:
    """What one request was found to be, for its metrics and its access line."""

    __slots__ = (
        "_request_id",
        "blocked",
        "body_bytes",
        "bots_dropped",
        "error",
        "events",
        "ingesting",
        "quarantined",
        "rate_limited",
        "route",
        "source",
        "source_known",
        "started",
        "suppressed",
        "violations",
    )

    def __init__(self, route: str = "unmatched", ingesting: bool = False) -> None:
        self.route = route  # the route's rule, as Flask writes it: the metrics' label
        self.started = time.perf_counter()
        self.ingesting = ingesting
        self.source: str | None = None  # None: anonymous, once `source_known`
        self.source_known = False
        self.events: int | None = None  # known once the body is read
        self.body_bytes = 0
        self.suppressed = self.bots_dropped = self.blocked = self.quarantined = 0
        self.error: str | None = None
        self.rate_limited: tuple[str, str] | None = None  # (source, limit) of a 429
        self.violations: list[tuple[str, str, str]] = []  # (source, event, type)
        self._request_id: str | None = None

    def identified(self, source: str | None) -> None:
        """The request's write key named `source` (None: anonymous requests are accepted)."""
        self.source, self.source_known = source, True

    @property
    def request_id(self) -> str:
        """This request's ID, made when first asked for (an error answer and its log line
        share it)."""
        if self._request_id is None:
            self._request_id = uuid.uuid4().hex
        return self._request_id


def instrument(
    app: Flask,
    collector: metrics.StreamCollector | None,
    token: str | None,
    public: bool,
) -> None:
    """Register the hooks of Flask's routes; with a collector (METRICS_ENABLED), count and
    serve /metrics, to scrapers with `token` as a bearer token, or to anyone if `public`
    (shared.metrics_access)."""
    counting = collector is not None

    @app.before_request
    def start_clock() -> None:
        g.record = RequestRecord()

    @app.after_request
    def record(response: Response) -> Response:
        record = flask_record()
        record.route = request.url_rule.rule if request.url_rule else "unmatched"
        finish(record, response.status_code, counting)
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


def flask_record() -> RequestRecord:
    """The record of the Flask request being handled (one made now if a hook failed first)."""
    if "record" not in g:
        g.record = RequestRecord()
    return g.record


def finish(record: RequestRecord, status: int, counting: bool) -> None:
    """The request was answered `status`: count it (if `counting`) and log its access line."""
    duration_s = time.perf_counter() - record.started
    if counting:
        _count(record, status, duration_s)
    if access_log.isEnabledFor(logging.DEBUG):
        _log_access(record, status, duration_s)


def _count(record: RequestRecord, status: int, duration_s: float) -> None:
    route = record.route
    _child(metrics.HTTP_REQUESTS, route, str(status)).inc()
    _child(metrics.HTTP_DURATION, route).observe(duration_s)
    if not record.ingesting:
        return
    events = record.events or 0
    _child(metrics.BODY_BYTES, route).inc(record.body_bytes)
    for labels in record.violations:  # (source, event, type): refused requests' too
        _child(metrics.PLAN_VIOLATIONS, *labels).inc()
    if 200 <= status < 300:
        suppressed, bots, blocked = record.suppressed, record.bots_dropped, record.blocked
        _child(metrics.EVENTS_ACCEPTED, route).inc(events - suppressed - bots - blocked)
        if suppressed:
            _child(metrics.EVENTS_SUPPRESSED, route).inc(suppressed)
        if bots:
            _child(metrics.BOT_EVENTS_DROPPED, route).inc(bots)
        if blocked:
            _child(metrics.EVENTS_BLOCKED, route).inc(blocked)
        if record.quarantined:
            _child(metrics.EVENTS_QUARANTINED, route).inc(record.quarantined)
        return
    reason = record.error or "internal"
    _child(metrics.REQUESTS_REFUSED, reason).inc()
    _child(metrics.EVENTS_REFUSED, reason).inc(events)
    if record.rate_limited is not None:  # (source, limit), set by the 429's answer
        _child(metrics.RATE_LIMITED_REQUESTS, *record.rate_limited).inc()
        _child(metrics.RATE_LIMITED_EVENTS, *record.rate_limited).inc(events)


_children: dict[tuple, Any] = {}


def _child(metric: Any, *labels: str) -> Any:
    """`metric.labels(*labels)`, looked up once: prometheus_client's lookup takes a lock and
    builds a key each time, and this runs several times per request."""
    key = (metric, labels)
    child = _children.get(key)
    if child is None:
        child = _children[key] = metric.labels(*labels)
    return child


def _log_access(record: RequestRecord, status: int, duration_s: float) -> None:
    fields = {
        "request_id": record.request_id,
        "method": "POST" if record.ingesting else request.method,
        "route": record.route,
        "status": status,
        "duration_ms": round(duration_s * 1000, 2),
        "events": record.events,
        "source": record.source,
        "error": record.error,
    }
    access_log.debug("%s %s %d", fields["method"], record.route, status, extra=fields)
