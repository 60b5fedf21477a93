"""The logical stream as STREAM_SHARDS stream keys, spread over a Redis Cluster's slots.

With one shard the stream is STREAM_KEY itself, as it always was. With N, it is N keys
`STREAM_KEY:{tag}`, whose hash tags are chosen (not left to chance) so that shard i's slot
lies in the middle of the i-th of N equal slices of the 16,384 slots: on a cluster whose
primaries own equal slot ranges, as `redis-cli --cluster create` and ElastiCache assign them,
every primary holds N/M shards (N a multiple of the M primaries), and never none while N >= M.
A shard's other keys (its dead letters) carry the same tag, so they live on its node. Each
stream key has two companions in its own slot, which the stream's scripts update with it: its
size hash (`size_key`: the bytes and events its entries hold, which admission checks against
STREAM_MAX_BYTES) and its ledger (`ledger_key`: each entry's size, under the entry's ID).

Every key ever written is listed in the registry set `STREAM_KEY:shards`, which ingest adds
its keys to after its appends (again every hour): consumers drain every key listed (and
STREAM_KEY itself, which a single-shard release wrote without registering), so changing
STREAM_SHARDS never strands the entries of a key no longer written. Such a retired key is
removed by a consumer once it is drained (empty, nothing pending, no dead letters) and nothing
was written to it for RETIRE_AFTER_S: by then no ingest process of the previous STREAM_SHARDS
is left.
"""

from __future__ import annotations

import functools
from typing import Any

import redis
from redis.crc import REDIS_CLUSTER_HASH_SLOTS, key_slot

# Candidate tags tried per shard: more than enough to land within a few slots of the target.
_CANDIDATES = 4096
# A retired key is removed only after a day without writes: long after every ingest process of
# the previous configuration (a Lambda environment, a container of the previous deploy) ended.
RETIRE_AFTER_S = 24 * 3600

# Delete the stream key KEYS[1] with its size hash and ledger (KEYS[2], KEYS[3]) if it is
# drained and was last written before ARGV[1] (ms), and its dead-letter stream KEYS[4] (when
# given) is empty: checked and done in one step, so that an entry or a dead letter added
# meanwhile is never left behind.
_DELETE_IF_DRAINED = """
if KEYS[4] and redis.call('XLEN', KEYS[4]) > 0 then return 0 end
if redis.call('EXISTS', KEYS[1]) == 0 then
  redis.call('DEL', KEYS[2], KEYS[3])
  return 1
end
if redis.call('XLEN', KEYS[1]) > 0 then return 0 end
for _, group in ipairs(redis.call('XINFO', 'GROUPS', KEYS[1])) do
  for i = 1, #group, 2 do
    if group[i] == 'pending' and group[i + 1] > 0 then return 0 end
  end
end
local last = redis.call('XINFO', 'STREAM', KEYS[1])
for i = 1, #last, 2 do
  if last[i] == 'last-generated-id' then
    local ms = tonumber(string.match(last[i + 1], '^(%d+)'))
    if ms >= tonumber(ARGV[1]) then return 0 end
  end
end
redis.call('DEL', KEYS[1], KEYS[2], KEYS[3])
return 1
"""


def shard_keys(stream_key: str, shards: int) -> list[str]:
    """The stream keys ingest writes: STREAM_KEY itself for one shard."""
    if shards < 1:
        raise ValueError(f"shards must be 1 or more, got {shards}")
    if shards == 1:
        return [stream_key]
    return [f"{stream_key}:{{{tag}}}" for tag in _tags(shards)]


def dead_letter_key(stream_key: str) -> str:
    """Where a stream key's dead letters go: a shard's share its hash tag, so its node."""
    return f"{stream_key}:dead"


def compaction_report_key(stream_key: str) -> str:
    """Where the compactor leaves its last run's report (`shared.status.CompactionReport`):
    one key per logical stream, which `event-ingest status` and /metrics read."""
    return f"{stream_key}:compaction"


def size_key(stream_key: str) -> str:
    """The hash holding what a stream key's entries add up to: `bytes` (the lengths of their
    fields' names and values) and `events` (their `n` fields). In the key's slot, so that one
    script updates both."""
    return _beside(stream_key, "size")


def ledger_key(stream_key: str) -> str:
    """A stream holding one small record per entry of the stream key, under the same ID: its
    `b` bytes and `n` events. What an entry adds to `size_key` is read back from it when the
    entry is removed, and the status counts events and finds IDs in it, never in the entries
    (which may be megabytes each). In the key's slot, like `size_key`."""
    return _beside(stream_key, "ledger")


def _beside(stream_key: str, suffix: str) -> str:
    """`STREAM_KEY:suffix` when that hashes to the stream key's slot (a shard's hash tag does
    it), else the stream key as a hash tag: `{STREAM_KEY}:suffix`."""
    for key in (f"{stream_key}:{suffix}", f"{{{stream_key}}}:{suffix}"):
        if slot_of(key) == slot_of(stream_key):
            return key
    raise ValueError(f"no key beside {stream_key!r} shares its slot: use one without braces")


def rate_bucket_key(stream_key: str, bucket: str) -> str:
    """A token bucket guarding the stream key (shared/token_bucket.py), in its slot, so that
    the append script checks and takes it: `STREAM_KEY:rate:` (or `{STREAM_KEY}:rate:`) and
    the bucket's name."""
    return _rate_bucket_prefix(stream_key) + bucket


@functools.cache
def _rate_bucket_prefix(stream_key: str) -> str:
    """A prefix holding a hash tag of the stream key's slot, so that whatever follows it (a
    bucket's name) the key hashes there: the key's own tag (a shard's), else the key as one."""
    for prefix in (f"{stream_key}:rate:", f"{{{stream_key}}}:rate:"):
        start = prefix.find("{")
        tagged = start >= 0 and prefix.find("}", start + 1) > start + 1
        if tagged and slot_of(prefix) == slot_of(stream_key):
            return prefix
    raise ValueError(f"no key beside {stream_key!r} shares its slot: use one without braces")


def registry_key(stream_key: str) -> str:
    """The set of every stream key of this logical stream that ingest has written."""
    return f"{stream_key}:shards"


def slot_of(key: str) -> int:
    return key_slot(key.encode())


@functools.cache
def _tags(shards: int) -> tuple[str, ...]:
    width = REDIS_CLUSTER_HASH_SLOTS / shards
    tags = []
    for index in range(shards):
        middle = (index + 0.5) * width
        candidates = (f"{index}.{attempt}" for attempt in range(_CANDIDATES))
        tags.append(min(candidates, key=lambda tag: abs(key_slot(tag.encode()) - middle)))
    return tuple(tags)


def keys_to_drain(client: Any, stream_key: str, shards: int) -> list[str]:
    """Every key of the logical stream that may hold entries: the current shards, every key
    ingest ever registered, and STREAM_KEY itself if it exists (a single-shard release wrote it
    without registering). Current shards first, in order; the rest sorted."""
    current = shard_keys(stream_key, shards)
    others = {
        key.decode() if isinstance(key, bytes) else key
        for key in client.smembers(registry_key(stream_key))
    }
    if stream_key not in current and client.exists(stream_key):
        others.add(stream_key)
    return current + sorted(others - set(current))


def retire_if_drained(client: Any, stream_key: str, shards: int, key: str) -> bool:
    """Remove `key`, a key of the logical stream that STREAM_SHARDS no longer writes, if it is
    drained, has no dead letters and was not written for RETIRE_AFTER_S; True if removed."""
    if key in shard_keys(stream_key, shards):
        return False
    # Its dead letters stay listed, with it, until handled. A shard's share its slot, so the
    # script checks them; STREAM_KEY's (no hash tag) live elsewhere on a cluster.
    dead = dead_letter_key(key)
    together = not isinstance(client, redis.RedisCluster) or slot_of(dead) == slot_of(key)
    if not together and client.xlen(dead):
        return False
    seconds, micros = client.time()
    before_ms = seconds * 1000 + micros // 1000 - RETIRE_AFTER_S * 1000
    keys = [key, size_key(key), ledger_key(key), *([dead] if together else [])]
    if not client.register_script(_DELETE_IF_DRAINED)(keys=keys, args=[before_ms]):
        return False
    client.srem(registry_key(stream_key), key)
    return True
