"""A deletion carried out over every place events are stored: raw NDJSON and Parquet objects,
compacted hours, the quarantine, old object versions, dead letters (bucket and Redis) and the
live stream; a linked anonymous ID followed one level; every other event kept exactly once."""

from __future__ import annotations

import dataclasses
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import redis

from shared import codec, stream
from shared.archive import naming
from shared.archive.compaction import Compactor
from shared.archive.partitions import parse_hour
from shared.archive.privacy.deletion import Deletion
from shared.archive.privacy.finder import LocalFinder
from shared.archive.privacy.store import RegulationStore
from shared.archive.storage import ObjectStore
from shared.settings import Settings
from tests.archives import ev, objects, write_ndjson, write_parquet
from tests.functions.consumer.drains import Budget, make_drainer
from tests.shared.archive.privacy.bucket import (
    LINKED,
    SUBJECT,
    Writes,
    decoded,
    everything_stored,
    users,
)


def events_of(day: int, hour: int, prefix: str) -> list[dict[str, Any]]:
    at = f"2024-03-0{day}T{hour:02d}:1{day}:00.000Z"
    return [
        ev(f"{prefix}-1", at, "Viewed", SUBJECT),
        ev(f"{prefix}-2", at, "Viewed", "bob"),
        ev(f"{prefix}-3", at, "Viewed", "carol"),
        ev(f"{prefix}-4", at, "Viewed", None, anonymousId=LINKED),  # before login: deleted
        ev(f"{prefix}-5", at, "Viewed", "bob", anonymousId=LINKED),  # a shared device: kept
    ]


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return dataclasses.replace(settings, suppression_reload_s=0.05)


@pytest.fixture
def store(s3: Any, settings: Settings) -> ObjectStore:
    s3.put_bucket_versioning(
        Bucket=settings.s3_bucket, VersioningConfiguration={"Status": "Enabled"}
    )
    return ObjectStore(s3, settings.s3_bucket)


def seed(settings: Settings, store: ObjectStore, client: redis.Redis) -> None:
    prefix = settings.s3_prefix
    login = ev("login", "2024-03-04T09:00:00.000Z", "Logged In", SUBJECT, anonymousId=LINKED)
    write_ndjson(store, prefix, [(b"1709542800000-0", [login, *events_of(4, 9, "a")])])
    others = [e for e in events_of(4, 9, "o") if e["userId"] == "carol"]  # in a rewritten hour
    write_ndjson(store, prefix, [(b"1709542800002-0", others)])
    write_parquet(store, prefix, [(b"1709632800000-0", events_of(5, 10, "b"))])
    write_ndjson(store, prefix, [(b"1709719200000-0", events_of(6, 10, "c"))])
    Compactor(settings, store, client).compact([parse_hour("2024-03-06T10")])
    # an object rewritten again later: its old version holds the subject too
    write_ndjson(store, prefix, [(b"1709632800001-0", events_of(5, 11, "d"))])
    write_ndjson(store, prefix, [(b"1709632800001-0", events_of(5, 11, "d"))])
    # events a tracking plan quarantined, in both formats
    quarantine = prefix + naming.QUARANTINE_ROOT
    write_ndjson(store, quarantine, [(b"1709632800005-0", events_of(5, 14, "q"))])
    write_parquet(store, quarantine, [(b"1709632800006-0", events_of(5, 15, "r"))])
    letter_fields = codec.encode_entry(events_of(5, 12, "e"))
    key, body = naming.error_object(b"1709640000000-0", letter_fields, "poison")
    store.put(key, body, "application/json")
    dead_fields = codec.encode_entry(events_of(5, 13, "f"))
    stream.dead_letters.append(
        client, settings.stream_key, b"1709643600000-0", dead_fields, "poison", 100
    )


def test_a_deletion_leaves_no_trace_of_the_subject_and_every_other_event_once(
    s3: Any, settings: Settings, store: ObjectStore, redis_client: redis.Redis
) -> None:
    seed(settings, store, redis_client)
    producer = stream.EventStream(redis_client, settings.stream_key, 1000)
    producer.add(codec.encode_entry(events_of(7, 9, "g")))  # in the stream, not archived yet
    before = everything_stored(s3, settings, redis_client)
    assert SUBJECT.encode() in before and LINKED.encode() in before
    counts = users(store, settings)

    regulations = RegulationStore(store, settings.s3_prefix)
    accepted = regulations.accept(
        redis_client,
        settings.stream_key,
        regulation_type="DELETE_ONLY",
        subject_type="USER_ID",
        subject_ids=[SUBJECT],
    )
    later = datetime.now(UTC) + timedelta(seconds=1)
    deletion = Deletion(
        settings,
        store,
        redis_client,
        lambda: LocalFinder(store, settings.s3_prefix),
        clock=lambda: later,
    )
    held = {key: decoded(key, body) for key, body in objects(s3, settings.s3_bucket).items()}
    writes = Writes(s3)
    first = deletion.run()
    assert first.finished == [] and any("not archived yet" in w for w in first.waiting)
    assert regulations.get(accepted.id).state == "running"

    make_drainer(settings, s3).drain(Budget(5))  # the consumer drops the subject's events
    second = deletion.run()
    assert second.finished == [accepted.id], second.waiting
    # Only objects that held a subject's events were written again (the pass's own records
    # under _privacy/ aside); an object that holds none is never rewritten.
    rewritten = {k for k in writes.keys if k in held and not k.startswith(f"{settings.s3_prefix}_")}
    assert rewritten and all(
        SUBJECT.encode() in held[k] or LINKED.encode() in held[k] for k in rewritten
    )
    untouched = [
        k for k in held if SUBJECT.encode() not in held[k] and LINKED.encode() not in held[k]
    ]
    assert any("1709542800002-0" in k for k in untouched) and not set(untouched) & rewritten

    after = everything_stored(s3, settings, redis_client)
    assert SUBJECT.encode() not in after
    # The quarantine was rewritten too, its other events kept.
    quarantine = settings.s3_prefix + naming.QUARANTINE_ROOT
    held_apart = {k: decoded(k, b) for k, b in objects(s3, settings.s3_bucket).items()}
    held_apart = {k: v for k, v in held_apart.items() if k.startswith(quarantine)}
    assert len(held_apart) == 2 and all(b"carol" in body for body in held_apart.values())
    # The linked ID stays only on the shared device's events, under bob (counted below).
    assert after.count(LINKED.encode()) < before.count(LINKED.encode())
    expected = Counter({k: v for k, v in counts.items() if k[0] != SUBJECT and k != (None, LINKED)})
    expected[("bob", None)] += 1  # the live entry's events, archived since
    expected[("carol", None)] += 1
    expected[("bob", LINKED)] += 1
    assert users(store, settings) == expected
    done = regulations.get(accepted.id)
    assert done.state == "finished" and done.subject_ids == []
    assert done.progress["identities_linked"] == 1
    assert done.progress["events_deleted"] >= 5 and done.progress["shared_devices_kept"] >= 1
