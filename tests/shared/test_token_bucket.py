"""Token buckets checked and taken by the append script (shared/token_bucket.py through
EventStream.add), against a real redis-server: burst, refusal, refill, debt, expiry, nothing
taken from a refused request, the shares of a sharded stream, WAIT, and a Redis Cluster."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterator

import pytest
import redis

from local.redis_cluster import LocalCluster, free_ports
from shared import shards
from shared.settings import Settings
from shared.stream import BacklogFull, EventStream, RateLimited, ShardedStream, producer
from shared.token_bucket import MICROS, Bucket

FIELDS = {b"v": b"1", b"n": b"1", b"d": b"payload"}


def bucket(name: str = "source:web", events_per_s: float = 1, burst: float = 5) -> Bucket:
    return Bucket(name, events_per_s, burst)


def full_at(client: redis.Redis, stream_key: str, name: str) -> int | None:
    """The bucket's state: when it is full again (us, Redis's clock), None if it is full."""
    value = client.get(shards.rate_bucket_key(stream_key, name))
    return None if value is None else int(value)


def passes(stream: EventStream | ShardedStream, cost: int, *buckets: Bucket) -> bool:
    try:
        stream.add(FIELDS, cost, buckets)
    except RateLimited:
        return False
    return True


@pytest.fixture
def stream(redis_client: redis.Redis, settings: Settings) -> EventStream:
    return EventStream(redis_client, settings.stream_key, max_len=1_000_000)


def test_a_burst_passes_then_nothing_is_written_or_taken(stream, redis_client) -> None:
    slow = bucket(events_per_s=1, burst=5)
    for _ in range(5):
        stream.add(FIELDS, 1, (slow,))
    state = full_at(redis_client, stream.key, slow.name)

    with pytest.raises(RateLimited) as refused:
        stream.add(FIELDS, 1, (slow,))

    assert refused.value.bucket == slow
    assert 0.9 < refused.value.wait_s <= 1.0  # one event's worth at 1 event/s
    assert refused.value.retry_after_s == 1
    assert redis_client.xlen(stream.key) == 5
    assert full_at(redis_client, stream.key, slow.name) == state


def test_tokens_come_back_at_the_rate(stream) -> None:
    fast = bucket(events_per_s=200, burst=4)
    assert passes(stream, 4, fast)
    assert not passes(stream, 4, fast)
    time.sleep(4 / 200 + 0.005)
    assert passes(stream, 4, fast)


def test_a_request_larger_than_the_burst_passes_a_full_bucket_and_leaves_debt(stream) -> None:
    fast = bucket(events_per_s=1000, burst=10)
    assert passes(stream, 50, fast)  # 50 > 10: not refused for ever
    with pytest.raises(RateLimited) as refused:
        stream.add(FIELDS, 1, (fast,))
    # 40 events of debt, then the one asked for: 41 ms at 1,000 events/s.
    assert 0.030 < refused.value.wait_s <= 0.041
    time.sleep(refused.value.wait_s + 0.005)
    assert passes(stream, 1, fast)


def test_a_bucket_expires_once_it_would_be_full_again(stream, redis_client) -> None:
    fast = bucket(events_per_s=1000, burst=100)
    stream.add(FIELDS, 30, (fast,))
    key = shards.rate_bucket_key(stream.key, fast.name)
    assert 0 < redis_client.pttl(key) <= 30
    time.sleep(0.05)
    assert not redis_client.exists(key)
    assert passes(stream, 100, fast)  # a missing bucket is a full one


def test_the_state_is_when_the_bucket_is_full_again(stream, redis_client) -> None:
    slow = bucket(events_per_s=10, burst=100)
    seconds, micros = redis_client.time()
    stream.add(FIELDS, 20, (slow,))
    now_us = seconds * MICROS + micros
    # 20 events at 10 a second: full again 2 s after the append.
    assert 0 <= full_at(redis_client, stream.key, slow.name) - (now_us + 2 * MICROS) < 100_000


def test_a_refusal_by_one_bucket_takes_from_none(stream, redis_client) -> None:
    roomy, tight = bucket("source:web", 1, 100), bucket("address:abc", 1, 2)
    stream.add(FIELDS, 2, (roomy, tight))
    roomy_state = full_at(redis_client, stream.key, roomy.name)

    with pytest.raises(RateLimited) as refused:
        stream.add(FIELDS, 1, (roomy, tight))

    assert refused.value.bucket == tight
    assert full_at(redis_client, stream.key, roomy.name) == roomy_state
    assert redis_client.xlen(stream.key) == 1


def test_a_full_backlog_takes_no_tokens(redis_client, settings) -> None:
    one = EventStream(redis_client, settings.stream_key, max_len=1)
    slow = bucket(events_per_s=1, burst=100)
    one.add(FIELDS, 3, (slow,))
    state = full_at(redis_client, one.key, slow.name)
    with pytest.raises(BacklogFull):
        one.add(FIELDS, 3, (slow,))
    assert full_at(redis_client, one.key, slow.name) == state


def test_a_refused_bucket_is_checked_before_the_backlog(redis_client, settings) -> None:
    # The client is told to slow down (429), not that the service is full (503).
    one = EventStream(redis_client, settings.stream_key, max_len=1)
    slow = bucket(events_per_s=1, burst=1)
    one.add(FIELDS, 1, (slow,))
    with pytest.raises(RateLimited):
        one.add(FIELDS, 1, (slow,))


def test_an_append_without_buckets_takes_from_none(stream, redis_client) -> None:
    stream.add(FIELDS)
    assert redis_client.xlen(stream.key) == 1
    assert not redis_client.keys(shards.rate_bucket_key(stream.key, "*"))


def test_retry_after_is_whole_seconds_and_at_least_one() -> None:
    assert RateLimited(bucket(), 0.001).retry_after_s == 1
    assert RateLimited(bucket(), 1.0).retry_after_s == 1
    assert RateLimited(bucket(), 1.2).retry_after_s == 2


# --- shards ------------------------------------------------------------------------------------


@pytest.fixture
def sharded(redis_client, settings) -> ShardedStream:
    made = producer(dataclasses.replace(settings, stream_shards=3), redis_client)
    assert isinstance(made, ShardedStream)
    return made


def test_each_shard_keeps_its_share_and_together_they_hold_the_limit(sharded, redis_client) -> None:
    limit = bucket(events_per_s=0.01, burst=30)
    accepted = 0
    while passes(sharded, 1, limit):
        accepted += 1
        assert accepted <= 30
    assert accepted == 30  # 10 on each shard, taking turns
    for shard in sharded.shards:
        key = shards.rate_bucket_key(shard.key, limit.name)
        assert shards.slot_of(key) == shards.slot_of(shard.key)  # one script, one node
        assert redis_client.xlen(shard.key) == 10


def test_a_shard_s_refusal_is_final_and_no_other_shard_is_tried(sharded, redis_client) -> None:
    limit = bucket(events_per_s=0.01, burst=30)
    drained = sharded.shards[0]
    while passes(drained, 1, limit.share(3)):
        pass
    refusals = 0
    for _ in range(3):  # taking turns: one of these lands on the drained shard
        before = sum(redis_client.xlen(shard.key) for shard in sharded.shards)
        if not passes(sharded, 1, limit):
            refusals += 1
            assert sum(redis_client.xlen(shard.key) for shard in sharded.shards) == before
    assert refusals == 1


# --- WAIT and a cluster ------------------------------------------------------------------------


def test_with_wait_replicas_a_refusal_is_a_rate_limit_not_a_shortfall(
    replicated_redis, settings
) -> None:
    primary, _replica = replicated_redis
    client = redis.Redis.from_url(primary.url)
    waiting = EventStream(
        client, settings.stream_key, max_len=100, wait_replicas=1, wait_timeout_ms=1000
    )
    slow = bucket(events_per_s=1, burst=1)
    waiting.add(FIELDS, 1, (slow,))
    with pytest.raises(RateLimited):
        waiting.add(FIELDS, 1, (slow,))
    assert client.xlen(settings.stream_key) == 1


@pytest.fixture(scope="module")
def cluster(tmp_path_factory) -> Iterator[LocalCluster]:
    started = LocalCluster(free_ports(3), tmp_path_factory.mktemp("cluster")).start()
    yield started
    started.kill()


@pytest.mark.parametrize("count", [1, 3])
def test_on_a_cluster_the_buckets_share_their_stream_key_s_node(cluster, settings, count):
    on_cluster = dataclasses.replace(
        settings, redis_url=cluster.url, redis_cluster=True, stream_shards=count
    )
    made = producer(on_cluster)
    limit = bucket(events_per_s=0.01, burst=3 * count)
    accepted = sum(passes(made, 1, limit) for _ in range(4 * count))
    assert accepted == 3 * count
