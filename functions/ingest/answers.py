"""What the ingest function answers: the JSON bodies, and the refusal each error becomes.

One mapping from exception to answer serves both ways a request is handled: the event routes,
served in front of Flask (functions/ingest/event_routes.py), and Flask's own routes (settings,
health, metrics, the privacy API), whose error handlers (functions/ingest/app.py) turn an
`Answer` into a Response. Refusals under sustained pressure are logged as throttled lines, not
one per request.
"""

from __future__ import annotations

import logging
import time
from typing import Any, NamedTuple

import msgspec
from werkzeug.exceptions import HTTPException

from functions.ingest.instrumentation import RequestRecord
from functions.ingest.rate_limits import UNKNOWN_SOURCE, metric_labels
from shared import events
from shared.stream import REDIS_ERRORS, BacklogFull, RateLimited, ReplicationShortfall

log = logging.getLogger("functions.ingest.app")

# Seconds a client should wait: Redis hiccups pass quickly, a full backlog takes consumers longer.
RETRY_AFTER_UNAVAILABLE_S = "1"
RETRY_AFTER_BACKLOG_S = "5"
ERROR_CODES = {
    400: "invalid_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    408: "request_timeout",
    413: "too_large",
    415: "unsupported_media_type",
}

_json = msgspec.json.Encoder()


def json_bytes(body: dict[str, Any]) -> bytes:
    return _json.encode(body)


class Answer(NamedTuple):
    """An answer before it is written: status, JSON body and headers beyond Content-Type."""

    status: int
    body: dict[str, Any]
    headers: dict[str, str]


def error_answer(
    record: RequestRecord,
    status: int,
    error: str,
    message: str,
    headers: dict[str, str] | None = None,
    **details: Any,
) -> Answer:
    """An error answer. `code` repeats `error` for Segment's SDKs: analytics-python reads
    `code` and `message`, and retries a 4xx whose body lacks them as if it were transient."""
    record.error = error  # for the metrics: the reason of a refusal
    body = {"error": error, "code": error, "message": message, **details}
    return Answer(status, body, dict(headers or {}))


class Refusals:
    """The answer to each error a request may end in, with the throttled log lines of the
    refusals that come in floods (a full backlog, Redis away, rate limits)."""

    def __init__(self) -> None:
        # For these 503s nothing was accepted; the client keeps the events and retries.
        self._backpressure = _Throttled(
            log, "refusing events: %s (%d refusals since the last such line; one line per %ds)"
        )
        # Redis away: a line when the first request is refused, one per interval while it
        # lasts (how many were refused meanwhile), and one when Redis answers again (in all).
        self._outage = _Throttled(
            log,
            "stream unavailable, answering 503: %s (%d requests refused since the last such "
            "line; one line per %ds until it is back)",
        )
        self._limited = _Throttled(
            log,
            "rate limiting: %s (%d requests answered 429 since the last such line; one per %ds)",
        )

    def stream_answered(self) -> None:
        """Redis took (or deliberately refused) a request: an outage, if one was open, ends."""
        self._outage.end("stream available again after %.1fs of outage: %d requests refused")

    def answer(self, exc: BaseException, record: RequestRecord) -> Answer:
        """The answer to a request that raised `exc`."""
        if isinstance(exc, events.InvalidRequest):
            return error_answer(record, 400, exc.code, exc.summary(), **exc.details())
        if isinstance(exc, BacklogFull):
            self.stream_answered()
            self._backpressure.warn(exc)
            message = "too many events wait to be archived, retry later"
            return _retry_later(record, 503, "backlog_full", message, RETRY_AFTER_BACKLOG_S)
        if isinstance(exc, RateLimited):
            # Nothing was stored; Segment's SDKs wait Retry-After (or back off) and send again.
            self._limited.warn(exc)
            source = record.source if record.source_known else UNKNOWN_SOURCE
            record.rate_limited = metric_labels(source, exc.bucket)
            message = "too many events from this source or address, retry later"
            return _retry_later(record, 429, "rate_limited", message, str(exc.retry_after_s))
        if isinstance(exc, ReplicationShortfall):
            # The primary holds the entry and it will most likely be archived; but a failover
            # now could lose it, so it is not acknowledged. A retry may store it twice.
            self.stream_answered()
            self._backpressure.warn(exc)
            message = "the events did not reach enough replicas in time, retry later"
            error, wait = "replication_timeout", RETRY_AFTER_UNAVAILABLE_S
            return _retry_later(record, 503, error, message, wait)
        if isinstance(exc, REDIS_ERRORS):
            self._outage.warn(exc)
            message = "event buffer unavailable, retry later"
            return _retry_later(record, 503, "unavailable", message, RETRY_AFTER_UNAVAILABLE_S)
        if isinstance(exc, HTTPException):
            return _http_error(exc, record)
        log.exception("unexpected error, request id %s", record.request_id, exc_info=exc)
        return error_answer(record, 500, "internal", "internal error", requestId=record.request_id)


def _retry_later(
    record: RequestRecord, status: int, error: str, message: str, retry_after_s: str
) -> Answer:
    return error_answer(record, status, error, message, {"Retry-After": retry_after_s})


def _http_error(exc: HTTPException, record: RequestRecord) -> Answer:
    status = exc.code or 500
    # Keep what HTTP requires of the error (Allow on 405, WWW-Authenticate on 401).
    headers = {name: value for name, value in exc.get_headers() if name.lower() != "content-type"}
    if status == 401:
        headers["WWW-Authenticate"] = 'Basic realm="events"'
    return error_answer(
        record, status, ERROR_CODES.get(status, "http_error"), exc.description, headers
    )


class _Throttled:
    """A warning logged at most once per interval, with how often it happened meanwhile: under
    sustained backpressure every request is refused, and one line per refusal would flood.
    `end` closes an episode (an outage) with one line of its length and total, and the next
    episode's first occurrence is logged at once."""

    def __init__(self, logger: logging.Logger, message: str, interval_s: int = 10) -> None:
        self.logger, self.message, self.interval_s = logger, message, interval_s
        self.count, self.next_at = 0, 0.0
        self.total, self.began_at = 0, None

    def warn(self, detail: object) -> None:
        self.count += 1
        self.total += 1
        now = time.monotonic()
        if self.began_at is None:
            self.began_at = now
        if now >= self.next_at:
            self.logger.warning(self.message, detail, self.count, self.interval_s)
            self.count, self.next_at = 0, now + self.interval_s

    def end(self, message: str) -> None:
        """If an episode is open: log `message` with its seconds and its total, and close it."""
        if self.began_at is None:
            return
        self.logger.warning(message, time.monotonic() - self.began_at, self.total)
        self.count, self.next_at, self.total, self.began_at = 0, 0.0, 0, None
