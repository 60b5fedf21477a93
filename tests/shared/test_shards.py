"""STREAM_SHARDS on one Redis (shards are just keys): the keys and their slots, the producer
taking turns and passing a full shard's entry on, the registry that keeps retired keys
drained, and a sharded drain archiving everything once under names that never collide."""

from __future__ import annotations

import dataclasses
import time

import pytest
import redis
from redis.backoff import NoBackoff
from redis.crc import REDIS_CLUSTER_HASH_SLOTS
from redis.retry import Retry

from functions.consumer.sharded import ShardedDrainer
from shared import codec, events, shards, stream
from shared.archive import ObjectStore
from shared.status import read_stream_status
from tests.conftest import archived_events, archived_keys


class Budget:
    def __init__(self, seconds: float) -> None:
        self.deadline = time.monotonic() + seconds

    def __call__(self) -> int:
        return max(0, int((self.deadline - time.monotonic()) * 1000))


def entry(count: int = 2) -> dict[bytes, bytes]:
    raw = [{"type": "track", "userId": "u", "event": "E"} for _ in range(count)]
    return codec.encode_entry(events.prepare(raw, events.received_at_now()))


# --- keys --------------------------------------------------------------------------------------


def test_one_shard_is_the_stream_key_itself() -> None:
    assert shards.shard_keys("events", 1) == ["events"]


@pytest.mark.parametrize("count", [2, 3, 6, 12, 16])
def test_shard_i_lies_in_the_ith_slice_of_the_slots(count) -> None:
    keys = shards.shard_keys("events", count)
    assert len(set(keys)) == count and all(key.startswith("events:{") for key in keys)
    width = REDIS_CLUSTER_HASH_SLOTS / count
    for index, key in enumerate(keys):
        assert index * width <= shards.slot_of(key) < (index + 1) * width, key
        # Its dead letters live in the same slot: same node, same hash tag.
        assert shards.slot_of(stream.dead_letter_key(key)) == shards.slot_of(key)


@pytest.mark.parametrize(("count", "primaries"), [(3, 3), (6, 3), (6, 2), (12, 4), (4, 3)])
def test_every_primary_of_an_evenly_split_cluster_holds_shards(count, primaries) -> None:
    width = REDIS_CLUSTER_HASH_SLOTS // primaries
    owners = {min(shards.slot_of(k) // width, primaries - 1) for k in shards.shard_keys("e", count)}
    assert owners == set(range(primaries))


def test_the_keys_are_the_same_in_every_process() -> None:
    assert shards.shard_keys("events", 6) == [
        "events:{0.2752}", "events:{1.628}", "events:{2.567}",
        "events:{3.297}", "events:{4.3825}", "events:{5.1915}",
    ]  # fmt: skip


# --- producing ---------------------------------------------------------------------------------


@pytest.fixture
def sharded(settings):
    return dataclasses.replace(settings, stream_shards=3, stream_max_len=2)


def test_entries_take_turns_over_the_shards_and_are_registered(sharded, redis_client) -> None:
    producer = stream.producer(sharded, redis_client)
    for _ in range(6):
        producer.add(entry())
    keys = shards.shard_keys(sharded.stream_key, 3)
    assert [redis_client.xlen(key) for key in keys] == [2, 2, 2]
    assert not redis_client.exists(sharded.stream_key)  # nothing goes to the logical name
    registered = {
        k.decode() for k in redis_client.smembers(shards.registry_key(sharded.stream_key))
    }
    assert registered == set(keys)


def test_a_full_shard_passes_the_entry_on_and_all_full_refuse(sharded, redis_client) -> None:
    producer = stream.producer(sharded, redis_client)
    first = shards.shard_keys(sharded.stream_key, 3)[0]
    redis_client.xadd(first, {"x": "1"})
    redis_client.xadd(first, {"x": "2"})  # the first shard is full
    for _ in range(3):
        producer.add(entry())
    assert not producer.is_full()
    producer.add(entry())  # the last room, wherever the turn was
    with pytest.raises(stream.BacklogFull, match="all 3 shards"):
        producer.add(entry())
    assert producer.is_full()
    # The bound in total: every shard at STREAM_MAX_LEN.
    status = read_stream_status(redis_client, sharded)
    assert status.length == status.max_len == 6


# --- draining ----------------------------------------------------------------------------------


def drainer(settings, s3) -> ShardedDrainer:
    client = stream.connect(settings)
    consumer = ShardedDrainer(settings, client, ObjectStore(s3, settings.s3_bucket))
    return consumer


def test_a_sharded_drain_archives_every_event_once(settings, s3, redis_client) -> None:
    sharded = dataclasses.replace(settings, stream_shards=3)
    producer = stream.producer(sharded, redis_client)
    sent = []
    for _ in range(30):
        fields = entry(3)
        producer.add(fields)
        sent += [e["messageId"] for e in codec.decode_entry(fields)]
    summary = drainer(sharded, s3).drain(Budget(3))
    archived = archived_events(s3, settings.s3_bucket)
    assert sorted(e["messageId"] for e in archived) == sorted(sent)
    assert summary.entries_read == 30 and summary.events_archived == 90
    status = read_stream_status(redis_client, sharded)
    assert status.length == 0 and status.groups[0].backlog_entries == 0
    assert len(status.shards) == 3


def test_two_shards_with_the_same_entry_ids_write_different_objects(settings, s3, redis_client):
    sharded = dataclasses.replace(settings, stream_shards=2)
    for key in shards.shard_keys(sharded.stream_key, 2):
        redis_client.xadd(key, entry(1), id="1700000000000-0")
    drainer(sharded, s3).drain(Budget(2))
    assert len(archived_keys(s3, settings.s3_bucket)) == 2
    assert len(archived_events(s3, settings.s3_bucket)) == 2


def test_keys_no_longer_written_are_still_drained(settings, s3, redis_client) -> None:
    """From one key to 3 shards and back to 2: the consumer drains STREAM_KEY (the single-shard
    release registered nothing) and every registered shard, whatever STREAM_SHARDS is now."""
    stream.producer(settings, redis_client).add(entry())  # STREAM_SHARDS=1
    stream.producer(dataclasses.replace(settings, stream_shards=3), redis_client).add(entry())
    now = dataclasses.replace(settings, stream_shards=2)
    keys = shards.keys_to_drain(redis_client, settings.stream_key, 2)
    assert keys[:2] == shards.shard_keys(settings.stream_key, 2)
    assert set(keys) == {settings.stream_key} | set(
        shards.shard_keys(settings.stream_key, 3)
    ) | set(shards.shard_keys(settings.stream_key, 2))
    summary = drainer(now, s3).drain(Budget(3))
    assert summary.events_archived == 4
    assert len(archived_events(s3, settings.s3_bucket)) == 4


def test_one_shard_drains_and_names_objects_as_before(settings, s3, redis_client) -> None:
    stream.producer(settings, redis_client).add(entry())
    assert shards.keys_to_drain(redis_client, settings.stream_key, 1) == [settings.stream_key]
    assert not redis_client.exists(shards.registry_key(settings.stream_key))
    drainer(settings, s3).drain(Budget(2))
    (key,) = archived_keys(s3, settings.s3_bucket)
    (entry_id,) = [e for e in key.rsplit("/", 1)[1].split("_")[:1]]
    assert key.endswith(".ndjson.gz") and entry_id.count("-") == 1


def test_metrics_give_totals_and_each_shard(settings, redis_client) -> None:
    from prometheus_client.parser import text_string_to_metric_families

    from shared import metrics

    sharded = dataclasses.replace(settings, stream_shards=3)
    producer = stream.producer(sharded, redis_client)
    for _ in range(3):
        producer.add(entry())

    def samples(which) -> dict[str, list]:
        text = metrics.exposition(metrics.StreamCollector(lambda: redis_client, which)).decode()
        return {f.name: f.samples for f in text_string_to_metric_families(text)}

    exposed = samples(sharded)
    assert exposed["event_ingest_stream_entries"][0].value == 3
    per_shard = {s.labels["shard"]: s.value for s in exposed["event_ingest_shard_entries"]}
    assert per_shard == dict.fromkeys(shards.shard_keys(settings.stream_key, 3), 1)
    held = {
        key: sum(
            len(name) + len(value) for _, f in redis_client.xrange(key) for name, value in f.items()
        )
        for key in shards.shard_keys(settings.stream_key, 3)
    }
    assert {s.labels["shard"]: s.value for s in exposed["event_ingest_shard_bytes"]} == held
    assert exposed["event_ingest_stream_bytes"][0].value == sum(held.values()) > 0
    assert exposed["event_ingest_stream_max_bytes"][0].value == 3 * settings.stream_max_bytes
    # One key, never sharded: no shard gauges (once sharded, retired shards still show).
    alone = dataclasses.replace(settings, stream_key=f"{settings.stream_key}-alone")
    assert "event_ingest_shard_entries" not in samples(alone)


def test_a_retired_key_is_removed_once_drained_and_silent(settings, s3, redis_client) -> None:
    """Back from 3 shards to 1: the shards are drained, then removed once nothing was written
    to them for RETIRE_AFTER_S (here, entries written two days ago), except a shard written
    recently (an ingest process of the old configuration may still run) and one with dead
    letters waiting."""
    old_ms = int(time.time() * 1000) - 2 * 24 * 3600 * 1000
    first, recent, poisoned = shards.shard_keys(settings.stream_key, 3)
    redis_client.sadd(shards.registry_key(settings.stream_key), first, recent, poisoned)
    for key in (first, poisoned):
        redis_client.xadd(key, entry(), id=f"{old_ms}-0")
    redis_client.xadd(recent, entry())
    redis_client.xadd(stream.dead_letter_key(poisoned), {b"reason": b"poison"})
    summary = drainer(settings, s3).drain(Budget(2))
    assert summary.events_archived == 6  # all drained, the old ones too
    registered = {
        k.decode() for k in redis_client.smembers(shards.registry_key(settings.stream_key))
    }
    assert registered == {recent, poisoned}
    assert not redis_client.exists(first, shards.size_key(first), shards.ledger_key(first))
    assert redis_client.exists(recent) and redis_client.exists(poisoned)
    assert shards.keys_to_drain(redis_client, settings.stream_key, 1) == [
        settings.stream_key,
        *sorted([recent, poisoned]),
    ]


def test_a_registry_that_cannot_be_written_does_not_refuse_requests(
    sharded, redis_client, monkeypatch
):
    monkeypatch.setattr(stream.producers, "REGISTER_RETRY_S", 0.0)  # try again at the next request
    registry = shards.registry_key(sharded.stream_key)
    redis_client.set(registry, "not a set")  # SADD now fails with WRONGTYPE
    producer = stream.producer(sharded, redis_client)
    producer.add(entry())
    redis_client.delete(registry)
    producer.add(entry())  # tried again, and listed this time
    assert len(redis_client.smembers(registry)) == 3


def test_shards_are_listed_again_after_a_while(sharded, redis_client, monkeypatch) -> None:
    """A key retired while this process was idle comes back on its next write: listed again
    after the append, so the consumers drain it."""
    producer = stream.producer(sharded, redis_client)
    producer.add(entry())
    registry = shards.registry_key(sharded.stream_key)
    redis_client.delete(registry)  # retired meanwhile
    producer.add(entry())
    assert not redis_client.exists(registry)  # not at every request...
    producer._register_at = 0.0  # ...but once REGISTER_EVERY_S has passed
    producer.add(entry())
    assert len(redis_client.smembers(registry)) == 3


def test_readiness_holds_while_one_shard_does_not_answer(sharded, redis_client) -> None:
    producer = stream.producer(sharded, redis_client)
    unreachable = redis.Redis(port=1, socket_connect_timeout=0.2, retry=Retry(NoBackoff(), 0))
    down = stream.EventStream(unreachable, "k", 2)
    producer.shards[0] = down  # its primary is failing over
    assert not producer.is_full()
    for shard in producer.shards[1:]:
        for _ in range(2):
            shard.add(entry())
    assert producer.is_full()  # the answering ones are full: nothing would be accepted
    producer.shards[1:] = [down, down]
    with pytest.raises(redis.ConnectionError):
        producer.is_full()


def test_drainers_share_the_buffering_hints(settings, s3, redis_client) -> None:
    """A consumer's buffers together hold what one stream's would: its memory is sized for
    one (Lambda's MemorySize), whatever the number of shards."""
    from functions.consumer.sizing import MIN_SHARE_BYTES, buffering_share

    big = dataclasses.replace(settings, flush_max_bytes=12 * 1024 * 1024, flush_max_events=900)
    shared = buffering_share(big, 3)
    assert (shared.flush_max_bytes, shared.flush_max_events) == (4 * 1024 * 1024, 300)
    assert buffering_share(big, 64).flush_max_bytes == MIN_SHARE_BYTES  # not below
    sharded = dataclasses.replace(big, stream_shards=3)
    consumer = drainer(sharded, s3)
    stream.producer(sharded, redis_client).add(entry())
    consumer.drain(Budget(1))
    assert {d.settings.flush_max_bytes for d in consumer.drainers.values()} == {4 * 1024 * 1024}


def test_a_key_retired_by_another_consumer_meanwhile_is_no_failure(settings, s3) -> None:
    consumer = drainer(dataclasses.replace(settings, stream_shards=2), s3)
    gone = f"{settings.stream_key}:{{old}}"
    nogroup = redis.ResponseError("NOGROUP No such key or consumer group")
    assert consumer._retired_meanwhile(gone, nogroup)
    current = shards.shard_keys(settings.stream_key, 2)[0]
    assert not consumer._retired_meanwhile(current, nogroup)  # a current shard: a real error
    assert not consumer._retired_meanwhile(gone, redis.ConnectionError("refused"))


def test_object_names_of_one_shard_are_as_before() -> None:
    """Pinned: a consumer of this release re-flushing what an older one left pending must
    write the same object, so STREAM_KEY's names never change."""
    from shared.archive.naming import object_key

    ids = [b"1700000000000-0", b"1700000000001-3"]
    assert object_key("events/", "dt=2023-11-14/hour=22/", ids, ".ndjson.gz") == (
        "events/dt=2023-11-14/hour=22/1700000000000-0_1700000000001-3_38d9b395edf62406.ndjson.gz"
    )
    salted = object_key("events/", "dt=2023-11-14/hour=22/", ids, ".ndjson.gz", "events:{0.1}")
    assert salted.startswith("events/dt=2023-11-14/hour=22/1700000000000-0_1700000000001-3_")
    assert not salted.endswith("38d9b395edf62406.ndjson.gz")


def test_retiring_a_key_removes_its_size_hash_and_ledger(settings, redis_client) -> None:
    """Emptied around the scripts (or never written since this release), a retired key's
    companions go with it, whether the stream key is left empty or is gone already."""
    old_ms = int(time.time() * 1000) - 2 * 24 * 3600 * 1000
    emptied, gone = (f"{settings.stream_key}:{{{tag}}}" for tag in ("emptied", "gone"))
    for key in (emptied, gone):
        redis_client.sadd(shards.registry_key(settings.stream_key), key)
        redis_client.hset(shards.size_key(key), mapping={"bytes": 5, "events": 1})
        redis_client.xadd(shards.ledger_key(key), {"b": 5, "n": 1}, id=f"{old_ms}-0")
    redis_client.xadd(emptied, {"n": "1"}, id=f"{old_ms}-0")
    redis_client.xgroup_create(emptied, "archiver", id="$")
    redis_client.xtrim(emptied, maxlen=0)
    for key in (emptied, gone):
        assert shards.retire_if_drained(redis_client, settings.stream_key, 1, key)
        assert not redis_client.exists(key, shards.size_key(key), shards.ledger_key(key))


def test_a_shard_full_by_bytes_passes_the_entry_on(settings, redis_client) -> None:
    sharded = dataclasses.replace(settings, stream_shards=3, stream_max_bytes=1)
    producer = stream.producer(sharded, redis_client)
    for _ in range(3):
        producer.add(entry())  # one each: a shard below 1 byte takes one entry, whatever size
    with pytest.raises(stream.BacklogFull, match="all 3 shards"):
        producer.add(entry())
    assert producer.is_full()
    status = read_stream_status(redis_client, sharded)
    assert [shard.length for shard in status.shards] == [1, 1, 1]
    assert status.bytes == sum(shard.bytes for shard in status.shards) > 3 * 100
    assert status.max_bytes == 3
