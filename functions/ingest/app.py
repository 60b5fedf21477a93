"""The ingest function: a Flask app that validates event batches and appends them to the stream.

`create_app(settings)` builds the app (tests build their own); the module-level `app` is what
gunicorn serves (`functions.ingest.app:app`), and `lambda_handler` is the same app behind
apig-wsgi for API Gateway (REST, HTTP API v1/v2) and ALB events.

Two dialects, one path: the native API (`/batch`, `/events`, answering `202 {"accepted": N}`)
and Segment's tracking API (`/v1/*`, answering `200 {"success": true}` as its SDKs expect).
Every request goes through the same steps: authenticate, read the body, decode, validate and
stamp, check against the tracking plan (functions/ingest/tracking_plan.py), enrich
(shared/enrichment/), encode, one XADD. It is answered only once all its events are in the
stream as one entry, and a rejected request adds nothing. Events of suppressed subjects, bots
under DROP_BOTS and events a plan blocks on Segment's paths are answered alike and left out of
the entry (functions/ingest/suppression.py, shared/enrichment/).
"""

from __future__ import annotations

import importlib
import logging
import os
import threading
from typing import Any
from urllib.parse import parse_qsl

from apig_wsgi import make_lambda_handler
from flask import Flask, Response, request
from werkzeug.exceptions import NotFound, RequestEntityTooLarge, Unauthorized

from functions.ingest.answers import Refusals, json_bytes
from functions.ingest.auth import WriteKeys, key_outside_body, write_keys_of
from functions.ingest.body import read_body
from functions.ingest.client_address import client_address
from functions.ingest.event_routes import BROWSER_PREFIXES, EventRoute, EventRoutes
from functions.ingest.instrumentation import RequestRecord, flask_record, instrument
from functions.ingest.rate_limits import RateLimits
from functions.ingest.sdk_settings import (
    analytics_js_settings,
    api_location,
    rudderstack_source_config,
)
from functions.ingest.suppression import Suppression
from functions.ingest.tracking_plan import TrackingPlan, positions
from shared import codec, events, logs, metrics
from shared.enrichment import Enricher
from shared.settings import Settings
from shared.stream import BacklogFull, EventStream, RateLimited, ShardedStream, producer

log = logging.getLogger(__name__)

# Segment's single-event paths, long and short (analytics.js posts to /v1/t, /v1/p, ...).
SEGMENT_EVENT_PATHS = {name: name for name in sorted(events.EVENT_TYPES)} | {
    name[0]: name for name in sorted(events.EVENT_TYPES)
}
SEGMENT_EVENT_RULE = f"/v1/<any({', '.join(SEGMENT_EVENT_PATHS)}):path>"
# Segment's batch paths: /v1/b is analytics.js batching, Swift and Kotlin; /beacon/v1/batch
# RudderStack's beacon, keyed by ?writeKey=.
SEGMENT_BATCH_RULES = ("/v1/batch", "/v1/import", "/v1/b", "/beacon/v1/batch")
DEFAULT_ALLOWED_HEADERS = "Content-Type, Content-Encoding, Authorization, X-Retry-Count"
# analytics.js fetches its settings at every page load; a key's settings change rarely.
SETTINGS_MAX_AGE_S = 300


def json_response(body: dict[str, Any], status: int, **headers: str) -> Response:
    return Response(json_bytes(body), status, headers, mimetype="application/json")


def event_routes() -> dict[str, EventRoute]:
    """Every event path (as requested) and its route. Segment's paths answer with a trailing
    slash too (analytics-java posts to /v1/import/), never with a redirect: a redirected POST
    loses its body."""
    routes = {
        "/batch": EventRoute("/batch", segment=False, single=False),
        "/events": EventRoute("/events", segment=False, single=True),
    }
    for rule in SEGMENT_BATCH_RULES:
        for slash in ("", "/"):
            routes[rule + slash] = EventRoute(rule + slash, segment=True, single=False)
    for name, event_type in SEGMENT_EVENT_PATHS.items():
        for slash in ("", "/"):
            route = EventRoute(SEGMENT_EVENT_RULE + slash, True, True, default_type=event_type)
            routes[f"/v1/{name}{slash}"] = route
    return routes


class Ingest:
    """The one path every ingest request takes, from HTTP request to stream entry."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._stream: EventStream | ShardedStream | None = None
        self._stream_lock = threading.Lock()
        self._write_keys = write_keys_of(settings)
        self.rate_limits = RateLimits(settings)
        self.suppression = Suppression(settings, lambda: self.stream.client)
        # The client's address, location, user agent and bot flag (docs/enrichment.md): a
        # missing or unreadable GEOIP_DATABASE stops the start here.
        self.enricher = Enricher(settings)
        # TRACKING_PLAN (docs/tracking-plans.md): unreadable or invalid, the start stops here.
        self.tracking_plan = TrackingPlan(settings)

    @property
    def stream(self) -> EventStream | ShardedStream:
        """Made at the first request that needs it, not at start: a Redis Cluster client
        contacts the cluster when it is made, and a cluster away at start must get clients
        503s, as one Redis away does, not a server that cannot start."""
        if self._stream is None:
            with self._stream_lock:
                if self._stream is None:
                    self._stream = producer(self.settings)
        return self._stream

    @property
    def write_keys(self) -> WriteKeys:
        return self._write_keys()

    def __call__(self, environ: dict[str, Any], route: EventRoute, record: RequestRecord) -> int:
        """Accept the WSGI request `environ` on `route`, marking `record`; return how many
        events it held."""
        authorization = environ.get("HTTP_AUTHORIZATION")
        key = key_outside_body(authorization, _query_write_key(environ.get("QUERY_STRING")))
        source_known = key is not None or not self.write_keys.required  # anonymous: known
        if source_known:  # refuse a bad key before spending anything on the body ...
            record.identified(self.write_keys.source_of(key))
        # ... and a request whose address (or source, when known yet) was just over its limit.
        address = client_address(environ, self.settings.trusted_proxies)
        self.rate_limits.refuse_early(address, record.source, source_known)
        segment, single = route.segment, route.single
        body = read_body(environ, self.settings.max_body_bytes, any_content_type=segment)
        record.body_bytes = len(body)
        document = self._decode(body, authenticated=key is not None)
        fields = document if isinstance(document, dict) else {}
        if not source_known:  # the key is in the body (analytics.js): known only now
            record.identified(self.write_keys.source_of(fields.get("writeKey")))
        source = record.source
        raw_events = [document] if single else events.batch_events(document)
        record.events = len(raw_events)
        envelope = events.Envelope(
            source=source,
            sent_at=None if single else fields.get("sentAt"),
            context=None if single else fields.get("context"),
            integrations=None if single else fields.get("integrations"),
            default_type=route.default_type,
        )
        max_body = self.settings.max_body_bytes
        try:  # before any work per event: a few bytes must not make megabytes to stamp
            events.check_stored_size(len(raw_events), envelope, len(body), max_body)
        except events.TooLarge as exc:
            raise RequestEntityTooLarge(str(exc)) from None
        # No event can be larger than the body holding it: skip measuring small bodies.
        max_event = self.settings.max_event_bytes
        prepared = events.prepare(
            raw_events,
            events.received_at_now(),
            envelope,
            max_event_bytes=max_event if len(body) > max_event else None,
        )
        # Suppression first: a suppressed subject's events are neither checked nor refused.
        unsuppressed = self.suppression.kept(prepared)
        record.suppressed = len(prepared) - len(unsuppressed)
        planned, quarantined = self.tracking_plan.checked(
            unsuppressed, source, refuse_blocked=not segment, record=record
        )
        kept = self.enricher.enrich(prepared, address, len(body))  # no bots under DROP_BOTS
        max_stored = events.max_stored_bytes(
            len(body),
            len(prepared),
            source,
            self.enricher.max_added_bytes + self.tracking_plan.max_added_bytes,
        )
        # Refused alike, suppressed, bots or not.
        marked = positions(prepared, quarantined)
        entry = self._encode(prepared, max_stored, marked)
        stored = _all_of(kept, planned) if planned is not prepared else kept
        # Bots among what was neither suppressed nor blocked.
        record.bots_dropped = len(planned) - len(stored)
        if not stored:  # answered as if stored
            return len(prepared)
        if len(stored) < len(prepared):
            marked = positions(stored, quarantined)
            entry = self._encode(stored, max_stored, marked)
        record.quarantined = len(marked)
        buckets = self.rate_limits.buckets(source, address)
        try:
            self.stream.add(entry, cost=len(stored), buckets=buckets)
        except RateLimited as exc:
            self.rate_limits.remember(exc, len(stored))
            raise
        return len(prepared)

    def _decode(self, body: bytes, authenticated: bool) -> Any:
        """The body's JSON. A stranger (keys required, none in a header) learns nothing about
        why a body is malformed: without a readable `writeKey`, the answer is 401."""
        try:
            return events.decode_json(body)
        except events.InvalidRequest:
            if self.write_keys.required and not authenticated:
                raise Unauthorized("a valid write key is required (HTTP Basic user name)") from None
            raise

    def _encode(
        self, prepared: list[dict[str, Any]], max_stored: int, quarantined: list[int]
    ) -> dict[bytes, bytes]:
        """The stream entry of `prepared` (`quarantined`: the positions marked so), which may
        hold at most `max_stored` bytes of events (what `events.check_stored_size` guarantees)
        and never more than readers expect."""
        try:
            entry = codec.encode_entry(prepared, quarantined)
        except codec.UnencodableEvents as exc:
            message = "holds an integer outside the 64-bit range"
            problems = [events.Problem(i, "", message) for i in exc.indexes]
            raise events.InvalidRequest(problems) from None
        # Both hold by construction (the entry cap for source names of up to 32 bytes); checked
        # so that a mistake is a 413, never an entry larger than consumers size their reads for.
        too_large = codec.entry_bytes(entry) > codec.max_entry_bytes(self.settings.max_body_bytes)
        if too_large or len(entry[b"d"]) > max_stored:
            raise RequestEntityTooLarge("the events grow too large once stamped; send fewer")
        return entry


def _query_write_key(query: str | None) -> str | None:
    """`?writeKey=` (RudderStack's beacon), parsed as Flask parses `request.args`."""
    if not query:
        return None
    pairs = parse_qsl(query.encode("latin1").decode(), True, errors="werkzeug.url_quote")
    return next((value for name, value in pairs if name == "writeKey"), None)


def _all_of(kept: list[dict[str, Any]], planned: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The events of `kept` that are also in `planned` (both subsets of one request's)."""
    storing = {id(event) for event in planned}
    return [event for event in kept if id(event) in storing]


def create_app(settings: Settings | None = None) -> Flask:
    settings = settings or Settings.from_env()
    app = Flask(__name__, static_folder=None)  # no static files: every route is in docs/api.md
    app.config["MAX_CONTENT_LENGTH"] = settings.max_body_bytes
    ingest = Ingest(settings)
    collector = metrics.StreamCollector(lambda: ingest.stream.client, settings)
    counting = settings.metrics_enabled
    instrument(
        app, collector if counting else None, settings.metrics_token, settings.metrics_public
    )
    if not ingest.write_keys.required:
        log.warning(
            "WRITE_KEYS is unset: ACCEPTING ANONYMOUS REQUESTS from anyone who can reach us"
        )
    routes = event_routes()
    refusals = Refusals()

    def served_by_flask(**_: str) -> Response:
        """What EventRoutes answers in front of Flask, for a POST that reaches Flask's rule all
        the same: answered alike, metrics and CORS by Flask's hooks, errors by its handler."""
        record = flask_record()
        record.ingesting = True
        answer = front.accepted(request.environ, routes[request.path], record)
        return json_response(answer.body, answer.status)

    for rule in sorted({route.rule for route in routes.values()}):
        app.add_url_rule(rule, f"events {rule}", served_by_flask, methods=["POST"])
    front = EventRoutes(
        app.wsgi_app, routes, ingest, refusals, counting, settings.cors_allow_origin
    )
    app.wsgi_app = front  # type: ignore[method-assign]

    @app.post("/v1/m")
    @app.post("/v1/m/")
    def sdk_metrics() -> Response:
        # analytics.js's and the mobile SDKs' counters about themselves: not events. The
        # settings we serve turn them off; a client configured otherwise is not refused.
        return json_response({"success": True}, 200)

    # Where analytics.js sends events: PUBLIC_URL, not the request's Host, which a client
    # chooses; a shared cache would keep one forged Host for every visitor of the page.
    public_api = api_location(settings.public_url) if settings.public_url else None
    if public_api is None:
        log.warning(
            "PUBLIC_URL is unset: the analytics.js settings document takes apiHost and protocol"
            " from each request (its Host and scheme) and is sent Cache-Control: private, so no"
            " shared cache keeps it; set PUBLIC_URL to the URL browsers reach"
        )

    @app.get("/v1/projects/<write_key>/settings")
    def analytics_js_settings_document(write_key: str) -> Response:
        _known_key_or_404(ingest.write_keys, write_key)
        if public_api is None:  # fit only for the browser that sent this Host
            document = analytics_js_settings(write_key, f"{request.host}/v1", request.scheme)
            return _cacheable(json_response(document, 200), shared=False)
        document = analytics_js_settings(write_key, *public_api)
        return _cacheable(json_response(document, 200), shared=True)

    @app.get("/sourceConfig")
    @app.get("/sourceConfig/")
    def rudderstack_source_config_document() -> Response:
        key = key_outside_body(request.headers.get("Authorization"), request.args.get("writeKey"))
        _known_key_or_404(ingest.write_keys, (key or b"").decode("utf-8", "replace"))
        # Nothing of the request is in it, and it is the same for every key: a shared cache
        # may serve it to anyone (even to a request it would have answered 404).
        return _cacheable(json_response(rudderstack_source_config(), 200), shared=True)

    @app.before_request
    def segment_preflight() -> Response | None:
        # Ahead of routing: Flask's automatic OPTIONS answer would omit the CORS headers.
        if request.method != "OPTIONS" or not request.path.startswith(BROWSER_PREFIXES):
            return None
        # SDKs add headers of their own (X-Retry-Count, AnonymousId, ...): allow what is asked.
        requested = request.headers.get("Access-Control-Request-Headers")
        headers = {
            "Access-Control-Allow-Methods": "GET, POST, OPTIONS",
            "Access-Control-Allow-Headers": requested or DEFAULT_ALLOWED_HEADERS,
            "Access-Control-Max-Age": "86400",
        }
        # Chrome asks before a public page may post to a private address (a dev machine): only
        # pages of PRIVATE_NETWORK_ORIGINS may, or any site a visitor opens could reach us.
        allowed = settings.private_network_origins
        if request.headers.get("Access-Control-Request-Private-Network") == "true":
            origin = (request.headers.get("Origin") or "").lower()
            if "*" in allowed or origin in allowed:
                headers["Access-Control-Allow-Private-Network"] = "true"
        if allowed and "*" not in allowed:
            headers["Vary"] = "Origin"  # the answer depends on it
        return Response(status=204, headers=headers)

    @app.after_request
    def cors(response: Response) -> Response:
        if request.path.startswith(BROWSER_PREFIXES):
            response.headers["Access-Control-Allow-Origin"] = settings.cors_allow_origin
            if settings.cors_allow_origin != "*":
                response.headers["Vary"] = "Origin"
        return response

    @app.get("/livez")
    def livez() -> Response:
        # The process answers, and nothing else is asked: a shared Redis that is full or away
        # must not get every replica of this server restarted by its orchestrator.
        return json_response({"status": "alive"}, 200)

    @app.get("/readyz")
    def readyz() -> Response:
        # Would a request be accepted now? For load balancers: send traffic elsewhere if not.
        if ingest.stream.is_full():
            full = "is at STREAM_MAX_LEN or STREAM_MAX_BYTES"
            raise BacklogFull(f"stream {settings.stream_key} {full}")
        return json_response({"status": "ready"}, 200)

    @app.get("/healthz")
    def healthz() -> Response:
        # Kept for existing checks: Redis answers (and the auth mode), whatever the backlog.
        ingest.stream.client.ping()
        auth = "write keys" if ingest.write_keys.required else "anonymous (WRITE_KEYS unset)"
        return json_response({"status": "ok", "auth": auth}, 200)

    if settings.admin_token:  # by name: not in this function's Lambda bundle (AdminFunction's)
        importlib.import_module("functions.admin.routes").register_admin_routes(app, settings)
    _register_error_handlers(app, refusals)
    return app


def _known_key_or_404(write_keys: WriteKeys, key: str) -> None:
    if not write_keys.knows(key):
        raise NotFound("no source has this write key")


def _cacheable(response: Response, shared: bool) -> Response:
    """Kept SETTINGS_MAX_AGE_S by browsers, and by shared caches (CDNs, proxies) only if
    `shared`: a browser's own cache holds only answers to the requests it sent itself."""
    scope = "public" if shared else "private"
    response.headers["Cache-Control"] = f"{scope}, max-age={SETTINGS_MAX_AGE_S}"
    return response


def _register_error_handlers(app: Flask, refusals: Refusals) -> None:
    """Flask's routes' errors answered as the event routes' are (functions/ingest/answers.py)."""

    @app.errorhandler(Exception)
    def refused(exc: Exception) -> Response:
        answer = refusals.answer(exc, flask_record())
        return json_response(answer.body, answer.status, **answer.headers)


if logs.json_wanted():  # on Lambda; gunicorn's workers are set up by local/gunicorn.conf.py
    logs.configure(os.environ.get("LOG_LEVEL", "info"))
app = create_app()
_apig_handler = make_lambda_handler(app, binary_support=True)
_emf = metrics.EmfEmitter()


def lambda_handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    """API Gateway's or the ALB's event through the same app; this invocation's counts go to
    CloudWatch as EMF lines, since nothing scrapes a Lambda function."""
    response = _apig_handler(event, context)
    _emf.emit()
    return response
