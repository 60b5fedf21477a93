"""The consumer never archives what is to be forgotten: the events of a suppressed subject and
of a pending deletion's subject already in the stream are dropped, their entries acknowledged
all the same; a view lost from Redis is rebuilt from the bucket first; without any regulation
nothing changes and the bucket gets no `_privacy/` object.

Real parts: the drain loop on a real redis-server, moto's in-process S3, regulations accepted
by the real RegulationStore.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import prometheus_client
import pytest
import redis

from functions.consumer.sharded import ShardedDrainer
from local.redis_server import RedisServer
from shared import codec, events, regulations, shards, stream
from shared.archive import ObjectStore
from shared.archive.privacy.store import RegulationStore
from shared.settings import Settings
from tests.conftest import archived_events, archived_keys, free_port
from tests.functions.consumer.drains import Budget, make_drainer

DROPPED = "event_ingest_consumer_events_dropped_privacy_total"


@pytest.fixture
def quick(settings: Settings) -> Settings:
    return dataclasses.replace(settings, suppression_reload_s=0.2)


def store_of(s3: Any, settings: Settings) -> RegulationStore:
    return RegulationStore(ObjectStore(s3, settings.s3_bucket), settings.s3_prefix)


def regulate(s3, client, settings, kind, ids, subject="USER_ID") -> None:
    store_of(s3, settings).accept(
        client,
        settings.stream_key,
        regulation_type=kind,
        subject_type=subject,
        subject_ids=ids,
    )


def post(producer, *batches: list[dict[str, Any]]) -> None:
    """One entry per batch, as ingest writes them."""
    for raw in batches:
        producer.add(codec.encode_entry(events.prepare(raw, events.received_at_now())))


def track(**ids: Any) -> dict[str, Any]:
    return {"type": "track", "event": "E", **ids}


# Entries of two kept people, a suppressed one and a pending deletion's (an anonymousId),
# one entry holding only the suppressed subject's events.
BATCHES = [
    [track(userId="keep-1"), track(userId=42), track(anonymousId="gone-1")],
    [track(userId="42"), track(userId="42")],
    [track(userId="keep-2", anonymousId="a-1"), track(userId="u-9", anonymousId="gone-1")],
]
KEPT = ["keep-1", "keep-2"]


def post_then_regulate(s3, client, settings) -> None:
    """The events are in the stream before the regulations are accepted."""
    post(stream.EventStream(client, settings.stream_key, settings.stream_max_len), *BATCHES)
    regulate(s3, client, settings, "SUPPRESS_ONLY", ["42"])
    regulate(s3, client, settings, "DELETE_ONLY", ["gone-1"], subject="ANONYMOUS_ID")


def archived_users(s3, settings: Settings) -> list[str]:
    """Who the archived events are of: the raw root's partitions (not `_privacy/`)."""
    found = archived_events(s3, settings.s3_bucket, f"{settings.s3_prefix}dt=")
    return sorted(str(e.get("userId")) for e in found)


def all_acknowledged(client: redis.Redis, settings: Settings) -> bool:
    pending = client.xpending(settings.stream_key, settings.consumer_group)["pending"]
    return pending == 0 and client.xlen(settings.stream_key) == 0


def test_events_of_regulated_subjects_already_in_the_stream_are_dropped_and_acked(
    quick, s3, redis_client
) -> None:
    post_then_regulate(s3, redis_client, quick)
    counted_before = prometheus_client.REGISTRY.get_sample_value(DROPPED) or 0.0

    summary = make_drainer(quick, s3).drain(Budget(1.5))

    assert archived_users(s3, quick) == KEPT
    assert summary.events_archived == 2 and summary.events_dropped_privacy == 5
    assert summary.entries_read == 3 and all_acknowledged(redis_client, quick)
    assert prometheus_client.REGISTRY.get_sample_value(DROPPED) - counted_before == 5


def test_a_view_lost_from_redis_is_rebuilt_from_the_bucket_before_archiving(
    quick, s3, redis_client
) -> None:
    post_then_regulate(s3, redis_client, quick)
    name = regulations.view_key(quick.stream_key)
    published = redis_client.hgetall(name)
    redis_client.delete(name)  # a Redis restarted empty

    summary = make_drainer(quick, s3).drain(Budget(1.5))

    assert redis_client.hgetall(name) == published
    assert archived_users(s3, quick) == KEPT and summary.events_dropped_privacy == 5
    assert all_acknowledged(redis_client, quick)


def test_a_full_redis_that_lost_the_view_is_drained_with_the_buckets(quick, s3, tmp_path):
    """Redis at maxmemory cannot take the rebuilt view, and must still be drained (that frees
    it): the consumer checks the events against the bucket's regulations meanwhile."""
    server = RedisServer(free_port(), tmp_path, "--maxmemory", "3mb").start()
    try:
        full = dataclasses.replace(quick, redis_url=server.url, stream_max_len=1_000_000)
        client = redis.Redis.from_url(server.url)
        stream.GroupReader(client, full.stream_key, "archiver", "x").ensure_group()
        post_then_regulate(s3, client, full)
        client.delete(regulations.view_key(full.stream_key))
        producer = stream.EventStream(client, full.stream_key, full.stream_max_len)
        padding = 0
        with pytest.raises(redis.ResponseError) as refused:
            while True:
                post(producer, [track(userId="pad", pad="x" * 20_000)])
                padding += 1
        assert stream.out_of_memory(refused.value), refused.value  # Redis 7's form or 6.2's

        summary = make_drainer(full, s3).drain(Budget(2))

        assert archived_users(s3, full) == sorted(KEPT + ["pad"] * padding)
        assert summary.events_dropped_privacy == 5
        assert client.xlen(full.stream_key) == 0
    finally:
        server.kill()


def test_without_any_regulation_nothing_changes_and_no_privacy_object_is_made(
    quick, s3, redis_client
) -> None:
    post(stream.EventStream(redis_client, quick.stream_key, quick.stream_max_len), *BATCHES)

    summary = make_drainer(quick, s3).drain(Budget(1.5))

    assert summary.events_archived == 7 and summary.events_dropped_privacy == 0
    assert all_acknowledged(redis_client, quick)
    assert archived_keys(s3, quick.s3_bucket, f"{quick.s3_prefix}_privacy/") == []
    # Redis says that nothing is in force, so the next drains do not list the bucket again.
    view = regulations.parse_view(redis_client.hgetall(regulations.view_key(quick.stream_key)))
    assert view is not None and view.empty


def test_every_shard_is_filtered(quick, s3, redis_client) -> None:
    sharded = dataclasses.replace(quick, stream_shards=2)
    producer = stream.producer(sharded, stream.connect(sharded))
    post(producer, *BATCHES, *BATCHES)  # taking turns: each shard gets one of each
    assert [redis_client.xlen(key) for key in shards.shard_keys(quick.stream_key, 2)] == [3, 3]
    regulate(s3, redis_client, sharded, "SUPPRESS_ONLY", ["42"])
    regulate(s3, redis_client, sharded, "DELETE_ONLY", ["gone-1"], subject="ANONYMOUS_ID")
    drainer = ShardedDrainer(sharded, stream.connect(sharded), ObjectStore(s3, quick.s3_bucket))

    summary = drainer.drain(Budget(2))

    assert archived_users(s3, sharded) == sorted(KEPT * 2)
    assert summary.events_dropped_privacy == 10 and summary.entries_read == 6
