"""What an entry is to the stream package: an ID and an opaque field map, and how IDs order.

The fields' meaning belongs to `shared.codec`; this package never looks inside them. Pure
Python: touches nothing.
"""

from __future__ import annotations

EntryId = bytes
Fields = dict[bytes, bytes]
# A pending entry whose data was trimmed away comes back with no fields.
Entry = tuple[EntryId, Fields | None]


def id_key(entry_id: EntryId | str) -> tuple[int, int]:
    """An entry ID as (milliseconds, sequence), which sorts as Redis orders IDs."""
    raw = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
    ms, _, seq = raw.partition("-")
    return int(ms), int(seq or 0)


def next_id(entry_id: EntryId | str) -> bytes:
    """The smallest ID after `entry_id`."""
    ms, seq = id_key(entry_id)
    return f"{ms}-{seq + 1}".encode()
