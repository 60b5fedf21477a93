"""Older versions of objects, in a versioned bucket (the template's `ArchiveVersioning`): a
deletion removes the versions that hold a subject's events, wherever a pass rewrote or removed
objects, and those of objects deleted since (a compaction's merged inputs, its spills).

A version is checked by decoding it as its key says it was written (gzip NDJSON, Parquet, a
dead letter's JSON); what cannot be decoded is searched for the subjects' IDs as bytes, and
removed when one occurs. Versions that hold no subject are kept: they are someone's history.
"""

from __future__ import annotations

import base64
import gzip
import io
import json

import msgspec
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from shared import codec
from shared.archive import columns
from shared.archive.privacy.subjects import Subjects
from shared.archive.storage import ObjectStore

_lines = msgspec.json.Decoder()


def sweep(store: ObjectStore, prefix: str, subjects: Subjects) -> int:
    """Remove the versions under `prefix` that are not current and hold a subject's events;
    return how many."""
    removed = 0
    for version in store.versions_under(prefix):
        if version.latest or version.delete_marker:
            continue
        body = store.get_version(version.key, version.version_id)
        if holds_subject(version.key, body, subjects):
            removed += store.delete_versions(version.key, [version.version_id])
    return removed


def purge(store: ObjectStore, prefix: str) -> int:
    """Remove every version under `prefix`, current ones too (compaction's spills: transient
    copies of events that the next compaction makes again)."""
    removed = 0
    for version in list(store.versions_under(prefix)):
        removed += store.delete_versions(version.key, [version.version_id])
    return removed


def holds_subject(key: str, body: bytes, subjects: Subjects) -> bool:
    try:
        if key.endswith(".ndjson.gz"):
            return any(subjects.matches(e) for e in _lines.decode_lines(gzip.decompress(body)))
        if key.endswith(".parquet"):
            rows = pq.read_table(io.BytesIO(body), schema=columns.SCHEMA)
            return bool(pc.any(subjects.removed(rows)).as_py())
        if key.endswith(".json") and key.startswith("errors/"):
            fields = json.loads(body)["fields"]
            entry = {name.encode(): base64.b64decode(value) for name, value in fields.items()}
            return any(subjects.matches(e) for e in codec.decode_entry(entry))
    except (OSError, EOFError, ValueError, KeyError, msgspec.DecodeError, pa.ArrowException):
        pass  # not what its name says: searched as bytes below
    except codec.UndecodableEntry:
        pass
    return subjects.mentions(body)
