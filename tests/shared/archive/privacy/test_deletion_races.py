"""Nothing running beside a deletion brings a subject's event back: a consumer flushing entries
it read before the deletion was accepted (held up, or re-flushing a pending entry to the key
the pass rewrote), a compaction of an hour with late objects (killed midway, or holding the
hour while the pass runs), a dead letter redriven while the deletion is pending; and
`event-ingest query` hides the subjects from the moment the deletion is accepted.

Real parts: the consumer's drain loop on a real redis-server, the real compactor, moto's S3
(a versioned bucket: every version is checked), the local (DuckDB) finder.
"""

from __future__ import annotations

import dataclasses
import gzip
import threading
import time
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import redis

from functions.consumer.drain import Drainer
from shared import codec, stream
from shared.archive import query
from shared.archive.compaction import Compactor, locks
from shared.archive.naming import ROOTS
from shared.archive.partitions import hour_in, parse_hour, partition_of
from shared.archive.privacy.deletion import Deletion
from shared.archive.privacy.finder import LocalFinder
from shared.archive.privacy.store import RegulationStore
from shared.archive.storage import ObjectStore, Version
from shared.regulations import Regulation
from shared.settings import Settings
from tests.archives import Client, Crash, ev, write_ndjson
from tests.conftest import wait_until
from tests.functions.consumer.drains import Budget, make_drainer
from tests.shared.archive.privacy.bucket import LINKED, SUBJECT, everything_stored, users
from tests.shared.archive.privacy.kills import versioned

HOUR = "2024-03-07T09"


def at(minute: int, hour: str = HOUR) -> str:
    return f"{hour}:{minute:02d}:00.000Z"


@pytest.fixture
def settings(settings: Settings) -> Settings:
    # Claims after 0.3 s of silence, so that a second consumer takes a dead one's entries.
    return dataclasses.replace(settings, flush_interval_s=0.1, claim_idle_ms=300)


@pytest.fixture
def store(s3: Any, settings: Settings) -> ObjectStore:
    return versioned(s3, settings.s3_bucket)


def accept(store: ObjectStore, settings: Settings, client: redis.Redis) -> Regulation:
    return RegulationStore(store, settings.s3_prefix).accept(
        client,
        settings.stream_key,
        regulation_type="DELETE_ONLY",
        subject_type="USER_ID",
        subject_ids=[SUBJECT],
    )


def deletion(
    settings: Settings, store: ObjectStore, client: redis.Redis, finder: Callable | None = None
) -> Deletion:
    """A pass whose clock is past the settling of every deletion accepted so far."""
    return Deletion(
        settings,
        store,
        client,
        finder or (lambda: LocalFinder(store, settings.s3_prefix)),
        clock=lambda: datetime.now(UTC) + timedelta(minutes=1),
    )


def post(settings: Settings, client: redis.Redis, events: list[dict[str, Any]]) -> bytes:
    """One entry, as ingest writes it (the events stamped long ago: a late object)."""
    producer = stream.EventStream(client, settings.stream_key, settings.stream_max_len)
    return producer.add(codec.encode_entry(events))


def assert_forgotten(s3: Any, settings: Settings, client: redis.Redis, kept: Counter) -> None:
    """No object, version, stream entry or dead letter holds the subject; `kept` is read."""
    assert SUBJECT.encode() not in everything_stored(s3, settings, client)
    assert users(ObjectStore(s3, settings.s3_bucket), settings) == kept


class HeldStore(ObjectStore):
    """A consumer's storage whose first archive PUT waits until `go` is set: a flush held up
    (S3 slow, retried) while a deletion is accepted and a pass runs."""

    def __init__(self, client: Any, bucket: str) -> None:
        super().__init__(client, bucket)
        self.reached, self.go = threading.Event(), threading.Event()

    def put(self, key: str, body: bytes, content_type: str = "application/x-ndjson") -> None:
        if hour_in(key) is not None and not self.go.is_set():
            self.reached.set()
            self.go.wait(10)
        super().put(key, body, content_type)


class KilledAfterPut(ObjectStore):
    """A consumer killed right after storing its first object, before acknowledging."""

    def put(self, key: str, body: bytes, content_type: str = "application/x-ndjson") -> None:
        super().put(key, body, content_type)
        raise Crash(f"killed after storing {key}")


def consumer(settings: Settings, store: ObjectStore, name: str) -> Drainer:
    reader = stream.GroupReader(
        stream.connect(settings), settings.stream_key, settings.consumer_group, name
    )
    return Drainer(settings, reader, store)


# --- consumers ------------------------------------------------------------------------------


def test_entries_read_before_the_deletion_and_stored_during_a_pass_are_deleted_by_the_next(
    s3: Any, settings: Settings, store: ObjectStore, redis_client: redis.Redis
) -> None:
    """Their object is a late one of a compacted hour, which compaction merges before the
    next pass: the pass that saw the entries in the stream cannot finish the deletion."""
    prefix = settings.s3_prefix
    write_ndjson(store, prefix, [(b"1709802000000-0", [ev("b-1", at(1), "Viewed", "bob")])])
    Compactor(settings, store, redis_client).compact([parse_hour(HOUR)])
    theirs = [ev("s-1", at(2), "Viewed", SUBJECT), ev("c-1", at(2), "Viewed", "carol")]
    post(settings, redis_client, theirs)
    held = HeldStore(s3, settings.s3_bucket)
    reading = threading.Thread(target=consumer(settings, held, "c1").drain, args=(Budget(2),))
    reading.start()
    assert held.reached.wait(5)  # read and staged, its flush held up
    accept(store, settings, redis_client)

    def flushed_meanwhile() -> None:  # once the pass has found what to rewrite
        held.go.set()
        wait_until(lambda: redis_client.xlen(settings.stream_key) == 0, 5, what="the ack")

    first = deletion(settings, store, redis_client, with_hook(store, prefix, flushed_meanwhile))
    assert first.run().finished == []
    reading.join()
    assert SUBJECT.encode() in everything_stored(s3, settings, redis_client)
    Compactor(settings, store, redis_client).compact([parse_hour(HOUR)])  # the late object

    assert deletion(settings, store, redis_client).run().finished != []
    assert_forgotten(s3, settings, redis_client, Counter({("bob", None): 1, ("carol", None): 1}))


def with_hook(store: ObjectStore, prefix: str, meanwhile: Callable[[], None]) -> Callable:
    """The local finder, running `meanwhile` once it has found the objects to rewrite."""

    def make() -> LocalFinder:
        finder = LocalFinder(store, prefix)
        found = finder.objects

        def objects_then(subjects: Any) -> set[str]:
            answer = found(subjects)
            meanwhile()
            return answer

        finder.objects = objects_then
        return finder

    return make


def test_a_pending_entry_stored_again_after_the_pass_rewrote_its_object_brings_nothing_back(
    s3: Any, settings: Settings, store: ObjectStore, redis_client: redis.Redis
) -> None:
    events = [ev("s-1", at(3), "Viewed", SUBJECT), ev("b-1", at(3), "Viewed", "bob")]
    post(settings, redis_client, events)
    with pytest.raises(Crash):  # stored its object, died before acknowledging the entry
        consumer(settings, KilledAfterPut(s3, settings.s3_bucket), "c1").drain(Budget(2))
    [key] = store.keys_under(f"{settings.s3_prefix}dt=")
    accept(store, settings, redis_client)

    first = deletion(settings, store, redis_client).run()
    assert first.finished == [] and redis_client.xlen(settings.stream_key) == 1  # pending
    assert SUBJECT.encode() not in gzip.decompress(store.get(key))  # rewritten meanwhile
    time.sleep(settings.claim_idle_ms / 1000)  # c1 is gone: c2 claims its entry
    summary = make_drainer(settings, s3, consumer="c2").drain(Budget(1))  # claims, stores again
    assert summary.entries_claimed == 1 and store.keys_under(f"{settings.s3_prefix}dt=") == [key]

    assert deletion(settings, store, redis_client).run().finished != []
    assert_forgotten(s3, settings, redis_client, Counter({("bob", None): 1}))


# --- compaction -----------------------------------------------------------------------------


def seed_late_hour(store: ObjectStore, settings: Settings, client: redis.Redis) -> None:
    """A compacted hour holding the subject, then late objects holding them too."""
    prefix, first = settings.s3_prefix, [ev("s-1", at(1), "Viewed", SUBJECT)]
    write_ndjson(store, prefix, [(b"1709802000000-0", [*first, ev("b-1", at(1), "V", "bob")])])
    Compactor(settings, store, client).compact([parse_hour(HOUR)])
    late = [ev("s-2", at(2), "Viewed", SUBJECT), ev("c-1", at(2), "Viewed", "carol")]
    write_ndjson(store, prefix, [(b"1709802000001-0", late)])
    write_ndjson(store, prefix, [(b"1709802000002-0", [ev("c-2", at(3), "Viewed", "carol")])])


def test_a_compaction_killed_with_its_spills_stored_resumes_after_the_pass_without_them(
    s3: Any, settings: Settings, store: ObjectStore, redis_client: redis.Redis
) -> None:
    seed_late_hour(store, settings, redis_client)
    staging = f"{settings.s3_prefix}_compaction/work/"

    def killed_once_spilled() -> None:
        if any(key.endswith(".arrows") for key in store.keys_under(staging)):
            raise Crash("killed after storing a spill")

    split = {"object_bytes": 300, "step_bytes": 300}  # parts, and spills to cut them
    killed = ObjectStore(Client(s3, after_change=killed_once_spilled), settings.s3_bucket)
    with pytest.raises(Crash):
        Compactor(settings, killed, redis_client, **split).compact([parse_hour(HOUR)])
    accept(store, settings, redis_client)

    assert deletion(settings, store, redis_client).run().finished != []
    assert store.keys_under(staging) == []  # the spills held the subject's events
    summary = Compactor(settings, store, redis_client, **split).compact([parse_hour(HOUR)])
    assert [hour.state for hour in summary.hours] == ["compacted"]
    assert_forgotten(s3, settings, redis_client, Counter({("bob", None): 1, ("carol", None): 2}))


def test_an_hour_a_compaction_holds_waits_for_the_next_pass(
    s3: Any, settings: Settings, store: ObjectStore, redis_client: redis.Redis
) -> None:
    seed_late_hour(store, settings, redis_client)
    accept(store, settings, redis_client)
    namespace = locks.namespace(settings.stream_key, settings.s3_bucket, settings.s3_prefix)
    hour_locks = locks.HourLocks(redis_client, namespace, settings.compact_lease_s)
    compacting = hour_locks.acquire(parse_hour(HOUR))
    prefix, partition = settings.s3_prefix, partition_of(parse_hour(HOUR))

    def versions() -> list[Version]:
        return [v for root in ROOTS for v in store.versions_under(f"{prefix}{root}{partition}")]

    before = versions()
    busy = deletion(settings, store, redis_client).run()

    assert busy.finished == [] and any("being compacted" in why for why in busy.waiting)
    assert versions() == before  # nothing of the hour touched while the compaction holds it
    compacting.release()
    Compactor(settings, store, redis_client).compact([parse_hour(HOUR)])  # merges the late ones
    assert deletion(settings, store, redis_client).run().finished != []
    assert_forgotten(s3, settings, redis_client, Counter({("bob", None): 1, ("carol", None): 2}))


# --- dead letters and readers ---------------------------------------------------------------


def test_a_dead_letter_redriven_while_the_deletion_is_pending_is_archived_without_the_subject(
    s3: Any, settings: Settings, store: ObjectStore, redis_client: redis.Redis
) -> None:
    events = [ev("s-1", at(4), "Viewed", SUBJECT), ev("b-1", at(4), "Viewed", "bob")]
    fields = codec.encode_entry(events)
    stream.dead_letters.append(
        redis_client, settings.stream_key, b"1709802000000-0", fields, "poison", 100
    )
    accept(store, settings, redis_client)
    dead_key = f"{settings.stream_key}:dead"
    [(dead_id, _)] = redis_client.xrange(dead_key)
    producer = stream.EventStream(redis_client, settings.stream_key, settings.stream_max_len)

    stream.redrive(producer, dead_key, dead_id)
    summary = make_drainer(settings, s3).drain(Budget(1))

    assert summary.events_archived == 1 and summary.events_dropped_privacy == 1
    assert deletion(settings, store, redis_client).run().finished != []
    assert_forgotten(s3, settings, redis_client, Counter({("bob", None): 1}))


def test_query_hides_a_deletions_subjects_from_its_acceptance_on(
    s3: Any, settings: Settings, store: ObjectStore, redis_client: redis.Redis
) -> None:
    prefix, login = settings.s3_prefix, at(5, "2024-03-06T10")
    write_ndjson(
        store,
        prefix,
        [
            (
                b"1709719200000-0",
                [
                    ev("l-1", login, "Logged In", SUBJECT, anonymousId=LINKED),
                    ev("b-1", login, "Viewed", "bob", anonymousId=LINKED),  # a shared device: shown
                ],
            )
        ],
    )
    before_login = [ev("a-1", at(6), "Viewed", None, anonymousId=LINKED)]
    write_ndjson(store, prefix, [(b"1709802000000-0", before_login)])

    def shown() -> Counter:
        with query.open_from_settings(settings) as archive:
            return Counter(archive.run("SELECT user_id, anonymous_id FROM events").rows())

    assert shown()[(SUBJECT, LINKED)] == 1 and shown()[(None, LINKED)] == 1
    accept(store, settings, redis_client)  # no pass yet
    assert shown() == Counter({("bob", LINKED): 1})
