"""A deletion pass killed at each change it makes to the bucket or to Redis, then run again to
the end, leaves what an uninterrupted pass leaves (every object, every version, every Redis
value), and readers never miss another person's event in between; a pass cut short by its
time budget is resumed by the next.

Real parts: moto's S3 (a versioned bucket), a real redis-server, the real compactor and the
local (DuckDB) finder. Kills: tests/shared/archive/privacy/kills.py.
"""

from __future__ import annotations

import dataclasses
import itertools
import uuid
from collections import Counter
from datetime import datetime, timedelta
from typing import Any

import pytest
import redis

from shared import codec, stream
from shared.archive import naming, query
from shared.archive.compaction import Compactor
from shared.archive.partitions import parse_hour
from shared.archive.privacy.deletion import Deletion, Pass
from shared.archive.privacy.finder import LocalFinder
from shared.archive.privacy.store import ROOT, RegulationStore
from shared.archive.storage import ObjectStore
from shared.regulations import view_key
from shared.settings import Settings
from tests.archives import Client, Crash, ev, write_ndjson, write_parquet
from tests.shared.archive.privacy.kills import (
    KilledRedis,
    KilledS3,
    Kills,
    bucket_state,
    redis_state,
    versioned,
)

SUBJECT, LINKED = "alice-7", "anon-alice-3"  # strings that occur nowhere else


def at(day: int, hour: int) -> str:
    return f"2024-03-0{day}T{hour:02d}:10:00.000Z"


def seed(
    settings: Settings, s3: Any, client: redis.Redis, compaction: Replay | None = None
) -> None:
    """A few objects of every kind a deletion rewrites, in a versioned bucket. With
    `compaction`, the first seed keeps its compaction's changes and the later ones make them
    again instead of compacting (compaction's bytes and names depend on its input alone; the
    test checks that a seed made so equals one compacted)."""
    s3.create_bucket(Bucket=settings.s3_bucket)
    store, prefix = versioned(s3, settings.s3_bucket), settings.s3_prefix
    login = [
        ev("a-1", at(4, 9), "Logged In", SUBJECT, anonymousId=LINKED),
        ev("a-2", at(4, 9), "Viewed", None, anonymousId=LINKED),  # before login: theirs
        ev("a-3", at(4, 9), "Viewed", "bob", anonymousId=LINKED),  # a shared device: kept
        ev("a-4", at(4, 9), "Viewed", "bob"),
    ]
    for _ in range(2):  # written again: its older version holds the subject too
        write_ndjson(store, prefix, [(b"1709542800000-0", login)])
    only_theirs = [ev("b-1", at(4, 9), "Viewed", SUBJECT)]  # an object the deletion removes
    write_parquet(store, prefix, [(b"1709542800001-0", only_theirs)])
    compacted = [ev("c-1", at(6, 10), "Viewed", SUBJECT), ev("c-2", at(6, 10), "Viewed", "carol")]
    write_ndjson(store, prefix, [(b"1709719200000-0", compacted)])
    hour = parse_hour("2024-03-06T10")
    if compaction is None:
        Compactor(settings, store, client).compact([hour])
    elif not compaction.made:  # the first: compacted, its changes kept
        Compactor(settings, ObjectStore(compaction, settings.s3_bucket), client).compact([hour])
    else:
        compaction.into(s3, settings.s3_bucket)
    letter = [ev("e-1", at(5, 12), "Viewed", SUBJECT), ev("e-2", at(5, 12), "Viewed", "bob")]
    key, body = naming.error_object(b"1709640000000-0", codec.encode_entry(letter), "poison")
    store.put(key, body, "application/json")
    for entry_id, events in [
        (b"1709643600000-0", [ev("f-1", at(5, 13), "Viewed", SUBJECT)]),
        (b"1709643600001-0", [ev("f-2", at(5, 13), "Viewed", "carol")]),
        (b"1709643600002-0", [ev("f-3", at(5, 13), "Viewed", SUBJECT), *letter[1:]]),
    ]:
        fields = codec.encode_entry(events)
        stream.dead_letters.append(client, settings.stream_key, entry_id, fields, "poison", 100)


class Replay(Client):
    """The S3 client, passed through, keeping each change it makes (a put, a copy, a delete) to
    make the same changes in another bucket: a first seed's compaction, for the later seeds."""

    def __init__(self, client: Any) -> None:
        super().__init__(client)
        self.made: list[tuple[str, dict[str, Any]]] = []

    def _change(self, method: str, **kwargs: Any) -> Any:
        assert isinstance(kwargs.get("Body", b""), bytes), "a body to send again"
        self.made.append((method, kwargs))
        return super()._change(method, **kwargs)

    def into(self, s3: Any, bucket: str) -> None:
        for method, kwargs in self.made:
            kwargs = {**kwargs, "Bucket": bucket}
            if "CopySource" in kwargs:
                kwargs["CopySource"] = {**kwargs["CopySource"], "Bucket": bucket}
            getattr(s3, method)(**kwargs)


class Scene:
    """The seed with a deletion of SUBJECT accepted, made again in a bucket and under a stream
    key of their own for each run; the regulation and the privacy view are copied from the
    first, so that every run carries out the same regulation."""

    def __init__(self, settings: Settings, s3: Any, client: redis.Redis) -> None:
        self.base, self.s3, self.client = settings, s3, client
        first = self.fresh()
        self.compaction = Replay(s3)
        seed(first, s3, client, self.compaction)
        store = ObjectStore(s3, first.s3_bucket)
        regulation = RegulationStore(store, first.s3_prefix).accept(
            client,
            first.stream_key,
            regulation_type="DELETE_ONLY",
            subject_type="USER_ID",
            subject_ids=[SUBJECT],
        )
        self.id = regulation.id
        self.later = datetime.fromisoformat(regulation.accepted_at) + timedelta(minutes=5)
        root = f"{first.s3_prefix}{ROOT}"
        self.privacy = {key: store.get(key) for key in store.keys_under(root)}
        self.view = client.hgetall(view_key(first.stream_key))
        self.readable = readable(store, first)  # what `query` shows from the acceptance on

    def fresh(self) -> Settings:
        tag = uuid.uuid4().hex[:10]
        return dataclasses.replace(self.base, s3_bucket=f"archive-{tag}", stream_key=f"ev-{tag}")

    def made(self, compacted: bool = False) -> Settings:
        """The seed again; its compaction's changes made again, unless `compacted`."""
        settings = self.fresh()
        seed(settings, self.s3, self.client, None if compacted else self.compaction)
        store = ObjectStore(self.s3, settings.s3_bucket)
        for key, body in self.privacy.items():
            store.put(key, body, "application/json")
        self.client.hset(view_key(settings.stream_key), mapping=self.view)
        return settings

    def deletion(self, settings: Settings, kills: Kills | None = None) -> Deletion:
        s3 = KilledS3(self.s3, kills) if kills else self.s3
        client = KilledRedis.to(settings.redis_url, kills) if kills else self.client
        store = ObjectStore(s3, settings.s3_bucket)
        return Deletion(
            settings,
            store,
            client,
            lambda: LocalFinder(store, settings.s3_prefix),
            clock=lambda: self.later,
        )

    def state(self, settings: Settings) -> tuple[dict[str, Any], dict[str, Any]]:
        return bucket_state(self.s3, settings.s3_bucket), redis_state(self.client, settings)


def readable(store: ObjectStore, settings: Settings) -> Counter:
    """Whose events a reader sees, as `event-ingest query` reads (pending deletions hidden)."""
    pending = RegulationStore(store, settings.s3_prefix).pending_deletions()
    with query.open_archive(store, settings.s3_prefix, forget=pending) as archive:
        return Counter(archive.run("SELECT user_id, anonymous_id FROM events").rows())


def until_finished(deletion: Deletion, regulation_id: str) -> list[Pass]:
    """Passes until the deletion is finished (by this pass or by the killed one)."""
    passes = [deletion.run()]
    while deletion.regulations.get(regulation_id).state != "finished":
        assert len(passes) < 3, passes[-1].waiting
        passes.append(deletion.run())
    return passes


@pytest.fixture
def scene(settings: Settings, s3: Any, redis_client: redis.Redis) -> Scene:
    return Scene(settings, s3, redis_client)


def test_a_pass_killed_at_any_change_and_run_again_ends_as_an_uninterrupted_one(
    scene: Scene,
) -> None:
    reference = scene.made(compacted=True)
    assert SUBJECT in repr(scene.state(reference))  # the state is decoded: the check can fail
    assert scene.state(scene.made()) == scene.state(reference)  # the attempts' seed is the same
    until_finished(scene.deletion(reference), scene.id)
    expected = scene.state(reference)
    assert SUBJECT not in repr(expected)
    store = ObjectStore(scene.s3, reference.s3_bucket)
    assert readable(store, reference) == scene.readable  # nobody else lost an event
    assert scene.readable[("bob", LINKED)] == 1 and scene.readable[("carol", None)] == 1

    for die_at in itertools.count(1):
        attempt = scene.made()
        try:
            scene.deletion(attempt, Kills(die_at)).run()
        except Crash:
            pass
        else:
            break  # it made every change before dying: every boundary has been killed once
        store = ObjectStore(scene.s3, attempt.s3_bucket)
        assert readable(store, attempt) == scene.readable, f"killed after change {die_at}"
        until_finished(scene.deletion(attempt), scene.id)
        assert scene.state(attempt) == expected, f"killed after change {die_at}"
    assert die_at > 10, "the pass changed less than expected: did it do anything?"


def test_a_pass_out_of_time_leaves_the_deletion_running_and_the_next_one_finishes_it(
    scene: Scene,
) -> None:
    reference = scene.made()
    until_finished(scene.deletion(reference), scene.id)
    attempt = scene.made()
    kills = Kills()  # counts the changes, kills nothing
    deletion = scene.deletion(attempt, kills)

    # Time runs out once the pass changed something beyond marking the deletion running.
    cut = deletion.run(remaining_ms=lambda: 200_000 if kills.changes <= 1 else 10_000)

    assert cut.out_of_time and cut.finished == [] and cut.hours_left > 0
    regulations = RegulationStore(ObjectStore(scene.s3, attempt.s3_bucket), attempt.s3_prefix)
    assert regulations.get(scene.id).state == "running"
    resumed = deletion.run(remaining_ms=lambda: 600_000)
    assert resumed.finished == [scene.id] and not resumed.out_of_time
    assert scene.state(attempt) == scene.state(reference)
