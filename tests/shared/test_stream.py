"""Redis Streams access against a real redis-server: add, read, ack, claim, dead-letter, trim."""

from __future__ import annotations

import dataclasses
import signal
import time

import pytest
import redis

from shared import stream
from shared.settings import Settings
from shared.stream import EventStream, GroupReader

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


def test_with_wait_replicas_a_full_backlog_still_refuses_and_writes_nothing(replicated) -> None:
    primary, _replica, settings = replicated
    producer = EventStream.from_settings(dataclasses.replace(settings, stream_max_len=2))
    producer.add(FIELDS)
    producer.add(FIELDS)
    with pytest.raises(stream.BacklogFull):
        producer.add(FIELDS)
    assert primary.xlen(settings.stream_key) == 2


def test_with_wait_replicas_a_redis_without_the_script_cached_loads_it(replicated) -> None:
    primary, replica, settings = replicated
    producer = EventStream.from_settings(settings)
    producer.add(FIELDS)
    primary.script_flush()  # as after a restart or a failover to a replica
    entry_id = producer.add(FIELDS)
    assert primary.xlen(settings.stream_key) == 2  # written once, not twice
    assert replica.xrange(settings.stream_key, entry_id, entry_id)


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


def claim_idle(claimer: GroupReader, min_idle_ms: int) -> list[list[tuple]]:
    """What the drain loop does: every idle consumer's entries, one consumer at a time."""
    return [
        claimer.claim_all_of(consumer, min_idle_ms)
        for consumer in claimer.idle_consumers(min_idle_ms)
    ]


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

    assert ids_of(claimed) == ids[:5]
    assert claimed[0][1][b"i"] == b"0"  # with their data
    assert pending_ids(redis_client, settings.stream_key, settings.consumer_group, "c1") == set(
        ids[:5]
    )
    # The claim reset their idle time: nobody takes them again right away.
    assert claim_idle(reader(redis_client, settings, "third"), 200) == []
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
    assert ids_of(claim_idle(me, 200)[0]) == ids


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
    assert [ids_of(group) for group in claim_idle(me, 200)] == [[ids[1]]]


def test_claim_returns_one_list_per_consumer(redis_client: redis.Redis, settings: Settings) -> None:
    first, second = reader(redis_client, settings, "a"), reader(redis_client, settings, "b")
    first.ensure_group()
    ids = add_entries(redis_client, settings.stream_key, 4)
    first.read_new(2, block_ms=None)
    second.read_new(2, block_ms=None)
    time.sleep(0.25)
    claimed = claim_idle(reader(redis_client, settings), 200)
    assert sorted(ids_of(group) for group in claimed) == [ids[:2], ids[2:]]


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
