"""A request may store, and make the server allocate, only a bounded multiple of its body.

The batch-level `context` is stored again in every event. The per-event size check saw each
event alone and the growth check allowed 8 times MAX_BODY_BYTES whatever the body's size, so
a 584-byte gzip request (130 tiny events, a 63 KB context) became an 8.2 MB stream entry, and
a 2.5 KB one (33,000 events) made the encoder allocate 2.1 GB before its 413. Now, before
anything is stamped, a request may hold one event per 128 bytes of MAX_BODY_BYTES, and the
copies of its batch fields may add at most 3 times its body (and at most MAX_BODY_BYTES); the
events it stores then make at most K * body + S * events bytes of MsgPack:
- K = 9/4 + 3: MsgPack holds a 3-character JSON float in 9 bytes, nothing else in more than
  its JSON, and the copies add 3 bodies;
- S = 192 bytes + the source's name: the stamp (messageId, receivedAt, a corrected timestamp
  beside originalTimestamp, source, the keys of the copied fields, a larger map header).
Real batches store about 1.06 times their body. Whatever passes, an entry is at most
codec.max_entry_bytes (5 times MAX_BODY_BYTES), which consumers size their reads by.

Measured in a real Redis (the entry as XADDed) and with tracemalloc (the peak of what this
process allocates during the request): a legitimate 1 MiB batch peaks at 7.6 times its body.
"""

from __future__ import annotations

import base64
import dataclasses
import gzip
import json
import tracemalloc

import msgspec
import pytest
import redis

from functions.ingest.app import create_app
from shared.settings import Settings

KEY = "wk_amplification"
SOURCE = "test"
AUTH = {"Authorization": "Basic " + base64.b64encode(f"{KEY}:".encode()).decode()}
MIB = 1024 * 1024
TINY = {"type": "identify", "userId": "u"}
# The stated bound (docs/security.md): stored MsgPack <= K * body + S * events.
K, S = 9 / 4 + 3, 192 + len(SOURCE)
MAX_EVENTS = MIB // 128
MAX_ENTRY_BYTES = 5 * MIB
# What a request may allocate, in times its (decompressed) body. Decoding alone makes Python
# objects of up to 24 times the JSON (`[{},{},...]`: 72 bytes for every 3), a real batch 7.6;
# the worst found is 41 (merges, below). The old code: 256 for the 584-byte request, 1,000 for
# many copies (and 2,000 for the 2.5 KB one).
MAX_PEAK_PER_BODY = 48


@pytest.fixture
def app_settings(settings: Settings) -> Settings:
    # Rate limits (where this version has them) are another test's subject.
    unlimited = {
        name: 0
        for name in ("rate_limit_events_per_s", "rate_limit_address_events_per_s")
        if hasattr(settings, name)
    }
    return dataclasses.replace(settings, write_keys=((SOURCE, KEY),), **unlimited)


@pytest.fixture
def client(app_settings: Settings):
    return create_app(app_settings).test_client()


def post_traced(client, body: bytes, gzipped: bool = False) -> tuple[int, dict, int]:
    """Status, answer, and the peak of what was allocated while the request ran."""
    data = gzip.compress(body, compresslevel=9) if gzipped else body
    headers = {**AUTH, **({"Content-Encoding": "gzip"} if gzipped else {})}
    tracemalloc.start()
    try:
        response = client.post("/v1/batch", data=data, headers=headers, content_type="text/plain")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return response.status_code, response.get_json(), peak


def stored_entry(client: redis.Redis, settings: Settings) -> tuple[int, int]:
    """The last XADDed entry's events (`d`) and all its fields, in bytes, as Redis holds them."""
    [(_, fields)] = client.xrevrange(settings.stream_key, count=1)
    return len(fields[b"d"]), sum(len(name) + len(value) for name, value in fields.items())


def with_context(count: int, pad: int) -> bytes:
    return json.dumps({"batch": [TINY] * count, "context": {"pad": "x" * pad}}).encode()


@pytest.mark.parametrize(
    "body, gzipped",
    [
        (with_context(130, 63_000), True),  # the 584 bytes: 8.2 MB stored
        (with_context(130, 63_000), False),  # the same, sent uncompressed
        (with_context(2_000, 63_000), False),  # the 2.1 GB allocation, at 1/16th of the scale
    ],
    ids=["584-byte-gzip", "uncompressed", "many-copies"],
)
def test_an_amplified_request_is_refused_before_it_allocates(
    client, redis_client, app_settings, body, gzipped
):
    status, answer, peak = post_traced(client, body, gzipped)
    assert redis_client.xlen(app_settings.stream_key) == 0
    assert (status, answer.get("error")) == (413, "too_large"), answer
    assert peak <= MAX_PEAK_PER_BODY * len(body), f"peak {peak} for a body of {len(body)}"
    assert "send fewer events per request" in answer["message"] or "expands" in answer["message"]


def floats(count: int) -> str:
    """`count` JSON floats of 3 characters: 9 bytes each in MsgPack, the most it grows JSON."""
    return ",".join(["1e1"] * count)


def copies_at_the_limit(events: int, floats_per_event: int, extra: int = 0) -> bytes:
    """`events` events full of floats, with the largest batch context whose copies (one per
    event beyond the first) stay within 3 times the body; `extra` bytes more to go past it."""
    event = '{"type":"page","userId":1,"f":[' + floats(floats_per_event) + "]}"

    def body(pad: int) -> bytes:
        context = '{"p":"' + "x" * pad + '"}'
        return ('{"context":' + context + ',"batch":[' + ",".join([event] * events) + "]}").encode()

    def copies(pad: int) -> int:
        return (events - 1) * len(msgspec.msgpack.encode({"p": "x" * pad}))

    low, high = 0, 3 * len(body(0))  # the copies outgrow 3 bodies as the pad grows
    while low < high:
        middle = (low + high + 1) // 2
        low, high = (middle, high) if copies(middle) <= 3 * len(body(middle)) else (low, middle - 1)
    return body(low + extra)


def at_the_absolute_limit() -> bytes:
    """A 1 MiB body of as many events as a request may hold, full of floats, and a context
    whose copies add MAX_BODY_BYTES: the largest entry this bound lets through."""
    context = '{"p":"' + "x" * (MIB // (MAX_EVENTS - 1) - 6) + '"}'
    head = '{"sentAt":"2024-05-01T12:00:01Z","context":' + context + ',"batch":['
    event_head = '{"type":"page","userId":1,"timestamp":"2024-05-01","f":['
    room = (MIB - len(head) - 2) // MAX_EVENTS - len(event_head) - 3
    event = event_head + floats((room + 1) // 4) + "]}"
    body = (head + ",".join([event] * MAX_EVENTS) + "]}").encode()
    assert len(body) <= MIB
    return body


def merging_everywhere() -> bytes:
    """As many tiny events as may be, each with a context of its own that the batch's 32 keys
    merge into: a new dict per event, the most Python memory per byte found."""
    context = {format(key, "x"): 0 for key in range(32)}
    event = {"type": "page", "userId": 1, "context": {"z": 0}}
    return json.dumps({"context": context, "batch": [event] * MAX_EVENTS}).encode()


def stamped_everywhere() -> bytes:
    """As many tiny events as may be, each stamped with all the server adds: a messageId, a
    receivedAt, a corrected timestamp beside its originalTimestamp, a source."""
    event = {"type": "page", "userId": 1, "timestamp": "2024-05-01"}
    return json.dumps({"sentAt": "2024-05-01T00:00:01Z", "batch": [event] * MAX_EVENTS}).encode()


def test_what_is_stored_stays_within_the_bound_at_its_worst(client, redis_client, app_settings):
    """The bound's worst cases, stored: each term at its limit, and a byte past it refused."""
    cases = {
        "copies of 3 bodies": (copies_at_the_limit(31, 500), 31),
        "stamps": (stamped_everywhere(), MAX_EVENTS),
        "merges": (merging_everywhere(), MAX_EVENTS),
        "largest entry": (at_the_absolute_limit(), MAX_EVENTS),
    }
    seen = {}
    for name, (body, count) in cases.items():
        status, answer, peak = post_traced(client, body)
        assert status == 200, (name, answer)
        stored, entry = stored_entry(redis_client, app_settings)
        bound = K * len(body) + S * count
        assert stored <= bound and entry <= MAX_ENTRY_BYTES, (name, stored, bound, entry)
        assert peak <= MAX_PEAK_PER_BODY * len(body), (name, peak, len(body))
        seen[name] = {"of the bound": stored / bound, "of the cap": entry / MAX_ENTRY_BYTES}
    # Worst cases indeed: each comes close to the bound that applies to it.
    assert seen["copies of 3 bodies"]["of the bound"] >= 0.9, seen
    assert seen["largest entry"]["of the cap"] >= 0.7, seen
    assert redis_client.xlen(app_settings.stream_key) == len(cases)

    past = [
        copies_at_the_limit(31, 500, extra=300),
        json.dumps({"batch": [TINY] * (MAX_EVENTS + 1)}).encode(),
    ]
    for body in past:
        status, answer, _ = post_traced(client, body)
        assert (status, answer.get("error")) == (413, "too_large"), answer
        assert "send fewer events per request" in answer["message"]
    assert redis_client.xlen(app_settings.stream_key) == len(cases)
