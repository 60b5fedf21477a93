"""The drain loop in process, against a real redis-server and moto's in-process S3."""

from __future__ import annotations

import base64
import dataclasses
import gc
import io
import json
import time
from concurrent.futures import ThreadPoolExecutor

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import redis

from functions.consumer.drain import Drainer, _Run
from functions.consumer.sizing import READ_COUNT, buffering_share, read_count
from local.redis_server import RedisServer
from shared import codec, events, stream
from shared.archive import columns, reading
from shared.settings import Settings
from tests.conftest import archived_events, archived_keys, free_port, pending_count
from tests.functions.consumer.drains import (
    Budget,
    break_storage,
    make_drainer,
    pending_of,
    post,
    wait_until_pending,
)


def test_drains_everything_acks_and_partitions(settings, s3, redis_client):
    ids = post(settings, redis_client, 10)
    summary = make_drainer(settings, s3).drain(Budget(2))

    archived = archived_events(s3, settings.s3_bucket)
    assert sorted(e["messageId"] for e in archived) == sorted(ids)
    assert summary.entries_read == 10 and summary.events_archived == 30
    assert summary.objects_written == len(archived_keys(s3, settings.s3_bucket)) >= 1
    assert pending_count(redis_client, settings) == 0
    hour = archived[0]["receivedAt"]
    for key in archived_keys(s3, settings.s3_bucket):
        assert key.startswith(f"events/dt={hour[:10]}/hour={hour[11:13]}/")
        assert key.endswith(".ndjson.gz")


def test_entries_written_before_the_group_exists_are_archived(settings, s3, redis_client):
    ids = post(settings, redis_client, 2)
    assert not redis_client.xinfo_groups(settings.stream_key)
    make_drainer(settings, s3).drain(Budget(1.5))
    assert len(archived_events(s3, settings.s3_bucket)) == len(ids)


def test_flush_cuts_on_event_count(settings, s3, redis_client):
    settings = dataclasses.replace(
        settings, flush_max_events=6, flush_interval_s=60, claim_idle_ms=120_000
    )
    post(settings, redis_client, 7)  # 21 events → cuts after 6, 12, 18, then the rest at the end
    make_drainer(settings, s3).drain(Budget(1.5))
    sizes = [
        len(archived_events(s3, settings.s3_bucket, key))
        for key in archived_keys(s3, settings.s3_bucket)
    ]
    assert sorted(sizes) == [3, 6, 6, 6]


def test_flush_cuts_on_bytes(settings, s3, redis_client):
    settings = dataclasses.replace(
        settings, flush_max_bytes=1, flush_interval_s=60, claim_idle_ms=120_000
    )
    post(settings, redis_client, 4)
    make_drainer(settings, s3).drain(Budget(1.5))
    assert len(archived_keys(s3, settings.s3_bucket)) == 4


def test_flush_on_age_while_budget_lasts(settings, s3, redis_client):
    settings = dataclasses.replace(settings, flush_max_events=10_000, flush_interval_s=0.2)
    post(settings, redis_client, 1)
    drainer = make_drainer(settings, s3)
    budget = Budget(5)
    remaining_at_store = []
    original_put = drainer.store.put

    def put(key, body, content_type):
        remaining_at_store.append(budget())
        original_put(key, body, content_type)

    drainer.store.put = put
    drainer.drain(budget)
    # One object, stored by the age hint while most of the budget was left, not at the end.
    assert len(remaining_at_store) == 1
    assert remaining_at_store[0] > 2500
    assert len(archived_keys(s3, settings.s3_bucket)) == 1


def test_returns_before_its_budget_ends(settings, s3, redis_client):
    post(settings, redis_client, 3)
    budget = Budget(2)
    make_drainer(settings, s3).drain(budget)
    assert budget() > 0
    assert pending_count(redis_client, settings) == 0


def test_storage_outage_acknowledges_nothing_then_recovers(settings, s3, redis_client):
    ids = post(settings, redis_client, 5)
    drainer = make_drainer(settings, s3)
    restore_storage = break_storage(drainer)
    summary = drainer.drain(Budget(1))
    assert summary.store_failures >= 1 and summary.events_archived == 0
    assert pending_count(redis_client, settings) == 5
    assert archived_keys(s3, settings.s3_bucket) == []

    restore_storage()
    summary = drainer.drain(Budget(1.5))  # first re-reads its own pending entries
    assert summary.entries_read == 5
    assert sorted(e["messageId"] for e in archived_events(s3, settings.s3_bucket)) == sorted(ids)
    assert pending_count(redis_client, settings) == 0


def test_retried_flush_overwrites_the_same_objects(settings, s3, redis_client):
    """A crash between storing and acknowledging: the next consumer claims the entries and
    writes exactly the same keys, so the archive holds each event once."""
    post(settings, redis_client, 8)
    first = make_drainer(settings, s3, "first")
    first.reader.ack = lambda ids: 0  # dies before XACK
    first.drain(Budget(1))
    keys_before = archived_keys(s3, settings.s3_bucket)
    assert keys_before and pending_count(redis_client, settings) == 8

    time.sleep(settings.claim_idle_ms / 1000 + 0.1)
    summary = make_drainer(settings, s3, "second").drain(Budget(1.5))
    assert summary.entries_claimed == 8
    assert archived_keys(s3, settings.s3_bucket) == keys_before
    assert len(archived_events(s3, settings.s3_bucket)) == 24
    assert pending_count(redis_client, settings) == 0


def test_does_not_claim_entries_of_a_live_consumer(settings, s3, redis_client):
    post(settings, redis_client, 2)
    reader = stream.GroupReader(redis_client, settings.stream_key, "archiver", "busy")
    reader.ensure_group()
    assert len(reader.read_new(10, block_ms=1)) == 2  # read just now, not idle
    summary = make_drainer(settings, s3, "other").drain(Budget(1))
    assert summary.entries_claimed == 0
    assert pending_count(redis_client, settings) == 2


def test_a_consumer_retrying_through_a_long_storage_outage_is_not_claimed_from(
    settings, s3, redis_client
):
    """Slow is not dead: for several CLAIM_IDLE_MS the first consumer cannot store its flush,
    while a second one, with working storage, keeps looking for consumers that went away."""
    ids = post(settings, redis_client, 5)
    slow = make_drainer(settings, s3, "slow")
    slow.sleep = time.sleep  # really waits between retries, as in production
    restore_storage = break_storage(slow)
    outage_s = 4 * settings.claim_idle_ms / 1000
    with ThreadPoolExecutor(1) as pool:
        retrying = pool.submit(slow.drain, Budget(outage_s))
        wait_until_pending(redis_client, settings, "slow", 5)
        other = make_drainer(settings, s3, "other").drain(Budget(outage_s - 0.5))
        held_at_the_end = pending_of(redis_client, settings, "slow")
        summary = retrying.result()
    assert summary.store_failures >= 4 and summary.events_archived == 0
    assert other.entries_claimed == 0 and held_at_the_end == 5
    restore_storage()
    slow.drain(Budget(1.5))
    archived = [e["messageId"] for e in archived_events(s3, settings.s3_bucket)]
    assert sorted(archived) == sorted(ids)  # each once
    assert pending_count(redis_client, settings) == 0


def test_a_consumer_gone_during_a_storage_outage_is_still_claimed_from(settings, s3, redis_client):
    """The other side of the rule above: keeping entries alive stops when the consumer does."""
    ids = post(settings, redis_client, 5)
    gone = make_drainer(settings, s3, "gone")
    break_storage(gone)
    gone.drain(Budget(0.5))  # gave up, holding the entries; then nothing more from it
    assert pending_of(redis_client, settings, "gone") == 5
    time.sleep(settings.claim_idle_ms / 1000 + 0.1)
    summary = make_drainer(settings, s3, "other").drain(Budget(1.5))
    assert summary.entries_claimed == 5
    assert sorted(e["messageId"] for e in archived_events(s3, settings.s3_bucket)) == sorted(ids)


@pytest.mark.parametrize(
    "fields",
    [
        {b"v": b"99", b"d": b""},
        {b"v": codec.FORMAT_VERSION, b"d": b"\xc1garbage"},
        {b"v": codec.FORMAT_VERSION, b"d": codec.encode_entry([{"type": "track"}])[b"d"]},
    ],
    ids=["unknown-version", "not-msgpack", "no-receivedAt"],
)
def test_poison_entry_is_dead_lettered_and_the_rest_archived(settings, s3, redis_client, fields):
    ids = post(settings, redis_client, 1)
    poison_id = redis_client.xadd(settings.stream_key, fields)
    ids += post(settings, redis_client, 1)

    summary = make_drainer(settings, s3).drain(Budget(1.5))
    assert summary.entries_dead_lettered == 1
    archived = archived_events(s3, settings.s3_bucket, settings.s3_prefix)
    assert sorted(e["messageId"] for e in archived) == sorted(ids)
    dead = redis_client.xrange(f"{settings.stream_key}:dead")
    assert [d[1][b"original_id"] for d in dead] == [poison_id]
    assert dead[0][1][b"field:d"] == fields[b"d"]
    [error_key] = archived_keys(s3, settings.s3_bucket, "errors/")
    assert error_key.endswith(f"/{poison_id.decode()}.json")
    record = json.loads(s3.get_object(Bucket=settings.s3_bucket, Key=error_key)["Body"].read())
    assert record["originalId"] == poison_id.decode() and record["reason"]
    assert base64.b64decode(record["fields"]["d"]) == fields[b"d"]
    assert pending_count(redis_client, settings) == 0


def test_entries_decode_with_the_collector_paused_and_it_runs_again_after(
    settings, s3, redis_client, monkeypatch
):
    """Decoding makes a few containers per event, which the cyclic collector would walk over
    and over (the NDJSON drain runs about 1.3x faster without it): staging pauses it for each
    entry, and enables it again, also when an entry is dead-lettered; dead-lettering (I/O)
    runs with it."""
    post(settings, redis_client, 1)
    redis_client.xadd(settings.stream_key, {b"v": b"99", b"d": b""})
    post(settings, redis_client, 1)
    collecting_while_decoding = []
    collecting_while_dead_lettering = []
    decode_entry = codec.decode_entry
    dead_letter = _Run.dead_letter

    def recording(fields):
        collecting_while_decoding.append(gc.isenabled())
        return decode_entry(fields)

    def recording_letter(self, *args, **kwargs):
        collecting_while_dead_lettering.append(gc.isenabled())
        return dead_letter(self, *args, **kwargs)

    monkeypatch.setattr(codec, "decode_entry", recording)
    monkeypatch.setattr(_Run, "dead_letter", recording_letter)
    assert gc.isenabled()
    summary = make_drainer(settings, s3).drain(Budget(1))
    assert collecting_while_decoding == [False, False, False]
    assert collecting_while_dead_lettering == [True]
    assert gc.isenabled()
    assert summary.entries_dead_lettered == 1 and summary.events_archived == 6


def test_poison_waits_while_storage_is_down(settings, s3, redis_client):
    poison_id = redis_client.xadd(settings.stream_key, {b"v": b"99", b"d": b"x"})
    drainer = make_drainer(settings, s3)
    restore_storage = break_storage(drainer)
    drainer.drain(Budget(1))
    assert not redis_client.exists(f"{settings.stream_key}:dead")
    assert pending_count(redis_client, settings) == 1
    restore_storage()
    drainer.drain(Budget(1))
    assert redis_client.xrange(f"{settings.stream_key}:dead")[0][1][b"original_id"] == poison_id
    assert pending_count(redis_client, settings) == 0


def test_an_entry_delivered_too_often_is_dead_lettered(settings, s3, redis_client):
    settings = dataclasses.replace(settings, max_deliveries=3)
    post(settings, redis_client, 1)
    crashing = make_drainer(settings, s3, "crashing")
    crashing.reader.ensure_group()
    crashing.reader.read_new(10, block_ms=1)
    for _ in range(3):  # three crashed attempts, each re-reading its own pending entry
        crashing.reader.read_pending(b"0", 10)
    summary = crashing.drain(Budget(1))
    assert summary.entries_dead_lettered == 1 and summary.events_archived == 0
    [dead] = redis_client.xrange(f"{settings.stream_key}:dead")
    assert b"delivered 5 times" in dead[1][b"reason"]
    assert archived_events(s3, settings.s3_bucket, settings.s3_prefix) == []


@pytest.mark.parametrize(
    "entries, flush_max_events, invocations",
    [(2, 1000, 4), (12, 5, 5)],
    ids=["whole-buffer", "cut-mid-page"],
)
def test_a_storage_outage_does_not_make_entries_look_like_poison(
    settings, s3, redis_client, entries, flush_max_events, invocations
):
    """Each invocation during the outage re-reads the entries, which counts as a delivery.
    With a cut by the count hint mid-page, part of the page was delivered but never staged:
    every entry the consumer holds must be forgiven, not just the failed buffer."""
    settings = dataclasses.replace(
        settings,
        flush_max_events=flush_max_events,
        max_deliveries=invocations - 2,
        flush_interval_s=60,
        claim_idle_ms=120_000,
    )
    ids = post(settings, redis_client, entries, per_batch=1)
    drainer = make_drainer(settings, s3)
    restore_storage = break_storage(drainer)
    for _ in range(invocations):
        drainer.drain(Budget(0.4))
    restore_storage()
    summary = drainer.drain(Budget(1))
    assert summary.entries_dead_lettered == 0
    archived = archived_events(s3, settings.s3_bucket, settings.s3_prefix)
    assert sorted(e["messageId"] for e in archived) == sorted(ids)


def test_consumers_gone_with_nothing_pending_are_removed(settings, s3, redis_client):
    post(settings, redis_client, 1)
    gone = stream.GroupReader(redis_client, settings.stream_key, "archiver", "gone")
    gone.ensure_group()
    holding = stream.GroupReader(redis_client, settings.stream_key, "archiver", "holding")
    assert len(holding.read_new(10, block_ms=1)) == 1
    gone.read_new(10, block_ms=1)  # registers "gone", which then holds nothing
    time.sleep(settings.claim_idle_ms / 1000 + 0.1)
    summary = make_drainer(settings, s3, "live").drain(Budget(1))
    names = {c["name"] for c in redis_client.xinfo_consumers(settings.stream_key, "archiver")}
    assert b"gone" not in names and summary.consumers_removed >= 1
    # "holding" went idle too, but only after its entry was claimed can it be forgotten.
    assert summary.entries_claimed == 1


def test_acknowledged_history_is_trimmed_and_pending_is_kept(settings, s3, redis_client):
    post(settings, redis_client, 450, per_batch=1)
    make_drainer(settings, s3).drain(Budget(2))
    assert redis_client.xlen(settings.stream_key) == 0  # one group: acknowledged means gone
    post(settings, redis_client, 1)
    reader = stream.GroupReader(redis_client, settings.stream_key, "archiver", "holder")
    held = reader.read_new(10, block_ms=1)
    reader.trim_acknowledged()
    assert redis_client.xrange(settings.stream_key, min=held[0][0], max=held[0][0])


def test_a_full_redis_is_drained_and_frees_memory(settings, s3, tmp_path):
    """Redis at maxmemory refuses XADD and XGROUP CREATE; the consumer must still read,
    archive and acknowledge, or ingest would answer 503 forever."""
    server = RedisServer(free_port(), tmp_path, "--maxmemory", "3mb").start()
    try:
        settings = dataclasses.replace(settings, redis_url=server.url, stream_max_len=1_000_000)
        client = redis.Redis.from_url(server.url)
        stream.GroupReader(client, settings.stream_key, "archiver", "x").ensure_group()
        producer = stream.EventStream(client, settings.stream_key, settings.stream_max_len)
        poison_id = producer.add({b"v": b"99", b"d": b"junk"})
        stored = 0
        # Redis 6.2 wraps the refusal in a script error ("... OOM command not allowed ..."),
        # 7.x raises it as an OOM error; both say what it means: used memory > 'maxmemory'.
        with pytest.raises(redis.ResponseError, match="maxmemory"):
            while True:
                event = {"type": "track", "userId": "u", "event": "E", "pad": "x" * 20_000}
                producer.add(codec.encode_entry(events.prepare([event], events.received_at_now())))
                stored += 1
        summary = make_drainer(settings, s3).drain(Budget(2))
        assert summary.events_archived == stored
        # The poison entry came first, while Redis was full: its copy in the bucket is the
        # dead letter, and it was acknowledged rather than left to block trimming.
        assert summary.entries_dead_lettered == 1
        [error_key] = archived_keys(s3, settings.s3_bucket, "errors/")
        assert error_key.endswith(f"/{poison_id.decode()}.json")
        assert client.xlen(settings.stream_key) == 0
        small = events.prepare([{"type": "identify", "userId": "u"}], events.received_at_now())
        producer.add(codec.encode_entry(small))  # room again
    finally:
        server.kill()


def test_a_crash_during_a_background_flush_is_retried_onto_the_same_objects(
    settings, s3, redis_client
):
    """Size-hint cuts are flushed in the background while the next entries are read; a crash
    before their ack leaves both pending. Re-staged in order, the cut falls in the same place:
    the stored object is overwritten, and nothing is archived twice."""
    settings = dataclasses.replace(settings, flush_max_events=9, flush_interval_s=0.9)
    post(settings, redis_client, 10)  # 30 events: cuts after entries 3, 6, 9
    first = make_drainer(settings, s3, "first")

    def crash(ids):
        raise redis.ConnectionError("killed before XACK")

    first.reader.ack = crash
    with pytest.raises(redis.ConnectionError):
        first.drain(Budget(1))
    keys_before = set(archived_keys(s3, settings.s3_bucket))
    assert len(keys_before) == 1

    time.sleep(settings.claim_idle_ms / 1000 + 0.1)
    make_drainer(settings, s3, "second").drain(Budget(1.5))
    assert keys_before <= set(archived_keys(s3, settings.s3_bucket))
    assert len(archived_events(s3, settings.s3_bucket)) == 30
    assert pending_count(redis_client, settings) == 0


def test_claimed_entries_never_join_the_claimers_own_buffer(settings, s3, redis_client):
    """The claimer's own buffer is flushed, and acknowledged, before it claims: if it then
    died before acknowledging the claimed entries, a re-read could otherwise merge the two
    groups into a new object beside ones already stored."""
    settings = dataclasses.replace(settings, flush_interval_s=0.5, claim_idle_ms=1000)
    post(settings, redis_client, 5)
    gone = stream.GroupReader(redis_client, settings.stream_key, "archiver", "gone")
    gone.ensure_group()
    assert len(gone.read_new(5, block_ms=1)) == 5
    time.sleep(1.1)  # "gone" is now idle for longer than CLAIM_IDLE_MS
    post(settings, redis_client, 5)

    claimer = make_drainer(settings, s3, "claimer")
    with ThreadPoolExecutor(1) as flusher:
        run = _Run(claimer, Budget(5), flusher)
        run.stage(claimer.reader.read_new(10, block_ms=1))  # our own 5, buffered
        real_claim = claimer.reader.claim_all_of
        seen_at_claim = []

        def claim_all_of(consumer, min_idle_ms):
            seen_at_claim.append((len(run.buffer), run.in_flight))
            return real_claim(consumer, min_idle_ms)

        claimer.reader.claim_all_of = claim_all_of
        run.claim_if_due()
        run.wait_for_flush()

    assert seen_at_claim == [(0, None)]
    assert run.summary.entries_claimed == 5
    objects = archived_keys(s3, settings.s3_bucket)
    assert [len(archived_events(s3, settings.s3_bucket, key)) for key in objects] == [15, 15]
    assert pending_count(redis_client, settings) == 0


# --- reads bounded by bytes -----------------------------------------------------------------


def test_a_read_holds_at_most_read_max_bytes_of_the_largest_entries(settings):
    largest = codec.max_entry_bytes(settings.max_body_bytes)
    assert read_count(dataclasses.replace(settings, read_max_bytes=10 * largest + 1)) == 10
    assert read_count(dataclasses.replace(settings, read_max_bytes=largest - 1)) == 1  # at least
    assert read_count(dataclasses.replace(settings, read_max_bytes=10**12)) == READ_COUNT
    # Drainers of several shards read side by side: they share the bound.
    assert buffering_share(settings, 4).read_max_bytes == settings.read_max_bytes // 4


def bounded(settings: Settings, entries_per_read: int, **changes) -> Settings:
    """Settings whose reads take `entries_per_read` entries (small MAX_BODY_BYTES, so that
    the test's entries are large in comparison)."""
    largest = codec.max_entry_bytes(1024)
    return dataclasses.replace(
        settings, max_body_bytes=1024, read_max_bytes=entries_per_read * largest, **changes
    )


def watch_reads(drainer: Drainer, kill_above: int | None = None) -> list[list[bytes]]:
    """Record the IDs each read of the drainer returns; with `kill_above`, a read holding an
    entry larger than that raises MemoryError once Redis has delivered it, as a consumer
    killed by it would die."""
    reads: list[list[bytes]] = []
    real_read = drainer.reader._read

    def read(start, count, block_ms):
        entries = real_read(start, count, block_ms)
        reads.append([entry_id for entry_id, _ in entries])
        if kill_above is not None and any(
            codec.entry_bytes(fields or {}) > kill_above for _, fields in entries
        ):
            raise MemoryError("killed by the entry it read")
        return entries

    drainer.reader._read = read
    return reads


def test_new_own_pending_and_claimed_entries_are_read_a_bounded_read_at_a_time(
    settings, s3, redis_client
):
    settings = bounded(settings, 3)
    ids = post(settings, redis_client, 7)
    gone = stream.GroupReader(redis_client, settings.stream_key, "archiver", "gone")
    gone.ensure_group()
    assert len(gone.read_new(4, block_ms=1)) == 4
    earlier_self = stream.GroupReader(redis_client, settings.stream_key, "archiver", "c1")
    assert len(earlier_self.read_new(3, block_ms=1)) == 3  # then died
    time.sleep(settings.claim_idle_ms / 1000 + 0.1)
    ids += post(settings, redis_client, 5)

    drainer = make_drainer(settings, s3, "c1")
    reads = watch_reads(drainer)
    summary = drainer.drain(Budget(1.5))

    assert summary.entries_claimed == 4 and summary.entries_read == 12
    # Every entry staged came through a read (a claim returns no data), of 3 entries at most.
    assert sum(len(read) for read in reads) == 12
    assert max(len(read) for read in reads) == 3
    assert sorted(e["messageId"] for e in archived_events(s3, settings.s3_bucket)) == sorted(ids)
    assert pending_count(redis_client, settings) == 0


def test_an_entry_that_kills_the_consumer_is_dead_lettered_unread_past_its_limit(
    settings, s3, redis_client
):
    """A consumer dies on every read holding an entry too large for it. At their last
    delivery, the entries read with it are each tried alone and archived; it alone goes past
    MAX_DELIVERIES, and is then dead-lettered without being read again."""
    settings = bounded(settings, 4, max_deliveries=2)
    ids = post(settings, redis_client, 2)
    huge = {"type": "track", "userId": "u", "event": "Huge", "pad": "x" * settings.read_max_bytes}
    poison = codec.encode_entry(events.prepare([huge], events.received_at_now()))
    producer = stream.EventStream(redis_client, settings.stream_key, settings.stream_max_len)
    poison_id = producer.add(poison)
    ids += post(settings, redis_client, 2)

    drainer = make_drainer(settings, s3)
    reads = watch_reads(drainer, kill_above=settings.read_max_bytes)
    deaths = 0
    while deaths <= 10:
        try:
            summary = drainer.drain(Budget(1))
            break
        except MemoryError:
            deaths += 1

    assert deaths == settings.max_deliveries + 1
    assert sum(poison_id in read for read in reads) == settings.max_deliveries + 1
    assert summary.entries_dead_lettered == 1
    archived = archived_events(s3, settings.s3_bucket, settings.s3_prefix)
    assert sorted(e["messageId"] for e in archived) == sorted(ids)  # none dead-lettered with it
    [(_, letter)] = redis_client.xrange(f"{settings.stream_key}:dead")
    assert letter[b"original_id"] == poison_id
    assert stream.original_fields(letter) == poison  # copied by Redis, whole
    [error_key] = archived_keys(s3, settings.s3_bucket, "errors/")
    record = json.loads(s3.get_object(Bucket=settings.s3_bucket, Key=error_key)["Body"].read())
    assert record["fields"] == {}
    assert f"{codec.entry_bytes(poison)} bytes" in record["reason"]
    assert pending_count(redis_client, settings) == 0


def test_entries_past_their_delivery_limit_are_read_one_at_a_time(settings, s3, redis_client):
    settings = bounded(settings, 4, max_deliveries=1)
    post(settings, redis_client, 3)
    crashed = stream.GroupReader(redis_client, settings.stream_key, "archiver", "c1")
    crashed.ensure_group()
    crashed.read_new(10, block_ms=1)
    crashed.read_pending(b"0", 10)  # twice delivered: past the limit

    drainer = make_drainer(settings, s3)
    reads = watch_reads(drainer)
    summary = drainer.drain(Budget(1))

    assert summary.entries_dead_lettered == 3
    assert [len(read) for read in reads if read][:3] == [1, 1, 1]
    assert len(archived_keys(s3, settings.s3_bucket, "errors/")) == 3


# --- ARCHIVE_FORMAT=parquet -----------------------------------------------------------------


def post_stamped(
    settings: Settings, client: redis.Redis, count: int, received_at: list[str] | None = None
) -> list[dict]:
    """Write `count` entries of 3 varied events the way the ingest function does, each entry
    stamped with the next of `received_at` (cycled; now by default); return the stored events."""
    stored = []
    producer = stream.EventStream(client, settings.stream_key, settings.stream_max_len)
    for n in range(count):
        raw = [
            {"type": "track", "userId": f"u{n}", "event": "E", "properties": {"n": n, "x": 1.5}},
            {"type": "identify", "anonymousId": f"a{n}", "traits": {"name": "Zoë"}, "k": [n]},
            {"type": "page", "userId": n, "name": "Home", "context": {"ip": "10.0.0.1"}},
        ]
        stamp = received_at[n % len(received_at)] if received_at else events.received_at_now()
        batch = events.prepare(raw, stamp)
        producer.add(codec.encode_entry(batch))
        stored += batch
    return stored


def parquet_objects(s3, settings: Settings) -> dict[str, bytes]:
    return {
        key: s3.get_object(Bucket=settings.s3_bucket, Key=key)["Body"].read()
        for key in archived_keys(s3, settings.s3_bucket, settings.s3_prefix)
    }


def rows_of(bodies: dict[str, bytes]) -> pa.Table:
    tables = [pq.read_table(io.BytesIO(body)) for body in bodies.values()]
    return pa.concat_tables(tables).sort_by("message_id")


@pytest.fixture
def parquet_settings(settings: Settings) -> Settings:
    return dataclasses.replace(settings, archive_format="parquet")


def test_parquet_archives_every_event_as_the_columns_map_it(parquet_settings, s3, redis_client):
    settings = parquet_settings
    hours = ["2024-03-05T14:59:59.999Z", "2024-03-05T15:00:00.000Z"]
    stored = post_stamped(settings, redis_client, 10, hours)

    summary = make_drainer(settings, s3).drain(Budget(2))

    bodies = parquet_objects(s3, settings)
    assert summary.entries_read == 10 and summary.events_archived == 30
    assert summary.objects_written == len(bodies) == 2
    assert pending_count(redis_client, settings) == 0
    for key in bodies:
        assert key.startswith("events/parquet/dt=2024-03-05/hour=1")
        assert key.split("/")[3] in ("hour=14", "hour=15")
        assert key.endswith(".parquet")
        head = s3.head_object(Bucket=settings.s3_bucket, Key=key)
        assert head["ContentType"] == "application/vnd.apache.parquet"
    rows = rows_of(bodies)
    assert rows.schema.equals(columns.SCHEMA, check_metadata=False)
    assert rows.equals(columns.to_rows(stored).sort_by("message_id"))


def test_parquet_retried_flush_rewrites_the_same_objects_with_the_same_bytes(
    parquet_settings, s3, redis_client
):
    """A crash between storing and acknowledging: the next consumer claims the entries and
    writes the same keys with the same content."""
    settings = parquet_settings
    post_stamped(settings, redis_client, 8)
    first = make_drainer(settings, s3, "first")
    first.reader.ack = lambda ids: 0  # dies before XACK
    first.drain(Budget(1))
    before = parquet_objects(s3, settings)
    assert before and pending_count(redis_client, settings) == 8
    for key in before:  # so that an identical rewrite is told apart from no rewrite
        s3.delete_object(Bucket=settings.s3_bucket, Key=key)

    time.sleep(settings.claim_idle_ms / 1000 + 0.1)
    summary = make_drainer(settings, s3, "second").drain(Budget(1.5))
    assert summary.entries_claimed == 8
    assert parquet_objects(s3, settings) == before
    assert rows_of(before).num_rows == 24
    assert pending_count(redis_client, settings) == 0


def test_both_formats_cut_and_name_the_same_entries_alike(settings, s3, redis_client):
    """The same entries drained once per format (two groups on one stream): a count-hint cut
    falls in the same places, and the keys differ only by root and suffix."""
    settings = dataclasses.replace(
        settings, flush_max_events=6, flush_interval_s=60, claim_idle_ms=120_000
    )
    post_stamped(settings, redis_client, 7)  # 21 events: cuts after 6, 12, 18, then the rest
    drainers = {
        archive_format: make_drainer(
            dataclasses.replace(settings, archive_format=archive_format), s3, group=archive_format
        )
        for archive_format in ("ndjson", "parquet")
    }
    for drainer in drainers.values():  # both groups exist before either trims the stream
        drainer.reader.ensure_group()
    for drainer in drainers.values():
        drainer.drain(Budget(1.5))

    keys = archived_keys(s3, settings.s3_bucket, settings.s3_prefix)
    ndjson = sorted(k.removesuffix(".ndjson.gz") for k in keys if k.endswith(".ndjson.gz"))
    parquet = sorted(
        k.removeprefix("events/parquet/").removesuffix(".parquet")
        for k in keys
        if k.endswith(".parquet")
    )
    assert len(ndjson) == 4
    assert [k.removeprefix("events/") for k in ndjson] == parquet
    sizes = [
        pq.read_metadata(io.BytesIO(body)).num_rows
        for key, body in parquet_objects(s3, settings).items()
        if key.endswith(".parquet")
    ]
    assert sorted(sizes) == [3, 6, 6, 6]


def entry_json_cannot_hold() -> dict[bytes, bytes]:
    """A stream entry whose event holds a map with a nil key: MsgPack has them (a writer other
    than ingest could make one), JSON has no form for it."""
    raw = [{"type": "track", "userId": "u", "event": "Bad", "properties": {"\0key": True}}]
    fields = codec.encode_entry(events.prepare(raw, events.received_at_now()))
    fields[b"d"] = fields[b"d"].replace(b"\xa4\0key", b"\xc0")
    assert codec.decode_entry(fields)[0]["properties"] == {None: True}
    return fields


@pytest.mark.parametrize("archive_format", ["ndjson", "parquet"])
def test_an_entry_json_cannot_hold_is_dead_lettered_alone(
    archive_format, settings, s3, redis_client
):
    """An event that cannot be written fails its entry when it is staged, never the flush:
    that entry is dead-lettered, every other one archived, in either format."""
    settings = dataclasses.replace(settings, archive_format=archive_format)
    stored = post_stamped(settings, redis_client, 1)
    bad_id = redis_client.xadd(settings.stream_key, entry_json_cannot_hold())
    stored += post_stamped(settings, redis_client, 1)

    summary = make_drainer(settings, s3).drain(Budget(1.5))

    assert summary.entries_dead_lettered == 1 and summary.events_archived == 6
    [dead] = redis_client.xrange(f"{settings.stream_key}:dead")
    assert dead[1][b"original_id"] == bad_id
    assert b"cannot be written as JSON" in dead[1][b"reason"]
    bodies = parquet_objects(s3, settings).values()
    rows = [reading.decode(archive_format, body)[0] for body in bodies]
    assert (
        pa.concat_tables(rows)
        .sort_by("message_id")
        .equals(columns.to_rows(stored).sort_by("message_id"))
    )
    [error_key] = archived_keys(s3, settings.s3_bucket, "errors/")
    head = s3.head_object(Bucket=settings.s3_bucket, Key=error_key)
    assert head["ContentType"] == "application/json"
    assert pending_count(redis_client, settings) == 0
