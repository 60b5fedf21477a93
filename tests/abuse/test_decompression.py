"""No request body may cost the ingest function much more CPU than a legitimate 1 MiB batch.

The body is read, and decompressed, before a key in it can be checked. `inflate` used to copy
the rest of the body at the end of each concatenated member, so time grew with the square of
the member count: 1 MiB of 524,288 empty raw-deflate members took seconds of CPU, and under
gevent that blocks every connection of the worker. Now decompression is linear, stops after
`MAX_MEMBERS` members and at `MAX_EXPANSION` times the bytes sent (beyond `EXPANSION_FLOOR`),
and a request holds at most one event per 128 bytes of MAX_BODY_BYTES: the per-event work
(validating, stamping, encoding) of 1 MiB of 27-byte events is otherwise 38,000 events' worth.

Measured as the issue asks: the CPU time of this process for one request through the Flask
app (a real Redis behind it), for each hostile body against a legitimate 1 MiB gzip batch of
realistic events (the benchmark's: ~480 bytes each, with a batch `context`), taking turns, the
least of several rounds. Measured on 2 cores: the worst hostile body about 4 times the
legitimate one (8,192 events with 7 problems each, or 8,192 valid ones dense with containers,
or 1 MiB of nested arrays without a key); the old code 40 times (1 MiB of `{}`) and, for the
members, hundreds of times. 8,192 events each with a user agent never seen before cost about 3
times (about 8 times without enrichment's budget of new user agents per request).
"""

from __future__ import annotations

import base64
import dataclasses
import gzip
import itertools
import random
import time
import zlib
from collections.abc import Callable

import msgspec
import pytest

from functions.ingest.app import create_app
from local.bench.payloads import make_events
from shared.settings import Settings

KEY = "wk_decompression"
AUTH = {"Authorization": "Basic " + base64.b64encode(f"{KEY}:".encode()).decode()}
MIB = 1024 * 1024
# The stated bound: no body costs more than this many times the legitimate batch (measured
# about 4; the margin absorbs a shared machine's noise).
MAX_CPU_MULTIPLE = 10
LEGIT_ROUNDS, HOSTILE_ROUNDS = 5, 3
# The caps as documented (functions/ingest/body.py): members per body, and expansion.
MAX_MEMBERS, MAX_EXPANSION = 16, 100
_json = msgspec.json.Encoder()


@pytest.fixture
def client(settings: Settings):
    # Rate limits (where this version has them) would refuse the rounds: another test's subject.
    unlimited = {
        name: 0
        for name in ("rate_limit_events_per_s", "rate_limit_address_events_per_s")
        if hasattr(settings, name)
    }
    settings = dataclasses.replace(settings, write_keys=(("test", KEY),), **unlimited)
    return create_app(settings).test_client()


def legit_batch() -> bytes:
    """1 MiB of realistic events, as analytics-python sends them (gzip, a batch context)."""
    rng, batch, size = random.Random(21), [], 200
    while size < MIB - 1000:
        [event] = make_events(1, rng)
        batch.append(event)
        size += len(_json.encode(event)) + 1
    document = {"batch": batch[:-1], "sentAt": "2024-05-01T12:00:01.000Z"}
    document["context"] = {"library": {"name": "analytics-python", "version": "2.3.3"}}
    return gzip.compress(_json.encode(document), compresslevel=6)


def fill(unit: bytes, prefix: bytes = b'{"batch":[', suffix: bytes = b"]}") -> bytes:
    """`prefix`, as many comma-separated `unit`s as fit in 1 MiB, `suffix`."""
    count = (MIB - len(prefix) - len(suffix)) // (len(unit) + 1)
    return prefix + b",".join([unit] * count) + suffix


def events_of(unit: bytes, count: int = MIB // 128) -> bytes:
    """`count` events (by default as many as a request may hold), each `unit`."""
    return b'{"sentAt":"2024-05-01T12:00:01Z","batch":[' + b",".join([unit] * count) + b"]}"


def dense_event() -> bytes:
    """A valid event of under 127 bytes (a clock skew to correct) full of containers."""
    head = b'{"type":"page","userId":1,"timestamp":"2024-05-01T12:00:00Z","p":['
    return head + b",".join([b"{}"] * ((126 - len(head) - 2) // 3)) + b"]}"


_fresh = itertools.count()


def distinct_user_agents() -> bytes:
    """As many events as a request may hold, each with a user agent no cache knows (new at every
    call): each costs a parse and a crawler check (shared/enrichment), within the request's
    budget of them."""
    rng = random.Random(next(_fresh))
    agents = (
        f"Mozilla/5.0 (X11; Linux x86_64) Chrome/{rng.randrange(10**9)}.0 Safari/537.36"
        for _ in range(MIB // 128)
    )
    unit = b'{"type":"page","userId":1,"context":{"userAgent":"%s"}}'
    return b'{"batch":[' + b",".join(unit % agent.encode() for agent in agents) + b"]}"


# (name, body, Content-Encoding, authorized): the worst bodies found, one per way to cost work.
HOSTILE: list[tuple[str, Callable[[], bytes], str, bool]] = [
    ("1 MiB of empty raw-deflate members", lambda: b"\x03\x00" * (MIB // 2), "deflate", True),
    (
        "1 MiB of 27-byte events, gzip",
        lambda: gzip.compress(fill(b'{"type":"page","userId":1}')),
        "gzip",
        True,
    ),
    ("350,000 empty events", lambda: fill(b"{}"), "identity", True),
    ("8,192 valid events full of containers", lambda: events_of(dense_event()), "identity", True),
    (
        "8,192 events with 7 problems each",
        lambda: events_of(
            b'{"type":"track","userId":[],"timestamp":"x","sentAt":"y",'
            b'"context":1,"integrations":1,"messageId":1}'
        ),
        "identity",
        True,
    ),
    ("8,192 events with distinct user agents", distinct_user_agents, "identity", True),
    ("1 MiB of nested arrays, no key", lambda: fill(b"[" * 400 + b"]" * 400), "identity", False),
    ("1 MiB of small objects, no key", lambda: fill(b'{"a":{}}'), "identity", False),
]


def cpu_seconds(client, body: bytes, encoding: str, authorized: bool) -> float:
    headers = {"Content-Encoding": encoding, **(AUTH if authorized else {})}
    started = time.process_time()
    response = client.post("/v1/batch", data=body, headers=headers, content_type="text/plain")
    spent = time.process_time() - started
    assert response.status_code in (200, 400, 401, 413), response.get_data(as_text=True)
    return spent


def test_no_body_costs_more_than_a_small_multiple_of_a_legitimate_batch(client):
    legit = legit_batch()
    assert MIB - 2000 < len(gzip.decompress(legit)) <= MIB
    answer = client.post("/v1/batch", data=legit, headers={**AUTH, "Content-Encoding": "gzip"})
    assert answer.status_code == 200, answer.get_data(as_text=True)
    multiples = {}
    for name, make, encoding, authorized in HOSTILE:
        legit_s = hostile_s = float("inf")
        for round_ in range(max(LEGIT_ROUNDS, HOSTILE_ROUNDS)):  # taking turns
            if round_ < LEGIT_ROUNDS:
                legit_s = min(legit_s, cpu_seconds(client, legit, "gzip", True))
            if round_ < HOSTILE_ROUNDS:
                body = make()  # afresh: one of them must not find its work cached
                assert len(body) <= MIB, name  # each is sent within the limit
                hostile_s = min(hostile_s, cpu_seconds(client, body, encoding, authorized))
        multiples[name] = round(hostile_s / legit_s, 2)
    assert max(multiples.values()) <= MAX_CPU_MULTIPLE, multiples


def post(client, body: bytes, encoding: str):
    return client.post("/batch", data=body, headers={**AUTH, "Content-Encoding": encoding})


def test_more_members_than_the_cap_are_refused(client, redis_client, settings):
    document = _json.encode({"batch": [{"type": "identify", "userId": "u"}]})
    members = [gzip.compress(document[i : i + 1]) for i in range(len(document))]
    assert len(members) > MAX_MEMBERS
    response = post(client, b"".join(members), "gzip")
    assert response.status_code == 400
    assert f"more than {MAX_MEMBERS} members" in response.get_json()["message"]
    assert redis_client.xlen(settings.stream_key) == 0


def test_a_body_expanding_beyond_the_ratio_is_413(client, redis_client, settings):
    """Valid events, within MAX_BODY_BYTES once decompressed, but sent 1,000 times smaller."""
    document = fill(b'{"type":"identify","userId":"u"}', suffix=b"]}", prefix=b'{"batch":[')
    compressed = zlib.compress(document, 9)
    assert len(document) > MAX_EXPANSION * len(compressed)
    response = post(client, compressed, "deflate")
    assert response.status_code == 413
    assert response.get_json()["error"] == "too_large"
    assert f"expands more than {MAX_EXPANSION} times" in response.get_json()["message"]
    assert redis_client.xlen(settings.stream_key) == 0
