"""What the privacy tests look at in the bucket: every object's bytes, and the writes a
client sends (to prove that what holds no subject is never written)."""

from __future__ import annotations

from typing import Any

from shared.archive.storage import ObjectStore
from tests.conftest import archived_keys


def objects(s3: Any, bucket: str) -> dict[str, bytes]:
    """Every object in the bucket, by key."""
    store = ObjectStore(s3, bucket)
    return {key: store.get(key) for key in archived_keys(s3, bucket)}


class Writes:
    """The keys a client PUTs and deletes, in order (a delete as `delete <key>`), from
    boto3's event hooks."""

    def __init__(self, client: Any) -> None:
        self.keys: list[str] = []
        client.meta.events.register("before-parameter-build.s3.PutObject", self._put)
        client.meta.events.register("before-parameter-build.s3.DeleteObjects", self._delete)

    def _put(self, params: dict[str, Any], **_: Any) -> None:
        self.keys.append(params["Key"])

    def _delete(self, params: dict[str, Any], **_: Any) -> None:
        self.keys += [f"delete {item['Key']}" for item in params["Delete"]["Objects"]]
