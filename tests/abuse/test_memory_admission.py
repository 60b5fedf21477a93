"""A backlog of the largest entries ingest admits must be refused (503) before Redis is full.

STREAM_MAX_LEN counts entries, not bytes: about 1,700 amplified requests of 8 MB each fill a
13 GB node, then every write, every source's, fails at maxmemory. Admission by bytes
(STREAM_MAX_BYTES, counted in the size hash the append script keeps) refuses while Redis still
has room, and the consumer, which needs no memory to acknowledge, drains it back to zero.

Real parts: a redis-server started with a small maxmemory and the production config otherwise,
the producer ingest appends with, the consumer's drain loop writing to moto's in-process S3.
"""

from __future__ import annotations

import time

import redis

from functions.consumer.drain import Drainer
from local.redis_server import RedisServer
from shared import codec, events, shards, stream
from shared.archive import ObjectStore
from shared.settings import Settings
from tests.conftest import archived_events, free_port, settings_env

MAXMEMORY = 64 * 1024 * 1024
STREAM_MAX_BYTES = 32 * 1024 * 1024
MAX_BODY_BYTES = 64 * 1024  # small, to keep the test fast


class Budget:
    """A Lambda-like context: `remaining_ms()` counts down from `seconds`."""

    def __init__(self, seconds: float) -> None:
        self.deadline = time.monotonic() + seconds

    def __call__(self) -> int:
        return max(0, int((self.deadline - time.monotonic()) * 1000))


def largest_entry(max_body_bytes: int) -> dict[bytes, bytes]:
    """A real entry (it archives) exactly as large as ingest lets one be."""
    limit = codec.max_entry_bytes(max_body_bytes)
    pad = 0
    for _ in range(5):  # MsgPack's string header grows with the string: converge on it
        event = {"type": "track", "userId": "u", "event": "Padded", "properties": {"p": "x" * pad}}
        entry = codec.encode_entry(events.prepare([event], events.received_at_now()))
        pad += limit - len(entry[b"d"])
    assert len(entry[b"d"]) == limit
    return entry


def memory(client: redis.Redis) -> tuple[int, int]:
    info = client.info("memory")
    return info["used_memory"], info["maxmemory"]


def oom_refusals(client: redis.Redis) -> int:
    return sum(v["count"] for k, v in client.info("errorstats").items() if "OOM" in k)


def test_the_backlog_is_refused_by_bytes_before_redis_is_full(settings, s3, tmp_path) -> None:
    server = RedisServer(free_port(), tmp_path, "--maxmemory", str(MAXMEMORY)).start()
    try:
        env = settings_env(
            settings,
            REDIS_URL=server.url,
            STREAM_MAX_BYTES=str(STREAM_MAX_BYTES),
            MAX_BODY_BYTES=str(MAX_BODY_BYTES),
        )
        configured = Settings.from_env(env)
        client = redis.Redis.from_url(server.url)
        producer = stream.producer(configured, client)
        entry = largest_entry(configured.max_body_bytes)
        entry_bytes = codec.entry_bytes(entry)

        # Twice what maxmemory holds: without admission by bytes, Redis refuses first.
        appended = 0
        for _ in range(2 * MAXMEMORY // entry_bytes):
            try:
                producer.add(entry)
            except stream.BacklogFull:
                break
            appended += 1
        else:
            raise AssertionError(f"{appended} entries of {entry_bytes} bytes, never refused")

        used, maxmemory = memory(client)
        key = configured.stream_key
        held = int(client.hget(shards.size_key(key), "bytes"))
        print(
            f"\n{appended} entries of {entry_bytes:,} B admitted; held {held:,} B "
            f"(STREAM_MAX_BYTES {STREAM_MAX_BYTES:,}); used_memory {used:,} of {maxmemory:,} "
            f"({used / held:.2f} x the bytes held)"
        )
        assert oom_refusals(client) == 0, "Redis refused a write at maxmemory"
        assert used < maxmemory == MAXMEMORY
        # Refused by bytes, not by length: at the bound, by less than one entry over it.
        assert STREAM_MAX_BYTES <= held < STREAM_MAX_BYTES + entry_bytes
        assert held == appended * entry_bytes and client.xlen(key) == appended
        assert appended < configured.stream_max_len

        reader = stream.GroupReader(client, key, configured.consumer_group, "c1")
        drainer = Drainer(configured, reader, ObjectStore(s3, configured.s3_bucket))
        drainer.sleep = lambda _s: None
        summary = drainer.drain(Budget(4))

        assert summary.events_archived == appended
        assert len(archived_events(s3, configured.s3_bucket)) == appended
        assert client.xlen(key) == 0
        assert not client.exists(shards.size_key(key), shards.ledger_key(key))  # back to 0
        assert not producer.is_full()
        producer.add(entry)  # accepted again
        assert int(client.hget(shards.size_key(key), "bytes")) == entry_bytes
    finally:
        server.kill()
