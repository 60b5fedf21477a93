"""Rewriting one stored object without a deletion's subjects, by the writer that made it.

An object that holds none of them is never written. One that holds only theirs is removed.
Otherwise it is replaced in place, under its own key (a PUT is atomic: a reader sees the old
object or the new one, never one missing other people's events): gzip NDJSON by re-encoding
the lines it keeps as they were, Parquet (raw or compacted) by the archive's Parquet writer.
"""

from __future__ import annotations

import gzip
from dataclasses import dataclass

import msgspec
import pyarrow as pa
import pyarrow.compute as pc

from shared.archive.formats import ndjson, parquet
from shared.archive.naming import compacted_part
from shared.archive.privacy.subjects import Subjects
from shared.archive.reading import ArchivedObject, Damage, Unreadable, parquet_rows
from shared.archive.storage import ObjectStore

_lines = msgspec.json.Decoder()


@dataclass
class Rewrite:
    key: str
    removed: int  # the subjects' events taken out
    kept: int  # the others, stored again
    shared_devices: int = 0  # kept: a linked anonymous ID with another userId

    @property
    def emptied(self) -> bool:
        return self.kept == 0


def rewrite(
    store: ObjectStore, item: ArchivedObject, subjects: Subjects, level: int
) -> Rewrite | None:
    """Replace `item` by itself without the subjects' events; None when it holds none.
    Unreadable when its bytes cannot be decoded (a person must decide about it)."""
    body = store.get(item.key)
    if item.format == "ndjson":
        result, new_body = _ndjson(item.key, body, subjects, level)
    else:
        result, new_body = _parquet(item.key, body, subjects, level)
    if result is None:
        return None
    if result.emptied:
        store.delete([item.key])
    else:
        content_type = ndjson.CONTENT_TYPE if item.format == "ndjson" else parquet.CONTENT_TYPE
        store.put(item.key, new_body, content_type)
    return result


def _ndjson(key: str, body: bytes, subjects: Subjects, level: int) -> tuple[Rewrite | None, bytes]:
    try:
        events = _lines.decode_lines(gzip.decompress(body))
    except (OSError, EOFError, msgspec.DecodeError) as exc:
        raise Unreadable(key, Damage(f"cannot be read to remove a subject: {exc}", 0)) from None
    if not all(isinstance(event, dict) for event in events):
        raise Unreadable(key, Damage("a line is not a JSON object", 0))
    kept = [event for event in events if not subjects.matches(event)]
    if len(kept) == len(events):
        return None, b""
    shared = sum(1 for event in kept if subjects.shared_device(event))
    result = Rewrite(key, len(events) - len(kept), len(kept), shared)
    return result, ndjson.compress([ndjson.encode_lines(kept)], level) if kept else b""


def _parquet(key: str, body: bytes, subjects: Subjects, level: int) -> tuple[Rewrite | None, bytes]:
    try:
        rows = parquet_rows(body)  # an older object's: with the columns it lacks, derived
    except (OSError, ValueError) as exc:
        raise Unreadable(key, Damage(f"cannot be read to remove a subject: {exc}", 0)) from None
    removed = subjects.removed(rows)
    count = pc.sum(removed).as_py() or 0
    if not count:
        return None, b""
    kept = rows.filter(pc.invert(removed))
    result = Rewrite(key, count, kept.num_rows, subjects.shared_devices(rows))
    if not kept.num_rows:
        return result, b""
    return result, parquet_body(key, kept, level)


def parquet_body(key: str, rows: pa.Table, level: int) -> bytes:
    """`rows` as the writer of the object `key` wrote them: the consumer's (at GZIP_LEVEL), or
    the compactor's (sorted by time, at its own level: see compaction.steps.parquet_bytes)."""
    compacted = compacted_part(key) is not None
    return parquet.write(rows, 3 if compacted else level, sorted_by_time=compacted)
