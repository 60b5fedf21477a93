"""Object names. An archived object's name derives from the stream entry IDs it holds, so a
retried flush of the same entries overwrites the same object instead of adding a duplicate."""

from __future__ import annotations

import base64
import hashlib
import time

import msgspec

# Dead letters, at the bucket's root so that they never mix with the archive's partitions.
ERRORS_PREFIX = "errors/"
# Each storage format has a root of its own under S3_PREFIX, so that a table over one root
# (Athena's, Hive's) reads one format: gzip NDJSON at the prefix itself (the layout before
# Parquet existed), Parquet under `parquet/`, compacted hours under `compacted/`.
RAW_ROOTS = {"ndjson": "", "parquet": "parquet/"}
COMPACTED_ROOT = "compacted/"
ROOTS = (*RAW_ROOTS.values(), COMPACTED_ROOT)

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
