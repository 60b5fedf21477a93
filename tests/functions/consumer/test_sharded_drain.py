"""A consumer draining many shards: dead letters that stay apart, and enough connections.

Against a real redis-server and moto's in-process S3.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import threading
import time

from click.testing import CliRunner

from functions.cli import main
from functions.consumer.sharded import ShardedDrainer
from functions.consumer.sizing import connections_needed
from shared import codec, events, shards, stream
from shared.archive import ObjectStore
from shared.settings import Settings
from tests.conftest import (
    archived_events,
    archived_keys,
    pending_count,
    settings_env,
    wait_until,
)
from tests.functions.consumer.drains import Budget

SAME_ID = "1700000000000-0"


def sharded_drainer(settings: Settings, s3) -> ShardedDrainer:
    return ShardedDrainer(settings, stream.connect(settings), ObjectStore(s3, settings.s3_bucket))


def entry(count: int = 2) -> dict[bytes, bytes]:
    raw = [{"type": "track", "userId": "u", "event": "E"} for _ in range(count)]
    return codec.encode_entry(events.prepare(raw, events.received_at_now()))


# --- dead letters, one per shard ----------------------------------------------------------------


def test_two_shards_dead_lettering_the_same_entry_id_keep_both_letters(settings, s3, redis_client):
    sharded = dataclasses.replace(settings, stream_shards=2, dead_letter_max_len=1)
    keys = shards.shard_keys(settings.stream_key, 2)
    poison = {key: {b"v": b"99", b"d": key.encode()} for key in keys}  # each its own data
    for key in keys:
        redis_client.xadd(key, poison[key], id=SAME_ID)

    summary = sharded_drainer(sharded, s3).drain(Budget(1))

    assert summary.entries_dead_lettered == 2
    letters = archived_keys(s3, settings.s3_bucket, "errors/")
    assert len(letters) == 2
    documents = [
        json.loads(s3.get_object(Bucket=settings.s3_bucket, Key=key)["Body"].read())
        for key in letters
    ]
    assert sorted(document["shard"] for document in documents) == sorted(keys)
    for name, document in zip(letters, documents, strict=True):
        assert document["originalId"] == SAME_ID
        assert name.endswith(f"/{SAME_ID}_shard-{document['shard'].rsplit('{')[1][:-1]}.json")
        assert base64.b64decode(document["fields"]["d"]) == poison[document["shard"]][b"d"]
    # Redis keeps one letter per shard's dead-letter stream: `dead-letters` lists both, and
    # re-drives each onto its shard.
    env = settings_env(sharded)
    listed = json.loads(
        CliRunner().invoke(main, ["dead-letters", "list", "--json"], env=env).stdout
    )
    assert sorted(row["shard"] for row in listed) == sorted(keys)
    assert {row["original_id"] for row in listed} == {SAME_ID}
    redriven = CliRunner().invoke(main, ["dead-letters", "redrive", "--all"], env=env)
    assert redriven.exit_code == 0, redriven.output
    assert [redis_client.xlen(key) for key in keys] == [1, 1]


def test_an_unsharded_streams_dead_letters_keep_their_names(settings, s3, redis_client):
    """STREAM_KEY's own letters are named as they always were: `<entry id>.json`."""
    redis_client.xadd(settings.stream_key, {b"v": b"99"}, id=SAME_ID)
    sharded_drainer(settings, s3).drain(Budget(0.6))
    [name] = archived_keys(s3, settings.s3_bucket, "errors/")
    assert name == f"errors/dt=2023-11-14/{SAME_ID}.json"
    document = json.loads(s3.get_object(Bucket=settings.s3_bucket, Key=name)["Body"].read())
    assert "shard" not in document


# --- many shards, one pool ----------------------------------------------------------------------


def test_sixty_four_shards_drain_under_load_without_pool_errors(settings, s3, redis_client):
    """A thread (and a flusher) per shard, each holding a connection through its blocking
    read: the pool must have one for each, or threads wait REDIS_TIMEOUT_S and fail."""
    sharded = dataclasses.replace(
        settings, stream_shards=64, redis_max_connections=50, redis_timeout_s=0.5
    )
    producer = stream.producer(sharded, redis_client)
    sent = 0
    stop = threading.Event()

    def load() -> None:  # a steady trickle: most shards' reads wait, holding a connection
        nonlocal sent
        while not stop.is_set():
            producer.add(entry())
            sent += 1
            time.sleep(0.003)

    loader = threading.Thread(target=load)
    consumer = sharded_drainer(sharded, s3)
    loader.start()
    try:
        consumer.drain(Budget(2))  # raised ConnectionError (a pool timeout) before
    finally:
        stop.set()
        loader.join()

    # What was added as the first drain ended: a short drain at a time until all of it is in
    # (on a loaded machine 64 threads may not all read within one short budget).
    def drained_again() -> bool:
        consumer.drain(Budget(0.6))
        return len(archived_events(s3, settings.s3_bucket)) >= 2 * sent

    wait_until(drained_again, timeout_s=20, interval_s=0, what="every event archived")
    assert len(archived_events(s3, settings.s3_bucket)) == 2 * sent
    for key in shards.shard_keys(settings.stream_key, 64):
        assert redis_client.xlen(key) == 0
        assert pending_count(redis_client, dataclasses.replace(sharded, stream_key=key)) == 0


def test_the_pool_is_sized_from_the_shards_and_the_keys_left_to_drain(settings, s3):
    """From STREAM_SHARDS at start; the keys a previous STREAM_SHARDS wrote, still drained,
    add theirs."""
    assert connections_needed(1) <= Settings.redis_max_connections  # one key: as before
    before = dataclasses.replace(settings, stream_shards=32)
    stream.producer(before).add(entry())  # and its keys are registered
    now = dataclasses.replace(before, stream_shards=64, redis_timeout_s=0.5)
    consumer = ShardedDrainer.from_settings(now)
    assert consumer.pool_size == consumer.client.connection_pool.max_connections == 129
    consumer.store = ObjectStore(s3, settings.s3_bucket)
    assert len(shards.keys_to_drain(consumer.client, settings.stream_key, 64)) == 96
    archived = 0

    def drained() -> bool:  # a loaded machine may not read all 96 keys within one short budget
        nonlocal archived
        archived += consumer.drain(Budget(1)).events_archived
        return archived >= 2

    wait_until(drained, timeout_s=20, interval_s=0, what="the one entry archived")
    assert archived == 2
    assert consumer.pool_size == consumer.client.connection_pool.max_connections == 193
