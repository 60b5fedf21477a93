"""Deleting subjects' events from the dead letters: their JSON copies under `errors/` in the
bucket (`naming.error_object`) and the dead-letter streams in Redis (`stream.dead_letters`).

A letter holds one stream entry (`codec`). A letter holding some of the subjects' events is
written again with its entry re-encoded without them, every other field (of the document, of
the letter, of the entry) as it was; one holding only theirs is removed. A letter holding none
is never written. A letter whose entry cannot be decoded is left as it is: when the text of one
of the subjects' IDs occurs in its bytes, it is listed in `Tally.undecodable` for a person to
decide (MsgPack and JSON keep strings as they are, so an ID stored as text is found there).
"""

from __future__ import annotations

import base64
from collections.abc import Iterator
from typing import Any

import msgspec
import redis

from shared import codec
from shared.archive.naming import ERRORS_PREFIX
from shared.archive.privacy.subjects import Subjects
from shared.archive.privacy.tally import Tally
from shared.archive.storage import ObjectGone, ObjectStore
from shared.stream import FIELD_PREFIX, Client, EntryId, Fields, original_fields

# Letters read from a dead-letter stream at a time: an entry may be a few MB (up to
# `codec.max_entry_bytes`), so a page stays well under a hundred.
PAGE = 16
# A letter whose stream is written while it is replaced (a redrive, the consumer appending) is
# looked for again at most this many times; then the run fails, and the next one resumes.
ATTEMPTS = 5
_document_decoder = msgspec.json.Decoder()


def without_subjects(fields: Fields, subjects: Subjects, tally: Tally) -> Fields | None:
    """The stream entry `fields` without the subjects' events, counted in `tally`: None when
    it holds none of them, an empty dict when every event was theirs. UndecodableEntry when
    it cannot be decoded."""
    events = codec.decode_entry(fields)
    kept = [event for event in events if not subjects.matches(event)]
    if len(kept) == len(events):
        return None
    tally.events_deleted += len(events) - len(kept)
    tally.shared_devices_kept += sum(1 for event in kept if subjects.shared_device(event))
    tally.dead_letters_rewritten += 1
    # The entry's own fields stay, in their order; only those the codec writes are replaced.
    return {**fields, **codec.encode_entry(kept)} if kept else {}


# --- the bucket's copies, under errors/ -----------------------------------------------------


def scrub_bucket_letters(store: ObjectStore, subjects: Subjects) -> Tally:
    """Every dead letter under `errors/` (at the bucket's root) without the subjects' events:
    written again under its key, or removed when none is left. A rewrite is one PUT, so a
    reader sees the letter before or after, and a run started again finds nothing more to do
    in the letters it already wrote."""
    tally = Tally()
    for key, _ in store.objects_under(ERRORS_PREFIX):
        tally.objects_scanned += 1
        try:
            body = store.get(key)
        except ObjectGone:
            continue  # removed meanwhile
        new_body = _scrubbed_document(key, body, subjects, tally)
        if new_body is None:
            continue
        if new_body:
            store.put(key, new_body, "application/json")
        else:
            store.delete([key])
    return tally


def _scrubbed_document(key: str, body: bytes, subjects: Subjects, tally: Tally) -> bytes | None:
    """The letter `body` without the subjects' events: None when unchanged, empty when no
    event is left. Its entry's fields are base64 in the document (`naming.error_object`)."""
    document, fields = _document_fields(body)
    try:
        if document is None:
            raise codec.UndecodableEntry("not a dead letter's document")
        new_fields = without_subjects(fields, subjects, tally)
    except codec.UndecodableEntry:
        if subjects.mentions(b"\n".join([body, *fields.values()])):
            tally.undecodable.append(key)
        return None
    if not new_fields:
        return None if new_fields is None else b""
    for name, value in new_fields.items():
        if value != fields[name]:  # only the fields the codec wrote again
            document["fields"][name.decode()] = base64.b64encode(value).decode()
    return msgspec.json.encode(document)


def _document_fields(body: bytes) -> tuple[dict[str, Any] | None, Fields]:
    """The letter's document and its entry's fields; (None, {}) when it is not one."""
    try:
        document = _document_decoder.decode(body)
        fields = {
            name.encode(): base64.b64decode(value, validate=True)
            for name, value in document["fields"].items()
        }
    except (msgspec.DecodeError, KeyError, TypeError, AttributeError, ValueError):
        return None, {}  # binascii.Error is a ValueError
    return document, fields


# --- the dead-letter streams in Redis -------------------------------------------------------


def scrub_dead_letter_streams(client: Client, dead_keys: list[str], subjects: Subjects) -> Tally:
    """Every letter of the dead-letter streams `dead_keys` without the subjects' events. A
    letter is replaced in one MULTI/EXEC transaction (the rewritten letter added, the old one
    deleted), or deleted when no event is left, so that a run killed anywhere leaves each
    letter whole, once, rewritten or not. The letters are those there when a stream's scan
    starts: one added meanwhile (a rewritten one among them) waits for the next run."""
    tally = Tally()
    for dead_key in dead_keys:
        for dead_id, record in _letters(client, dead_key):
            _scrub_letter(client, dead_key, dead_id, record, subjects, tally)
    return tally


def _letters(client: Client, dead_key: str) -> Iterator[tuple[EntryId, Fields]]:
    """The letters of `dead_key` up to its last one now, a page at a time (XRANGE with an
    exclusive start, Redis 6.2)."""
    last = client.xrevrange(dead_key, count=1)
    if not last:
        return
    start, end = b"-", last[0][0]
    while True:
        page = client.xrange(dead_key, min=start, max=end, count=PAGE)
        yield from page
        if len(page) < PAGE:
            return
        start = b"(" + page[-1][0]


def _scrub_letter(
    client: Client,
    dead_key: str,
    dead_id: EntryId,
    record: Fields,
    subjects: Subjects,
    tally: Tally,
) -> None:
    counted = Tally()  # added once the letter is replaced
    try:
        new_fields = without_subjects(original_fields(record), subjects, counted)
    except codec.UndecodableEntry:
        if subjects.mentions(b"\n".join(record.values())):
            tally.undecodable.append(f"{dead_key} {dead_id.decode()}")
        return
    if new_fields is not None and _replace(client, dead_key, dead_id, record, new_fields):
        tally.add(counted)


def _replace(
    client: Client, dead_key: str, dead_id: EntryId, record: Fields, new_fields: Fields
) -> bool:
    """Replace the letter `dead_id` (`record`: entries never change) by one holding
    `new_fields`, or delete it when they are none; False when it is gone (redriven, trimmed).
    WATCH fails the transaction when anything wrote the stream since the letter was found
    there, so that a letter a redrive removed meanwhile is not added back: it is looked for
    again."""
    for _ in range(ATTEMPTS):
        with client.pipeline(transaction=True) as pipe:
            try:
                pipe.watch(dead_key)
                if not pipe.xrange(dead_key, min=dead_id, max=dead_id):
                    return False
                pipe.multi()
                if new_fields:
                    pipe.xadd(dead_key, _letter(record, new_fields))
                pipe.xdel(dead_key, dead_id)
                pipe.execute()
                return True
            except redis.WatchError:
                continue
    raise redis.WatchError(f"{dead_key} kept changing under dead letter {dead_id.decode()}")


def _letter(record: Fields, new_fields: Fields) -> Fields:
    """The letter `record` holding `new_fields` as its entry: its own fields (original_id,
    reason) and the entry's names and order as they were."""
    letter = {name: value for name, value in record.items() if not name.startswith(FIELD_PREFIX)}
    letter.update({FIELD_PREFIX + name: value for name, value in new_fields.items()})
    return letter
