"""The regulations in the bucket, and the copy of what is in force in Redis."""

from __future__ import annotations

from typing import Any

import pytest
import redis

from shared import regulations
from shared.archive.privacy.store import RegulationStore
from shared.archive.storage import ObjectStore
from shared.regulations import BadRegulation
from shared.settings import Settings


@pytest.fixture
def store(s3: Any, settings: Settings) -> RegulationStore:
    return RegulationStore(ObjectStore(s3, settings.s3_bucket), settings.s3_prefix)


def accept(store: RegulationStore, client, settings, kind, ids, subject="USER_ID"):
    return store.accept(
        client,
        settings.stream_key,
        regulation_type=kind,
        subject_type=subject,
        subject_ids=ids,
    )


def test_a_regulation_is_kept_in_the_bucket_outside_every_root(
    s3: Any, settings: Settings, store: RegulationStore, redis_client: redis.Redis
) -> None:
    regulation = accept(store, redis_client, settings, "DELETE_ONLY", ["u1"])
    keys = [item["Key"] for item in s3.list_objects_v2(Bucket=settings.s3_bucket)["Contents"]]
    assert sorted(keys) == [
        "events/_privacy/key.json",
        f"events/_privacy/regulations/{regulation.id}.json",
    ]
    assert store.get(regulation.id) == regulation
    assert store.all() == [regulation] and store.pending_deletions() == [regulation]


def test_one_key_however_many_regulations(
    s3: Any, settings: Settings, store: RegulationStore, redis_client: redis.Redis
) -> None:
    first = accept(store, redis_client, settings, "SUPPRESS_ONLY", ["u1"])
    other = RegulationStore(ObjectStore(s3, settings.s3_bucket), settings.s3_prefix)
    second = accept(other, redis_client, settings, "SUPPRESS_ONLY", ["u1"])
    assert first.subject_hashes == second.subject_hashes
    assert store.key() == other.key() and len(store.key()) == 32


def test_bad_input_writes_nothing(
    s3: Any, settings: Settings, store: RegulationStore, redis_client: redis.Redis
) -> None:
    with pytest.raises(BadRegulation):
        accept(store, redis_client, settings, "FORGET", ["u1"])
    with pytest.raises(BadRegulation, match="no regulation"):
        store.get("20261206T110000-00000000")
    with pytest.raises(BadRegulation, match="no regulation"):
        store.get("../key")
    listed = s3.list_objects_v2(Bucket=settings.s3_bucket).get("Contents", [])
    assert listed == []
    assert not redis_client.exists(regulations.view_key(settings.stream_key))


def test_redis_holds_what_is_in_force_and_is_rebuilt_when_lost(
    settings: Settings, store: RegulationStore, redis_client: redis.Redis
) -> None:
    accept(store, redis_client, settings, "SUPPRESS_ONLY", ["s1", "s2"])
    accept(store, redis_client, settings, "UNSUPPRESS", ["s2"])
    accept(store, redis_client, settings, "DELETE_ONLY", ["d1"], subject="ANONYMOUS_ID")
    name = regulations.view_key(settings.stream_key)
    view = regulations.parse_view(redis_client.hgetall(name))
    assert view.suppresses({"userId": "s1"}) and not view.suppresses({"userId": "s2"})
    assert view.drops({"anonymousId": "d1"}) and not view.drops({"userId": "d1"})
    assert b"s1" not in b"".join(redis_client.hgetall(name).values())
    redis_client.delete(name)  # a Redis restarted empty
    rebuilt = store.ensure_published(redis_client, settings.stream_key)
    assert rebuilt == view
    assert regulations.parse_view(redis_client.hgetall(name)) == view
