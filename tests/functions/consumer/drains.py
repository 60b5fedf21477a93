"""What the consumer tests drive a drain with: a Lambda-like time budget, a `Drainer` on the real
stream and moto's S3, entries posted as the ingest function writes them, a storage outage, and
the pending count of one consumer. Touches the real redis-server and moto only."""

from __future__ import annotations

import time

import redis
from botocore.exceptions import EndpointConnectionError

from functions.consumer.drain import Drainer
from shared import codec, events, stream
from shared.archive import ObjectStore
from shared.settings import Settings


class Budget:
    """A Lambda-like context: `remaining_ms()` counts down from `seconds`."""

    def __init__(self, seconds: float) -> None:
        self.deadline = time.monotonic() + seconds

    def __call__(self) -> int:
        return max(0, int((self.deadline - time.monotonic()) * 1000))


def make_drainer(settings: Settings, s3, consumer: str = "c1", group: str = "archiver") -> Drainer:
    reader = stream.GroupReader(stream.connect(settings), settings.stream_key, group, consumer)
    drainer = Drainer(settings, reader, ObjectStore(s3, settings.s3_bucket))
    drainer.sleep = lambda _s: None
    return drainer


def break_storage(drainer: Drainer):
    """Make every put fail as if S3 were unreachable; return the function that mends it."""
    real_put = drainer.store.put

    def failing_put(key, body, content_type=None):
        raise EndpointConnectionError(endpoint_url="http://s3.invalid")

    drainer.store.put = failing_put
    return lambda: setattr(drainer.store, "put", real_put)


def post(settings: Settings, client: redis.Redis, count: int, per_batch: int = 3) -> list[str]:
    """Write `count` entries the way the ingest function does; return their messageIds."""
    ids = []
    producer = stream.EventStream(client, settings.stream_key, settings.stream_max_len)
    for _ in range(count):
        raw = [{"type": "track", "userId": "u", "event": "E"} for _ in range(per_batch)]
        batch = events.prepare(raw, events.received_at_now())
        producer.add(codec.encode_entry(batch))
        ids += [e["messageId"] for e in batch]
    return ids


def pending_of(client: redis.Redis, settings: Settings, consumer: str) -> int:
    try:
        rows = client.xpending_range(settings.stream_key, "archiver", "-", "+", 100, consumer)
    except redis.ResponseError:  # NOGROUP: the consumer has not started yet
        return 0
    return len(rows)


def wait_until_pending(client: redis.Redis, settings: Settings, consumer: str, count: int):
    deadline = time.monotonic() + 5
    while pending_of(client, settings, consumer) < count:
        assert time.monotonic() < deadline, f"{consumer} never read {count} entries"
        time.sleep(0.02)
