"""What the privacy tests look at in the bucket and in Redis: every object's bytes, everything
stored decoded (every version of every object, every stream entry), the events by user as a
query counts them, and the writes a client sends (to prove that what holds no subject is never
written); and the subject the deletion tests forget."""

from __future__ import annotations

import base64
import gzip
import io
import json
from collections import Counter
from typing import Any

import pyarrow.parquet as pq
import redis

from shared import codec
from shared.archive import query
from shared.archive.storage import ObjectStore
from shared.settings import Settings


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


SUBJECT, LINKED = "alice-7", "anon-alice-3"  # strings that occur nowhere else


def everything_stored(s3: Any, settings: Settings, client: redis.Redis) -> bytes:
    """Every version of every object, decompressed and decoded, and every Redis value."""
    found = []
    pages = s3.get_paginator("list_object_versions").paginate(Bucket=settings.s3_bucket)
    for page in pages:
        for version in page.get("Versions", []):
            body = s3.get_object(
                Bucket=settings.s3_bucket, Key=version["Key"], VersionId=version["VersionId"]
            )["Body"].read()
            found.append(decoded(version["Key"], body))
    for key in client.keys(f"{settings.stream_key}*"):
        if client.type(key) == b"stream":
            for _, fields in client.xrange(key):
                found += [decoded_fields(fields)]
        elif client.type(key) == b"hash":
            found.append(repr(client.hgetall(key)).encode())
    return b"\n".join(found)


def decoded(key: str, body: bytes) -> bytes:
    if key.endswith(".gz"):
        return gzip.decompress(body)
    if key.endswith(".parquet"):
        return repr(pq.read_table(io.BytesIO(body)).to_pylist()).encode()
    if key.startswith("errors/"):
        fields = {k.encode(): base64.b64decode(v) for k, v in json.loads(body)["fields"].items()}
        return decoded_fields(fields)
    return body


def decoded_fields(fields: dict[bytes, bytes]) -> bytes:
    entry = {k.removeprefix(b"field:"): v for k, v in fields.items()}
    events = codec.decode_entry(entry) if b"d" in entry else []
    return repr(fields).encode() + repr(events).encode()


def users(store: ObjectStore, settings: Settings) -> Counter:
    with query.open_archive(store, settings.s3_prefix) as archive:
        rows = archive.run("SELECT user_id, anonymous_id FROM events").rows()
        return Counter(rows)
