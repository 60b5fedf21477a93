"""The archive writer: where an event goes, how it is encoded, and where it is stored.

Split the way Kafka Connect's S3 sink splits it:
- partitioner: `partition_path` puts an event under `dt=YYYY-MM-DD/hour=HH/` of its `receivedAt`;
- format: gzip-compressed NDJSON, one line per event (`encode_line`, `compress`);
- naming: `object_key` derives the name from the stream entry IDs an object holds, so a retried
  flush of the same entries overwrites the same object instead of adding a duplicate;
- storage: `ObjectStore` puts bytes into an S3-compatible bucket.
`Buffer` stages events between reads and a flush; `flush_due` is the pure rule for when.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import boto3
import msgspec
from botocore.config import Config

from shared.settings import Settings

OBJECT_SUFFIX = ".ndjson.gz"
# Dead letters, at the bucket's root so that they never mix with the archive's partitions.
ERRORS_PREFIX = "errors/"

_json_encoder = msgspec.json.Encoder()


class UnarchivableEvent(ValueError):
    """An event the archive cannot place (no usable `receivedAt`)."""


# --- partitioner --------------------------------------------------------------------------


def partition_path(event: dict[str, Any]) -> str:
    """Hive-style partition of an event by the server's `receivedAt` (ISO-8601 UTC)."""
    received_at = event.get("receivedAt")
    # Shape check, not a full parse: the server wrote this string as YYYY-MM-DDTHH:MM:SS.mmmZ.
    if not (
        isinstance(received_at, str)
        and len(received_at) >= 13
        and received_at[4] == "-"
        and received_at[10] == "T"
    ):
        raise UnarchivableEvent(f"event has no usable receivedAt: {received_at!r}")
    return f"dt={received_at[:10]}/hour={received_at[11:13]}/"


# --- format -------------------------------------------------------------------------------


def encode_lines(events: list[dict[str, Any]]) -> bytes:
    """NDJSON: one line per event, each ending in a newline."""
    return _json_encoder.encode_lines(events)


def compress(chunks: list[bytes], level: int = 3) -> bytes:
    # mtime=0: the same lines always give the same bytes, so a retried object is identical.
    return gzip.compress(b"".join(chunks), compresslevel=level, mtime=0)


# --- naming -------------------------------------------------------------------------------


def object_key(prefix: str, partition: str, entry_ids: list[bytes]) -> str:
    """`<prefix><partition><first>_<last>_<digest>.ndjson.gz`.

    First and last ID sort objects in stream order; the digest of every ID keeps two
    different sets of entries with the same ends from overwriting each other.
    """
    digest = hashlib.blake2b(b",".join(entry_ids), digest_size=8).hexdigest()
    first, last = entry_ids[0].decode(), entry_ids[-1].decode()
    return f"{prefix}{partition}{first}_{last}_{digest}{OBJECT_SUFFIX}"


def error_object(
    entry_id: bytes, fields: dict[bytes, bytes] | None, reason: str
) -> tuple[str, bytes]:
    """A dead-lettered entry as a JSON document, its raw fields in base64 (they may be any
    bytes), under `errors/dt=<day the entry was written>/<entry id>.json`."""
    entry = entry_id.decode()
    day = time.strftime("%Y-%m-%d", time.gmtime(int(entry.partition("-")[0]) / 1000))
    document = {
        "originalId": entry,
        "reason": reason,
        "fields": {
            name.decode("utf-8", "replace"): base64.b64encode(value).decode()
            for name, value in (fields or {}).items()
        },
    }
    return f"{ERRORS_PREFIX}dt={day}/{entry}.json", _json_encoder.encode(document)


# --- storage ------------------------------------------------------------------------------


@dataclass
class ObjectStore:
    client: Any
    bucket: str

    @classmethod
    def from_settings(cls, settings: Settings) -> ObjectStore:
        client = boto3.client(
            "s3",
            endpoint_url=settings.s3_endpoint_url,
            # Bounded, so one hung request cannot outlast the invocation's stop margin; the
            # drain loop retries, with its own backoff, while the budget allows.
            config=Config(
                connect_timeout=3, read_timeout=8, retries={"max_attempts": 1, "mode": "standard"}
            ),
        )
        return cls(client, settings.s3_bucket)

    def put(self, key: str, body: bytes) -> None:
        self.client.put_object(
            Bucket=self.bucket, Key=key, Body=body, ContentType="application/x-ndjson"
        )


# --- staging ------------------------------------------------------------------------------


@dataclass
class _Partition:
    entry_ids: list[bytes] = field(default_factory=list)
    chunks: list[bytes] = field(default_factory=list)  # NDJSON, one chunk per entry
    events: int = 0


@dataclass
class Buffer:
    """Events read but not yet stored, grouped by partition, with the entry IDs they came from."""

    entry_ids: list[bytes] = field(default_factory=list)
    events: int = 0
    bytes: int = 0
    started_at: float | None = None
    _partitions: dict[str, _Partition] = field(default_factory=dict)

    def add(self, entry_id: bytes, events: list[dict[str, Any]]) -> None:
        """Stage one entry's events; all or nothing if one of them cannot be placed."""
        # An entry is one request, whose events share one receivedAt: usually one group.
        groups: dict[str, list[dict[str, Any]]] = {}
        for event in events:
            groups.setdefault(partition_path(event), []).append(event)
        for path, group in groups.items():
            chunk = encode_lines(group)
            partition = self._partitions.setdefault(path, _Partition())
            partition.entry_ids.append(entry_id)
            partition.chunks.append(chunk)
            partition.events += len(group)
            self.bytes += len(chunk)
        self.entry_ids.append(entry_id)
        self.events += len(events)
        if self.started_at is None:
            self.started_at = time.monotonic()

    def objects(self, prefix: str, level: int = 3) -> Iterator[tuple[str, bytes, int]]:
        """(key, compressed body, event count) for each object this buffer becomes."""
        for path, partition in self._partitions.items():
            key = object_key(prefix, path, partition.entry_ids)
            yield key, compress(partition.chunks, level), partition.events

    def __len__(self) -> int:
        return len(self.entry_ids)


def size_hint_reached(buffer: Buffer, settings: Settings) -> bool:
    """The count or size hint: checked after every entry, so that where a flush is cut
    depends only on the entries, and a re-read after a crash cuts in the same places."""
    return buffer.events >= settings.flush_max_events or buffer.bytes >= settings.flush_max_bytes


def flush_due(buffer: Buffer, settings: Settings, now: float) -> bool:
    """Firehose-style buffering hints: whichever of size, count or age is reached first."""
    if not buffer.entry_ids:
        return False
    return (
        size_hint_reached(buffer, settings) or now - buffer.started_at >= settings.flush_interval_s
    )
