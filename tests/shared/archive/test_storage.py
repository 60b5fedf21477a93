"""Object storage: `ObjectStore` puts bytes into an S3-compatible bucket (moto here)."""

from __future__ import annotations

import gzip
import json
from typing import Any

import pytest
from botocore.exceptions import ClientError

from shared.archive import Buffer, ObjectStore, compress, encode_lines
from shared.settings import Settings
from tests.shared.archive.conftest import event


def test_object_store_put(s3: Any, settings: Settings) -> None:
    store = ObjectStore(s3, settings.s3_bucket)
    body = compress([encode_lines([event(i=1), event(i=2)])])
    key = "events/dt=2024-03-05/hour=14/1-0_2-0_abc.ndjson.gz"

    store.put(key, body)

    stored = s3.get_object(Bucket=settings.s3_bucket, Key=key)
    assert stored["Body"].read() == body
    assert stored["ContentType"] == "application/x-ndjson"


def test_object_store_put_with_a_content_type(s3: Any, settings: Settings) -> None:
    store = ObjectStore(s3, settings.s3_bucket)
    store.put("k.parquet", b"PAR1", "application/vnd.apache.parquet")
    stored = s3.get_object(Bucket=settings.s3_bucket, Key="k.parquet")
    assert stored["ContentType"] == "application/vnd.apache.parquet"


def test_object_store_put_overwrites_the_same_key(s3: Any, settings: Settings) -> None:
    store = ObjectStore(s3, settings.s3_bucket)
    store.put("k.ndjson.gz", b"first")
    store.put("k.ndjson.gz", b"second")
    listing = s3.list_objects_v2(Bucket=settings.s3_bucket)
    assert [o["Key"] for o in listing["Contents"]] == ["k.ndjson.gz"]
    assert s3.get_object(Bucket=settings.s3_bucket, Key="k.ndjson.gz")["Body"].read() == b"second"


def test_object_store_from_settings_writes_the_buffers_objects(s3: Any, settings: Settings) -> None:
    store = ObjectStore.from_settings(settings)
    assert store.bucket == settings.s3_bucket
    buffer = Buffer()
    events = [event(i=1), event("2024-03-05T15:00:00.000Z", i=2)]
    buffer.add(b"1-0", events)
    for key, body, _ in buffer.objects(settings.s3_prefix):
        store.put(key, body, buffer.content_type)

    listing = s3.list_objects_v2(Bucket=settings.s3_bucket)
    keys = sorted(o["Key"] for o in listing["Contents"])
    assert len(keys) == 2
    assert all(k.startswith(settings.s3_prefix + "dt=2024-03-05/hour=1") for k in keys)
    archived = []
    for key in keys:
        body = s3.get_object(Bucket=settings.s3_bucket, Key=key)["Body"].read()
        archived += [json.loads(line) for line in gzip.decompress(body).splitlines()]
    assert archived == events


def test_object_store_put_to_a_missing_bucket_fails(s3: Any) -> None:
    with pytest.raises(ClientError):
        ObjectStore(s3, "no-such-bucket").put("k", b"x")
