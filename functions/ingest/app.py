"""The ingest function: a Flask app that validates event batches and appends them to the stream.

`create_app(settings)` builds the app (tests build their own); the module-level `app` is what
gunicorn serves (`functions.ingest.app:app`), and `lambda_handler` is the same app behind
apig-wsgi for API Gateway (REST, HTTP API v1/v2) and ALB events. A request is
answered `202` only once all its events are in the stream as one entry, and a rejected request
adds nothing.
"""

from __future__ import annotations

import logging
import uuid
from typing import Any

import msgspec
import redis
from apig_wsgi import make_lambda_handler
from flask import Flask, Response, request
from werkzeug.exceptions import HTTPException

from shared import codec, events
from shared.settings import Settings
from shared.stream import EventStream, connect

log = logging.getLogger(__name__)

# Segment's limit for a batch request; larger bodies are refused before they are read.
MAX_BODY_BYTES = 500 * 1024
RETRY_AFTER_S = "1"

_json = msgspec.json.Encoder()


def json_response(body: dict[str, Any], status: int, **headers: str) -> Response:
    return Response(_json.encode(body), status, headers, mimetype="application/json")


def create_app(settings: Settings | None = None) -> Flask:
    settings = settings or Settings.from_env()
    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = MAX_BODY_BYTES
    event_stream = EventStream(connect(settings), settings.stream_key)

    def accept(raw_events: list[Any]) -> Response:
        batch = events.prepare(raw_events, events.received_at_now())
        event_stream.add(codec.encode_entry(batch))
        return json_response({"accepted": len(batch)}, 202)

    @app.post("/batch")
    def post_batch() -> Response:
        return accept(events.batch_events(events.decode_json(request.get_data())))

    @app.post("/events")
    def post_event() -> Response:
        return accept([events.decode_json(request.get_data())])

    @app.get("/healthz")
    def healthz() -> Response:
        event_stream.client.ping()
        return json_response({"status": "ok"}, 200)

    _register_error_handlers(app)
    return app


def _register_error_handlers(app: Flask) -> None:
    @app.errorhandler(events.InvalidRequest)
    def invalid(exc: events.InvalidRequest) -> Response:
        return json_response(exc.as_dict(), 400)

    @app.errorhandler(redis.RedisError)
    def storage_unavailable(exc: redis.RedisError) -> Response:
        # Nothing was accepted; the client keeps the events and retries.
        log.warning("stream unavailable: %s", exc)
        body = {"error": "unavailable", "message": "event buffer unavailable, retry later"}
        return json_response(body, 503, **{"Retry-After": RETRY_AFTER_S})

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException) -> Response:
        body = {
            "error": (exc.name or "error").lower().replace(" ", "_"),
            "message": exc.description,
        }
        return json_response(body, exc.code or 500)

    @app.errorhandler(Exception)
    def unexpected(exc: Exception) -> Response:
        request_id = uuid.uuid4().hex
        log.exception("unexpected error, request id %s", request_id)
        body = {"error": "internal", "message": "internal error", "requestId": request_id}
        return json_response(body, 500)


app = create_app()
lambda_handler = make_lambda_handler(app, binary_support=True)
