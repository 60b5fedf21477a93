"""Same-run baselines, served by gunicorn with local/gunicorn.conf.py like the ingest function.

- `noop`: a bare WSGI app that reads the body and answers `202`. Its throughput is the
  ceiling that HTTP parsing in gunicorn sets on this machine; the ingest function cannot
  beat it, and the gap is what Flask, validation, MsgPack and the XADD cost.
- `flask_noop`: the same through Flask's routing and request object, to split that gap.
- `create_append_only()`: the floor of this design: each request's body appended as one entry
  through the shipped admission script, with what ingest sends along (the source's and the
  address's rate-limit buckets, the appends of a gevent worker grouped), and nothing else:
  nothing decoded, checked, stamped, encoded or counted. Whatever ingest does per request
  costs at least this much; its share of the do-nothing app's requests/s bounds ingest's.
- `create_direct_app()`: the decision record's rejected design: each request is validated
  the same way, then written synchronously to object storage as its own gzip NDJSON object
  before the answer. Compared on latency at the same rate.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable
from typing import Any

from flask import Flask, Response, request

from functions.ingest.client_address import parse_address
from functions.ingest.rate_limits import RateLimits
from shared import archive, events
from shared.settings import Settings
from shared.stream import producer

_ACCEPTED = b'{"accepted":0}'
_HEADERS = [("Content-Type", "application/json"), ("Content-Length", str(len(_ACCEPTED)))]


def noop(environ: dict[str, Any], start_response: Callable) -> Iterable[bytes]:
    length = int(environ.get("CONTENT_LENGTH") or 0)
    if length:
        environ["wsgi.input"].read(length)
    start_response("202 Accepted", _HEADERS)
    return [_ACCEPTED]


def create_flask_noop() -> Flask:
    app = Flask(__name__)

    @app.post("/<path:_path>")
    def accept(_path: str) -> Response:
        request.get_data()
        return Response(_ACCEPTED, 202, mimetype="application/json")

    return app


def create_append_only(settings: Settings | None = None) -> Callable:
    """The app: the body (bytes as they came, about the size of the entry ingest would write:
    JSON where ingest writes MsgPack with its stamps) as an entry's `d`. Its entries are no
    events: give it a stream key of its own (the bench does)."""
    settings = settings or Settings.from_env()
    limits = RateLimits(settings)
    streams: list[Any] = []  # made at the first request, after the worker set up its grouping

    def append_only(environ: dict[str, Any], start_response: Callable) -> Iterable[bytes]:
        if not streams:
            streams.append(producer(settings))
        length = int(environ.get("CONTENT_LENGTH") or 0)
        body = environ["wsgi.input"].read(length) if length else b""
        buckets = limits.buckets("bench", parse_address(environ.get("REMOTE_ADDR") or ""))
        streams[0].add({b"v": b"1", b"n": b"1", b"d": body}, cost=1, buckets=buckets)
        start_response("202 Accepted", _HEADERS)
        return [_ACCEPTED]

    return append_only


def create_direct_app(settings: Settings | None = None) -> Flask:
    settings = settings or Settings.from_env()
    store = archive.ObjectStore.from_settings(settings)
    prefix = f"{settings.s3_prefix}direct/"
    app = Flask(__name__)

    @app.post("/batch")
    def post_batch() -> Response:
        batch = events.batch_events(events.decode_json(request.get_data()))
        batch = events.prepare(batch, events.received_at_now())
        body = archive.compress([archive.encode_lines(batch)], settings.gzip_level)
        key = f"{prefix}{archive.partition_path(batch[0])}{uuid.uuid4().hex}.ndjson.gz"
        store.put(key, body)
        return Response(b'{"accepted":%d}' % len(batch), 202, mimetype="application/json")

    @app.errorhandler(events.InvalidRequest)
    def invalid(exc: events.InvalidRequest) -> Response:
        return Response(str(exc), 400)

    return app
