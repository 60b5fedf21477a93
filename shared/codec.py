"""The stream entry format: one entry per HTTP request, its events packed together as MsgPack.

An entry is a Redis Stream field map:

    v  format version (b"1")
    n  number of events, as decimal text (lets tools count without unpacking)
    d  the events, a MsgPack array of maps
    q  optional: the positions in `d` of the events a tracking plan quarantines, as decimal
       text separated by commas (b"0,3"); the consumer stores them under `quarantine/`

The version lets the format evolve: a reader refuses versions it does not know instead of
misreading them. A field it does not know it ignores: a consumer older than `q` stores the
quarantined events with the others (tagged with their violations), which is why consumers are
deployed first (docs/upgrading.md).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import msgspec

FORMAT_VERSION = b"1"
# The largest entry ingest writes is this many times MAX_BODY_BYTES (stamping and the batch's
# context copied into each event make an entry larger than the body it came from). Readers
# size their reads by it: consumers must be able to hold what ingest admits. Ingest's checks
# (shared/events.py's check_stored_size) bound an entry by 9/4 of the body limit for the
# events as sent, once more the limit for the batch's fields stored again in each event, and
# 224 bytes of stamp for each of at most one event per 128 bytes of the limit (1.75 times
# it, for source names of up to 32 bytes); ingest refuses whatever would exceed it.
MAX_ENTRY_GROWTH = 5


def max_entry_bytes(max_body_bytes: int) -> int:
    """The most bytes (all fields of one entry) that ingest writes for one request."""
    return MAX_ENTRY_GROWTH * max_body_bytes


def entry_bytes(fields: dict[bytes, bytes]) -> int:
    """An entry's size as `max_entry_bytes` counts it: its fields' names and values."""
    return sum(len(name) + len(value) for name, value in fields.items())


_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(list[dict[str, Any]])


def packed(value: Any) -> msgspec.Raw:
    """`value` encoded once, for events that all hold it: an entry's encoding copies these
    bytes instead of walking the object again (enrichment's location and parsed user agent,
    the same for every event of a request). Decoded, it is `value` again."""
    return msgspec.Raw(_encoder.encode(value))


class UndecodableEntry(ValueError):
    """A stream entry that this version cannot turn back into events."""


class UnencodableEvents(ValueError):
    """Events holding values MsgPack cannot carry: integers outside the 64-bit range."""

    def __init__(self, indexes: list[int]) -> None:
        super().__init__(f"events {indexes} hold integers outside the 64-bit range")
        self.indexes = indexes


def encode_entry(
    events: list[dict[str, Any]], quarantined: Iterable[int] = ()
) -> dict[bytes, bytes]:
    """The entry of `events`, the positions `quarantined` marked as such."""
    try:
        packed = _encoder.encode(events)
    except OverflowError:
        raise UnencodableEvents(_unencodable_indexes(events)) from None
    entry = {b"v": FORMAT_VERSION, b"n": b"%d" % len(events), b"d": packed}
    marked = b",".join(b"%d" % index for index in sorted(set(quarantined)))
    if marked:
        entry[b"q"] = marked
    return entry


def quarantined_of(fields: dict[bytes, bytes], count: int) -> frozenset[int]:
    """The positions of an entry's quarantined events (none without `q`); UndecodableEntry for
    a `q` that is not positions among its `count` events."""
    marked = fields.get(b"q")
    if not marked:
        return frozenset()
    try:
        positions = frozenset(int(part) for part in marked.split(b","))
    except ValueError:
        raise UndecodableEntry("its quarantine mark is not a list of positions") from None
    if not all(0 <= position < count for position in positions):
        raise UndecodableEntry("its quarantine mark names events it does not hold")
    return positions


def _unencodable_indexes(events: list[dict[str, Any]]) -> list[int]:
    bad = []
    for index, event in enumerate(events):
        try:
            _encoder.encode(event)
        except OverflowError:
            bad.append(index)
    return bad


def decode_entry(fields: dict[bytes, bytes]) -> list[dict[str, Any]]:
    version = fields.get(b"v")
    if version != FORMAT_VERSION:
        raise UndecodableEntry(f"unknown entry format version {version!r}")
    try:
        return _decoder.decode(fields[b"d"])
    except KeyError:
        raise UndecodableEntry("entry has no 'd' field") from None
    except msgspec.DecodeError as exc:
        raise UndecodableEntry(f"events are not a MsgPack list of maps: {exc}") from None
    except RecursionError:  # ingest never nests so deep: another writer did
        raise UndecodableEntry("events are nested deeper than the decoder goes") from None
