"""The stream's status read from a real redis-server, checked against XINFO and XPENDING."""

from __future__ import annotations

import dataclasses
import time
from datetime import UTC, datetime, timedelta

import pytest
import redis
from prometheus_client.parser import text_string_to_metric_families

from shared import metrics, shards
from shared import status as status_module
from shared.settings import Settings
from shared.status import read_status
from shared.stream import EventStream, GroupReader, dead_letter_key
from tests.shared.status_inputs import A_COMPACTION_REPORT, add_aged

COMPACTION_GAUGES = {
    f"event_ingest_compaction_{name}"
    for name in ("lag_seconds", "failed_hours", "unreadable_objects", "report_age_seconds")
}


def status_of(client: redis.Redis, key: str, settings: Settings):
    return read_status(client, key, settings.stream_max_len, settings.stream_max_bytes)


def group(status, name: str):
    [found] = [g for g in status.groups if g.name == name]
    return found


def test_a_stream_that_does_not_exist_is_empty(redis_client, settings: Settings) -> None:
    status = status_of(redis_client, settings.stream_key, settings)
    assert (status.length, status.groups, status.dead_letters) == (0, (), 0)
    assert status.freshness_s == 0.0 and status.last_generated_id is None


def test_one_group_with_a_crashed_consumer(redis_client, settings: Settings) -> None:
    key = settings.stream_key
    ids = add_aged(redis_client, key, 10, age_s=60)
    crashed = GroupReader(redis_client, key, "archiver", "crashed")
    crashed.ensure_group()
    crashed.read_new(4, block_ms=None)  # then dies holding them
    alive = GroupReader(redis_client, key, "archiver", "alive")
    alive.ack([entry_id for entry_id, _ in alive.read_new(3, block_ms=None)])

    status = status_of(redis_client, key, settings)

    archiver = group(status, "archiver")
    assert (archiver.pending, archiver.undelivered, archiver.backlog_entries) == (4, 3, 7)
    assert archiver.undelivered_exact and archiver.backlog_events_exact
    assert archiver.backlog_events == 7 * 3
    assert archiver.pending == redis_client.xpending(key, "archiver")["pending"]
    assert archiver.last_delivered_id == ids[6].decode()
    assert status.last_generated_id == ids[-1].decode()
    assert status.length == redis_client.xlen(key) == 7
    # The oldest entry not acknowledged is a minute old, by Redis's clock.
    assert 59 <= archiver.freshness_s < 70 and status.freshness_s == archiver.freshness_s
    assert 59 <= archiver.oldest_pending_s < 70
    consumers = {c.name: c for c in archiver.consumers}
    assert consumers["crashed"].pending == 4 and consumers["alive"].pending == 0
    assert archiver.last_active_s is not None and archiver.last_active_s < 5


def test_two_groups_agree_with_xinfo_and_xpending(redis_client, settings: Settings) -> None:
    key = settings.stream_key
    add_aged(redis_client, key, 12, age_s=30)
    archiver = GroupReader(redis_client, key, "archiver", "a1")
    warehouse = GroupReader(redis_client, key, "warehouse", "w1")
    archiver.ensure_group()
    warehouse.ensure_group()
    archiver.read_new(5, block_ms=None)  # pending: 5, never acknowledged
    read = warehouse.read_new(12, block_ms=None)
    warehouse.ack([entry_id for entry_id, _ in read[:10]])  # pending: 2, undelivered: 0

    status = status_of(redis_client, key, settings)

    for info in redis_client.xinfo_groups(key):
        name = info["name"].decode()
        found = group(status, name)
        assert found.pending == info["pending"] == redis_client.xpending(key, name)["pending"]
        assert found.last_delivered_id == info["last-delivered-id"].decode()
        if info.get("lag") is not None:  # Redis 7 knows each group's lag
            assert found.undelivered == info["lag"]
    first, second = group(status, "archiver"), group(status, "warehouse")
    if first.undelivered_exact:
        assert first.undelivered == 7
    else:  # Redis 6.2 with two groups: an upper bound, said so
        assert first.undelivered >= 7
    assert (second.pending, second.undelivered) == (2, 0)
    assert second.backlog_entries == 2
    assert 29 <= first.freshness_s < 40 and 29 <= second.freshness_s < 40
    assert status.freshness_s == max(first.freshness_s, second.freshness_s)


def test_a_fully_acknowledged_stream_is_fresh(redis_client, settings: Settings) -> None:
    key = settings.stream_key
    add_aged(redis_client, key, 3, age_s=120)
    reader = GroupReader(redis_client, key, "archiver", "c")
    reader.ensure_group()
    reader.ack([entry_id for entry_id, _ in reader.read_new(10, block_ms=None)])
    archiver = group(
        status_of(redis_client, key, settings),
        "archiver",
    )
    assert (archiver.backlog_entries, archiver.backlog_events, archiver.freshness_s) == (0, 0, 0.0)
    assert archiver.oldest_pending_s is None


def test_a_long_backlog_estimates_its_events_from_a_sample(
    redis_client, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(status_module, "EVENT_SAMPLE", 4)
    key = settings.stream_key
    add_aged(redis_client, key, 10, age_s=5, events=2)
    GroupReader(redis_client, key, "archiver", "c").ensure_group()
    archiver = group(
        status_of(redis_client, key, settings),
        "archiver",
    )
    assert archiver.backlog_entries == 10
    assert archiver.backlog_events == 20 and not archiver.backlog_events_exact


def test_dead_letters_are_counted(redis_client, settings: Settings) -> None:
    redis_client.xadd(dead_letter_key(settings.stream_key), {b"reason": b"r"})
    redis_client.xadd(dead_letter_key(settings.stream_key), {b"reason": b"r"})
    status = status_of(redis_client, settings.stream_key, settings)
    assert status.dead_letters == 2


# --- with the ledger: entries appended by this release ------------------------------------


def add_counted(client: redis.Redis, key: str, events: list[int]) -> list[bytes]:
    """Entries appended the ingest way (so in the ledger and the size hash)."""
    producer = EventStream(client, key, max_len=1_000_000)
    return [
        producer.add({b"v": b"1", b"n": str(n).encode(), b"d": b"x" * (50 * n)}) for n in events
    ]


def entry_bytes(client: redis.Redis, key: str) -> int:
    fields = [f for _, f in client.xrange(key)]
    return sum(len(name) + len(value) for f in fields for name, value in f.items())


def test_one_groups_backlog_events_come_exact_from_the_counter(
    redis_client, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(status_module, "EVENT_SAMPLE", 4)  # a backlog longer than the sample
    key = settings.stream_key
    ids = add_counted(redis_client, key, [1, 2, 3, 4, 5, 6, 7, 8, 9, 10])
    reader = GroupReader(redis_client, key, "archiver", "c")
    reader.ensure_group()
    reader.read_new(3, block_ms=None)
    reader.ack(ids[:2])  # ids[2] pending, ids[3:] undelivered

    status = status_of(redis_client, key, settings)

    archiver = group(status, "archiver")
    assert (archiver.pending, archiver.undelivered) == (1, 7)
    assert archiver.backlog_events == sum(range(3, 11)) and archiver.backlog_events_exact
    assert status.bytes == entry_bytes(redis_client, key) > 0
    assert status.max_bytes == settings.stream_max_bytes
    assert status.last_generated_id == ids[-1].decode()
    assert archiver.last_delivered_id == ids[2].decode()


def test_freshness_is_the_oldest_undelivered_entrys_age_from_the_ledger(
    redis_client, settings: Settings
) -> None:
    key = settings.stream_key
    GroupReader(redis_client, key, "archiver", "c").ensure_group()
    add_counted(redis_client, key, [1])
    time.sleep(0.3)  # the first entry's age, by its ID
    add_counted(redis_client, key, [1])
    archiver = group(status_of(redis_client, key, settings), "archiver")
    assert archiver.undelivered == 2 and archiver.pending == 0
    assert 0.3 <= archiver.freshness_s < 10


def test_two_groups_count_events_from_the_ledger(redis_client, settings: Settings) -> None:
    key = settings.stream_key
    ids = add_counted(redis_client, key, [2, 3, 4, 5, 6])
    archiver = GroupReader(redis_client, key, "archiver", "a")
    warehouse = GroupReader(redis_client, key, "warehouse", "w")
    archiver.ensure_group()
    warehouse.ensure_group()
    warehouse.ack([entry_id for entry_id, _ in warehouse.read_new(5, block_ms=None)])
    archiver.read_new(2, block_ms=None)
    archiver.ack(ids[:1])  # ids[1] pending, ids[2:] undelivered: acknowledged ones stay

    status = status_of(redis_client, key, settings)

    assert status.length == 5 and status.bytes == entry_bytes(redis_client, key)
    first, second = group(status, "archiver"), group(status, "warehouse")
    if first.undelivered_exact:  # Redis 7 knows the group's lag
        assert first.backlog_entries == 4 and first.backlog_events == 3 + 4 + 5 + 6
    else:  # Redis 6.2 with two groups: an upper bound, so the events are an estimate
        assert first.backlog_entries >= 4 and not first.backlog_events_exact
    assert second.backlog_entries == 0 and second.backlog_events == 0


def test_entries_from_before_the_ledger_are_read_as_before(redis_client, settings) -> None:
    """An entry of an older release has no ledger record: its bytes are not counted, and the
    events, IDs and freshness come from the entries themselves until it drains."""
    key = settings.stream_key
    add_aged(redis_client, key, 1, age_s=60, events=4)
    counted = add_counted(redis_client, key, [1, 2])
    GroupReader(redis_client, key, "archiver", "c").ensure_group()

    status = status_of(redis_client, key, settings)

    archiver = group(status, "archiver")
    assert archiver.backlog_events == 4 + 1 + 2 and archiver.backlog_events_exact
    assert 59 <= archiver.freshness_s < 70  # the legacy entry's age
    legacy_bytes = sum(len(n) + len(v) for n, v in redis_client.xrange(key)[0][1].items())
    assert status.bytes == entry_bytes(redis_client, key) - legacy_bytes
    assert status.last_generated_id == counted[-1].decode()


def test_the_compaction_report_is_one_key_that_expires_and_metrics_read_it(
    redis_client, settings: Settings
) -> None:
    def gauges() -> dict[str, float]:
        collector = metrics.StreamCollector(lambda: redis_client, settings)
        text = metrics.exposition(collector).decode()
        families = text_string_to_metric_families(text)
        found = {s.name: s.value for f in families for s in f.samples}
        return {name: v for name, v in found.items() if name in COMPACTION_GAUGES}

    before = set(redis_client.keys(f"{settings.stream_key}*"))
    assert status_module.read_compaction_report(redis_client, settings.stream_key) is None
    assert gauges() == {}  # no run reported

    a_minute_ago = (datetime.now(UTC) - timedelta(minutes=1)).isoformat(timespec="seconds")
    report = dataclasses.replace(A_COMPACTION_REPORT, finished_at=a_minute_ago)
    status_module.write_compaction_report(redis_client, settings.stream_key, report)

    key = shards.compaction_report_key(settings.stream_key)
    assert set(redis_client.keys(f"{settings.stream_key}*")) - before == {key.encode()}
    assert 0 < redis_client.ttl(key) <= status_module.COMPACTION_REPORT_TTL_S
    read = status_module.read_compaction_report(redis_client, settings.stream_key)
    assert read == report
    assert 60 <= read.age_s() < 120
    found = gauges()
    assert found["event_ingest_compaction_lag_seconds"] == 5400.0
    assert found["event_ingest_compaction_failed_hours"] == 1
    assert found["event_ingest_compaction_unreadable_objects"] == 1
    assert 60 <= found["event_ingest_compaction_report_age_seconds"] < 120
