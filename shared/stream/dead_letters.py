"""Dead letters: the record format of an entry set aside, written, copied, read back, redriven.

A dead letter is an entry of the dead-letter stream beside its stream key
(`shards.dead_letter_key`): `original_id`, `reason`, and the entry's fields under
FIELD_PREFIX. It is written from Python (`append`) or, for an entry too large for the
consumer to read, copied by Redis itself (COPY_TO_DEAD_LETTERS, `copy_unread`); read back by
`original_fields`; and put back on the stream by `redrive`. Acknowledging the entry is the
consumer group's part (`GroupReader.dead_letter`). May touch: the dead-letter streams, and the
stream through a producer when redriving.
"""

from __future__ import annotations

import logging

import redis
from redis.commands.core import Script

from shared import shards as shards_module
from shared.shards import dead_letter_key
from shared.stream.connection import Client, out_of_memory
from shared.stream.entries import EntryId, Fields
from shared.stream.producers import EventStream, ShardedStream

log = logging.getLogger(__name__)

# A dead letter keeps its entry's fields under this prefix, beside its own fields.
FIELD_PREFIX = b"field:"

# Copy one entry into its dead-letter stream inside Redis, as `append` writes a dead letter
# (original_id, reason, and its fields under FIELD_PREFIX): the consumer never holds its data.
# KEYS: the stream, its dead-letter stream. ARGV: entry ID, reason, MAXLEN, FIELD_PREFIX.
# Returns whether the entry was still there to copy.
COPY_TO_DEAD_LETTERS = """
local entries = redis.call('XRANGE', KEYS[1], ARGV[1], ARGV[1])
if #entries == 0 then return 0 end
local fields, record = entries[1][2], {'original_id', ARGV[1], 'reason', ARGV[2]}
for i = 1, #fields, 2 do
  record[#record + 1] = ARGV[4] .. fields[i]
  record[#record + 1] = fields[i + 1]
end
redis.call('XADD', KEYS[2], 'MAXLEN', ARGV[3], '*', unpack(record))
return 1
"""


def append(
    client: Client,
    stream_key: str,
    entry_id: EntryId,
    fields: Fields | None,
    reason: str,
    max_len: int,
) -> None:
    """Add the dead letter of `stream_key`'s entry, keeping the latest `max_len`. If Redis is
    too full for it, only its copy in the bucket records it."""
    record: Fields = {b"original_id": entry_id, b"reason": reason.encode()}
    record.update({FIELD_PREFIX + name: value for name, value in (fields or {}).items()})
    try:
        # Exact: dead letters are rare, and an approximate bound trims nothing below ~100.
        client.xadd(dead_letter_key(stream_key), record, maxlen=max_len, approximate=False)
    except redis.exceptions.OutOfMemoryError:
        log.error("Redis is full: entry %s is dead-lettered in the bucket only", entry_id)


def copyable_in_redis(client: Client, stream_key: str) -> bool:
    """Whether Redis can copy `stream_key`'s entries into its dead-letter stream itself: not on
    a cluster where the two lie in different slots (STREAM_KEY unsharded), since a script
    reaches one slot only."""
    dead_key = dead_letter_key(stream_key)
    one_slot = shards_module.slot_of(dead_key) == shards_module.slot_of(stream_key)
    return one_slot or not isinstance(client, redis.RedisCluster)


def copy_unread(
    copy: Script, stream_key: str, entry_id: EntryId, reason: str, max_len: int
) -> bool:
    """Copy one entry into its dead-letter stream inside Redis, with `copy`
    (COPY_TO_DEAD_LETTERS registered on the client), keeping the latest `max_len`. Returns
    whether the dead letter holds the data: not when Redis is too full for it."""
    try:
        args = [entry_id, reason, max_len, FIELD_PREFIX]
        copy(keys=[stream_key, dead_letter_key(stream_key)], args=args)
    except redis.ResponseError as exc:
        if not out_of_memory(exc):
            raise
        log.error("Redis is full: entry %s is dropped, its record is in the bucket", entry_id)
        return False
    return True


def original_fields(record: Fields) -> Fields:
    """The fields of the entry a dead letter holds (stored as `field:<name>`)."""
    return {
        name[len(FIELD_PREFIX) :]: value
        for name, value in record.items()
        if name.startswith(FIELD_PREFIX)
    }


def redrive(producer: EventStream | ShardedStream, dead_key: str, dead_id: EntryId) -> EntryId:
    """Put a dead letter's original entry back on the stream (as a new entry, subject to
    admission control) and remove the dead letter from `dead_key`, the dead-letter stream of
    the key (shard) it came from."""
    [(_, record)] = producer.client.xrange(dead_key, min=dead_id, max=dead_id) or [(None, None)]
    if record is None:
        raise KeyError(f"no dead letter {dead_id!r} in {dead_key}")
    new_id = producer.add(original_fields(record))
    producer.client.xdel(dead_key, dead_id)
    return new_id
