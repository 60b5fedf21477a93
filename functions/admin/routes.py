"""The privacy API, in the shape of Segment's Public API, for data-subject-request tools:

- `POST /regulations` with `{"regulationType", "subjectType", "subjectIds"}` accepts a
  regulation (`shared.archive.privacy.store.RegulationStore.accept`) and answers
  `200 {"data": {"regulateId": ...}}`;
- `GET /regulations/<id>` answers its state, `{"data": {"regulation": {...}}}`, with the
  number of its subjects, never their IDs.

Every request carries ADMIN_TOKEN as a bearer token (compared in constant time); a write key
never opens these routes. Refusals are `{"code", "message"}` with 400, 401, 404 or 503, and
change nothing. Without ADMIN_TOKEN nothing here is registered: the routes do not exist.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError
from flask import Blueprint, Flask, Response, jsonify, request

from shared import regulations, secrets
from shared.archive.privacy.store import RegulationStore
from shared.archive.storage import ObjectStore
from shared.metrics_access import bearer_matches
from shared.regulations import BadRegulation, Regulation
from shared.settings import Settings, admin_token_from_secret
from shared.stream import REDIS_ERRORS, Client, connect

log = logging.getLogger(__name__)

# Reading a regulation is a few small objects: retried where a reader would give up at once.
STORE_ATTEMPTS = 4


def register_admin_routes(app: Flask, settings: Settings) -> None:
    """The privacy API on `app`, if ADMIN_TOKEN (or ADMIN_TOKEN_SECRET) is set."""
    if settings.admin_token is None:
        return
    app.register_blueprint(admin_blueprint(settings))


def admin_blueprint(settings: Settings) -> Blueprint:
    routes = Blueprint("admin", __name__)
    token = admin_token_of(settings)
    backends = Backends(settings)

    @routes.before_request
    def authenticate() -> Response | None:
        if bearer_matches(request.headers.get("Authorization") or "", token()):
            return None
        message = "the privacy API needs ADMIN_TOKEN as a bearer token"
        return error(401, "unauthorized", message, {"WWW-Authenticate": "Bearer"})

    @routes.post("/regulations")
    def create_regulation() -> Response:
        body = request_document()
        regulation = backends.store.accept(
            backends.redis,
            settings.stream_key,
            regulation_type=body.get("regulationType"),
            subject_type=body.get("subjectType"),
            subject_ids=body.get("subjectIds"),
        )
        log.info("regulation %s accepted: %s", regulation.id, regulation.type)
        return jsonify({"data": {"regulateId": regulation.id}})

    @routes.get("/regulations/<regulation_id>")
    def get_regulation(regulation_id: str) -> Response:
        regulation = backends.store.get(regulation_id)
        return jsonify({"data": {"regulation": segment_regulation(regulation)}})

    _register_error_handlers(routes)
    return routes


def admin_token_of(settings: Settings) -> Callable[[], str]:
    """What gives the token in force: ADMIN_TOKEN's, or ADMIN_TOKEN_SECRET's current value
    (read again as it ages: a rotated token is in force without a restart)."""
    if settings.admin_token_secret is None:
        return lambda: settings.admin_token
    secret = secrets.cached(
        settings.admin_token_secret, settings.secrets_refresh_s, admin_token_from_secret
    )
    return secret.value


class Backends:
    """The regulation store and Redis, made at the first request that needs them: nothing is
    contacted (or, in the ingest app, imported from boto3) before an admin request comes."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._store: RegulationStore | None = None
        self._redis: Client | None = None
        self._lock = threading.Lock()

    @property
    def store(self) -> RegulationStore:
        with self._lock:
            if self._store is None:
                objects = ObjectStore.from_settings(self.settings, attempts=STORE_ATTEMPTS)
                self._store = RegulationStore(objects, self.settings.s3_prefix)
            return self._store

    @property
    def redis(self) -> Client:
        with self._lock:
            if self._redis is None:
                self._redis = connect(self.settings)
            return self._redis


def request_document() -> dict[str, Any]:
    """The request's JSON object, whatever its Content-Type says."""
    try:
        document = json.loads(request.get_data())
    except ValueError:  # invalid UTF-8 too
        raise BadRegulation("the body is not valid JSON", code="invalid_json") from None
    if not isinstance(document, dict):
        raise BadRegulation("the body must be a JSON object")
    return document


def segment_regulation(regulation: Regulation) -> dict[str, Any]:
    """A regulation as Segment's Public API names its fields (`overallStatus`, `createdAt`),
    with ours beside them; the number of subjects, not their IDs."""
    return {
        "id": regulation.id,
        "overallStatus": regulations.SEGMENT_STATUS[regulation.state],
        "createdAt": regulation.accepted_at,
        "finishedAt": regulation.finished_at,
        "regulationType": regulation.type,
        "subjectType": regulation.subject_type,
        "subjectCount": len(regulation.subject_hashes),
        "linked": regulation.linked,
        "progress": {_camel(name): value for name, value in regulation.progress.items()},
        "undecodableObjects": len(regulation.undecodable),
        "error": regulation.error,
    }


def _camel(name: str) -> str:
    first, *rest = name.split("_")
    return first + "".join(word.capitalize() for word in rest)


def error(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> Response:
    response = jsonify({"code": code, "message": message})
    response.status_code = status
    response.headers.update(headers or {})
    return response


def _register_error_handlers(routes: Blueprint) -> None:
    # The blueprint's handlers come before the app's: the ingest app's would answer a Redis
    # error with its own "event buffer unavailable".
    @routes.errorhandler(BadRegulation)
    def bad_regulation(exc: BadRegulation) -> Response:
        return error(404 if exc.code == "not_found" else 400, exc.code, str(exc))

    def storage_unavailable(exc: Exception) -> Response:
        log.warning("privacy API: the bucket cannot be used: %s", type(exc).__name__)
        message = "the regulations cannot be read or written now, retry later"
        return error(503, "unavailable", message, {"Retry-After": "5"})

    def redis_unavailable(exc: Exception) -> Response:
        log.warning("privacy API: Redis cannot be used: %s", type(exc).__name__)
        message = "the regulations cannot be put in force now, retry later"
        return error(503, "unavailable", message, {"Retry-After": "1"})

    for failure in (BotoCoreError, ClientError):
        routes.register_error_handler(failure, storage_unavailable)
    for failure in REDIS_ERRORS:
        routes.register_error_handler(failure, redis_unavailable)
