"""The event routes, answered in front of Flask (functions/ingest/event_routes.py): the same
routes as Flask's rules, never through Flask's request machinery, and everything else still
Flask's."""

from __future__ import annotations

import pytest
from flask import Flask
from werkzeug.test import EnvironBuilder, run_wsgi_app

from functions.ingest.app import create_app, event_routes
from shared.settings import Settings

EVENT = {"type": "track", "event": "Signed Up", "userId": "u-1"}


@pytest.fixture
def app(settings: Settings) -> Flask:
    return create_app(settings)


def test_every_event_path_is_the_flask_rule_its_metrics_are_labelled_with(app: Flask) -> None:
    adapter = app.url_map.bind("ingest.example.com")
    routes = event_routes()
    for path, route in routes.items():
        rule, _ = adapter.match(path, "POST", return_rule=True)
        assert (rule.rule, rule.endpoint) == (route.rule, f"events {route.rule}"), path
    # ... and every Flask rule of an event route is served in front (no POST falls through).
    rules = {r.rule for r in app.url_map.iter_rules() if r.endpoint.startswith("events ")}
    assert rules == {route.rule for route in routes.values()}
    assert {"/v1/t", "/v1/track/", "/v1/batch/", "/beacon/v1/batch", "/events"} <= set(routes)


def test_an_event_request_never_enters_flask(app: Flask, monkeypatch) -> None:
    def no_flask_request(environ):
        raise AssertionError(f"{environ['PATH_INFO']} went through Flask")

    monkeypatch.setattr(app, "request_context", no_flask_request)
    client = app.test_client()
    assert client.post("/batch", json={"batch": [EVENT]}).status_code == 202
    refused = client.post("/v1/t", data=b"not json", content_type="text/plain")
    assert refused.status_code == 400  # errors too are answered in front
    assert refused.headers["Access-Control-Allow-Origin"] == "*"
    with pytest.raises(AssertionError, match="went through Flask"):
        client.get("/livez")  # the others are Flask's


def test_a_post_that_reaches_flask_all_the_same_is_answered_alike(app: Flask) -> None:
    """Flask's view of the event routes answers as the front does: status, body, CORS."""
    front = app.test_client()
    expected = [
        front.post("/batch", json={"batch": [EVENT]}),
        front.post("/v1/t", data=b'{"userId": "u-1", "event": "E"}', content_type="text/plain"),
        front.post("/v1/t", data=b"not json", content_type="text/plain"),
    ]
    app.wsgi_app.routes = {}  # every POST now goes through Flask
    through_flask = app.test_client()
    answers = [
        through_flask.post("/batch", json={"batch": [EVENT]}),
        through_flask.post(
            "/v1/t", data=b'{"userId": "u", "event": "E"}', content_type="text/plain"
        ),
        through_flask.post("/v1/t", data=b"not json", content_type="text/plain"),
    ]
    for before, after in zip(expected, answers, strict=True):
        assert (after.status_code, after.get_json()) == (before.status_code, before.get_json())
        cors = after.headers.get("Access-Control-Allow-Origin")
        assert cors == before.headers.get("Access-Control-Allow-Origin")


def test_a_method_in_lower_case_is_a_post(app: Flask, redis_client, settings) -> None:
    """apig-wsgi passes the method as the client sent it; werkzeug's routing reads `post` as
    POST, and so does the front."""
    environ = EnvironBuilder(path="/batch", method="POST", json={"batch": [EVENT]}).get_environ()
    environ["REQUEST_METHOD"] = "post"
    body, status, _ = run_wsgi_app(app, environ)
    assert status.startswith("202") and b"".join(body) == b'{"accepted":1}'
    assert redis_client.xlen(settings.stream_key) == 1


def test_a_body_cut_short_is_read_as_werkzeug_reads_it(app: Flask, redis_client, settings) -> None:
    """Fewer bytes than Content-Length: where the server ends the stream itself (gunicorn), what
    came is read; elsewhere (apig-wsgi, the test client) the answer is 400."""
    document = b'{"batch": [{"type": "track", "event": "E", "userId": "u"}]}'
    for terminated, expected in ((True, "202"), (False, "400")):
        builder = EnvironBuilder(path="/batch", method="POST", data=document)
        environ = builder.get_environ()
        environ["CONTENT_LENGTH"] = str(len(document) + 10)
        environ["CONTENT_TYPE"] = "application/json"
        environ.pop("wsgi.input_terminated", None)
        if terminated:
            environ["wsgi.input_terminated"] = True
        _, status, _ = run_wsgi_app(app, environ)
        assert status.startswith(expected), (terminated, status)
    assert redis_client.xlen(settings.stream_key) == 1


def test_other_methods_and_preflights_on_event_paths_stay_flask_s(app: Flask) -> None:
    client = app.test_client()
    wrong = client.put("/v1/t")
    assert wrong.status_code == 405 and "POST" in wrong.headers["Allow"]
    preflight = client.options("/v1/batch", headers={"Origin": "https://shop.example"})
    assert preflight.status_code == 204
    assert "POST" in preflight.headers["Access-Control-Allow-Methods"]


def test_a_post_to_an_unknown_path_is_flask_s_404(app: Flask) -> None:
    missing = app.test_client().post("/v1/tracks", json=EVENT)
    assert missing.status_code == 404 and missing.get_json()["error"] == "not_found"
