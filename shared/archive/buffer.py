"""Events read but not yet stored, grouped by partition; and when to flush them: a small, pure
rule of (event count, bytes, age), like Firehose's buffering hints."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from operator import methodcaller
from typing import Any

from shared.archive.formats import Format, named
from shared.archive.naming import QUARANTINE_ROOT, RAW_ROOTS, object_key
from shared.archive.partitions import partition_path
from shared.settings import Settings

_RECEIVED_AT = methodcaller("get", "receivedAt")


@dataclass
class _Partition:
    entry_ids: list[bytes] = field(default_factory=list)
    staged: list[Any] = field(default_factory=list)  # what the format staged, one per entry
    events: int = 0


@dataclass
class Buffer:
    """Events read but not yet stored, grouped by partition, with the entry IDs they came from,
    staged in `format` (`ARCHIVE_FORMAT`: a module of `shared.archive.formats`)."""

    format: str = "ndjson"
    # Mixed into the objects' names: the key of the shard the entries came from, since two
    # shards may hold the same entry IDs. Empty for STREAM_KEY itself (names as before shards).
    salt: str = ""
    entry_ids: list[bytes] = field(default_factory=list)
    events: int = 0
    bytes: int = 0  # uncompressed, as the format counts it
    started_at: float | None = None
    _partitions: dict[str, _Partition] = field(default_factory=dict)
    _format: Format = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        self._format = named(self.format)

    @property
    def content_type(self) -> str:
        """What every object of this buffer is stored as."""
        return self._format.CONTENT_TYPE

    def add(
        self,
        entry_id: bytes,
        events: list[dict[str, Any]],
        quarantined: list[dict[str, Any]] | None = None,
    ) -> None:
        """Stage one entry's events, and those of them to store under the quarantine's root
        (`naming.QUARANTINE_ROOT`); all or nothing if one of them cannot be placed or staged."""
        groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
        for root, part in (("", events), (QUARANTINE_ROOT, quarantined or ())):
            for path, group in _by_partition(part):
                groups.setdefault((root, path), []).extend(group)
        staged = [
            (where, len(group), *self._format.stage(group)) for where, group in groups.items()
        ]
        for where, count, chunk, nbytes in staged:
            partition = self._partitions.setdefault(where, _Partition())
            partition.entry_ids.append(entry_id)
            partition.staged.append(chunk)
            partition.events += count
            self.bytes += nbytes
        self.entry_ids.append(entry_id)
        self.events += sum(len(group) for group in groups.values())
        if self.started_at is None:
            self.started_at = time.monotonic()

    def objects(self, prefix: str, level: int = 3) -> Iterator[tuple[str, bytes, int]]:
        """(key, body, event count) for each object this buffer becomes, under the format's
        root in `prefix` (or in the quarantine's); store each body as `content_type`."""
        for (root, path), partition in self._partitions.items():
            under = prefix + root + RAW_ROOTS[self.format]
            key = object_key(under, path, partition.entry_ids, self._format.SUFFIX, self.salt)
            yield key, self._format.encode(partition.staged, level), partition.events

    def __len__(self) -> int:
        return len(self.entry_ids)


def _by_partition(events: list[dict[str, Any]]) -> Iterator[tuple[str, list[dict[str, Any]]]]:
    """The events grouped by partition, in order within each group. An entry is one request,
    whose events share one receivedAt: then its events are one group, placed once (placing
    each event costs a tenth of staging it)."""
    try:
        one_request = len(set(map(_RECEIVED_AT, events))) == 1
    except TypeError:  # a receivedAt that is not hashable: placing it says why it is unusable
        one_request = False
    if one_request:
        yield partition_path(events[0]), events
        return
    groups: dict[str, list[dict[str, Any]]] = {}
    for event in events:
        groups.setdefault(partition_path(event), []).append(event)
    yield from groups.items()


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
