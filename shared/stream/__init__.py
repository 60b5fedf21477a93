"""Redis Streams access: add, read, acknowledge, claim, trim and dead-letter entries.

This package knows Redis commands and nothing about events or objects: entries are opaque
field maps (see `codec`). It is the stream side of the house and never imports the archive
side. The ingest hot path (`EventStream.add`) is one round trip, with its WAIT for replicas
pipelined when REDIS_WAIT_REPLICAS is set; so is acknowledging. Commands that need memory
(XADD, XGROUP CREATE) are kept off the consumer's path when Redis is full, so consumers can
always drain and free memory.

- `connection`: the client (plain or cluster, failing fast) and a consumer's unique name;
- `entries`: what an entry is here (ID, fields) and how IDs order;
- `ledger`: the scripts that add and remove entries with their byte and event accounting;
- `producers`: `EventStream`, `ShardedStream` and `producer`, admission's refusals;
- `consumer_group`: `GroupReader`, reading, acknowledging, trimming and claiming in pages;
- `dead_letters`: the dead-letter record, written, copied inside Redis, read back, redriven.

The names below are the package's interface: import them from `shared.stream`.
"""

from shared.shards import dead_letter_key
from shared.stream.connection import (
    REDIS_ERRORS,
    Client,
    connect,
    out_of_memory,
    unique_consumer_name,
)
from shared.stream.consumer_group import GroupReader
from shared.stream.dead_letters import FIELD_PREFIX, original_fields, redrive
from shared.stream.entries import Entry, EntryId, Fields, id_key, next_id
from shared.stream.ledger import accounting_keys
from shared.stream.producers import (
    BacklogFull,
    EventStream,
    RateLimited,
    ReplicationShortfall,
    ShardedStream,
    producer,
)

# The ID order, under the private names its tests have always used.
_id_key, _next_id = id_key, next_id

__all__ = [
    "FIELD_PREFIX",
    "REDIS_ERRORS",
    "BacklogFull",
    "Client",
    "Entry",
    "EntryId",
    "EventStream",
    "Fields",
    "GroupReader",
    "RateLimited",
    "ReplicationShortfall",
    "ShardedStream",
    "accounting_keys",
    "connect",
    "dead_letter_key",
    "original_fields",
    "out_of_memory",
    "producer",
    "redrive",
    "unique_consumer_name",
]
