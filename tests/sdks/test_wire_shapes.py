"""What the SDKs that cannot run here (mobile, JVM, Go, Ruby) put on the wire, replayed byte for
byte through gunicorn: paths, headers, encodings, chunking and body shapes as their sources
build them (the SDK table of docs/sdks.md). Each must get `200 {"success": true}` and its
events into the stream, under the write key's source."""

from __future__ import annotations

import base64
import dataclasses
import gzip
import http.client
import json
from collections.abc import Iterator
from urllib.parse import urlparse

import pytest
import redis

from shared import codec

KEY = "wk_mobile_123"


@pytest.fixture
def settings(settings):
    return dataclasses.replace(settings, write_keys=(("apps", KEY),))


def basic() -> str:
    return "Basic " + base64.b64encode(f"{KEY}:".encode()).decode()


def in_chunks(body: bytes, size: int = 100) -> Iterator[bytes]:
    for start in range(0, len(body), size):
        yield body[start : start + size]


def event(kind: str, **fields) -> dict:
    base = {"type": kind, "messageId": f"m-{kind}-{len(json.dumps(fields))}", "context": {}}
    if kind == "track":
        base["event"] = "Viewed"
    return {**base, **fields}


# (id, path, headers, body (dict), gzip it?, send chunked without Content-Length?)
SHAPES = [
    (
        "analytics-kotlin",  # text/plain, always gzip, chunked; key in body only
        "/v1/b",
        {"Content-Type": "text/plain", "Content-Encoding": "gzip"},
        {
            "batch": [event("track", anonymousId="a1", _metadata={"bundled": []})],
            "sentAt": "2026-11-30T10:00:00.123Z",
            "writeKey": KEY,
        },
        True,
        True,
    ),
    (
        "analytics-swift",
        "/v1/b",
        {"Content-Type": "application/json; charset=utf-8"},
        {
            "batch": [event("screen", anonymousId="a2", userId=None, name="Home")],
            "sentAt": "2026-11-30T10:00:00.123Z",
            "writeKey": KEY,
        },
        False,
        False,
    ),
    (
        "analytics-java",  # /v1/import/ with a trailing slash, sequence and context
        "/v1/import/",
        {"Content-Type": "application/json; charset=UTF-8", "Authorization": basic()},
        {
            "batch": [event("identify", userId="u3", traits={"plan": "pro"})],
            "sentAt": "2026-11-30T10:00:00.123Z",
            "context": {"library": {"name": "analytics-java"}},
            "sequence": 1,
            "writeKey": KEY,
        },
        False,
        False,
    ),
    (
        "analytics-go",  # nanoseconds and a local offset; messageId and context on the batch
        "/v1/batch",
        {"Content-Type": "application/json", "Authorization": basic()},
        {
            "messageId": "batch-1",
            "sentAt": "2026-11-30T12:00:00.123456789+02:00",
            "batch": [
                event("group", userId="u4", groupId="g4", timestamp="2026-11-30T11:59:59.5+02:00")
            ],
            "context": {"library": {"name": "analytics-go", "version": "3.0.0"}},
        },
        False,
        False,
    ),
    (
        "analytics-ruby",  # numeric IDs passed through
        "/v1/import",
        {"Content-Type": "application/json", "Authorization": basic()},
        {
            "sentAt": "2026-11-30T10:00:00.000+01:00",
            "batch": [event("alias", userId=42, previousId=7), event("track", userId=42)],
        },
        False,
        False,
    ),
    (
        "rudder-sdk-android",  # gzip, AnonymousId header, Rudder's own fields
        "/v1/batch",
        {
            "Content-Type": "application/json",
            "Content-Encoding": "gzip",
            "Authorization": basic(),
            "AnonymousId": base64.b64encode(b"a6").decode(),
        },
        {
            "sentAt": "2026-11-30T10:00:00.123Z",
            "batch": [
                event(
                    "track",
                    anonymousId="a6",
                    channel="mobile",
                    originalTimestamp="2026-11-30T09:59:59.000Z",
                    userProperties={},
                    integrations={"All": True},
                )
            ],
        },
        True,
        False,
    ),
    (
        "rudder-sdk-js",  # single event at a long path, userId "" beside anonymousId
        "/v1/page",
        {"Content-Type": "application/json;charset=UTF-8", "Authorization": basic()},
        event("page", userId="", anonymousId="a7", channel="web", name="Home"),
        False,
        False,
    ),
]


@pytest.mark.parametrize(
    "path, headers, body, compress, chunked",
    [shape[1:] for shape in SHAPES],
    ids=[shape[0] for shape in SHAPES],
)
def test_an_sdks_request_is_accepted_as_it_is_sent(
    settings, redis_client: redis.Redis, gunicorn_url, path, headers, body, compress, chunked
):
    data = json.dumps(body).encode()
    if compress:
        data = gzip.compress(data)
    address = urlparse(gunicorn_url)
    connection = http.client.HTTPConnection(address.hostname, address.port, timeout=10)
    if chunked:
        connection.request("POST", path, body=in_chunks(data), headers=headers)
    else:
        connection.request("POST", path, body=data, headers=headers)
    answer = connection.getresponse()
    assert (answer.status, json.loads(answer.read())) == (200, {"success": True})

    [(_, fields)] = redis_client.xrange(settings.stream_key)
    stored = codec.decode_entry(fields)
    sent = body.get("batch", [body])
    assert [e["messageId"] for e in stored] == [e["messageId"] for e in sent]
    assert all(e["source"] == "apps" and "writeKey" not in e for e in stored)
