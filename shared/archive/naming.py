"""Object names. An archived object's name derives from the stream entry IDs it holds, so a
retried flush of the same entries overwrites the same object instead of adding a duplicate."""

from __future__ import annotations

import base64
import hashlib
import re
from dataclasses import dataclass
from datetime import UTC, datetime

import msgspec

from shared.archive.partitions import PARTITION_PATTERN, day_partition, partition_of

# Dead letters, at the bucket's root so that they never mix with the archive's partitions.
ERRORS_PREFIX = "errors/"
# Each storage format has a root of its own under S3_PREFIX, so that a table over one root
# (Athena's, Hive's) reads one format: gzip NDJSON at the prefix itself (the layout before
# Parquet existed), Parquet under `parquet/`, compacted hours under `compacted/`.
RAW_ROOTS = {"ndjson": "", "parquet": "parquet/"}
COMPACTED_ROOT = "compacted/"
ROOTS = (*RAW_ROOTS.values(), COMPACTED_ROOT)
# Events a tracking plan quarantines: an archive of their own under S3_PREFIX, in the same
# layout (`quarantine/dt=.../`, `quarantine/parquet/dt=.../`), which nothing reads as `events`
# (readers list the roots above under S3_PREFIX itself) and compaction never merges.
QUARANTINE_ROOT = "quarantine/"
# Objects that cannot be decoded, set aside by compaction under S3_PREFIX, outside every root:
# `<S3_PREFIX>_unreadable/<original key>`, with `<that>.reason.json` beside each. Readers list
# only the roots' `dt=` partitions, so nothing here is read as events.
UNREADABLE_ROOT = "_unreadable/"
REASON_SUFFIX = ".reason.json"
# A compacted hour's objects: `compacted/dt=.../hour=.../compacted-<part>-of-<parts>-<digest>`.
_COMPACTED = re.compile(
    re.escape(COMPACTED_ROOT)
    + PARTITION_PATTERN
    + r"compacted-(?P<part>\d{4})-of-(?P<parts>\d{4})-[0-9a-f]{16}\.parquet$"
)

_json_encoder = msgspec.json.Encoder()


def object_key(
    prefix: str, partition: str, entry_ids: list[bytes], suffix: str, salt: str = ""
) -> str:
    """`<prefix><partition><first>_<last>_<digest><suffix>`.

    First and last ID sort objects in stream order; the digest of every ID keeps two
    different sets of entries with the same ends from overwriting each other, and with a
    `salt` (a shard's key), two shards' entries with the same IDs.
    """
    ids = b",".join(entry_ids)
    digest = hashlib.blake2b(
        salt.encode() + b"\n" + ids if salt else ids, digest_size=8
    ).hexdigest()
    first, last = entry_ids[0].decode(), entry_ids[-1].decode()
    return f"{prefix}{partition}{first}_{last}_{digest}{suffix}"


def error_object(
    entry_id: bytes, fields: dict[bytes, bytes] | None, reason: str, shard: str = ""
) -> tuple[str, bytes]:
    """A dead-lettered entry as a JSON document, its raw fields in base64 (they may be any
    bytes), under `error_object_key`. `shard`: the stream key it was read from, when that is
    not STREAM_KEY itself (as for `object_key`'s salt); the document names it."""
    entry = entry_id.decode()
    document = {
        "originalId": entry,
        **({"shard": shard} if shard else {}),
        "reason": reason,
        "fields": {
            name.decode("utf-8", "replace"): base64.b64encode(value).decode()
            for name, value in (fields or {}).items()
        },
    }
    return error_object_key(entry_id, shard), _json_encoder.encode(document)


def error_object_key(entry_id: bytes, shard: str = "") -> str:
    """`errors/dt=<day the entry was written>/<entry id>.json`, and for a shard's entry
    `<entry id>_shard-<label>.json`: shards produce the same entry IDs, and a dead letter
    written under another shard's name would replace its letter (for good, once Redis trims
    the dead-letter stream). STREAM_KEY's own letters keep the name they always had."""
    entry = entry_id.decode()
    written = datetime.fromtimestamp(int(entry.partition("-")[0]) / 1000, UTC)
    name = f"{entry}_shard-{shard_label(shard)}" if shard else entry
    return f"{ERRORS_PREFIX}{day_partition(written.date())}{name}.json"


# What a shard's hash tag may hold to stand for it in an object name as it is.
_PLAIN_TAG = re.compile(r"[A-Za-z0-9._-]{1,32}")


def shard_label(shard: str) -> str:
    """A shard key, short and safe in an object name: its hash tag (`STREAM_KEY:{tag}`, the
    form shared/shards.py gives shards), else a digest of the whole key."""
    tag = shard[shard.rfind("{") + 1 : -1] if shard.endswith("}") else ""
    if _PLAIN_TAG.fullmatch(tag):
        return tag
    return hashlib.blake2b(shard.encode(), digest_size=8).hexdigest()


def unreadable_key(prefix: str, key: str) -> str:
    """Where the object `key` of the archive under `prefix` is set aside when unreadable: its
    whole key, prefix included, so that where it came from is plain."""
    return f"{prefix}{UNREADABLE_ROOT}{key}"


@dataclass(frozen=True)
class Part:
    """Where a compacted object stands: part `index` of `count`."""

    index: int
    count: int


def compacted_part(key: str) -> Part | None:
    """The part a compacted object holds, from its name; None for any other object."""
    match = _COMPACTED.search(key)
    if match is None:
        return None
    part = Part(int(match["part"]), int(match["parts"]))
    return part if part.index < part.count else None


def compacted_key(prefix: str, hour: datetime, part: Part, body: bytes) -> str:
    """`<prefix>compacted/dt=.../hour=.../compacted-<part>-of-<parts>-<digest of body>.parquet`:
    the digest is of the object's bytes, so the same rows always make the same name."""
    digest = hashlib.blake2b(body, digest_size=8).hexdigest()
    name = f"compacted-{part.index:04d}-of-{part.count:04d}-{digest}.parquet"
    return f"{prefix}{COMPACTED_ROOT}{partition_of(hour)}{name}"
