"""The stream side of the benchmark: a pre-filled backlog, what it costs in Redis memory, how
fast consumers drain it, and how long an accepted event takes to become readable.

The backlog is written straight into the stream with pipelined XADDs of entries built by the
ingest function's own code (`events.prepare` + `codec.encode_entry`), so it is byte for byte
what the ingest function writes, only faster to produce.
"""

from __future__ import annotations

import bisect
import gzip
import json
import re
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import boto3
import redis

from local.bench.payloads import PROBE_PREFIX
from shared.stream import accounting_keys

PIPELINE_DEPTH = 500
_PROBE = re.compile(rb'"messageId":"' + PROBE_PREFIX.encode() + rb'(\d+)"')


def _id_key(entry_id: bytes | str) -> tuple[int, int]:
    raw = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
    ms, _, seq = raw.partition("-")
    return int(ms), int(seq or 0)


@dataclass
class Backlog:
    entry_ids: list[tuple[int, int]]
    events: int
    msgpack_bytes: int
    seconds: float


def fill(
    client: redis.Redis, key: str, pool: list[dict[bytes, bytes]], events: int, batch_size: int
) -> Backlog:
    """Append entries from `pool`, round robin, until the stream holds `events` more events."""
    entries = max(1, events // batch_size)
    ids: list[tuple[int, int]] = []
    msgpack_bytes = 0
    started = time.monotonic()
    for first in range(0, entries, PIPELINE_DEPTH):
        with client.pipeline(transaction=False) as pipe:
            for index in range(first, min(entries, first + PIPELINE_DEPTH)):
                fields = pool[index % len(pool)]
                msgpack_bytes += len(fields[b"d"])
                pipe.xadd(key, fields)
            ids.extend(_id_key(entry_id) for entry_id in pipe.execute())
    return Backlog(ids, entries * batch_size, msgpack_bytes, time.monotonic() - started)


def empty_stream(client: redis.Redis | redis.RedisCluster, key: str) -> None:
    """Delete the stream `key` with the keys that account for its bytes (its size hash and
    ledger): deleting the stream alone leaves ingest counting the bytes of entries long gone,
    and refusing every request as a full backlog once they add up to STREAM_MAX_BYTES."""
    client.unlink(*accounting_keys(key))


def empty_streams(client: redis.Redis | redis.RedisCluster, keys: list[str]) -> None:
    """`empty_stream` of each of `keys` (a stream's shards are in different slots)."""
    for key in keys:
        empty_stream(client, key)


@contextmanager
def kept_empty(
    client: redis.Redis | redis.RedisCluster, keys: list[str], every_s: float = 1.0
) -> Iterator[None]:
    """Empty the streams `keys` every `every_s` while the block runs, as consumers keeping up
    would, so that a saturating load measures ingest, not the refusals of a full backlog (at
    100,000 events/s, STREAM_MAX_BYTES's 512 MiB fill in about 20 s). UNLINK frees them on
    Redis's background thread; its CPU is counted with Redis's."""
    stop = threading.Event()
    failed: list[redis.RedisError] = []

    def empty() -> None:
        while not stop.wait(every_s):
            try:
                empty_streams(client, keys)
            except redis.RedisError as exc:  # said after the load: its figures are not ingest's
                failed.append(exc)
                return

    thread = threading.Thread(target=empty, name="empty-streams", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
    if failed:
        raise RuntimeError(f"the stream could not be kept empty: {failed[0]}") from failed[0]


def used_memory(client: redis.Redis) -> int:
    return int(client.info("memory")["used_memory"])


def settle_aof(client: redis.Redis, timeout_s: float = 120) -> None:
    """Wait out an AOF rewrite: while one runs, Redis 6 buffers every new write in memory a
    second time (the rewrite buffer), which would be counted as the backlog's memory."""
    time.sleep(0.3)  # serverCron starts a due rewrite within 100 ms
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        info = client.info("persistence")
        if not (info.get("aof_rewrite_in_progress") or info.get("aof_rewrite_scheduled")):
            return
        time.sleep(0.1)


def measure_memory(
    client: redis.Redis, key: str, pool: list[dict[bytes, bytes]], events: int, batch_size: int
) -> tuple[dict, Backlog]:
    """Redis memory per buffered event against the MsgPack size of the event (its share of
    the entry's `d` field). Leaves the backlog in place for a drain measurement."""
    empty_stream(client, key)
    settle_aof(client)
    before = used_memory(client)
    backlog = fill(client, key, pool, events, batch_size)
    settle_aof(client)
    after = used_memory(client)
    key_bytes = client.memory_usage(key, samples=0) or 0
    per_event = (after - before) / backlog.events
    msgpack_per_event = backlog.msgpack_bytes / backlog.events
    return {
        "batch_size": batch_size,
        "events": backlog.events,
        "entries": len(backlog.entry_ids),
        "msgpack_bytes_per_event": round(msgpack_per_event, 1),
        "redis_bytes_per_event": round(per_event, 1),
        "memory_usage_cmd_bytes_per_event": round(key_bytes / backlog.events, 1),
        "ratio": round(per_event / msgpack_per_event, 3),
        "used_memory_mb": round(after / 2**20, 1),
        "fill_events_per_s": round(backlog.events / backlog.seconds),
    }, backlog


@dataclass
class DrainProgress:
    """How many backlog entries the group has had delivered and acknowledged, over time."""

    samples: list[tuple[float, int, int]] = field(default_factory=list)

    def rate(self, backlog: Backlog, low: float, high: float) -> float:
        """Events/s between the moments `low` and `high` fractions of entries were acked."""
        total = len(backlog.entry_ids)
        t_low = next(t for t, _, acked in self.samples if acked >= low * total)
        t_high = next(t for t, _, acked in self.samples if acked >= high * total)
        events = (high - low) * backlog.events
        return events / (t_high - t_low) if t_high > t_low else float("nan")


def watch_drain(
    client: redis.Redis,
    key: str,
    group: str,
    backlog: Backlog,
    timeout_s: float,
    on_first_read: Callable[[], None] | None = None,
) -> DrainProgress:
    """Poll the consumer group until every backlog entry is acknowledged (or `timeout_s`)."""
    progress = DrainProgress()
    deadline = time.monotonic() + timeout_s
    total = len(backlog.entry_ids)
    acked = 0
    while acked < total and time.monotonic() < deadline:
        info = next((g for g in client.xinfo_groups(key) if _text(g["name"]) == group), None)
        if info is not None:
            delivered = bisect.bisect_right(backlog.entry_ids, _id_key(info["last-delivered-id"]))
            acked = delivered - int(info["pending"])
            if delivered and not progress.samples and on_first_read:
                on_first_read()
            if delivered:
                progress.samples.append((time.monotonic(), delivered, acked))
        time.sleep(0.02)
    if acked < total:
        raise TimeoutError(f"drain not done after {timeout_s}s: {acked}/{total} entries acked")
    return progress


def archived_by_runners(log: Path) -> int:
    """Events archived according to the loop runners' 'invocation done' log lines."""
    total = 0
    for line in log.read_text(errors="replace").splitlines():
        _, marker, summary = line.partition("invocation done ")
        if marker:
            total += json.loads(summary).get("events_archived", 0)
    return total


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


class ArchiveWatcher(threading.Thread):
    """Notes when each probe event first becomes readable under an archive prefix."""

    def __init__(self, endpoint: str, bucket: str, prefix: str, interval_s: float = 0.05) -> None:
        super().__init__(daemon=True)
        self.client = boto3.client("s3", endpoint_url=endpoint)
        self.bucket, self.prefix, self.interval_s = bucket, prefix, interval_s
        self.seen: dict[int, float] = {}
        self._keys: set[str] = set()
        self._halt = threading.Event()

    def run(self) -> None:
        while not self._halt.is_set():
            self.poll()
            self._halt.wait(self.interval_s)

    def poll(self) -> None:
        pages = self.client.get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket, Prefix=self.prefix
        )
        for page in pages:
            for item in page.get("Contents", []):
                if item["Key"] in self._keys:
                    continue
                self._keys.add(item["Key"])
                body = self.client.get_object(Bucket=self.bucket, Key=item["Key"])["Body"].read()
                now = time.monotonic()
                for match in _PROBE.finditer(gzip.decompress(body)):
                    self.seen.setdefault(int(match.group(1)), now)

    def stop(self) -> None:
        self._halt.set()
        self.join(timeout=10)
