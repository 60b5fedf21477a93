"""How much a drain may hold at once: entries per read, each shard's share of the buffering
hints and read bound, and the Redis connections a consumer draining many keys needs.

Pure functions of Settings: they touch neither Redis nor object storage.
"""

from __future__ import annotations

from dataclasses import replace

from shared import codec
from shared.settings import Settings

# Most entries per XREADGROUP (fewer when they may be large: `read_count`); one entry is one
# HTTP request's events.
READ_COUNT = 200
# The least a shard's share of FLUSH_MAX_BYTES may be: objects smaller than this cost more in
# requests than they save in memory.
MIN_SHARE_BYTES = 1024 * 1024


def read_count(settings: Settings) -> int:
    """Entries per read, so that one read holds at most READ_MAX_BYTES. XREADGROUP counts
    entries, not bytes: each may be the largest ingest writes (`codec.max_entry_bytes` of
    MAX_BODY_BYTES). At least one, whatever READ_MAX_BYTES says; at most READ_COUNT."""
    largest = codec.max_entry_bytes(settings.max_body_bytes)
    return max(1, min(READ_COUNT, settings.read_max_bytes // largest))


def buffering_share(settings: Settings, keys: int) -> Settings:
    """Each of `keys` drainers' buffering hints and read bound: FLUSH_MAX_BYTES,
    FLUSH_MAX_EVENTS and READ_MAX_BYTES shared out, so that a consumer's buffers and reads
    together stay within what one stream's would hold (the function's memory is sized for
    one), down to MIN_SHARE_BYTES of buffer and one entry per read each. One key: unchanged."""
    if keys == 1:
        return settings
    return replace(
        settings,
        flush_max_bytes=max(
            settings.flush_max_bytes // keys, min(settings.flush_max_bytes, MIN_SHARE_BYTES)
        ),
        flush_max_events=max(settings.flush_max_events // keys, 1),
        read_max_bytes=max(settings.read_max_bytes // keys, 1),
    )


def connections_needed(keys: int) -> int:
    """The Redis connections a consumer draining `keys` keys uses at once: each key's drainer
    reads (and claims, and dead-letters) on one, its flusher acknowledges and trims on
    another, and the invocation itself lists and retires keys on one more."""
    return 2 * keys + 1
