"""Malformed, oversized and hostile requests: each gets its stated answer, a JSON body saying
what was wrong, and leaves the stream unchanged. Then Hypothesis throws arbitrary input."""

from __future__ import annotations

import base64
import dataclasses
import gzip
import json
import zlib

import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from functions.ingest.app import create_app
from shared import codec

KEY = "wk_hostile"
AUTH = {"Authorization": "Basic " + base64.b64encode(f"{KEY}:".encode()).decode()}
GOOD_EVENT = {"type": "track", "userId": "u", "event": "E"}
ALLOWED_STATUSES = {200, 202, 400, 401, 413, 415}


@pytest.fixture
def small_limits(settings):
    return dataclasses.replace(
        settings, write_keys=(("test", KEY),), max_body_bytes=20_000, max_event_bytes=2_000
    )


@pytest.fixture
def client(small_limits):
    return create_app(small_limits).test_client()


def batch_bytes(*events) -> bytes:
    return json.dumps({"batch": list(events)}).encode()


def gzip_bomb(size: int) -> bytes:
    return gzip.compress(b'{"batch": [' + b" " * size + b"]}", compresslevel=9)


JSON = "application/json"
CASES = [
    # (id, path, body, content type, extra headers, status, error, a word of the message)
    ("not-json", "/batch", b"{nope", JSON, {}, 400, "invalid_request", "JSON"),
    ("invalid-utf8", "/batch", b'{"batch": ["\xff"]}', JSON, {}, 400, "invalid_request", "UTF-8"),
    ("top-level-list", "/batch", b"[]", JSON, {}, 400, "invalid_request", "object"),
    ("top-level-string", "/v1/batch", b'"x"', JSON, {}, 400, "invalid_request", "object"),
    ("batch-not-list", "/batch", b'{"batch": {}}', JSON, {}, 400, "invalid_request", "list"),
    ("batch-missing", "/v1/batch", b"{}", JSON, {}, 400, "invalid_request", "list"),
    ("empty-batch", "/batch", b'{"batch": []}', JSON, {}, 400, "invalid_request", "at least"),
    ("event-not-object", "/batch", b'{"batch": [1]}', JSON, {}, 400, "invalid_request", "object"),
    ("single-not-object", "/v1/track", b"[1]", JSON, {}, 400, "invalid_request", "object"),
    ("empty-body", "/batch", b"", JSON, {}, 400, "invalid_request", "JSON"),
    ("nan", "/batch", b'{"batch": [{"x": NaN}]}', JSON, {}, 400, "invalid_request", "JSON"),
    (
        "infinity",
        "/batch",
        b'{"batch": [{"x": Infinity}]}',
        JSON,
        {},
        400,
        "invalid_request",
        "JSON",
    ),
    (
        "huge-float",
        "/batch",
        b'{"batch": [{"x": 1e400}]}',
        JSON,
        {},
        400,
        "invalid_request",
        "range",
    ),
    (
        "huge-int",
        "/batch",
        batch_bytes({**GOOD_EVENT, "n": 2**64}),
        JSON,
        {},
        400,
        "invalid_request",
        "64-bit",
    ),
    (
        "raw-control-char",
        "/batch",
        b'{"batch": ["a\x01"]}',
        JSON,
        {},
        400,
        "invalid_request",
        "JSON",
    ),
    (
        "deep-nesting",
        "/batch",
        b'{"batch": [' + b"[" * 5000 + b"]" * 5000 + b"]}",
        JSON,
        {},
        400,
        "invalid_request",
        "nested",
    ),
    (
        "form-type",
        "/batch",
        batch_bytes(GOOD_EVENT),
        "application/x-www-form-urlencoded",
        {},
        415,
        "unsupported_media_type",
        "Content-Type",
    ),
    (
        "text-plain-native",
        "/batch",
        batch_bytes(GOOD_EVENT),
        "text/plain",
        {},
        415,
        "unsupported_media_type",
        "Content-Type",
    ),
    (
        "xml",
        "/batch",
        b"<batch/>",
        "application/xml",
        {},
        415,
        "unsupported_media_type",
        "Content-Type",
    ),
    # Segment's paths read JSON whatever the Content-Type: what is not JSON is still a 400.
    (
        "xml-segment",
        "/v1/batch",
        b"<batch/>",
        "application/xml",
        {},
        400,
        "invalid_request",
        "JSON",
    ),
    (
        "form-segment",
        "/v1/t",
        b"event=Signed+Up&userId=u",
        "application/x-www-form-urlencoded",
        {},
        400,
        "invalid_request",
        "JSON",
    ),
    (
        "brotli",
        "/batch",
        batch_bytes(GOOD_EVENT),
        JSON,
        {"Content-Encoding": "br"},
        415,
        "unsupported_media_type",
        "Content-Encoding",
    ),
    (
        "body-too-large",
        "/batch",
        batch_bytes(*[GOOD_EVENT] * 600),
        JSON,
        {},
        413,
        "too_large",
        "larger",
    ),
    (
        "gzip-bomb",
        "/v1/batch",
        gzip_bomb(15_000_000),
        JSON,
        {"Content-Encoding": "gzip"},
        413,
        "too_large",
        "decompressed",
    ),
    (
        "corrupt-gzip",
        "/batch",
        b"\x1f\x8b\x08\x00garbage",
        JSON,
        {"Content-Encoding": "gzip"},
        400,
        "invalid_request",
        "compressed",
    ),
    (
        "truncated-gzip",
        "/batch",
        gzip.compress(batch_bytes(GOOD_EVENT))[:-12],
        JSON,
        {"Content-Encoding": "gzip"},
        400,
        "invalid_request",
        "truncated",
    ),
    (
        "corrupt-deflate",
        "/batch",
        b"not deflate at all",
        JSON,
        {"Content-Encoding": "deflate"},
        400,
        "invalid_request",
        "corrupt",
    ),
    (
        "event-too-large",
        "/batch",
        batch_bytes(GOOD_EVENT, {**GOOD_EVENT, "p": "x" * 3000}),
        JSON,
        {},
        400,
        "invalid_request",
        "larger",
    ),
    (
        "bad-sent-at",
        "/v1/batch",
        json.dumps({"batch": [GOOD_EVENT], "sentAt": "yesterday"}).encode(),
        JSON,
        {},
        400,
        "invalid_request",
        "ISO-8601",
    ),
    (
        "bad-context",
        "/v1/batch",
        json.dumps({"batch": [GOOD_EVENT], "context": [1]}).encode(),
        JSON,
        {},
        400,
        "invalid_request",
        "object",
    ),
    (
        "bad-timestamp",
        "/batch",
        batch_bytes({**GOOD_EVENT, "timestamp": "soon"}),
        JSON,
        {},
        400,
        "invalid_request",
        "ISO-8601",
    ),
]


@pytest.mark.parametrize(
    "path, body, content_type, headers, status, error, word",
    [case[1:] for case in CASES],
    ids=[case[0] for case in CASES],
)
def test_bad_request_is_refused_and_changes_nothing(
    client, redis_client, small_limits, path, body, content_type, headers, status, error, word
):
    response = client.post(path, data=body, content_type=content_type, headers={**AUTH, **headers})
    assert response.status_code == status
    answer = response.get_json()
    assert answer["error"] == error
    assert word in json.dumps(answer)
    assert redis_client.xlen(small_limits.stream_key) == 0


def test_an_oversized_event_is_named_by_its_index(client):
    body = batch_bytes(GOOD_EVENT, GOOD_EVENT, {**GOOD_EVENT, "p": "x" * 3000})
    answer = client.post("/batch", data=body, content_type=JSON, headers=AUTH).get_json()
    assert [(p["index"], p["message"]) for p in answer["problems"]] == [
        (2, "event is larger than the per-event limit (with the batch's context)")
    ]


@pytest.mark.parametrize(
    "encode, encoding",
    [
        (gzip.compress, "gzip"),
        (lambda b: gzip.compress(b[:10]) + gzip.compress(b[10:]), "gzip"),  # two members
        (zlib.compress, "deflate"),
        (lambda b: zlib.compress(b)[2:-4], "deflate"),  # raw deflate, as some clients send
    ],
    ids=["gzip", "gzip-multi-member", "deflate-zlib", "deflate-raw"],
)
def test_compressed_bodies_are_accepted(client, redis_client, small_limits, encode, encoding):
    body = encode(batch_bytes(GOOD_EVENT, GOOD_EVENT))
    response = client.post(
        "/batch", data=body, content_type=JSON, headers={**AUTH, "Content-Encoding": encoding}
    )
    assert (response.status_code, response.get_json()) == (202, {"accepted": 2})
    assert redis_client.xlen(small_limits.stream_key) == 1


def browser_batch(count: int) -> bytes:
    """An analytics.js session's batch: every event carries the same page context."""
    context = {
        "library": {"name": "analytics.js", "version": "next-1.70.0"},
        "page": {"path": "/pricing", "referrer": "https://www.google.com/", "search": ""},
        "userAgent": "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/537.36",
        "locale": "en-US",
        "timezone": "Europe/Paris",
    }
    batch = [
        {
            **GOOD_EVENT,
            "anonymousId": "5c7e1c7e-0f0e-4b8e-9d3f-6a2b1c0d9e8f",
            "messageId": f"ajs-next-{i:032x}",
            "timestamp": f"2026-11-30T10:00:{i % 60:02d}.{i % 1000:03d}Z",
            "properties": {"i": i},
            "context": context,
        }
        for i in range(count)
    ]
    return json.dumps({"batch": batch, "sentAt": "2026-11-30T10:01:00.000Z"}).encode()


@pytest.mark.parametrize(
    "document, members",
    [
        (browser_batch(500), 1),  # 260 KB compressing 41 times: more than real batches do
        (batch_bytes(*[GOOD_EVENT] * 1300), 1),  # 64 KB of one event: 230 times, but small
        (batch_bytes(*[GOOD_EVENT] * 100), 16),  # concatenated members, up to the cap
    ],
    ids=["browser-batch", "small-but-repetitive", "sixteen-members"],
)
def test_compression_caps_leave_real_bodies_alone(settings, redis_client, document, members):
    """The expansion cap (100 times, beyond 64 KiB) and the member cap (16) refuse no body a
    client sends: real batches compress less, small ones are never measured."""
    app = create_app(dataclasses.replace(settings, write_keys=(("test", KEY),)))
    step = -(-len(document) // members)
    parts = [document[i : i + step] for i in range(0, len(document), step)]
    body = b"".join(gzip.compress(part, compresslevel=9) for part in parts)
    assert len(parts) == members
    response = app.test_client().post(
        "/batch", data=body, content_type=JSON, headers={**AUTH, "Content-Encoding": "gzip"}
    )
    assert response.status_code == 202, response.get_json()
    assert redis_client.xlen(settings.stream_key) == 1


def test_odd_but_valid_json_is_archived_by_a_written_rule(client, redis_client, small_limits):
    """Duplicate keys: the last wins. Escaped control characters and a NUL are kept as
    characters (the archive's JSON escapes them again). Nesting that the decoder accepts is
    kept intact. Big integers inside the 64-bit range are kept exactly."""
    nested: object = "leaf"
    for _ in range(100):
        nested = {"n": nested}
    body = (
        b'{"batch": [{"type": "track", "userId": "u", "event": "first", "event": "last", '
        b'"s": "a\\u0000b\\u001fc\\n", "big": 18446744073709551615, "neg": -9223372036854775808, '
        b'"deep": ' + json.dumps(nested).encode() + b"}]}"
    )
    assert client.post("/batch", data=body, content_type=JSON, headers=AUTH).status_code == 202
    [(_, fields)] = redis_client.xrange(small_limits.stream_key)
    [event] = codec.decode_entry(fields)
    assert event["event"] == "last"
    assert event["s"] == "a\x00b\x1fc\n"
    assert event["big"] == 2**64 - 1 and event["neg"] == -(2**63)
    assert event["deep"] == nested


def test_unexpected_error_is_a_500_with_a_request_id_in_the_log(
    client, monkeypatch, caplog, small_limits, redis_client
):
    def explode(_events):
        raise RuntimeError("secret internals")

    monkeypatch.setattr(codec, "encode_entry", explode)
    response = client.post("/batch", data=batch_bytes(GOOD_EVENT), content_type=JSON, headers=AUTH)
    assert response.status_code == 500
    answer = response.get_json()
    assert "secret internals" not in response.get_data(as_text=True)
    assert "Traceback" not in response.get_data(as_text=True)
    assert answer["requestId"] in caplog.text
    assert redis_client.xlen(small_limits.stream_key) == 0


# --- property-based: whatever comes in, the answer is a clear one, never a 500 -------------

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=5)
        | st.dictionaries(
            st.sampled_from(
                [
                    "type",
                    "userId",
                    "anonymousId",
                    "event",
                    "groupId",
                    "previousId",
                    "messageId",
                    "timestamp",
                    "sentAt",
                    "context",
                    "batch",
                    "writeKey",
                ]
            )
            | st.text(max_size=8),
            children,
            max_size=6,
        )
    ),
    max_leaves=30,
)
event_like = st.fixed_dictionaries(
    {"type": st.sampled_from(["track", "identify", "page", "screen", "group", "alias", "x"])},
    optional={
        "userId": st.one_of(st.text(max_size=5), st.integers()),
        "anonymousId": st.text(max_size=5),
        "event": st.text(max_size=5),
        "groupId": st.text(max_size=5),
        "previousId": st.text(max_size=5),
        "timestamp": st.text(max_size=30),
        "properties": json_values,
    },
)
documents = (
    json_values
    | st.fixed_dictionaries({"batch": st.lists(event_like | json_values, max_size=5)})
    | st.fixed_dictionaries(
        {"batch": st.lists(event_like, min_size=1, max_size=5)},
        optional={"sentAt": st.text(max_size=30), "context": json_values},
    )
)


@hypothesis_settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    document=documents,
    path=st.sampled_from(["/batch", "/v1/batch", "/events", "/v1/track"]),
    authorized=st.booleans(),
)
def test_arbitrary_json_never_causes_a_500(client, document, path, authorized):
    headers = AUTH if authorized else {}
    response = client.post(path, data=json.dumps(document), content_type=JSON, headers=headers)
    assert response.status_code in ALLOWED_STATUSES, response.get_data(as_text=True)
    assert response.is_json


@hypothesis_settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    body=st.binary(max_size=300),
    path=st.sampled_from(["/batch", "/v1/batch"]),
    encoding=st.sampled_from([None, "gzip", "deflate"]),
)
def test_arbitrary_bytes_never_cause_a_500(client, body, path, encoding):
    headers = {**AUTH, **({"Content-Encoding": encoding} if encoding else {})}
    response = client.post(path, data=body, content_type=JSON, headers=headers)
    assert response.status_code in ALLOWED_STATUSES, response.get_data(as_text=True)
    assert response.is_json


def test_a_batch_context_counts_toward_every_events_size(client, redis_client, small_limits):
    """A large batch-level context is merged into each event: it must not multiply a small
    request into a huge stream entry."""
    body = {"batch": [GOOD_EVENT] * 3, "context": {"pad": "x" * 1_990}}
    response = client.post("/v1/batch", json=body, headers=AUTH)
    assert response.status_code == 400
    assert [p["index"] for p in response.get_json()["problems"]] == [0, 1, 2]
    assert redis_client.xlen(small_limits.stream_key) == 0


def test_a_request_that_grows_too_large_once_stamped_is_413(client, redis_client, small_limits):
    """Each tiny event gets the 1.5 KB batch context merged in: within the per-event limit,
    but 450 of them would make a 20 KB request a 700 KB stream entry."""
    tiny = {"type": "identify", "userId": "u"}
    body = json.dumps({"batch": [tiny] * 450, "context": {"pad": "x" * 1_500}}).encode()
    assert len(body) < small_limits.max_body_bytes
    response = client.post("/v1/batch", data=body, content_type=JSON, headers=AUTH)
    assert response.status_code == 413
    assert response.get_json()["error"] == "too_large"
    assert redis_client.xlen(small_limits.stream_key) == 0
