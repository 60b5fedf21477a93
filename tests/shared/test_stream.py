"""Redis Streams access against a real redis-server: add, read, ack, claim, dead-letter, trim."""

from __future__ import annotations

import dataclasses
import signal
import time
from collections.abc import Iterator

import pytest
import redis

from local.redis_cluster import LocalCluster, free_ports
from local.redis_server import RedisServer
from shared import shards, stream
from shared.settings import Settings
from shared.stream import EventStream, GroupReader
from tests.conftest import free_port

FIELDS = {b"v": b"1", b"n": b"1", b"d": b"payload"}


def reader(
    client: redis.Redis, settings: Settings, consumer: str = "c1", group: str | None = None
) -> GroupReader:
    return GroupReader(client, settings.stream_key, group or settings.consumer_group, consumer)


def add_entries(client: redis.Redis, key: str, count: int) -> list[bytes]:
    producer = EventStream(client, key, max_len=1_000_000)
    return [producer.add({b"i": str(i).encode(), **FIELDS}) for i in range(count)]


def ids_of(entries: list[stream.Entry]) -> list[bytes]:
    return [entry_id for entry_id, _ in entries]


def stream_ids(client: redis.Redis, key: str) -> list[bytes]:
    return [entry_id for entry_id, _ in client.xrange(key)]


def pending_ids(client: redis.Redis, key: str, group: str, consumer: str | None = None) -> set:
    rows = client.xpending_range(key, group, "-", "+", 10_000, consumername=consumer)
    return {row["message_id"] for row in rows}


def node_entries(client: redis.Redis) -> int:
    return int(client.config_get("stream-node-max-entries")["stream-node-max-entries"])


# --- connection helpers -------------------------------------------------------------------


def test_connect_uses_the_settings(settings: Settings) -> None:
    client = stream.connect(dataclasses.replace(settings, redis_timeout_s=1.5))
    assert client.ping() is True
    kwargs = client.connection_pool.connection_kwargs
    assert kwargs["socket_timeout"] == 1.5
    assert kwargs["socket_connect_timeout"] == 1.5


def test_the_pool_is_bounded_and_a_caller_waits_for_a_connection_then_fails(
    settings: Settings,
) -> None:
    bounded = dataclasses.replace(settings, redis_max_connections=2, redis_timeout_s=0.3)
    client = stream.connect(bounded)
    held = [client.connection_pool.get_connection() for _ in range(2)]
    started = time.monotonic()
    with pytest.raises(redis.ConnectionError):  # the app answers 503 for it
        client.ping()
    assert time.monotonic() - started >= 0.3  # it waited for one to come back
    client.connection_pool.release(held[0])
    assert client.ping() is True


def test_unique_consumer_names_differ() -> None:
    names = {stream.unique_consumer_name() for _ in range(20)}
    assert len(names) == 20


# --- producer -----------------------------------------------------------------------------


def test_add_appends_one_entry_with_the_fields(
    redis_client: redis.Redis, settings: Settings
) -> None:
    producer = EventStream(redis_client, settings.stream_key, max_len=1_000_000)
    first = producer.add(FIELDS)
    second = producer.add({b"other": b"\x00\xff binary"})
    assert isinstance(first, bytes)
    assert redis_client.xlen(settings.stream_key) == 2
    assert redis_client.xrange(settings.stream_key) == [
        (first, FIELDS),
        (second, {b"other": b"\x00\xff binary"}),
    ]
    assert stream._id_key(first) < stream._id_key(second)


# --- replica acknowledgement (WAIT) ---------------------------------------------------------


@pytest.fixture
def replicated(replicated_redis, settings: Settings) -> tuple[redis.Redis, redis.Redis, Settings]:
    """Clients of a primary and its replica, and settings pointing at the primary."""
    primary, replica = replicated_redis
    return (
        redis.Redis(port=primary.port),
        redis.Redis(port=replica.port),
        dataclasses.replace(settings, redis_url=primary.url, redis_wait_replicas=1),
    )


def test_with_wait_replicas_add_returns_once_the_replica_holds_the_entry(replicated) -> None:
    primary, replica, settings = replicated
    producer = EventStream.from_settings(settings)
    for i in range(50):
        entry_id = producer.add({b"i": str(i).encode(), **FIELDS})
        # Read on the replica right after add returns: no polling, WAIT made it so.
        assert replica.xrange(settings.stream_key, entry_id, entry_id) == [
            (entry_id, {b"i": str(i).encode(), **FIELDS})
        ]
    assert primary.xlen(settings.stream_key) == replica.xlen(settings.stream_key) == 50


def test_fewer_replicas_than_wanted_is_a_shortfall_after_the_timeout(replicated) -> None:
    primary, _replica, settings = replicated
    wanting_two = dataclasses.replace(settings, redis_wait_replicas=2, redis_wait_timeout_ms=200)
    producer = EventStream.from_settings(wanting_two)
    started = time.monotonic()
    with pytest.raises(stream.ReplicationShortfall) as shortfall:
        producer.add(FIELDS)
    assert time.monotonic() - started >= 0.2  # WAIT waited for the second replica
    assert (shortfall.value.confirmed, shortfall.value.wanted) == (1, 2)
    # Written, though: the caller must not call it accepted, but a retry is only a duplicate.
    assert primary.xrange(settings.stream_key) == [(shortfall.value.entry_id, FIELDS)]


def test_a_replica_that_stops_answering_makes_a_shortfall(replicated_redis, replicated) -> None:
    _primary, _replica, settings = replicated
    _, replica_server = replicated_redis
    producer = EventStream.from_settings(dataclasses.replace(settings, redis_wait_timeout_ms=300))
    producer.add(FIELDS)
    replica_server.process.send_signal(signal.SIGSTOP)
    try:
        with pytest.raises(stream.ReplicationShortfall) as shortfall:
            producer.add(FIELDS)
        assert shortfall.value.confirmed == 0
    finally:
        replica_server.process.send_signal(signal.SIGCONT)
    replica_server.wait_replicating()
    assert producer.add(FIELDS)


@pytest.mark.parametrize("bound", [{"stream_max_len": 2}, {"stream_max_bytes": 20}])
def test_with_wait_replicas_a_full_backlog_still_refuses_and_writes_nothing(
    replicated, bound: dict[str, int]
) -> None:
    """Full by entries, or by bytes (two entries of 12 bytes are past 20), and counted."""
    primary, _replica, settings = replicated
    producer = EventStream.from_settings(dataclasses.replace(settings, **bound))
    producer.add(FIELDS)
    producer.add(FIELDS)
    with pytest.raises(stream.BacklogFull):
        producer.add(FIELDS)
    assert primary.xlen(settings.stream_key) == 2
    assert held(primary, settings.stream_key) == truth(primary, settings.stream_key) == (24, 2)


def test_with_wait_replicas_a_redis_without_the_script_cached_loads_it(replicated) -> None:
    primary, replica, settings = replicated
    producer = EventStream.from_settings(settings)
    producer.add(FIELDS)
    primary.script_flush()  # as after a restart or a failover to a replica
    entry_id = producer.add(FIELDS)
    assert primary.xlen(settings.stream_key) == 2  # written once, not twice
    assert replica.xrange(settings.stream_key, entry_id, entry_id)


def test_a_redis_without_the_script_cached_loads_it(
    redis_client: redis.Redis, settings: Settings
) -> None:
    producer = EventStream.from_settings(settings)
    producer.add(FIELDS)
    redis_client.script_flush()  # as after a restart or a failover to a replica
    producer.add(FIELDS)
    assert redis_client.xlen(settings.stream_key) == 2  # written once, not twice
    assert redis_client.script_exists(producer._add_if_room.sha) == [True]


# --- groups and reading -------------------------------------------------------------------


def test_ensure_group_creates_the_stream_and_is_idempotent(
    redis_client: redis.Redis, settings: Settings
) -> None:
    consumer = reader(redis_client, settings)
    consumer.ensure_group()
    assert redis_client.exists(settings.stream_key) == 1
    consumer.ensure_group()
    consumer.ensure_group()
    groups = redis_client.xinfo_groups(settings.stream_key)
    assert [g["name"] for g in groups] == [settings.consumer_group.encode()]


def test_ensure_group_twice_keeps_the_groups_progress(
    redis_client: redis.Redis, settings: Settings
) -> None:
    consumer = reader(redis_client, settings)
    consumer.ensure_group()
    ids = add_entries(redis_client, settings.stream_key, 3)
    consumer.read_new(2, block_ms=None)
    consumer.ensure_group()  # a second process starting must not reset the group
    assert ids_of(consumer.read_new(10, block_ms=None)) == ids[2:]


def test_entries_added_before_the_group_exists_are_delivered(
    redis_client: redis.Redis, settings: Settings
) -> None:
    ids = add_entries(redis_client, settings.stream_key, 5)
    consumer = reader(redis_client, settings)
    consumer.ensure_group()
    entries = consumer.read_new(10, block_ms=None)
    assert ids_of(entries) == ids
    assert entries[0][1][b"i"] == b"0"
    assert entries[0][1][b"d"] == b"payload"


def test_ensure_group_reraises_other_errors(redis_client: redis.Redis, settings: Settings) -> None:
    redis_client.set(settings.stream_key, "not a stream")
    with pytest.raises(redis.ResponseError):
        reader(redis_client, settings).ensure_group()


def test_read_new_respects_count_and_never_redelivers(
    redis_client: redis.Redis, settings: Settings
) -> None:
    consumer = reader(redis_client, settings)
    consumer.ensure_group()
    ids = add_entries(redis_client, settings.stream_key, 5)
    assert ids_of(consumer.read_new(2, block_ms=None)) == ids[:2]
    assert ids_of(consumer.read_new(2, block_ms=None)) == ids[2:4]
    assert ids_of(consumer.read_new(10, block_ms=None)) == ids[4:]
    assert consumer.read_new(10, block_ms=10) == []
    assert pending_ids(redis_client, settings.stream_key, settings.consumer_group) == set(ids)


def test_read_new_shares_entries_between_consumers_of_a_group(
    redis_client: redis.Redis, settings: Settings
) -> None:
    one, two = reader(redis_client, settings, "one"), reader(redis_client, settings, "two")
    one.ensure_group()
    ids = add_entries(redis_client, settings.stream_key, 4)
    got_one = ids_of(one.read_new(3, block_ms=None))
    got_two = ids_of(two.read_new(3, block_ms=None))
    assert got_one == ids[:3]
    assert got_two == ids[3:]
    assert one.read_new(3, block_ms=10) == []


def test_read_new_on_an_empty_stream_returns_an_empty_list(
    redis_client: redis.Redis, settings: Settings
) -> None:
    consumer = reader(redis_client, settings)
    consumer.ensure_group()
    assert consumer.read_new(10, block_ms=5) == []


def test_read_pending_returns_only_own_unacknowledged_entries_after_an_id(
    redis_client: redis.Redis, settings: Settings
) -> None:
    mine, theirs = reader(redis_client, settings, "mine"), reader(redis_client, settings, "theirs")
    mine.ensure_group()
    ids = add_entries(redis_client, settings.stream_key, 6)
    mine.read_new(4, block_ms=None)
    theirs.read_new(2, block_ms=None)
    assert mine.ack([ids[1]]) == 1

    pending = mine.read_pending(b"0", 10)
    assert ids_of(pending) == [ids[0], ids[2], ids[3]]
    assert pending[0][1][b"i"] == b"0"  # pending entries come back with their data
    assert ids_of(mine.read_pending(ids[0], 10)) == [ids[2], ids[3]]
    assert ids_of(mine.read_pending(ids[3], 10)) == []
    assert ids_of(mine.read_pending(b"0", 2)) == [ids[0], ids[2]]
    assert ids_of(theirs.read_pending(b"0", 10)) == ids[4:]


def test_read_pending_does_not_deliver_new_entries(
    redis_client: redis.Redis, settings: Settings
) -> None:
    consumer = reader(redis_client, settings)
    consumer.ensure_group()
    add_entries(redis_client, settings.stream_key, 3)
    assert consumer.read_pending(b"0", 10) == []
    assert len(consumer.read_new(10, block_ms=None)) == 3


def test_pending_entry_whose_data_is_gone_comes_back_without_fields(
    redis_client: redis.Redis, settings: Settings
) -> None:
    consumer = reader(redis_client, settings)
    consumer.ensure_group()
    ids = add_entries(redis_client, settings.stream_key, 2)
    consumer.read_new(10, block_ms=None)
    redis_client.xdel(settings.stream_key, ids[0])
    pending = consumer.read_pending(b"0", 10)
    assert ids_of(pending) == ids
    assert not pending[0][1]  # None or {}: no fields either way
    assert pending[1][1][b"i"] == b"1"


def test_ack(redis_client: redis.Redis, settings: Settings) -> None:
    consumer = reader(redis_client, settings)
    consumer.ensure_group()
    ids = add_entries(redis_client, settings.stream_key, 4)
    consumer.read_new(10, block_ms=None)
    assert consumer.ack([]) == 0
    assert consumer.ack(iter(ids[:2])) == 2  # any iterable
    assert consumer.ack(ids[:2]) == 0  # already acknowledged
    assert pending_ids(redis_client, settings.stream_key, settings.consumer_group) == set(ids[2:])
    assert ids_of(consumer.read_pending(b"0", 10)) == ids[2:]
    # With one group, acknowledged entries are deleted at once: the length is the backlog.
    assert redis_client.xlen(settings.stream_key) == 2


# --- claiming -----------------------------------------------------------------------------


def claim_idle(claimer: GroupReader, min_idle_ms: int) -> list[list[bytes]]:
    """What the drain loop does: every idle consumer's entries, one consumer at a time; for
    each, the IDs it moved to the claimer, in ID order (a claim returns only how many)."""
    claimed = []
    for consumer in claimer.idle_consumers(min_idle_ms):
        held_before = own_pending(claimer)
        count = claimer.claim_all_of(consumer, min_idle_ms)
        claimed.append([i for i in own_pending(claimer) if i not in held_before])
        assert count == len(claimed[-1])
    return claimed


def own_pending(consumer: GroupReader) -> list[bytes]:
    rows = consumer.client.xpending_range(
        consumer.key, consumer.group, "-", "+", 10_000, consumername=consumer.consumer
    )
    return [row["message_id"] for row in rows]


def test_claim_takes_every_entry_of_a_consumer_gone_quiet(
    redis_client: redis.Redis, settings: Settings
) -> None:
    crashed, rescuer = reader(redis_client, settings, "crashed"), reader(redis_client, settings)
    crashed.ensure_group()
    ids = add_entries(redis_client, settings.stream_key, 6)
    crashed.read_new(3, block_ms=None)
    time.sleep(0.15)
    crashed.read_new(2, block_ms=None)  # read later: younger entries, all the same owner
    time.sleep(0.25)

    [claimed] = claim_idle(rescuer, 200)

    assert claimed == ids[:5]  # IDs only: the data is read a bounded read at a time
    assert pending_ids(redis_client, settings.stream_key, settings.consumer_group, "c1") == set(
        ids[:5]
    )
    # The claim reset their idle time: nobody takes them again right away.
    assert claim_idle(reader(redis_client, settings, "third"), 200) == []
    # Read as the claimer's own pending entries, with their data; that read is the delivery.
    assert set(rescuer.delivery_counts(ids[:5]).values()) == {1}
    read_back = rescuer.read_pending(b"0", 10)
    assert ids_of(read_back) == ids[:5] and read_back[0][1][b"i"] == b"0"
    assert set(rescuer.delivery_counts(ids[:5]).values()) == {2}
    # The entry never delivered is still there for read_new.
    assert ids_of(rescuer.read_new(10, block_ms=None)) == ids[5:]


def test_claim_leaves_consumers_seen_recently(
    redis_client: redis.Redis, settings: Settings
) -> None:
    other, me = reader(redis_client, settings, "other"), reader(redis_client, settings)
    other.ensure_group()
    add_entries(redis_client, settings.stream_key, 3)
    other.read_new(2, block_ms=None)
    time.sleep(0.25)
    other.read_new(1, block_ms=None)  # still alive: it polls
    assert claim_idle(me, 200) == []
    assert (
        len(pending_ids(redis_client, settings.stream_key, settings.consumer_group, "other")) == 3
    )


def test_a_consumer_keeping_its_entries_alive_is_not_claimed_from(
    redis_client: redis.Redis, settings: Settings
) -> None:
    slow, me = reader(redis_client, settings, "slow"), reader(redis_client, settings)
    slow.ensure_group()
    ids = add_entries(redis_client, settings.stream_key, 3)
    slow.read_new(3, block_ms=None)
    time.sleep(0.25)
    assert slow.keep_pending_alive() == 3  # it reads nothing, but it is still there
    assert claim_idle(me, 200) == []
    # Its entries keep their delivery counts (they are not failing, storage is).
    assert set(slow.delivery_counts(ids).values()) == {1}
    time.sleep(0.25)  # then it really goes away
    assert claim_idle(me, 200)[0] == ids


def test_claim_ignores_acknowledged_entries_and_own_entries(
    redis_client: redis.Redis, settings: Settings
) -> None:
    other, me = reader(redis_client, settings, "other"), reader(redis_client, settings)
    other.ensure_group()
    ids = add_entries(redis_client, settings.stream_key, 4)
    other.read_new(2, block_ms=None)
    other.ack([ids[0]])
    me.read_new(1, block_ms=None)
    time.sleep(0.25)
    assert claim_idle(me, 200) == [[ids[1]]]


def test_claim_returns_one_list_per_consumer(redis_client: redis.Redis, settings: Settings) -> None:
    first, second = reader(redis_client, settings, "a"), reader(redis_client, settings, "b")
    first.ensure_group()
    ids = add_entries(redis_client, settings.stream_key, 4)
    first.read_new(2, block_ms=None)
    second.read_new(2, block_ms=None)
    time.sleep(0.25)
    claimed = claim_idle(reader(redis_client, settings), 200)
    assert sorted(claimed) == [ids[:2], ids[2:]]


# --- looking before reading ---------------------------------------------------------------


def test_pending_deliveries_lists_own_entries_after_an_id_without_reading_them(
    redis_client: redis.Redis, settings: Settings
) -> None:
    mine, theirs = reader(redis_client, settings), reader(redis_client, settings, "other")
    mine.ensure_group()
    ids = add_entries(redis_client, settings.stream_key, 5)
    mine.read_new(3, block_ms=None)
    theirs.read_new(2, block_ms=None)
    mine.read_pending(ids[0], 10)  # ids[1] and ids[2] delivered again
    assert mine.pending_deliveries(b"0", 10) == [(ids[0], 1), (ids[1], 2), (ids[2], 2)]
    assert mine.pending_deliveries(ids[0], 1) == [(ids[1], 2)]
    assert mine.pending_deliveries(ids[2], 10) == []
    assert mine.pending_deliveries(b"0", 10)[0] == (ids[0], 1)  # looking delivers nothing


def test_entry_size_is_measured_in_redis(redis_client: redis.Redis, settings: Settings) -> None:
    consumer = reader(redis_client, settings)
    consumer.ensure_group()
    [entry_id, gone_id] = add_entries(redis_client, settings.stream_key, 2)
    redis_client.xdel(settings.stream_key, gone_id)
    expected = sum(len(name) + len(value) for name, value in {b"i": b"0", **FIELDS}.items())
    assert consumer.entry_size(entry_id) == expected
    assert consumer.entry_size(gone_id) is None


def test_dead_letter_unread_copies_the_entry_inside_redis_and_acks_it(
    redis_client: redis.Redis, settings: Settings
) -> None:
    consumer = reader(redis_client, settings)
    consumer.ensure_group()
    [entry_id, other_id] = add_entries(redis_client, settings.stream_key, 2)
    consumer.read_new(10, block_ms=None)
    assert consumer.dead_letter_unread(entry_id, "too large") is True
    [(_, letter)] = redis_client.xrange(shards.dead_letter_key(settings.stream_key))
    assert letter[b"original_id"] == entry_id and letter[b"reason"] == b"too large"
    assert stream.original_fields(letter) == {b"i": b"0", **FIELDS}
    assert pending_ids(redis_client, settings.stream_key, settings.consumer_group) == {other_id}
    assert redis_client.xlen(settings.stream_key) == 1  # acknowledged, hence deleted


def test_dead_letter_unread_in_a_full_redis_drops_the_entry(tmp_path, settings: Settings) -> None:
    """Holding it would keep Redis full and stop ingest: its record in the bucket (written
    first, by the consumer) is all that is left of it."""
    server = RedisServer(free_port(), tmp_path).start()
    try:
        client = redis.Redis.from_url(server.url)
        consumer = GroupReader(client, settings.stream_key, settings.consumer_group, "c1")
        consumer.ensure_group()
        [entry_id] = add_entries(client, settings.stream_key, 1)
        consumer.read_new(1, block_ms=None)
        client.config_set("maxmemory", 1)  # full: every write that needs memory is refused
        with pytest.raises(redis.exceptions.OutOfMemoryError):
            client.xadd("filler", {b"pad": b"x"})
        assert consumer.dead_letter_unread(entry_id, "too large") is False
        assert client.xlen(settings.stream_key) == 0
        assert not client.exists(shards.dead_letter_key(settings.stream_key))
    finally:
        server.kill()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    started = LocalCluster(free_ports(3), tmp_path_factory.mktemp("cluster")).start()
    yield started
    started.kill()


@pytest.mark.parametrize("shard_count, kept", [(1, False), (2, True)])
def test_on_a_cluster_dead_letter_unread_keeps_the_data_where_one_script_reaches_it(
    cluster: LocalCluster, settings: Settings, shard_count: int, kept: bool
) -> None:
    """A shard's dead-letter stream shares its slot; STREAM_KEY's own does not, and a script
    reaches one slot: there the letter says the data was dropped."""
    on_cluster = dataclasses.replace(
        settings, redis_url=cluster.url, redis_cluster=True, stream_shards=shard_count
    )
    client = stream.connect(on_cluster)
    key = shards.shard_keys(settings.stream_key, shard_count)[0]
    consumer = GroupReader(client, key, settings.consumer_group, "c1")
    consumer.ensure_group()
    entry_id = EventStream(client, key, max_len=10).add(FIELDS)
    consumer.read_new(1, block_ms=None)
    assert consumer.dead_letter_unread(entry_id, "too large") is kept
    [(_, letter)] = client.xrange(shards.dead_letter_key(key))
    assert letter[b"original_id"] == entry_id
    assert stream.original_fields(letter) == (FIELDS if kept else {})
    assert client.xlen(key) == 0


# --- dead letters -------------------------------------------------------------------------


def test_dead_letter_moves_the_entry_aside_and_acks_it(
    redis_client: redis.Redis, settings: Settings
) -> None:
    consumer = reader(redis_client, settings)
    consumer.ensure_group()
    ids = add_entries(redis_client, settings.stream_key, 2)
    [(bad_id, bad_fields), _] = consumer.read_new(10, block_ms=None)

    consumer.dead_letter(bad_id, bad_fields, "unknown entry format version b'9' ✗")

    [(_, record)] = redis_client.xrange(f"{settings.stream_key}:dead")
    assert record[b"original_id"] == bad_id
    assert record[b"reason"] == "unknown entry format version b'9' ✗".encode()
    assert {k: v for k, v in record.items() if k.startswith(b"field:")} == {
        b"field:" + name: value for name, value in bad_fields.items()
    }
    assert pending_ids(redis_client, settings.stream_key, settings.consumer_group) == {ids[1]}
    # With one group, the acknowledged original is deleted: the stream holds the backlog only.
    assert redis_client.xlen(settings.stream_key) == 1


def test_dead_letter_without_fields(redis_client: redis.Redis, settings: Settings) -> None:
    consumer = reader(redis_client, settings)
    consumer.ensure_group()
    [entry_id] = add_entries(redis_client, settings.stream_key, 1)
    consumer.read_new(10, block_ms=None)
    consumer.dead_letter(entry_id, None, "entry data is gone")
    [(_, record)] = redis_client.xrange(f"{settings.stream_key}:dead")
    assert record == {b"original_id": entry_id, b"reason": b"entry data is gone"}
    assert pending_ids(redis_client, settings.stream_key, settings.consumer_group) == set()


def test_dead_letter_that_fails_leaves_the_entry_pending(
    redis_client: redis.Redis, settings: Settings
) -> None:
    consumer = reader(redis_client, settings)
    consumer.ensure_group()
    [entry_id] = add_entries(redis_client, settings.stream_key, 1)
    consumer.read_new(10, block_ms=None)
    redis_client.set(f"{settings.stream_key}:dead", "not a stream")
    with pytest.raises(redis.ResponseError):
        consumer.dead_letter(entry_id, FIELDS, "bad")
    assert pending_ids(redis_client, settings.stream_key, settings.consumer_group) == {entry_id}


# --- trimming -----------------------------------------------------------------------------
#
# Trimming is exact (XTRIM MINID, not ~): it removes every entry below the floor and nothing
# at or above it, so the counts below are exact. Several radix-tree nodes' worth of entries
# are used so that trimming has to cut through nodes, not only drop whole ones.


def assert_kept(client: redis.Redis, key: str, needed: list[bytes]) -> None:
    remaining = set(stream_ids(client, key))
    missing = [i for i in needed if i not in remaining]
    assert not missing, f"{len(missing)} needed entries were trimmed, first {missing[0]!r}"


def xack_only(client: redis.Redis, settings: Settings, ids: list[bytes]) -> None:
    """Acknowledge without deleting, as happens while a second group exists: the history
    that trimming, not acknowledging, must clean up."""
    client.xack(settings.stream_key, settings.consumer_group, *ids)


def test_trim_removes_fully_acknowledged_history(
    redis_client: redis.Redis, settings: Settings
) -> None:
    node = node_entries(redis_client)
    key = settings.stream_key
    consumer = reader(redis_client, settings)
    consumer.ensure_group()
    ids = add_entries(redis_client, key, 3 * node + 10)
    done = 2 * node + 5
    xack_only(redis_client, settings, ids_of(consumer.read_new(done, block_ms=None)))

    removed = consumer.trim_acknowledged()

    assert removed == done
    assert redis_client.xlen(key) == len(ids) - done
    assert_kept(redis_client, key, ids[done:])
    assert ids_of(consumer.read_new(10_000, block_ms=None)) == ids[done:]


def test_trim_after_everything_is_acknowledged_keeps_nothing_needed(
    redis_client: redis.Redis, settings: Settings
) -> None:
    node = node_entries(redis_client)
    consumer = reader(redis_client, settings)
    consumer.ensure_group()
    ids = add_entries(redis_client, settings.stream_key, 3 * node)
    xack_only(redis_client, settings, ids_of(consumer.read_new(10_000, block_ms=None)))
    removed = consumer.trim_acknowledged()
    # The floor is just above the last delivered entry: all of them go.
    assert removed == len(ids)
    assert redis_client.xlen(settings.stream_key) == 0
    # A later entry is still delivered, and a second trim does not fail.
    [new_id] = add_entries(redis_client, settings.stream_key, 1)
    consumer.trim_acknowledged()
    assert ids_of(consumer.read_new(10, block_ms=None)) == [new_id]


def test_trim_never_removes_pending_entries(redis_client: redis.Redis, settings: Settings) -> None:
    node = node_entries(redis_client)
    key = settings.stream_key
    slow, fast = reader(redis_client, settings, "slow"), reader(redis_client, settings, "fast")
    slow.ensure_group()
    ids = add_entries(redis_client, key, 4 * node)
    stuck = 2 * node + 7
    slow_ids = ids_of(slow.read_new(stuck + 1, block_ms=None))
    fast_ids = ids_of(fast.read_new(node, block_ms=None))
    xack_only(redis_client, settings, slow_ids[:-1])  # slow's last one (ids[stuck]) stays pending
    xack_only(redis_client, settings, fast_ids[:-1])  # fast's last one stays pending too

    removed = fast.trim_acknowledged()

    assert removed == stuck  # everything below ids[stuck] was done with
    assert_kept(redis_client, key, ids[stuck:])
    # The pending entries still have their data, for a retry or a claim.
    [(entry_id, fields)] = slow.read_pending(b"0", 10)
    assert entry_id == ids[stuck]
    assert fields[b"i"] == str(stuck).encode()
    [(entry_id, fields)] = fast.read_pending(b"0", 10)
    assert entry_id == ids[stuck + node]
    assert fields[b"i"] == str(stuck + node).encode()


def test_trim_keeps_an_early_pending_entry_and_everything_after_it(
    redis_client: redis.Redis, settings: Settings
) -> None:
    node = node_entries(redis_client)
    key = settings.stream_key
    consumer = reader(redis_client, settings)
    consumer.ensure_group()
    ids = add_entries(redis_client, key, 3 * node)
    consumer.read_new(10_000, block_ms=None)
    xack_only(redis_client, settings, ids[:3] + ids[4:])  # ids[3] stays pending
    consumer.trim_acknowledged()
    assert_kept(redis_client, key, ids[3:])
    [(entry_id, fields)] = consumer.read_pending(b"0", 10)
    assert (entry_id, fields[b"i"]) == (ids[3], b"3")


def test_trim_never_removes_undelivered_entries(
    redis_client: redis.Redis, settings: Settings
) -> None:
    node = node_entries(redis_client)
    key = settings.stream_key
    consumer = reader(redis_client, settings)
    consumer.ensure_group()
    ids = add_entries(redis_client, key, 3 * node)
    delivered = 2 * node + 3
    xack_only(redis_client, settings, ids_of(consumer.read_new(delivered, block_ms=None)))
    assert consumer.trim_acknowledged() == delivered
    assert_kept(redis_client, key, ids[delivered:])
    assert ids_of(consumer.read_new(10_000, block_ms=None)) == ids[delivered:]


def test_trim_with_a_lagging_second_group(redis_client: redis.Redis, settings: Settings) -> None:
    node = node_entries(redis_client)
    key = settings.stream_key
    leader = reader(redis_client, settings, "a", group="leader")
    lagger = reader(redis_client, settings, "b", group="lagger")
    leader.ensure_group()
    lagger.ensure_group()
    ids = add_entries(redis_client, key, 4 * node)
    leader.ack(ids_of(leader.read_new(10_000, block_ms=None)))  # leader is done with all
    behind = 2 * node + 11
    lagger.ack(ids_of(lagger.read_new(behind, block_ms=None)))

    removed = leader.trim_acknowledged()

    assert removed == behind
    assert_kept(redis_client, key, ids[behind:])
    assert ids_of(lagger.read_new(10_000, block_ms=None)) == ids[behind:]


def test_trim_with_a_second_group_that_has_read_nothing(
    redis_client: redis.Redis, settings: Settings
) -> None:
    node = node_entries(redis_client)
    key = settings.stream_key
    leader = reader(redis_client, settings, "a", group="leader")
    leader.ensure_group()
    ids = add_entries(redis_client, key, 3 * node)
    reader(redis_client, settings, "b", group="idle").ensure_group()
    leader.ack(ids_of(leader.read_new(10_000, block_ms=None)))
    assert leader.trim_acknowledged() == 0
    assert stream_ids(redis_client, key) == ids


def test_trim_with_a_lagging_group_holding_pending_entries(
    redis_client: redis.Redis, settings: Settings
) -> None:
    node = node_entries(redis_client)
    key = settings.stream_key
    leader = reader(redis_client, settings, "a", group="leader")
    lagger = reader(redis_client, settings, "b", group="lagger")
    leader.ensure_group()
    lagger.ensure_group()
    ids = add_entries(redis_client, key, 4 * node)
    leader.ack(ids_of(leader.read_new(10_000, block_ms=None)))
    read = ids_of(lagger.read_new(3 * node, block_ms=None))
    stuck = 2 * node + 2
    lagger.ack(read[:stuck] + read[stuck + 1 :])  # ids[stuck] stays pending in the lagger

    removed = lagger.trim_acknowledged()

    assert removed > 0
    assert_kept(redis_client, key, ids[stuck:])
    [(entry_id, fields)] = lagger.read_pending(b"0", 10)
    assert (entry_id, fields[b"i"]) == (ids[stuck], str(stuck).encode())
    assert ids_of(lagger.read_new(10_000, block_ms=None)) == ids[3 * node :]


def test_trim_with_nothing_acknowledged_removes_nothing(
    redis_client: redis.Redis, settings: Settings
) -> None:
    node = node_entries(redis_client)
    consumer = reader(redis_client, settings)
    consumer.ensure_group()
    ids = add_entries(redis_client, settings.stream_key, 3 * node)
    consumer.read_new(10_000, block_ms=None)  # all delivered, none acknowledged
    assert consumer.trim_acknowledged() == 0
    assert stream_ids(redis_client, settings.stream_key) == ids


def test_trim_without_groups_removes_nothing(redis_client: redis.Redis, settings: Settings) -> None:
    ids = add_entries(redis_client, settings.stream_key, 5)
    assert reader(redis_client, settings).trim_acknowledged() == 0
    assert stream_ids(redis_client, settings.stream_key) == ids


@pytest.mark.parametrize(
    ("entry_id", "expected"),
    [(b"5-0", b"5-1"), ("17-41", b"17-42"), (b"0-0", b"0-1"), (b"1700000000000-9", None)],
)
def test_next_id(entry_id: bytes | str, expected: bytes | None) -> None:
    result = stream._next_id(entry_id)
    if expected is not None:
        assert result == expected
    assert stream._id_key(result) > stream._id_key(entry_id)


def test_id_key_orders_numerically_not_lexically() -> None:
    ids = [b"10-0", b"9-5", b"9-10", b"100-1"]
    assert sorted(ids, key=stream._id_key) == [b"9-5", b"9-10", b"10-0", b"100-1"]
    assert stream._id_key("42") == (42, 0)


def test_ack_of_more_entries_than_lua_can_unpack(redis_client: redis.Redis, settings: Settings):
    consumer = reader(redis_client, settings)
    consumer.ensure_group()
    producer = EventStream(redis_client, settings.stream_key, max_len=1_000_000)
    with redis_client.pipeline(transaction=False) as pipe:
        for i in range(10_000):
            pipe.xadd(settings.stream_key, {b"i": str(i).encode()})
        pipe.execute()
    assert producer.client.xlen(settings.stream_key) == 10_000
    ids = ids_of(consumer.read_new(10_000, block_ms=None))
    assert consumer.ack(ids) == 10_000
    assert redis_client.xlen(settings.stream_key) == 0


def test_ack_never_deletes_for_a_group_that_is_gone(redis_client: redis.Redis, settings: Settings):
    """If our group was destroyed and another remains, our ack must not delete its entries."""
    ours = reader(redis_client, settings)
    ours.ensure_group()
    ids = add_entries(redis_client, settings.stream_key, 5)
    ours.read_new(5, block_ms=None)
    redis_client.xgroup_create(settings.stream_key, "analytics", id="0")
    redis_client.xgroup_destroy(settings.stream_key, settings.consumer_group)
    assert ours.ack(ids) == 0
    assert redis_client.xlen(settings.stream_key) == 5


# --- accounting: the bytes and events the stream holds ------------------------------------
#
# The size hash must always equal what the entries really add up to (every field's name and
# value, and their `n` fields), through every path that adds or removes entries.


def held(client: redis.Redis, key: str) -> tuple[int, int]:
    """What the size hash says the stream holds: (bytes, events)."""
    size = client.hgetall(shards.size_key(key))
    return int(size.get(b"bytes", 0)), int(size.get(b"events", 0))


def truth(client: redis.Redis, key: str) -> tuple[int, int]:
    """What the stream's entries add up to, counted from their fields."""
    entries = client.xrange(key)
    return (
        sum(len(name) + len(value) for _, fields in entries for name, value in fields.items()),
        sum(int(fields[b"n"]) for _, fields in entries),
    )


def add_sized(client: redis.Redis, key: str, count: int, max_bytes: int = 1 << 40) -> list:
    """Entries of different sizes and event counts, the ingest way."""
    producer = EventStream(client, key, max_len=1_000_000, max_bytes=max_bytes)
    return [
        producer.add({b"v": b"1", b"n": b"%d" % (i % 7 + 1), b"d": b"x" * (100 + 37 * i)})
        for i in range(count)
    ]


def assert_exact(client: redis.Redis, key: str) -> None:
    assert held(client, key) == truth(client, key)
    # One ledger record per entry, under its ID.
    assert [i for i, _ in client.xrange(shards.ledger_key(key))] == stream_ids(client, key)


def assert_nothing_held(client: redis.Redis, key: str) -> None:
    assert client.xlen(key) == 0
    assert not client.exists(shards.size_key(key), shards.ledger_key(key))


@pytest.fixture
def consumer(redis_client: redis.Redis, settings: Settings) -> GroupReader:
    """A consumer of the test's stream, its group created."""
    grouped = reader(redis_client, settings)
    grouped.ensure_group()
    return grouped


def test_add_counts_each_entrys_bytes_and_events(redis_client: redis.Redis, settings) -> None:
    key = settings.stream_key
    ids = add_sized(redis_client, key, 20)
    assert held(redis_client, key) == truth(redis_client, key)
    assert truth(redis_client, key)[1] == sum(i % 7 + 1 for i in range(20)) > 0
    [(_, record)] = redis_client.xrange(shards.ledger_key(key), ids[0], ids[0])
    assert record == {b"b": b"%d" % (1 + 1 + 1 + 1 + 1 + 100), b"n": b"1"}  # v, n, d
    assert_exact(redis_client, key)


def test_the_accounting_keys_share_the_stream_keys_slot() -> None:
    for key in ["events", "events-1a2b", *shards.shard_keys("events", 6)]:
        slots = {shards.slot_of(k) for k in stream.accounting_keys(key)}
        assert slots == {shards.slot_of(key)}, key
    # A shard's hash tag already puts its companions beside it; a plain key becomes the tag.
    assert shards.size_key("events:{0.2752}") == "events:{0.2752}:size"
    assert shards.ledger_key("events") == "{events}:ledger"


def test_admission_by_bytes_refuses_once_the_bytes_reach_the_bound(
    redis_client: redis.Redis, settings: Settings, consumer: GroupReader
) -> None:
    key = settings.stream_key
    entry = {b"v": b"1", b"n": b"1", b"d": b"x" * 1000}  # 1,005 bytes: names and values
    producer = EventStream(redis_client, key, max_len=1_000_000, max_bytes=5_000)
    for _ in range(5):  # 4 entries hold 4,020 bytes, below the bound: the fifth is admitted
        producer.add(entry)
    assert held(redis_client, key) == (5_025, 5) and producer.is_full()
    with pytest.raises(stream.BacklogFull, match="5000 bytes"):
        producer.add({b"v": b"1", b"n": b"1", b"d": b""})  # even a tiny one
    assert redis_client.xlen(key) == 5 and held(redis_client, key) == (5_025, 5)
    consumer.ack(ids_of(consumer.read_new(1, block_ms=None)))
    assert not producer.is_full()
    producer.add(entry)  # room again
    assert_exact(redis_client, key)


def test_one_group_ack_and_dead_letter_subtract_exactly(
    redis_client: redis.Redis, settings: Settings, consumer: GroupReader
) -> None:
    key = settings.stream_key
    ids = add_sized(redis_client, key, 30)
    read = consumer.read_new(30, block_ms=None)
    consumer.ack(ids[3:10])
    assert_exact(redis_client, key)
    consumer.ack(ids[3:10])  # again: nothing is subtracted twice
    assert_exact(redis_client, key)
    bad_id, bad_fields = read[12]
    consumer.dead_letter(bad_id, bad_fields, "poison")
    assert_exact(redis_client, key)
    assert redis_client.xlen(key) == 30 - 7 - 1
    consumer.ack(ids)
    assert_nothing_held(redis_client, key)
    # And counting starts over from zero.
    add_sized(redis_client, key, 3)
    assert_exact(redis_client, key)


def test_entries_of_no_events_or_no_bytes_are_removed_too(
    redis_client: redis.Redis, settings: Settings, consumer: GroupReader
) -> None:
    """An entry without an `n` field (not ingest's: a poison one) adds bytes and no events."""
    key = settings.stream_key
    producer = EventStream(redis_client, key, max_len=1_000_000)
    poison = producer.add({b"v": b"99", b"d": b"junk"})
    counted = add_sized(redis_client, key, 2)
    consumer.read_new(10, block_ms=None)
    consumer.dead_letter(poison, {b"v": b"99", b"d": b"junk"}, "unknown format")
    assert_exact(redis_client, key)
    consumer.ack(counted)
    assert_nothing_held(redis_client, key)


def test_two_groups_trim_subtracts_exactly(
    redis_client: redis.Redis, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(stream.ledger, "TRIM_CHUNK", 7)  # several chunks per trim
    key = settings.stream_key
    leader = reader(redis_client, settings, "a", group="leader")
    lagger = reader(redis_client, settings, "b", group="lagger")
    leader.ensure_group()
    lagger.ensure_group()
    ids = add_sized(redis_client, key, 60)
    leader.ack(ids_of(leader.read_new(60, block_ms=None)))
    assert_exact(redis_client, key)  # acknowledged by one group only: all still held
    read = lagger.read_new(50, block_ms=None)
    lagger.ack(ids_of(read[:20]))
    lagger.dead_letter(*read[20], "poison")
    lagger.ack(ids_of(read[21:45]))  # read[45:50] stay pending, ids[50:] undelivered
    assert leader.trim_acknowledged() == 45
    assert_exact(redis_client, key)
    assert stream_ids(redis_client, key) == ids[45:]
    lagger.ack(ids_of(read[45:]) + ids_of(lagger.read_new(10, block_ms=None)))
    assert lagger.trim_acknowledged() == 15
    assert_nothing_held(redis_client, key)


def test_entries_written_before_the_ledger_are_not_counted(
    redis_client: redis.Redis, settings: Settings, consumer: GroupReader
) -> None:
    """An entry appended by an older release has no ledger record: it is not counted, and
    removing it subtracts nothing, so the counters under-count until it is gone."""
    key = settings.stream_key
    legacy = redis_client.xadd(key, {b"v": b"1", b"n": b"4", b"d": b"old" * 100})
    counted = add_sized(redis_client, key, 5)
    assert held(redis_client, key) == (
        truth(redis_client, key)[0] - (1 + 1 + 1 + 1 + 1 + 300),
        truth(redis_client, key)[1] - 4,
    )
    consumer.read_new(10, block_ms=None)
    consumer.ack([legacy])
    assert_exact(redis_client, key)
    consumer.ack(counted)
    assert_nothing_held(redis_client, key)


def test_counters_that_went_wrong_heal_once_the_stream_is_empty(
    redis_client: redis.Redis, settings: Settings, consumer: GroupReader
) -> None:
    key = settings.stream_key
    ids = add_sized(redis_client, key, 4)
    redis_client.hset(shards.size_key(key), mapping={"bytes": 10**12, "events": 7})
    consumer.read_new(10, block_ms=None)
    consumer.ack(ids)
    assert_nothing_held(redis_client, key)
    # A stream emptied around the scripts (XTRIM by hand): the next add starts over.
    add_sized(redis_client, key, 2)
    redis_client.xtrim(key, maxlen=0)
    add_sized(redis_client, key, 3)
    assert_exact(redis_client, key)


def test_at_maxmemory_acknowledging_still_frees_and_subtracts(tmp_path, settings) -> None:
    """Redis refuses a script's first write at maxmemory, never a later one: the ack and
    trim scripts (whose first writes free memory) still run, and still subtract."""
    server = RedisServer(free_port(), tmp_path, "--maxmemory", "3mb").start()
    try:
        client = redis.Redis.from_url(server.url)
        key = settings.stream_key
        consumer, other = (GroupReader(client, key, group, "c1") for group in ("archiver", "bi"))
        consumer.ensure_group()
        other.ensure_group()
        producer = EventStream(client, key, max_len=1_000_000, max_bytes=1 << 40)

        def fill_until_refused() -> None:
            with pytest.raises(redis.ResponseError, match="maxmemory"):
                for _ in range(1000):
                    producer.add({b"v": b"1", b"n": b"2", b"d": b"x" * 20_000})
            assert_exact(client, key)  # the refused one is neither in the stream nor counted

        fill_until_refused()  # two groups: acknowledged entries go by trimming
        for reader_ in (consumer, other):
            reader_.ack(ids_of(reader_.read_new(1000, block_ms=None)))
        assert_exact(client, key)
        assert consumer.trim_acknowledged() > 0
        assert_nothing_held(client, key)

        client.xgroup_destroy(key, "bi")
        fill_until_refused()  # one group: acknowledging deletes
        read = consumer.read_new(1000, block_ms=None)
        consumer.ack(ids_of(read[:5]))
        assert_exact(client, key)
        consumer.ack(ids_of(read[5:]))
        assert_nothing_held(client, key)
    finally:
        server.kill()
