"""A deletion pass killed at its n-th change of the bucket or of Redis, as a killed process would
be, and what the tests compare after it: every version of every object (in a `versioned`
bucket) and every Redis value.

One count covers both: `Kills.die_at = n` lets n changes through (S3 puts, copies and deletes;
Redis writes and transactions), then raises `Crash` right after the n-th, and before anything
else the process would change. The hour leases (`SET NX`, their Lua scripts) are not counted:
they change nothing a reader or a later pass reads back, and a killed run's lease ends by
itself (COMPACT_LEASE_S).
"""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

import redis

from shared.archive.privacy.store import ROOT
from shared.archive.storage import ObjectStore
from shared.settings import Settings
from tests.archives import Client, Crash
from tests.shared.archive.privacy.bucket import decoded, decoded_fields

# The Redis commands that change something a deletion leaves behind.
WRITES = {"XADD", "XDEL", "XACK", "XTRIM", "HSET", "HSETNX", "HDEL", "DEL", "UNLINK"}


class Kills:
    def __init__(self, die_at: int | None = None) -> None:
        self.die_at = die_at
        self.changes = 0

    @property
    def dead(self) -> bool:
        return self.die_at is not None and self.changes >= self.die_at

    def before(self) -> None:
        """A dead process changes nothing more (a `finally` of the code under test)."""
        if self.dead:
            raise Crash(f"dead after change {self.changes}")

    def after(self) -> None:
        self.changes += 1
        if self.dead:
            raise Crash(f"killed after change {self.changes}")


class KilledS3(Client):
    """tests.archives.Client counting its changes in `kills`."""

    def __init__(self, client: Any, kills: Kills) -> None:
        super().__init__(client, after_change=kills.after)
        self.kills = kills

    def _change(self, method: str, **kwargs: Any) -> Any:
        self.kills.before()
        return super()._change(method, **kwargs)


class KilledRedis(redis.Redis):
    """A Redis client counting its writes (a transaction is one) in `kills`."""

    kills: Kills

    @classmethod
    def to(cls, url: str, kills: Kills) -> KilledRedis:
        client = cls.from_url(url)
        client.kills = kills
        return client

    def execute_command(self, *args: Any, **options: Any) -> Any:
        writes = str(args[0]).upper() in WRITES
        if writes:
            self.kills.before()
        answer = super().execute_command(*args, **options)
        if writes:
            self.kills.after()
        return answer

    def pipeline(self, transaction: bool = True, shard_hint: Any = None) -> Any:
        pipe = super().pipeline(transaction, shard_hint)
        execute, kills = pipe.execute, self.kills

        def counted(raise_on_error: bool = True) -> Any:
            kills.before()
            answer = execute(raise_on_error)
            kills.after()
            return answer

        pipe.execute = counted
        return pipe


# --- the bucket ------------------------------------------------------------------------------


def versioned(s3: Any, bucket: str) -> ObjectStore:
    """The bucket with versioning on (the template's ArchiveVersioning): every version of a
    rewritten object is to be checked."""
    s3.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
    return ObjectStore(s3, bucket)


# --- what the tests compare -----------------------------------------------------------------


def bucket_state(s3: Any, bucket: str) -> dict[str, Any]:
    """Per key: its current body (or "deleted" under a delete marker), its older versions'
    bodies (counted) and its older delete markers. A regulation's document without its
    `progress`: a pass killed midway adds up what it counted again."""
    state: dict[str, dict[str, Any]] = {}

    def of(key: str) -> dict[str, Any]:
        return state.setdefault(key, {"current": None, "older": Counter(), "markers": 0})

    for page in s3.get_paginator("list_object_versions").paginate(Bucket=bucket):
        for version in page.get("Versions", []):
            key = version["Key"]
            body = s3.get_object(Bucket=bucket, Key=key, VersionId=version["VersionId"])
            content = _comparable(key, body["Body"].read())
            if version["IsLatest"]:
                of(key)["current"] = content
            else:
                of(key)["older"][content] += 1
        for marker in page.get("DeleteMarkers", []):
            if marker["IsLatest"]:
                of(marker["Key"])["current"] = "deleted"
            else:
                of(marker["Key"])["markers"] += 1
    return state


def _comparable(key: str, body: bytes) -> bytes:
    """What an object holds, decoded (so that an ID is found in it)."""
    if f"{ROOT}regulations/" not in key:
        return decoded(key, body)
    document = json.loads(body)
    del document["progress"]
    return json.dumps(document, sort_keys=True).encode()


def redis_state(client: redis.Redis, settings: Settings) -> dict[str, Any]:
    """Every value under the stream key, by its name after it; a stream's entries without
    their IDs (a rewritten dead letter gets a new one)."""
    state: dict[str, Any] = {}
    for key in client.keys(f"{settings.stream_key}*"):
        name = key.decode().removeprefix(settings.stream_key)
        kind = client.type(key)
        if kind == b"stream":
            state[name] = [decoded_fields(fields) for _, fields in client.xrange(key)]
        elif kind == b"hash":
            state[name] = client.hgetall(key)
        else:
            state[name] = kind
    return state
