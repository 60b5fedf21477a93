"""The ingest app through Flask's test client, against a real redis-server."""

from __future__ import annotations

import dataclasses
import json
import re
import uuid
from typing import Any

import pytest
import redis
from flask.testing import FlaskClient

from functions.ingest.app import create_app
from shared import codec
from shared.settings import Settings
from tests.conftest import free_port

RECEIVED_AT_PATTERN = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$")

TRACK = {
    "type": "track",
    "event": "Order Completed",
    "userId": "u-1",
    "properties": {"total": 42.5, "items": [{"sku": "A-1", "qty": 2}], "note": "ünïcødé ✓"},
    "context": {"ip": "203.0.113.9"},
    "timestamp": "2024-01-01T00:00:00.000Z",
}
IDENTIFY = {"type": "identify", "anonymousId": "anon-9", "traits": {"email": "x@example.com"}}
ALIAS = {"type": "alias", "userId": "u-2", "previousId": "anon-9", "messageId": "client-mid"}


@pytest.fixture
def client(settings: Settings) -> FlaskClient:
    return create_app(settings).test_client()


def stream_entries(redis_client: redis.Redis, settings: Settings) -> list[tuple[bytes, dict]]:
    return redis_client.xrange(settings.stream_key)


def stream_len(redis_client: redis.Redis, settings: Settings) -> int:
    return redis_client.xlen(settings.stream_key)


def only_entry_events(redis_client: redis.Redis, settings: Settings) -> list[dict[str, Any]]:
    [(_, fields)] = stream_entries(redis_client, settings)
    return codec.decode_entry(fields)


# The one field the client sent that is not stored as sent: `context.ip`, anonymized by
# default (IP_HANDLING, docs/enrichment.md: IPv4's last octet zeroed).
ANONYMIZED = {"203.0.113.9": "203.0.113.0"}


def assert_stamped(event: dict[str, Any], sent: dict[str, Any]) -> None:
    for name, value in sent.items():
        if name == "context" and "ip" in value:
            value = {**value, "ip": ANONYMIZED[value["ip"]]}
        assert event[name] == value, name
    assert isinstance(event["messageId"], str) and event["messageId"]
    assert RECEIVED_AT_PATTERN.match(event["receivedAt"]), event["receivedAt"]


# --- accepted requests --------------------------------------------------------------------


def test_post_batch_is_accepted_as_one_entry(
    client: FlaskClient, redis_client: redis.Redis, settings: Settings
) -> None:
    sent = [TRACK, IDENTIFY, ALIAS]
    response = client.post("/batch", json={"batch": sent})

    assert response.status_code == 202
    assert response.mimetype == "application/json"
    assert response.get_json() == {"accepted": 3}
    [(_, fields)] = stream_entries(redis_client, settings)
    assert fields[b"v"] == codec.FORMAT_VERSION
    assert fields[b"n"] == b"3"
    events = codec.decode_entry(fields)
    assert len(events) == 3
    for event, original in zip(events, sent, strict=True):
        assert_stamped(event, original)
    assert str(uuid.UUID(events[0]["messageId"])) == events[0]["messageId"]
    assert events[2]["messageId"] == "client-mid"
    # One request, one clock reading.
    assert len({e["receivedAt"] for e in events}) == 1


def test_each_batch_adds_exactly_one_entry(
    client: FlaskClient, redis_client: redis.Redis, settings: Settings
) -> None:
    for n in (1, 5, 2):
        before = stream_len(redis_client, settings)
        response = client.post("/batch", json={"batch": [TRACK] * n})
        assert response.status_code == 202
        assert response.get_json() == {"accepted": n}
        assert stream_len(redis_client, settings) == before + 1
    counts = [fields[b"n"] for _, fields in stream_entries(redis_client, settings)]
    assert counts == [b"1", b"5", b"2"]


def test_batch_with_raw_body_and_no_content_type(
    client: FlaskClient, redis_client: redis.Redis, settings: Settings
) -> None:
    body = json.dumps({"batch": [IDENTIFY]}).encode()
    response = client.post("/batch", data=body)
    assert response.status_code == 202
    [event] = only_entry_events(redis_client, settings)
    assert_stamped(event, IDENTIFY)


def test_client_received_at_is_replaced(
    client: FlaskClient, redis_client: redis.Redis, settings: Settings
) -> None:
    sent = {**TRACK, "receivedAt": "1999-12-31T23:59:59.999Z"}
    assert client.post("/batch", json={"batch": [sent]}).status_code == 202
    [event] = only_entry_events(redis_client, settings)
    assert event["receivedAt"] != "1999-12-31T23:59:59.999Z"
    assert RECEIVED_AT_PATTERN.match(event["receivedAt"])


def test_post_events_accepts_one_event(
    client: FlaskClient, redis_client: redis.Redis, settings: Settings
) -> None:
    response = client.post("/events", json=TRACK)
    assert response.status_code == 202
    assert response.get_json() == {"accepted": 1}
    [event] = only_entry_events(redis_client, settings)
    assert_stamped(event, TRACK)


def test_healthz(client: FlaskClient) -> None:
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response.mimetype == "application/json"
    assert response.get_json()["status"] == "ok"


def test_livez_answers_without_asking_redis(settings) -> None:
    unreachable = dataclasses.replace(
        settings, redis_url=f"redis://127.0.0.1:{free_port()}/0", redis_timeout_s=0.2
    )
    client = create_app(unreachable).test_client()
    assert client.get("/livez").get_json() == {"status": "alive"}
    assert client.get("/readyz").status_code == 503
    assert client.get("/readyz").get_json()["error"] == "unavailable"


def test_a_redis_cluster_away_at_start_gets_503s_not_a_server_that_cannot_start(settings):
    """redis-py's cluster client contacts the cluster when it is made, and its errors are not
    all RedisErrors: the app starts anyway, and every answer that needs Redis is a 503."""
    away = dataclasses.replace(
        settings,
        redis_cluster=True,
        stream_shards=6,
        redis_url=f"redis://127.0.0.1:{free_port()}/0",
        redis_timeout_s=0.2,
        metrics_public=True,
    )
    client = create_app(away).test_client()
    assert client.get("/livez").status_code == 200
    for answer in (client.post("/batch", json={"batch": [TRACK]}), client.get("/readyz")):
        assert answer.status_code == 503 and answer.get_json()["error"] == "unavailable"
    assert b"event_ingest_redis_up 0.0" in client.get("/metrics").data


def test_readyz_says_whether_a_request_would_be_accepted(settings, redis_client) -> None:
    client = create_app(dataclasses.replace(settings, stream_max_len=2)).test_client()
    assert client.get("/readyz").get_json() == {"status": "ready"}
    for _ in range(2):
        assert client.post("/batch", json={"batch": [TRACK]}).status_code == 202
    full = client.get("/readyz")
    assert full.status_code == 503 and full.get_json()["error"] == "backlog_full"
    assert client.get("/livez").status_code == 200
    assert client.get("/healthz").status_code == 200  # as before: Redis answers


def test_unknown_route_and_wrong_method_are_json(client: FlaskClient) -> None:
    missing = client.get("/nope")
    assert missing.status_code == 404
    assert missing.get_json()["error"] == "not_found"
    wrong = client.get("/batch")
    assert wrong.status_code == 405
    assert wrong.get_json()["error"] == "method_not_allowed"


# --- rejected requests --------------------------------------------------------------------

INVALID_REQUESTS = [
    # (path, body bytes, expected (index, field) pairs)
    pytest.param("/batch", b"", {(None, "body")}, id="empty-body"),
    pytest.param("/batch", b"{not json", {(None, "body")}, id="malformed-json"),
    pytest.param("/batch", b"[]", {(None, "body")}, id="top-level-list"),
    pytest.param("/batch", b'"batch"', {(None, "body")}, id="top-level-string"),
    pytest.param("/batch", b"{}", {(None, "batch")}, id="no-batch"),
    pytest.param("/batch", b'{"batch": {}}', {(None, "batch")}, id="batch-object"),
    pytest.param("/batch", b'{"batch": []}', {(None, "batch")}, id="empty-batch"),
    pytest.param("/batch", b'{"batch": [1]}', {(0, "")}, id="event-not-object"),
    pytest.param(
        "/batch",
        json.dumps({"batch": [TRACK, {"type": "track", "userId": "u"}]}).encode(),
        {(1, "event")},
        id="second-event-missing-name",
    ),
    pytest.param(
        "/batch",
        json.dumps(
            {
                "batch": [
                    {"type": "nope", "userId": "u"},
                    IDENTIFY,
                    {"type": "group", "anonymousId": "a"},
                    {"type": "alias", "userId": "u"},
                    {"type": "page"},
                    {"type": "screen", "userId": "u", "messageId": ""},
                ]
            }
        ).encode(),
        {(0, "type"), (2, "groupId"), (3, "previousId"), (4, "userId"), (5, "messageId")},
        id="problems-in-many-events",
    ),
    pytest.param("/events", b"", {(None, "body")}, id="events-empty-body"),
    pytest.param("/events", b"[1, 2]", {(0, "")}, id="events-list"),
    pytest.param("/events", b'{"type": "track", "userId": "u"}', {(0, "event")}, id="events-bad"),
    pytest.param(
        "/events",
        b'{"type": "identify", "userId": 7.5, "anonymousId": ["a"]}',
        {(0, "userId"), (0, "anonymousId")},
        id="events-bad-ids",
    ),
    pytest.param(
        "/events",
        b'{"type": "page", "userId": "", "anonymousId": null}',
        {(0, "userId")},
        id="events-empty-ids",
    ),
]


@pytest.mark.parametrize(("path", "body", "expected"), INVALID_REQUESTS)
def test_invalid_request_is_400_and_adds_nothing(
    client: FlaskClient,
    redis_client: redis.Redis,
    settings: Settings,
    path: str,
    body: bytes,
    expected: set[tuple[int | None, str]],
) -> None:
    client.post("/batch", json={"batch": [TRACK]})  # something already in the stream
    before = stream_len(redis_client, settings)

    response = client.post(path, data=body, content_type="application/json")

    assert response.status_code == 400
    payload = response.get_json()
    assert payload["error"] == "invalid_request"
    assert {(p["index"], p["field"]) for p in payload["problems"]} == expected
    assert payload["problemCount"] == len(payload["problems"])
    assert all(p["message"] for p in payload["problems"])
    assert stream_len(redis_client, settings) == before == 1


def test_invalid_utf8_is_400(
    client: FlaskClient, redis_client: redis.Redis, settings: Settings
) -> None:
    response = client.post("/batch", data=b'{"batch": [{"type": "\xff"}]}')
    assert response.status_code == 400
    [problem] = response.get_json()["problems"]
    assert (problem["index"], problem["field"]) == (None, "body")
    assert stream_len(redis_client, settings) == 0


def test_list_valued_type_is_400(
    client: FlaskClient, redis_client: redis.Redis, settings: Settings
) -> None:
    response = client.post("/batch", json={"batch": [{"type": ["track"], "userId": "u"}]})
    assert response.status_code == 400
    assert {(p["index"], p["field"]) for p in response.get_json()["problems"]} == {(0, "type")}
    assert stream_len(redis_client, settings) == 0


@pytest.mark.parametrize("number", [2**64, -(2**63) - 1, 10**30])
def test_integer_too_big_for_the_stream_is_400(
    client: FlaskClient, redis_client: redis.Redis, settings: Settings, number: int
) -> None:
    good = b'{"type": "identify", "userId": "u"}'
    bad = b'{"type": "track", "event": "e", "userId": "u", "properties": {"n": %d}}' % number
    response = client.post("/batch", data=b'{"batch": [%s, %s]}' % (good, bad))
    assert response.status_code == 400
    problems = response.get_json()["problems"]
    assert [p["index"] for p in problems] == [1]
    assert stream_len(redis_client, settings) == 0


def test_integers_at_the_edge_of_the_range_are_kept(
    client: FlaskClient, redis_client: redis.Redis, settings: Settings
) -> None:
    body = b'{"batch": [{"type": "track", "event": "e", "userId": "u", "p": [%d, %d]}]}' % (
        2**64 - 1,
        -(2**63),
    )
    assert client.post("/batch", data=body).status_code == 202
    [event] = only_entry_events(redis_client, settings)
    assert event["p"] == [2**64 - 1, -(2**63)]


def test_body_over_the_limit_is_413_and_adds_nothing(
    client: FlaskClient, redis_client: redis.Redis, settings: Settings
) -> None:
    padding = "x" * settings.max_body_bytes
    body = json.dumps({"batch": [{**TRACK, "properties": {"pad": padding}}]}).encode()
    assert len(body) > settings.max_body_bytes == 1024 * 1024

    response = client.post("/batch", data=body, content_type="application/json")

    assert response.status_code == 413
    assert response.mimetype == "application/json"
    assert response.get_json()["error"]
    assert stream_len(redis_client, settings) == 0


def limit_sized_body(limit: int, extra: int) -> bytes:
    """A valid batch of many ~8 KB events whose JSON is exactly `limit + extra` bytes."""

    def body(pads: list[int]) -> bytes:
        batch = [{**TRACK, "properties": {"pad": "x" * n}} for n in pads]
        return json.dumps({"batch": batch}).encode()

    pads = [8000] * (limit // 8200)
    pads[-1] += limit + extra - len(body(pads))
    result = body(pads)
    assert len(result) == limit + extra
    return result


def test_body_one_byte_over_the_limit_is_413(
    client: FlaskClient, redis_client: redis.Redis, settings: Settings
) -> None:
    body = limit_sized_body(settings.max_body_bytes, 1)
    response = client.post("/batch", data=body, content_type="application/json")
    assert response.status_code == 413
    assert stream_len(redis_client, settings) == 0


def test_body_at_the_limit_is_accepted(
    client: FlaskClient, redis_client: redis.Redis, settings: Settings
) -> None:
    body = limit_sized_body(settings.max_body_bytes, 0)
    response = client.post("/batch", data=body, content_type="application/json")
    assert response.status_code == 202
    assert stream_len(redis_client, settings) == 1


def test_events_body_over_the_limit_is_413(
    client: FlaskClient, redis_client: redis.Redis, settings: Settings
) -> None:
    body = json.dumps({**TRACK, "pad": "y" * (settings.max_body_bytes + 1)}).encode()
    response = client.post("/events", data=body, content_type="application/json")
    assert response.status_code == 413
    assert stream_len(redis_client, settings) == 0


# --- failures -----------------------------------------------------------------------------


@pytest.fixture
def unreachable_client(settings: Settings) -> FlaskClient:
    closed = dataclasses.replace(
        settings, redis_url=f"redis://127.0.0.1:{free_port()}/0", redis_timeout_s=0.5
    )
    return create_app(closed).test_client()


@pytest.mark.parametrize(
    ("method", "path", "kwargs"),
    [
        ("post", "/batch", {"json": {"batch": [TRACK]}}),
        ("post", "/events", {"json": TRACK}),
        ("get", "/healthz", {}),
    ],
)
def test_redis_unreachable_is_503_with_retry_after(
    unreachable_client: FlaskClient, method: str, path: str, kwargs: dict[str, Any]
) -> None:
    response = getattr(unreachable_client, method)(path, **kwargs)
    assert response.status_code == 503
    assert response.headers["Retry-After"] == "1"
    assert response.mimetype == "application/json"
    assert response.get_json()["error"] == "unavailable"


def test_invalid_request_is_400_even_when_redis_is_unreachable(
    unreachable_client: FlaskClient,
) -> None:
    response = unreachable_client.post("/batch", json={"batch": []})
    assert response.status_code == 400


def test_unexpected_error_is_500_json_without_traceback(
    client: FlaskClient,
    redis_client: redis.Redis,
    settings: Settings,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def explode(events: list[dict[str, Any]]) -> dict[bytes, bytes]:
        raise RuntimeError("secret internal detail")

    monkeypatch.setattr(codec, "encode_entry", explode)

    response = client.post("/batch", json={"batch": [TRACK]})

    assert response.status_code == 500
    assert response.mimetype == "application/json"
    payload = response.get_json()
    assert payload["error"] == "internal"
    assert re.fullmatch(r"[0-9a-f]{32}", payload["requestId"])
    text = response.get_data(as_text=True)
    assert "Traceback" not in text
    assert "secret internal detail" not in text
    assert "RuntimeError" not in text
    assert stream_len(redis_client, settings) == 0


def test_each_unexpected_error_gets_its_own_request_id(
    client: FlaskClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    def explode(events: list[dict[str, Any]]) -> dict[bytes, bytes]:
        raise KeyError("boom")

    monkeypatch.setattr(codec, "encode_entry", explode)
    ids = {client.post("/events", json=TRACK).get_json()["requestId"] for _ in range(3)}
    assert len(ids) == 3


def test_unexpected_error_is_logged_with_its_request_id(
    client: FlaskClient, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def explode(*_events: Any) -> dict[bytes, bytes]:
        raise RuntimeError("logged detail")

    monkeypatch.setattr(codec, "encode_entry", explode)
    with caplog.at_level("ERROR", logger="functions.ingest.app"):
        request_id = client.post("/batch", json={"batch": [TRACK]}).get_json()["requestId"]
    [record] = [r for r in caplog.records if request_id in r.getMessage()]
    assert record.exc_info is not None
    assert "logged detail" in str(record.exc_info[1])
