"""Taking over a dead consumer's entries: in pages, holding neither their data nor their list,
all of one consumer's entries by one claimer, through a slow link, and dead-lettered as
before when delivered too often.

Against a real redis-server (directly, or through tests/faults/tcp_proxy.py) and moto.
"""

from __future__ import annotations

import dataclasses
import time
import tracemalloc
from collections.abc import Iterator

import pytest
import redis

from shared import stream
from tests.conftest import archived_events, archived_keys, pending_count
from tests.faults.tcp_proxy import TcpProxy
from tests.functions.consumer.drains import Budget, make_drainer, pending_of, post

MIN_IDLE_MS = 200


def dead_consumer_holding(client: redis.Redis, key: str, entries: int) -> stream.GroupReader:
    """A consumer that read `entries` small entries of `key` and went away."""
    dead = stream.GroupReader(client, key, "archiver", "dead")
    dead.ensure_group()
    for start in range(0, entries, 5000):
        pipe = client.pipeline(transaction=False)
        for _ in range(start, min(entries, start + 5000)):
            pipe.xadd(key, {b"v": b"1", b"n": b"1", b"d": b"x"})
        pipe.execute()
    assert len(dead.read_new(entries, block_ms=None)) == entries
    return dead


def peak_memory_of_taking_over(client: redis.Redis, key: str, entries: int) -> int:
    """The most Python memory a claimer holds while claiming `entries` pending entries of a
    dead consumer and then keeping them alive (both page through the pending list)."""
    dead_consumer_holding(client, key, entries)
    time.sleep(MIN_IDLE_MS / 1000 + 0.05)
    claimer = stream.GroupReader(client, key, "archiver", "claimer")
    tracemalloc.start()
    try:
        claimer.claim_all_of(b"dead", MIN_IDLE_MS)
        claimer.keep_pending_alive()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    held = client.xpending(key, "archiver")["consumers"]
    assert [(c["name"], c["pending"]) for c in held] == [(b"claimer", entries)]
    return peak


def test_taking_over_ten_times_the_entries_takes_no_more_memory(redis_client, settings):
    """Claiming used to list every pending ID in one XPENDING reply (up to 1,000,000 rows),
    and so did keeping one's own entries alive: 43 MiB of the claimer's memory for the
    100,000 entries a consumer may hold (2 x FLUSH_MAX_EVENTS). Redis pages through them
    itself now, and the claimer gets counts back."""
    few = peak_memory_of_taking_over(redis_client, f"{settings.stream_key}-few", 1_000)
    many = peak_memory_of_taking_over(redis_client, f"{settings.stream_key}-many", 10_000)
    assert many < 2 * few + 64 * 1024, (few, many)


@pytest.fixture
def slow_link(redis_server) -> Iterator[TcpProxy]:
    proxy = TcpProxy(redis_server.port)
    yield proxy
    proxy.close()


def test_a_claim_through_a_link_slower_than_the_redis_timeout_moves_every_entry(
    settings, s3, redis_client, slow_link
):
    """The claimed entries' data (about 120 KB) takes 1.2 s to cross this link, nearly five
    times REDIS_TIMEOUT_S. That alone never failed a claim, not even the single XCLAIM that
    returned all of it: redis-py's socket timeout bounds each wait for the next bytes, not a
    whole reply (see the report of issue 22). Paging keeps the claimer's memory bounded."""
    settings = dataclasses.replace(
        settings, redis_timeout_s=0.25, flush_interval_s=0.1, claim_idle_ms=MIN_IDLE_MS
    )
    ids = post(settings, redis_client, 20, per_batch=40)  # ~4 KB each
    gone = stream.GroupReader(redis_client, settings.stream_key, "archiver", "gone")
    gone.ensure_group()
    assert len(gone.read_new(20, block_ms=1)) == 20
    time.sleep(MIN_IDLE_MS / 1000 + 0.05)

    slow_link.throttle(100_000)
    through_link = dataclasses.replace(settings, redis_url=f"redis://127.0.0.1:{slow_link.port}/0")
    summary = make_drainer(through_link, s3, "claimer").drain(Budget(2))

    assert summary.entries_claimed == 20
    assert sorted(e["messageId"] for e in archived_events(s3, settings.s3_bucket)) == sorted(ids)
    assert pending_count(redis_client, settings) == 0


def test_claimed_entries_past_max_deliveries_are_dead_lettered_as_before(
    settings, s3, redis_client, monkeypatch
):
    """Claims take IDs only and never count as a delivery: what the dead consumer read too
    often is dead-lettered by its claimer, the rest archived, across several claim pages."""
    monkeypatch.setattr(stream.consumer_group, "CLAIM_PAGE", 2)
    settings = dataclasses.replace(
        settings, max_deliveries=2, flush_interval_s=0.1, claim_idle_ms=MIN_IDLE_MS
    )
    ids = post(settings, redis_client, 5, per_batch=1)
    gone = stream.GroupReader(redis_client, settings.stream_key, "archiver", "gone")
    gone.ensure_group()
    entries = gone.read_new(5, block_ms=1)
    for _ in range(2):  # the first two: delivered three times, past the limit
        gone.read_pending(b"0", 2)
    gone.read_pending(entries[1][0], 1)  # the third: twice, at its last delivery
    time.sleep(MIN_IDLE_MS / 1000 + 0.05)

    summary = make_drainer(settings, s3, "claimer").drain(Budget(1))

    assert summary.entries_claimed == 5 and summary.entries_dead_lettered == 2
    letters = redis_client.xrange(stream.dead_letter_key(settings.stream_key))
    assert [letter[b"original_id"] for _, letter in letters] == [e for e, _ in entries[:2]]
    assert all(b"delivered 4 times" in letter[b"reason"] for _, letter in letters)
    assert len(archived_keys(s3, settings.s3_bucket, "errors/")) == 2
    archived = sorted(e["messageId"] for e in archived_events(s3, settings.s3_bucket, "events/"))
    assert archived == sorted(ids[2:])
    assert pending_count(redis_client, settings) == 0


def test_one_claimer_takes_all_of_a_dead_consumers_entries_page_by_page(
    settings, redis_client, monkeypatch
):
    """Between two of its pages, another claimer finds the same dead consumer: it takes
    nothing (the first holds the lease), so the entries stay together, in their order."""
    monkeypatch.setattr(stream.consumer_group, "CLAIM_PAGE", 2)
    dead_consumer_holding(redis_client, settings.stream_key, 7)
    time.sleep(MIN_IDLE_MS / 1000 + 0.05)
    first = stream.GroupReader(redis_client, settings.stream_key, "archiver", "first")
    second = stream.GroupReader(redis_client, settings.stream_key, "archiver", "second")
    second_took = []
    one_page = first._move_pending_page

    def page_then_the_other_claimer(**kwargs):
        reply = one_page(**kwargs)
        second_took.append(second.claim_all_of(b"dead", MIN_IDLE_MS))
        return reply

    first._move_pending_page = page_then_the_other_claimer
    assert first.claim_all_of(b"dead", MIN_IDLE_MS) == 7
    assert second_took == [0, 0, 0, 0, 0]  # four pages, then the empty one
    assert pending_of(redis_client, settings, "first") == 7
    # Once it is done, its lease is gone: the next consumer to go away is claimed from at once.
    assert not redis_client.exists(f"{settings.stream_key}:claiming:dead")


def test_a_claimer_that_outlives_its_lease_stops_and_keeps_what_it_took(
    settings, redis_client, monkeypatch
):
    monkeypatch.setattr(stream.consumer_group, "CLAIM_PAGE", 2)
    dead_consumer_holding(redis_client, settings.stream_key, 5)
    time.sleep(MIN_IDLE_MS / 1000 + 0.05)
    stalled = stream.GroupReader(redis_client, settings.stream_key, "archiver", "stalled")
    one_page = stalled._move_pending_page

    def page_then_stall(**kwargs):
        reply = one_page(**kwargs)
        time.sleep(MIN_IDLE_MS / 1000 + 0.05)  # its lease ends meanwhile
        return reply

    stalled._move_pending_page = page_then_stall
    assert stalled.claim_all_of(b"dead", MIN_IDLE_MS) == 2
    assert pending_of(redis_client, settings, "stalled") == 2
    assert pending_of(redis_client, settings, "dead") == 3  # for the next claimer
