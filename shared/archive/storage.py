"""Where the archive's bytes live: `ObjectStore`, the one adapter over an S3-compatible bucket
(AWS S3, MinIO, moto). Everything the product does with the bucket goes through it: get (whole
or a byte range, or as a seekable file of ranged GETs), put, copy, delete, list, and the
client's retries. What the objects mean (partitions, formats, names) is for the modules that
ask it."""

from __future__ import annotations

import io
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import boto3
from botocore.config import Config
from botocore.exceptions import ClientError

from shared.settings import Settings

# What S3 (and MinIO, moto) answer a conditional write whose object exists already.
_ALREADY_THERE = ("PreconditionFailed", "ConditionalRequestConflict")
# DeleteObjects takes at most this many keys a request.
DELETE_BATCH = 1000


@dataclass(frozen=True)
class Version:
    key: str
    version_id: str
    latest: bool
    delete_marker: bool


class ObjectGone(Exception):
    """An object listed a moment ago is gone (compaction merged and removed it meanwhile)."""


@dataclass
class ObjectStore:
    client: Any
    bucket: str

    @classmethod
    def from_settings(
        cls, settings: Settings, attempts: int = 1, read_timeout_s: float = 8
    ) -> ObjectStore:
        """A bounded client. By default one attempt and 8 s, so one hung request cannot outlast
        the consumer's stop margin (the drain loop retries, with its own backoff, while the
        budget allows); readers that retry nothing themselves ask for more attempts."""
        client = boto3.client(
            "s3",
            endpoint_url=settings.s3_endpoint_url,
            config=Config(
                connect_timeout=3,
                read_timeout=read_timeout_s,
                retries={"max_attempts": attempts, "mode": "standard"},
            ),
        )
        return cls(client, settings.s3_bucket)

    # --- writing --------------------------------------------------------------------------

    def put(self, key: str, body: bytes, content_type: str = "application/x-ndjson") -> None:
        self.client.put_object(Bucket=self.bucket, Key=key, Body=body, ContentType=content_type)

    def put_json(self, key: str, document: Any) -> None:
        """`document` as compact JSON with sorted keys: the same document, the same bytes."""
        self.put(key, _json_body(document), "application/json")

    def put_json_if_absent(self, key: str, document: Any) -> bool:
        """`put_json`, only if there is no object `key` yet (S3's conditional write): whether
        this call wrote it."""
        try:
            self.client.put_object(
                Bucket=self.bucket,
                Key=key,
                Body=_json_body(document),
                ContentType="application/json",
                IfNoneMatch="*",
            )
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in _ALREADY_THERE:
                return False
            raise
        return True

    def copy(self, source: str, target: str) -> None:
        """Copy an object within the bucket (server-side: its bytes do not pass through here)."""
        try:
            self.client.copy_object(
                Bucket=self.bucket, Key=target, CopySource={"Bucket": self.bucket, "Key": source}
            )
        except self.client.exceptions.NoSuchKey:
            raise ObjectGone(source) from None

    def delete(self, keys: Iterable[str]) -> int:
        """Remove `keys` (absent ones are no error); return how many were asked for."""
        keys = list(keys)
        for start in range(0, len(keys), DELETE_BATCH):
            chunk = keys[start : start + DELETE_BATCH]
            answer = self.client.delete_objects(
                Bucket=self.bucket,
                Delete={"Objects": [{"Key": key} for key in chunk], "Quiet": True},
            )
            if answer.get("Errors"):
                error = answer["Errors"][0]
                raise OSError(f"could not remove {error['Key']}: {error.get('Message')}")
        return len(keys)

    # --- reading --------------------------------------------------------------------------

    def get(self, key: str, byte_range: tuple[int, int] | None = None) -> bytes:
        """The object's bytes, or bytes `byte_range[0]` to `byte_range[1]` (both included);
        ObjectGone when there is no such object."""
        options = {"Range": f"bytes={byte_range[0]}-{byte_range[1]}"} if byte_range else {}
        try:
            return self.client.get_object(Bucket=self.bucket, Key=key, **options)["Body"].read()
        except self.client.exceptions.NoSuchKey:
            raise ObjectGone(key) from None

    def get_json(self, key: str) -> Any | None:
        """A JSON object's document; None when there is no such object."""
        try:
            return json.loads(self.get(key))
        except ObjectGone:
            return None

    def open(self, key: str, size: int) -> RangedFile:
        """The object as a seekable file whose reads are ranged GETs."""
        return RangedFile(self, key, size)

    # --- listing --------------------------------------------------------------------------

    def objects_under(self, prefix: str) -> Iterator[tuple[str, int]]:
        """(key, size) of every object under `prefix`, in key order."""
        for page in self.client.get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket, Prefix=prefix
        ):
            for item in page.get("Contents", []):
                yield item["Key"], item["Size"]

    def keys_under(self, prefix: str) -> list[str]:
        """Every key under `prefix`, sorted."""
        return sorted(key for key, _ in self.objects_under(prefix))

    def versions_under(self, prefix: str) -> Iterator[Version]:
        """Every version of every object under `prefix`, delete markers included (in an
        unversioned bucket, each object once, as its latest version)."""
        pages = self.client.get_paginator("list_object_versions").paginate(
            Bucket=self.bucket, Prefix=prefix
        )
        for page in pages:
            for item in page.get("Versions", []):
                yield Version(item["Key"], item["VersionId"], item["IsLatest"], False)
            for item in page.get("DeleteMarkers", []):
                yield Version(item["Key"], item["VersionId"], item["IsLatest"], True)

    def older_versions(self, key: str) -> list[str]:
        """The version IDs of `key` that are not its current object (noncurrent versions and
        delete markers, in a versioned bucket; none in an unversioned one)."""
        return [v.version_id for v in self.versions_under(key) if v.key == key and not v.latest]

    def get_version(self, key: str, version_id: str) -> bytes:
        return self.client.get_object(Bucket=self.bucket, Key=key, VersionId=version_id)[
            "Body"
        ].read()

    def delete_versions(self, key: str, version_ids: list[str]) -> int:
        """Remove these versions of `key` for good; return how many."""
        for start in range(0, len(version_ids), DELETE_BATCH):
            chunk = version_ids[start : start + DELETE_BATCH]
            answer = self.client.delete_objects(
                Bucket=self.bucket,
                Delete={"Objects": [{"Key": key, "VersionId": v} for v in chunk], "Quiet": True},
            )
            if answer.get("Errors"):
                error = answer["Errors"][0]
                raise OSError(f"could not remove a version of {key}: {error.get('Message')}")
        return len(version_ids)

    def common_prefixes(self, prefix: str) -> Iterator[str]:
        """The `/`-delimited prefixes one level below `prefix` (S3's "folders")."""
        pages = self.client.get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket, Prefix=prefix, Delimiter="/"
        )
        for page in pages:
            for common in page.get("CommonPrefixes", []):
                yield common["Prefix"]


def _json_body(document: Any) -> bytes:
    return json.dumps(document, sort_keys=True, separators=(",", ":")).encode()


class RangedFile(io.RawIOBase):
    """A stored object as a seekable file whose reads are ranged GETs, so that reading one
    Parquet column downloads the footer and that column only; or served from the byte ranges
    `fetch` downloaded beforehand."""

    def __init__(self, store: ObjectStore, key: str, size: int) -> None:
        super().__init__()
        self.store, self.key, self.size = store, key, size
        self.position = 0
        self.fetched: list[tuple[int, bytes]] = []  # (offset, bytes)

    def fetch(self, start: int, end: int) -> None:
        """Download bytes `start` to `end` (excluded) now, for reads to come."""
        start, end = max(0, start), min(end, self.size)
        if start < end:
            self.fetched.append((start, self.store.get(self.key, (start, end - 1))))

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self.position, io.SEEK_END: self.size}[whence]
        self.position = max(0, base + offset)
        return self.position

    def tell(self) -> int:
        return self.position

    def readinto(self, buffer: Any) -> int:
        body = self.read_buffer(len(buffer))
        buffer[: len(body)] = body
        return len(body)

    def read_buffer(self, size: int) -> bytes | memoryview:
        """The next `size` bytes, not copied when fetched already (pyarrow reads through this
        when a file has it, without `read`'s copies)."""
        end = min(self.position + size, self.size)
        if end <= self.position:
            return b""
        body = self._fetched(self.position, end)
        if body is None:
            body = self.store.get(self.key, (self.position, end - 1))
        self.position += len(body)
        return body

    def _fetched(self, start: int, end: int) -> memoryview | None:
        for offset, body in self.fetched:
            if offset <= start and end <= offset + len(body):
                return memoryview(body)[start - offset : end - offset]
        return None
