"""Segment's tracking API (`/v1/*`), write keys and CORS, through Flask's test client against a
real redis-server."""

from __future__ import annotations

import base64
import dataclasses
import gzip
import json
from datetime import datetime, timedelta

import pytest

from functions.ingest.app import create_app
from shared import codec
from shared.events import parse_timestamp

KEYS = (("web", "wk_web_123"), ("ios", "wk_ios_456"))


def basic(key: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{key}:".encode()).decode()}


@pytest.fixture
def keyed_settings(settings):
    return dataclasses.replace(settings, write_keys=KEYS)


@pytest.fixture
def client(keyed_settings):
    return create_app(keyed_settings).test_client()


@pytest.fixture
def entries(keyed_settings, redis_client):
    """The events of every entry in the test's stream, entry by entry."""
    return lambda: [
        codec.decode_entry(fields) for _, fields in redis_client.xrange(keyed_settings.stream_key)
    ]


def test_batch_answers_like_segment_and_records_the_source(client, entries):
    batch = [
        {"type": "track", "userId": "u1", "event": "Clicked", "properties": {"x": 1}},
        {"type": "identify", "anonymousId": "a1", "traits": {"plan": "pro"}},
    ]
    response = client.post("/v1/batch", json={"batch": batch}, headers=basic("wk_ios_456"))
    assert response.status_code == 200
    assert response.get_json() == {"success": True}
    [stored] = entries()
    assert [e["source"] for e in stored] == ["ios", "ios"]
    assert stored[0]["properties"] == {"x": 1} and stored[1]["traits"] == {"plan": "pro"}


def test_import_is_an_alias_of_batch(client, entries):
    body = {"batch": [{"type": "page", "userId": "u", "name": "Home"}]}
    assert client.post("/v1/import", json=body, headers=basic("wk_web_123")).status_code == 200
    assert entries()[0][0]["name"] == "Home"


@pytest.mark.parametrize("event_type", ["track", "identify", "page", "screen", "group", "alias"])
@pytest.mark.parametrize("short", [False, True], ids=["long", "short"])
def test_single_event_endpoints_take_the_type_from_the_path(client, entries, event_type, short):
    # analytics.js posts to the short paths: /v1/t, /v1/i, /v1/p, /v1/s, /v1/g, /v1/a.
    path = f"/v1/{event_type[0] if short else event_type}"
    event = {"userId": "u1", "event": "E", "groupId": "g", "previousId": "p"}
    response = client.post(path, json=event, headers=basic("wk_web_123"))
    assert (response.status_code, response.get_json()) == (200, {"success": True})
    assert entries()[0][0]["type"] == event_type


@pytest.mark.parametrize("path", ["/v1/x", "/v1/tr", "/v1/T", "/v1/batches", "/b"])
def test_other_paths_under_v1_are_404(client, redis_client, keyed_settings, path):
    event = {"type": "track", "userId": "u1", "event": "E"}
    response = client.post(path, json=event, headers=basic("wk_web_123"))
    assert response.status_code == 404 and response.get_json()["error"] == "not_found"
    assert redis_client.xlen(keyed_settings.stream_key) == 0


@pytest.mark.parametrize("path", ["/v1/import/", "/v1/batch/", "/v1/b/", "/v1/t/"])
def test_a_trailing_slash_is_the_same_path_not_a_redirect(client, entries, path):
    # analytics-java posts to /v1/import/; a redirected POST would lose its body.
    body = {"batch": [{"type": "track", "userId": "u", "event": "E"}]}
    if path == "/v1/t/":
        body = body["batch"][0]
    response = client.post(path, json=body, headers=basic("wk_web_123"))
    assert response.status_code == 200 and entries()[0][0]["event"] == "E"


def test_sdk_metrics_are_answered_and_not_stored(client, redis_client, keyed_settings):
    series = {"series": [{"type": "Counter", "metric": "analytics_js.invoke", "value": 1}]}
    response = client.post("/v1/m", data=json.dumps(series), content_type="text/plain")
    assert (response.status_code, response.get_json()) == (200, {"success": True})
    assert redis_client.xlen(keyed_settings.stream_key) == 0


def test_rudderstack_beacon_authenticates_with_the_key_in_the_query(client, entries):
    body = json.dumps({"batch": [{"type": "track", "anonymousId": "a", "event": "E"}]})
    response = client.post(
        "/beacon/v1/batch?writeKey=wk_ios_456", data=body, content_type="text/plain"
    )
    assert response.status_code == 200
    assert response.headers["Access-Control-Allow-Origin"] == "*"
    assert entries()[0][0]["source"] == "ios"
    wrong = client.post("/beacon/v1/batch?writeKey=wk_nope", data=body, content_type="text/plain")
    assert wrong.status_code == 401 and len(entries()) == 1


def test_an_oauth_bearer_token_beside_a_body_key_is_not_refused(client, entries):
    # analytics-python and analytics-node with OAuth send a Bearer token and the key in the body.
    body = {"batch": [{"type": "track", "userId": "u", "event": "E"}], "writeKey": "wk_web_123"}
    headers = {"Authorization": "Bearer eyJhbGciOiJSUzI1NiJ9.e30.sig"}
    assert client.post("/v1/batch", json=body, headers=headers).status_code == 200
    assert entries()[0][0]["source"] == "web"


def test_every_error_answer_has_code_and_message(client):
    # analytics-python gives up on a 4xx only when the body has `code` and `message`.
    answers = [
        client.post("/v1/batch", json={"batch": [{"type": "track"}]}, headers=basic("wk_web_123")),
        client.post("/v1/batch", json={"batch": []}),
        client.post("/v1/nope", json={}),
        client.get("/v1/batch"),
    ]
    for answer in answers:
        body = answer.get_json()
        assert body["code"] == body["error"] and body["message"], body
    assert answers[0].get_json()["message"].startswith("event 0: event: must be")


def test_analytics_js_batching_posts_to_b_with_the_key_in_the_body(client, entries):
    # What analytics.js's batching delivery sends: no Authorization header (a header would
    # cost a CORS preflight), text/plain, and the key beside the batch.
    body = {
        "batch": [
            {"type": "page", "anonymousId": "a1", "userId": None, "name": "Home"},
            {"type": "track", "anonymousId": "a1", "event": "Clicked"},
        ],
        "writeKey": "wk_web_123",
        "sentAt": "2026-01-01T00:00:00.000Z",
    }
    response = client.post("/v1/b", data=json.dumps(body), content_type="text/plain")
    assert (response.status_code, response.get_json()) == (200, {"success": True})
    assert [(e["type"], e["source"]) for e in entries()[0]] == [("page", "web"), ("track", "web")]


@pytest.mark.parametrize(
    "content_type",
    [
        "application/json",
        "text/plain;charset=UTF-8",
        "application/x-www-form-urlencoded",  # axios-based SDKs label gzip JSON so
        "application/octet-stream",
        "application/xml",
        None,
    ],
)
@pytest.mark.parametrize("encoding", [None, "gzip"])
def test_segment_paths_read_json_whatever_the_content_type(client, entries, content_type, encoding):
    body = json.dumps({"batch": [{"type": "track", "userId": "u", "event": "E"}]}).encode()
    headers = basic("wk_web_123")
    if encoding:
        body, headers = gzip.compress(body), {**headers, "Content-Encoding": encoding}
    if content_type:
        headers["Content-Type"] = content_type
    response = client.post("/v1/batch", data=body, headers=headers)
    assert response.status_code == 200 and entries()[0][0]["event"] == "E"


def test_an_empty_id_beside_the_other_counts_as_absent_and_is_kept_as_sent(client, entries):
    batch = [
        {"type": "page", "userId": "", "anonymousId": "a1"},
        {"type": "identify", "userId": "u1", "anonymousId": ""},
        {"type": "track", "event": "E", "userId": None, "anonymousId": "a1"},
    ]
    response = client.post("/v1/batch", json={"batch": batch}, headers=basic("wk_web_123"))
    assert response.status_code == 200
    stored = entries()[0]
    assert [(e.get("userId"), e.get("anonymousId")) for e in stored] == [
        ("", "a1"),
        ("u1", ""),
        (None, "a1"),
    ]


def test_an_event_with_no_identity_at_all_is_still_refused(client, redis_client, keyed_settings):
    event = {"type": "page", "userId": "", "anonymousId": None}
    response = client.post("/v1/p", json=event, headers=basic("wk_web_123"))
    assert response.status_code == 400
    assert response.get_json()["problems"][0]["field"] == "userId"
    assert redis_client.xlen(keyed_settings.stream_key) == 0


# --- the settings document analytics.js loads ------------------------------------------------


def test_analytics_js_gets_its_settings_pointing_back_at_this_host(client):
    response = client.get(
        "/v1/projects/wk_web_123/settings",
        base_url="https://events.example.com",
        headers={"Origin": "https://shop.example.com"},
    )
    assert response.status_code == 200
    assert response.headers["Access-Control-Allow-Origin"] == "*"
    assert "max-age" in response.headers["Cache-Control"]
    segment = response.get_json()["integrations"]["Segment.io"]
    assert segment["apiHost"] == "events.example.com/v1"
    assert segment["protocol"] == "https"
    assert segment["apiKey"] == "wk_web_123"
    # Nothing else analytics.js would fetch from Segment or send to it.
    document = response.get_json()
    assert set(document["integrations"]) == {"Segment.io"}
    assert document["remotePlugins"] == [] and document["metrics"]["sampleRate"] == 0
    assert not document["enabledMiddleware"] and not document["legacyVideoPluginsEnabled"]
    assert "wk_ios_456" not in response.get_data(as_text=True)


def test_settings_use_the_request_scheme_and_port(client):
    document = client.get("/v1/projects/wk_ios_456/settings", base_url="http://127.0.0.1:8000")
    segment = document.get_json()["integrations"]["Segment.io"]
    assert (segment["apiHost"], segment["protocol"]) == ("127.0.0.1:8000/v1", "http")


@pytest.mark.parametrize("key", ["wk_unknown", "wk_web_12", "wk_web_1234"])
def test_settings_of_an_unknown_key_are_404(client, key):
    response = client.get(f"/v1/projects/{key}/settings")
    assert response.status_code == 404
    assert "wk_web_123" not in response.get_data(as_text=True)


@pytest.mark.parametrize(
    "url, headers",
    [
        ("/sourceConfig/?p=web&v=3&writeKey=wk_web_123", {}),
        ("/sourceConfig?p=android&v=1.28.0", basic("wk_ios_456")),
    ],
)
def test_rudderstack_gets_a_source_config_with_no_destinations(client, url, headers):
    response = client.get(url, headers=headers)
    assert response.status_code == 200
    source = response.get_json()["source"]
    assert source["enabled"] is True and source["destinations"] == []
    assert client.get("/sourceConfig?writeKey=wk_nope").status_code == 404
    assert client.get("/sourceConfig").status_code == 404


def test_without_write_keys_any_key_gets_settings(settings):
    client = create_app(settings).test_client()
    response = client.get("/v1/projects/anything/settings")
    assert response.status_code == 200
    assert response.get_json()["integrations"]["Segment.io"]["apiKey"] == "anything"


def test_a_type_in_the_body_wins_over_the_path(client, entries):
    event = {"type": "identify", "userId": "u1"}
    assert client.post("/v1/track", json=event, headers=basic("wk_web_123")).status_code == 200
    assert entries()[0][0]["type"] == "identify"


def test_batch_context_and_integrations_merge_under_the_events_own_keys(client, entries):
    body = {
        "batch": [
            {"type": "track", "userId": "u", "event": "A", "context": {"ip": "1.2.3.4"}},
            {"type": "track", "userId": "u", "event": "B", "integrations": {"All": True}},
        ],
        "context": {"ip": "9.9.9.9", "library": {"name": "analytics-x"}},
        "integrations": {"All": False, "Mixpanel": True},
    }
    assert client.post("/v1/batch", json=body, headers=basic("wk_web_123")).status_code == 200
    first, second = entries()[0]
    # Each event's own `context.ip` wins, stored anonymized (IP_HANDLING's default).
    assert first["context"] == {"ip": "1.2.3.0", "library": {"name": "analytics-x"}}
    assert first["integrations"] == {"All": False, "Mixpanel": True}
    assert second["context"] == {"ip": "9.9.9.0", "library": {"name": "analytics-x"}}
    assert second["integrations"] == {"All": True, "Mixpanel": True}


def test_clock_skew_is_corrected_from_sent_at(client, entries):
    # The client's clock runs 1 hour behind: it says it sent at 10:00:05 an event of 10:00:00.
    body = {
        "batch": [
            {"type": "track", "userId": "u", "event": "E", "timestamp": "2020-01-01T10:00:00Z"}
        ],
        "sentAt": "2020-01-01T10:00:05.000Z",
    }
    assert client.post("/v1/batch", json=body, headers=basic("wk_web_123")).status_code == 200
    [event] = entries()[0]
    assert event["originalTimestamp"] == "2020-01-01T10:00:00Z"
    received = parse_timestamp(event["receivedAt"])
    assert parse_timestamp(event["timestamp"]) == received - timedelta(seconds=5)


def test_without_sent_at_a_client_timestamp_is_kept_and_a_missing_one_is_received_at(
    client, entries
):
    body = {
        "batch": [
            {"type": "track", "userId": "u", "event": "E", "timestamp": "2020-01-01T10:00:00Z"},
            {"type": "track", "userId": "u", "event": "F"},
        ]
    }
    assert client.post("/v1/batch", json=body, headers=basic("wk_web_123")).status_code == 200
    with_ts, without_ts = entries()[0]
    assert with_ts["timestamp"] == "2020-01-01T10:00:00Z" and "originalTimestamp" not in with_ts
    assert without_ts["timestamp"] == without_ts["receivedAt"]


def test_write_key_in_the_body_authenticates_and_is_never_stored(client, entries):
    body = {"batch": [{"type": "track", "userId": "u", "event": "E", "writeKey": "wk_web_123"}]}
    body["writeKey"] = "wk_web_123"
    assert client.post("/v1/batch", json=body).status_code == 200
    single = {"userId": "u", "event": "E", "writeKey": "wk_ios_456"}
    assert client.post("/v1/track", json=single).status_code == 200
    stored = [event for entry in entries() for event in entry]
    assert [e["source"] for e in stored] == ["web", "ios"]
    assert not any("writeKey" in e or "wk_" in json.dumps(e) for e in stored)


@pytest.mark.parametrize(
    "headers, body_key",
    [
        ({}, None),
        (basic("wrong"), None),
        (basic(""), None),
        ({"Authorization": "Bearer wk_web_123"}, None),
        ({"Authorization": "Basic !!!not-base64"}, None),
        ({}, "wrong"),
        ({}, 12345),
        (basic("wk_web_12"), None),  # a prefix of a real key
        (basic("wrong"), "wk_web_123"),  # a bad header is not rescued by the body
    ],
    ids=[
        "none",
        "unknown",
        "empty",
        "bearer",
        "bad-base64",
        "unknown-in-body",
        "non-string-in-body",
        "prefix",
        "bad-header-good-body",
    ],
)
@pytest.mark.parametrize("path", ["/v1/batch", "/batch"])
def test_missing_or_unknown_write_key_is_refused(
    client, redis_client, keyed_settings, headers, body_key, path
):
    body = {"batch": [{"type": "track", "userId": "u", "event": "E"}]}
    if body_key is not None:
        body["writeKey"] = body_key
    response = client.post(path, json=body, headers=headers)
    assert response.status_code == 401
    assert response.get_json()["error"] == "unauthorized"
    assert "wk_" not in response.get_data(as_text=True)
    assert response.headers["WWW-Authenticate"].startswith("Basic")
    assert redis_client.xlen(keyed_settings.stream_key) == 0


def test_without_write_keys_requests_are_anonymous_and_health_says_so(settings, redis_client):
    client = create_app(settings).test_client()
    body = {"batch": [{"type": "track", "userId": "u", "event": "E"}]}
    assert client.post("/v1/batch", json=body).status_code == 200
    [event] = codec.decode_entry(redis_client.xrevrange(settings.stream_key, count=1)[0][1])
    assert "source" not in event
    assert "anonymous" in client.get("/healthz").get_json()["auth"]


def test_health_reports_write_keys_without_revealing_them(client):
    response = client.get("/healthz")
    assert response.status_code == 200 and response.get_json()["auth"] == "write keys"
    assert "wk_" not in response.get_data(as_text=True)


def test_settings_never_show_keys_in_their_repr(keyed_settings):
    assert "wk_web_123" not in repr(keyed_settings)


def test_browser_sdks_may_send_json_as_text_plain(client, entries):
    body = json.dumps({"batch": [{"type": "track", "userId": "u", "event": "E"}]})
    response = client.post(
        "/v1/batch", data=body, content_type="text/plain;charset=UTF-8", headers=basic("wk_web_123")
    )
    assert response.status_code == 200 and len(entries()) == 1


def test_cors_preflight_and_headers(keyed_settings):
    client = create_app(keyed_settings).test_client()
    preflight = client.options(
        "/v1/batch",
        headers={
            "Origin": "https://app.example.com",
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization, content-type",
        },
    )
    assert preflight.status_code == 204
    assert preflight.headers["Access-Control-Allow-Origin"] == "*"
    assert "POST" in preflight.headers["Access-Control-Allow-Methods"]
    assert preflight.headers["Access-Control-Allow-Headers"] == "authorization, content-type"
    refused = client.post("/v1/batch", json={"batch": []}, headers={"Origin": "https://x.test"})
    assert refused.headers["Access-Control-Allow-Origin"] == "*"
    assert "Access-Control-Allow-Origin" not in client.get("/healthz").headers


@pytest.mark.parametrize("path", ["/v1/t", "/v1/projects/wk/settings", "/beacon/v1/batch"])
def test_preflights_allow_what_sdks_send_and_private_network_access(keyed_settings, path):
    # Private Network Access for an origin PRIVATE_NETWORK_ORIGINS names (any other: refused,
    # tests/abuse/test_private_network.py).
    origins = ("https://shop.example.com",)
    client = create_app(dataclasses.replace(keyed_settings, private_network_origins=origins))
    client = client.test_client()
    requested = "authorization, content-type, x-retry-count, anonymousid, sentat"
    preflight = client.options(
        path,
        headers={
            "Origin": "https://shop.example.com",
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": requested,
            "Access-Control-Request-Private-Network": "true",
        },
    )
    assert preflight.status_code == 204
    assert preflight.headers["Access-Control-Allow-Headers"] == requested
    assert preflight.headers["Access-Control-Allow-Private-Network"] == "true"
    assert "Access-Control-Allow-Private-Network" not in client.options(path).headers


def test_cors_origin_is_configurable(keyed_settings):
    settings = dataclasses.replace(keyed_settings, cors_allow_origin="https://app.example.com")
    client = create_app(settings).test_client()
    response = client.options("/v1/track")
    assert response.headers["Access-Control-Allow-Origin"] == "https://app.example.com"
    assert response.headers["Vary"] == "Origin"


def test_received_at_is_the_servers_clock(client, entries):
    event = {"type": "track", "userId": "u", "event": "E", "receivedAt": "1999-01-01T00:00:00Z"}
    before = datetime.now().astimezone()
    assert (
        client.post("/v1/batch", json={"batch": [event]}, headers=basic("wk_web_123")).status_code
        == 200
    )
    assert parse_timestamp(entries()[0][0]["receivedAt"]) >= before - timedelta(seconds=1)


def test_a_client_source_is_dropped_in_anonymous_mode_and_replaced_with_keys(
    settings, client, entries, redis_client
):
    spoof = {"type": "track", "userId": "u", "event": "E", "source": "billing"}
    assert (
        client.post("/v1/batch", json={"batch": [spoof]}, headers=basic("wk_web_123")).status_code
        == 200
    )
    assert entries()[0][0]["source"] == "web"
    anonymous = create_app(settings).test_client()
    assert anonymous.post("/v1/batch", json={"batch": [dict(spoof)]}).status_code == 200
    [event] = codec.decode_entry(redis_client.xrevrange(settings.stream_key, count=1)[0][1])
    assert "source" not in event


def test_a_stranger_with_a_malformed_body_gets_401_not_validation_details(
    client, keyed_settings, redis_client
):
    response = client.post("/v1/batch", data=b"{not json", content_type="application/json")
    assert response.status_code == 401
    assert "JSON" not in response.get_data(as_text=True)
    keyed = client.post(
        "/v1/batch", data=b"{not json", content_type="application/json", headers=basic("wk_web_123")
    )
    assert keyed.status_code == 400
    assert redis_client.xlen(keyed_settings.stream_key) == 0


def test_clock_skew_out_of_range_is_a_400_naming_the_timestamp(
    client, keyed_settings, redis_client
):
    body = {
        "batch": [
            {"type": "track", "userId": "u", "event": "E", "timestamp": "0001-01-01T00:00:00Z"}
        ],
        "sentAt": "9999-01-01T00:00:00Z",
    }
    response = client.post("/v1/batch", json=body, headers=basic("wk_web_123"))
    assert response.status_code == 400
    assert [(p["index"], p["field"]) for p in response.get_json()["problems"]] == [(0, "timestamp")]
    assert redis_client.xlen(keyed_settings.stream_key) == 0


def test_wrong_method_answers_405_with_allow(client):
    response = client.get("/v1/batch")
    assert response.status_code == 405
    assert "POST" in response.headers["Allow"]
    assert response.get_json()["error"] == "method_not_allowed"
