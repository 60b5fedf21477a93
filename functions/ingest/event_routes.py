"""The event routes (`/batch`, `/events`, Segment's `/v1/*`), served in front of Flask.

A POST to one of these paths is answered here, in plain WSGI, by the same `Ingest` path and
with the same answers (functions/ingest/answers.py), metrics and CORS headers as Flask would
give it; every other request goes on to Flask. Why: Flask's request context, routing and hooks
cost about as much CPU as a do-nothing app's whole request (docs/performance.md), and these
routes are nearly all of the traffic. The routes stay rules of the Flask app too, so that its
URL map lists every route, other methods get Flask's 405, and preflights its CORS answer; their
view (functions/ingest/app.py) answers alike through Flask whatever POST reaches it all the
same. The Lambda handler, gunicorn and the loop runner all call the Flask app, whose `wsgi_app`
this is: one path for each request everywhere.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Protocol

from werkzeug.http import HTTP_STATUS_CODES

from functions.ingest.answers import Answer, Refusals, json_bytes, log
from functions.ingest.instrumentation import RequestRecord, finish

# Where browsers send from other origins: Segment's API, RudderStack's beacon and config.
BROWSER_PREFIXES = ("/v1/", "/beacon/", "/sourceConfig")
_SUCCESS = {"success": True}
_JSON = ("Content-Type", "application/json")


@dataclass(frozen=True)
class EventRoute:
    """How a path's events are read and answered. `rule` is the Flask rule that also serves
    the path (the metrics' route label); `segment`: Segment's dialect (any Content-Type,
    answered `200 {"success": true}`) rather than the native one (`202 {"accepted": N}`);
    `single`: the body is one event; `default_type`: the type the path implies."""

    rule: str
    segment: bool
    single: bool
    default_type: str | None = None

    def accepted(self, count: int) -> Answer:
        if self.segment:
            return Answer(200, _SUCCESS, {})
        return Answer(202, {"accepted": count}, {})


class Ingesting(Protocol):
    def __call__(self, environ: dict[str, Any], route: EventRoute, record: RequestRecord) -> int:
        """Store the request's events; return how many it held."""


class EventRoutes:
    """WSGI middleware: POSTs to `routes` (path: route) answered by `ingest`, the rest by `app`."""

    def __init__(
        self,
        app: Callable,
        routes: dict[str, EventRoute],
        ingest: Ingesting,
        refusals: Refusals,
        counting: bool,
        cors_allow_origin: str,
    ) -> None:
        self.app, self.routes, self.ingest, self.refusals = app, routes, ingest, refusals
        self.counting = counting
        self.cors = [("Access-Control-Allow-Origin", cors_allow_origin)]
        if cors_allow_origin != "*":
            self.cors.append(("Vary", "Origin"))

    def __call__(self, environ: dict[str, Any], start_response: Callable) -> Iterable[bytes]:
        route = self.routes.get(environ.get("PATH_INFO", "")) if _posted(environ) else None
        if route is None:
            return self.app(environ, start_response)
        record = RequestRecord(route.rule, ingesting=True)
        try:
            answer = self.accepted(environ, route, record)
        except Exception as exc:  # each becomes its answer, as Flask's error handlers do
            answer = self.refusals.answer(exc, record)
        body = json_bytes(answer.body)
        headers = [_JSON, ("Content-Length", str(len(body))), *answer.headers.items()]
        if route.rule.startswith(BROWSER_PREFIXES):
            headers += self.cors
        try:
            finish(record, answer.status, self.counting)
        except Exception:  # the events are stored or refused: answer so, whatever the metrics
            log.exception("could not count request %s", record.request_id)
        start_response(_status_line(answer.status), headers)
        return [body]

    def accepted(self, environ: dict[str, Any], route: EventRoute, record: RequestRecord) -> Answer:
        """Store the request's events on `route`: its answer, or the error that refuses it.
        Flask's view of these routes calls it too."""
        answer = route.accepted(self.ingest(environ, route, record))
        self.refusals.stream_answered()
        return answer


def _posted(environ: dict[str, Any]) -> bool:
    # As werkzeug's routing reads it: `post` is a POST (apig-wsgi passes the method as sent).
    method = environ.get("REQUEST_METHOD", "")
    return method == "POST" or method.upper() == "POST"


_STATUS_LINES: dict[int, str] = {}


def _status_line(status: int) -> str:
    """As werkzeug writes it ("202 ACCEPTED")."""
    line = _STATUS_LINES.get(status)
    if line is None:
        line = _STATUS_LINES[status] = (
            f"{status} {HTTP_STATUS_CODES.get(status, 'UNKNOWN').upper()}"
        )
    return line
