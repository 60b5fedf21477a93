"""Realistic events and the request bodies the benchmark sends.

Events look like what Segment's SDKs send (analytics-python here): mostly `track` with a few
properties and a `context`, some `identify` and `page`, each with its own `messageId` and
`timestamp`, about 450 bytes of JSON each; and, for enrichment's cost, events as analytics.js
sends them from a browser (`browser_bodies`). Generation is seeded, so two runs send the same
bytes. Bodies are built once, before a measurement, so the load generator only replays them.
"""

from __future__ import annotations

import base64
import gzip
import random
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import msgspec

from shared import codec, events

WRITE_KEY = "bench-write-key"
# `WRITE_KEYS` for the ingest function (issue 3); ignored by a version that has no write keys.
WRITE_KEYS = f"bench:{WRITE_KEY}"
# A request whose first event has this messageId prefix is a probe of end-to-end lag.
PROBE_PREFIX = "probe-"

_json = msgspec.json.Encoder()
_EVENT_NAMES = ["Order Completed", "Product Viewed", "Cart Updated", "Signed In", "Video Played"]
_PAGES = ["/", "/pricing", "/docs/getting-started", "/blog/launch", "/account/settings"]
_LIBRARY = {"name": "analytics-python", "version": "2.3.3"}


def make_events(count: int, rng: random.Random) -> list[dict]:
    now = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
    return [_event(rng, now - timedelta(milliseconds=rng.randrange(60_000))) for _ in range(count)]


def _event(rng: random.Random, at: datetime) -> dict:
    user = f"user-{rng.randrange(1_000_000):07d}"
    common = {
        "userId": user,
        "anonymousId": str(uuid.UUID(int=rng.getrandbits(128), version=4)),
        "messageId": str(uuid.UUID(int=rng.getrandbits(128), version=4)),
        "timestamp": at.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        "context": {
            "library": _LIBRARY,
            "ip": f"203.0.113.{rng.randrange(256)}",
            "userAgent": "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 Chrome/124.0",
            "locale": "en-US",
        },
    }
    kind = rng.random()
    if kind < 0.7:
        return {
            "type": "track",
            "event": rng.choice(_EVENT_NAMES),
            "properties": {
                "orderId": f"o-{rng.randrange(10**9)}",
                "revenue": round(rng.uniform(1, 500), 2),
                "currency": "USD",
                "items": rng.randrange(1, 9),
                "coupon": rng.choice([None, "SPRING24"]),
            },
            **common,
        }
    if kind < 0.85:
        path = rng.choice(_PAGES)
        return {
            "type": "page",
            "name": path.strip("/") or "home",
            "properties": {"path": path, "url": f"https://example.com{path}", "referrer": ""},
            **common,
        }
    traits = {"email": f"{user}@example.com", "plan": rng.choice(["free", "pro", "team"])}
    return {"type": "identify", "traits": traits, **common}


@dataclass(frozen=True)
class Bodies:
    """Request bodies to replay, with the headers they need and the events each holds."""

    path: str
    bodies: list[bytes]
    events_per_request: int
    headers: dict[str, str] = field(default_factory=dict)

    @property
    def mean_bytes(self) -> int:
        return sum(map(len, self.bodies)) // len(self.bodies)


def auth_headers() -> dict[str, str]:
    token = base64.b64encode(f"{WRITE_KEY}:".encode()).decode()
    return {"Authorization": f"Basic {token}"}


def batch_bodies(
    size: int, variants: int = 16, *, segment: bool = False, gzipped: bool = False, seed: int = 1
) -> Bodies:
    """`variants` different `/batch` (or Segment `/v1/batch`) bodies of `size` events each."""
    rng = random.Random(seed * 1000 + size)
    headers = {"Content-Type": "application/json", **auth_headers()}
    if gzipped:
        headers["Content-Encoding"] = "gzip"
    bodies = []
    for _ in range(variants):
        document: dict = {"batch": make_events(size, rng)}
        if segment:
            # What analytics-python adds around a batch.
            document["sentAt"] = datetime.now(UTC).isoformat(timespec="milliseconds")
            document["context"] = {"library": _LIBRARY}
        raw = _json.encode(document)
        bodies.append(gzip.compress(raw, compresslevel=6, mtime=0) if gzipped else raw)
    return Bodies("/v1/batch" if segment else "/batch", bodies, size, headers)


def single_bodies(variants: int = 256, seed: int = 1) -> Bodies:
    rng = random.Random(seed)
    headers = {"Content-Type": "application/json", **auth_headers()}
    bodies = [_json.encode(event) for event in make_events(variants, rng)]
    return Bodies("/events", bodies, 1, headers)


# analytics.js (analytics-next) in a desktop Chrome on Windows: its user agent string and the
# client hints (`navigator.userAgentData`) it sends with it.
BROWSER_USER_AGENT = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/124.0.0.0 Safari/537.36"
)
BROWSER_HINTS = {
    "brands": [
        {"brand": "Chromium", "version": "124"},
        {"brand": "Google Chrome", "version": "124"},
        {"brand": "Not-A.Brand", "version": "99"},
    ],
    "mobile": False,
    "platform": "Windows",
}
BROWSER_LIBRARY = {"name": "analytics.js", "version": "npm:next-1.70.0"}


def browser_events(count: int, rng: random.Random) -> list[dict]:
    """`count` events as analytics.js sends them from one page of one visitor: `track` and
    `page` with the page's context, the user agent and its client hints, no `context.ip` (a
    browser does not know its address: the server sets it), `writeKey` and `_metadata`."""
    now = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
    anonymous_id = str(uuid.UUID(int=rng.getrandbits(128), version=4))
    path = rng.choice(_PAGES)
    out = []
    for _ in range(count):
        at = now - timedelta(milliseconds=rng.randrange(60_000))
        event: dict = (
            {
                "type": "track",
                "event": rng.choice(_EVENT_NAMES),
                "properties": {"revenue": round(rng.uniform(1, 500), 2), "currency": "USD"},
            }
            if rng.random() < 0.8
            else {"type": "page", "properties": {"path": path, "title": "Example"}}
        )
        timestamp = at.isoformat(timespec="milliseconds").replace("+00:00", "Z")
        message_id = uuid.UUID(int=rng.getrandbits(128), version=4)
        out.append(
            {
                **event,
                "timestamp": timestamp,
                "integrations": {},
                "context": {
                    "page": {
                        "path": path,
                        "referrer": "https://www.google.com/",
                        "search": "",
                        "title": "Example",
                        "url": f"https://example.com{path}",
                    },
                    "userAgent": BROWSER_USER_AGENT,
                    "userAgentData": BROWSER_HINTS,
                    "locale": "en-GB",
                    "library": BROWSER_LIBRARY,
                    "timezone": "Europe/London",
                },
                "messageId": f"ajs-next-{int(at.timestamp() * 1000)}-{message_id}",
                "anonymousId": anonymous_id,
                "userId": None,
                "writeKey": WRITE_KEY,
                "sentAt": timestamp,
                "_metadata": {"bundled": ["Segment.io"], "unbundled": [], "bundledIds": []},
            }
        )
    return out


def browser_bodies(size: int, variants: int = 16, seed: int = 1) -> Bodies:
    """`variants` bodies as analytics.js posts them: `size` events batched to `/v1/b` (its
    batching dispatcher), or one event to `/v1/t`; `text/plain` (no CORS preflight), the write
    key in the body, as analytics.js sends it."""
    rng = random.Random(seed * 1000 + size)
    headers = {"Content-Type": "text/plain"}
    if size == 1:
        bodies = [_json.encode(browser_events(1, rng)[0]) for _ in range(variants)]
        return Bodies("/v1/t", bodies, 1, headers)
    sent_at = "2024-05-01T12:00:00.000Z"
    bodies = [
        _json.encode({"batch": browser_events(size, rng), "sentAt": sent_at, "writeKey": WRITE_KEY})
        for _ in range(variants)
    ]
    return Bodies("/v1/b", bodies, size, headers)


def with_probe(body: bytes, sequence: int) -> bytes:
    """The same uncompressed `/batch` body with its first event's messageId made a probe."""
    document = msgspec.json.decode(body)
    document["batch"][0]["messageId"] = f"{PROBE_PREFIX}{sequence}"
    return _json.encode(document)


def stream_entries(batch_size: int, variants: int = 32, seed: int = 2) -> list[dict[bytes, bytes]]:
    """Stream entries exactly as the ingest function writes them (validated, stamped, packed)."""
    rng = random.Random(seed * 1000 + batch_size)
    received_at = events.received_at_now()
    return [
        codec.encode_entry(events.prepare(make_events(batch_size, rng), received_at))
        for _ in range(variants)
    ]
