"""Deleting subjects' events from the objects compaction set aside as unreadable
(`<S3_PREFIX>_unreadable/<original key>`, each with `<key>.reason.json` beside it).

Such an object is kept for a person to decide about what of it cannot be decoded; what does
decode of it was merged into the archive when it was set aside. So, as far as its bytes
decode, the subjects' events are removed, and everything else of it is kept where its format
can carry it:

- An object that decodes whole (one this module already rewrote, say) is rewritten as
  `rewrite.rewrite` rewrites an archived object, or removed with its reason when it held only
  the subjects' events.
- gzip NDJSON is rewritten line by line: the subjects' lines go; every other line of the text
  that gunzips stays as it was, valid or not (a line that is not a JSON object, a line cut by
  a truncation). What follows a fault in the gzip data cannot be carried over: deflate refers
  back into the text before it, which the rewrite changes.
- Parquet is rewritten from the row groups that read, by the archive's Parquet writer; row
  groups that do not read cannot be carried into a new file.

Nothing of it is passed over silently. The key is listed in `Tally.undecodable` when part of
the object as found cannot be decoded and may hold a subject: always for a gzip fault or
Parquet that does not read whole (compressed bytes cannot be searched), and for NDJSON lines
that are not JSON objects when one of the subjects' IDs occurs in their text. When a rewrite
leaves part of the object behind, its reason file says so (written before the object, so a
run killed between the two and started again writes the same), and its figures keep
describing the object as compaction set it aside. An object holding no subject's decoded
event is never written.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import msgspec
import pyarrow.compute as pc

from shared.archive import reading
from shared.archive.formats import ndjson, parquet
from shared.archive.naming import REASON_SUFFIX, UNREADABLE_ROOT
from shared.archive.privacy.rewrite import Rewrite, parquet_body, rewrite
from shared.archive.privacy.subjects import Subjects
from shared.archive.privacy.tally import Tally
from shared.archive.reading import ArchivedObject
from shared.archive.reading import gunzip as gunzip_until_fault
from shared.archive.storage import ObjectGone, ObjectStore

# What a rewritten object's reason file says (under `privacy_deletions`), without any ID.
REWRITTEN = (
    "rewritten without the events of the subjects of a privacy deletion; the figures above "
    "describe the object as it was set aside"
)
_line = msgspec.json.Decoder()


@dataclass
class Salvage:
    """What of one set-aside object decodes, and what it becomes without the subjects."""

    whole: bool  # every byte of it decodes
    undecodable: bool  # part of it cannot be decoded and may hold a subject
    result: Rewrite | None = None  # None: no decoded event is a subject's
    body: bytes = b""  # the object without them, when not whole
    left_behind: str = ""  # what of it a rewrite cannot carry over


def scrub_unreadable(store: ObjectStore, prefix: str, subjects: Subjects, level: int) -> Tally:
    """Every object under `<prefix>_unreadable/` without the subjects' decoded events (see the
    module's docstring); `level`: the archive's GZIP_LEVEL, as for `rewrite.rewrite`."""
    tally = Tally()
    for key, size in store.objects_under(f"{prefix}{UNREADABLE_ROOT}"):
        if key.endswith(REASON_SUFFIX):
            continue
        tally.objects_scanned += 1
        item = reading.archived_object(key, size)
        if item is None:  # not an object of the archive's: nothing here can read it
            tally.undecodable.append(key)
            continue
        try:
            _scrub(store, item, subjects, level, tally)
        except ObjectGone:
            continue  # removed meanwhile
    return tally


def _scrub(
    store: ObjectStore, item: ArchivedObject, subjects: Subjects, level: int, tally: Tally
) -> None:
    body = store.get(item.key)
    if item.format == "ndjson":
        salvage = _ndjson(item.key, body, subjects, level)
    else:
        salvage = _parquet(item.key, body, subjects, level)
    if salvage.undecodable:
        tally.undecodable.append(item.key)
    found = salvage.result
    if found is None:
        return
    tally.events_deleted += found.removed
    tally.shared_devices_kept += found.shared_devices
    if found.emptied:
        store.delete([item.key + REASON_SUFFIX, item.key])  # its reason first: never orphaned
        tally.objects_removed += 1
        return
    if salvage.whole:
        rewrite(store, item, subjects, level)
    else:
        _note(store, item.key, salvage.left_behind)
        content_type = ndjson.CONTENT_TYPE if item.format == "ndjson" else parquet.CONTENT_TYPE
        store.put(item.key, salvage.body, content_type)
    tally.objects_rewritten += 1


def _ndjson(key: str, body: bytes, subjects: Subjects, level: int) -> Salvage:
    """The lines of the text that gunzips (all of it before a gzip fault), the subjects' ones
    left out and every other one kept as it was."""
    text, fault = gunzip_until_fault(body)
    kept: list[bytes] = []
    removed, events, shared = 0, 0, 0
    invalid: list[bytes] = []  # lines that are not a JSON object: kept, searched
    for line in text.split(b"\n"):
        event = _event(line)
        if event is not None and subjects.matches(event):
            removed += 1
            continue
        kept.append(line)
        if event is None:
            if line.strip():
                invalid.append(line)
            continue
        events += 1
        shared += subjects.shared_device(event)
    undecodable = fault is not None or subjects.mentions(b"\n".join(invalid))
    salvage = Salvage(whole=fault is None and not invalid, undecodable=undecodable)
    if removed:
        salvage.result = Rewrite(key, removed, events + len(invalid), shared)
        salvage.body = ndjson.compress([b"\n".join(kept)], level)
        if fault:
            salvage.left_behind = f"; what followed its gzip fault ({fault}) was left out"
    return salvage


def _event(line: bytes) -> dict[str, Any] | None:
    """The line's event; None for a blank line or one that is not a JSON object."""
    if not line.strip():
        return None
    try:
        event = _line.decode(line)
    except msgspec.DecodeError:
        return None
    return event if isinstance(event, dict) else None


def _parquet(key: str, body: bytes, subjects: Subjects, level: int) -> Salvage:
    """The rows of the row groups that read (all of them, or none when the file's footer does
    not), the subjects' left out."""
    rows, damage = reading.decode("parquet", body)
    salvage = Salvage(whole=damage is None, undecodable=damage is not None)
    removed = subjects.removed(rows)
    count = pc.sum(removed).as_py() or 0
    if not count:
        return salvage
    kept = rows.filter(pc.invert(removed))
    salvage.result = Rewrite(key, count, kept.num_rows, subjects.shared_devices(rows))
    if kept.num_rows and damage is not None:
        salvage.body = parquet_body(key, kept, level)
        if damage.row_groups:
            failed = len(damage.row_groups)
            salvage.left_behind = f"; {failed} of its row groups did not read and were left out"
    return salvage


def _note(store: ObjectStore, key: str, left_behind: str) -> None:
    """Say in `key`'s reason file that it was rewritten, and what of it was left out; once."""
    reason_key = key + REASON_SUFFIX
    reason = store.get_json(reason_key)
    reason = reason if isinstance(reason, dict) else {}
    notes = reason.setdefault("privacy_deletions", [])
    note = REWRITTEN + left_behind
    if notes[-1:] != [note]:
        notes.append(note)
        store.put_json(reason_key, reason)
