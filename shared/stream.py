"""Redis Streams access: add, read, acknowledge, claim, trim and dead-letter entries.

This module knows Redis commands and nothing about events or objects: entries are opaque
field maps (see `codec`). The ingest hot path (`EventStream.add`) is one round trip, with
its WAIT for replicas pipelined when REDIS_WAIT_REPLICAS is set; so is acknowledging.
Commands that need memory (XADD, XGROUP CREATE) are kept off the consumer's path when Redis
is full, so consumers can always drain and free memory.

Admission counts bytes as well as entries: each stream key's size hash holds the bytes and
events of its entries, and its ledger one small record per entry (shards.size_key,
ledger_key). The scripts that add or remove entries update both in the same atomic step, so
the hash is exact for every entry appended since the ledger exists; entries appended by an
older release are not counted until they drain (the counters under-count, never over-count),
and an emptied stream starts its counters over from zero.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import logging
import math
import os
import random
import secrets
import socket
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from shared import secrets as shared_secrets
from shared import shards as shards_module
from shared import token_bucket
from shared.settings import Settings
from shared.shards import dead_letter_key

log = logging.getLogger(__name__)

EntryId = bytes
Fields = dict[bytes, bytes]
# A dead letter keeps its entry's fields under this prefix, beside its own fields.
FIELD_PREFIX = b"field:"
# A pending entry whose data was trimmed away comes back with no fields.
Entry = tuple[EntryId, Fields | None]


class BacklogFull(Exception):
    """The stream holds STREAM_MAX_LEN entries or STREAM_MAX_BYTES bytes of them: accept
    nothing until consumers catch up."""


class ReplicationShortfall(Exception):
    """The entry was written, but fewer replicas than REDIS_WAIT_REPLICAS confirmed it in
    time: a failover now could lose it, so the request must not be answered as accepted."""

    def __init__(self, entry_id: EntryId, confirmed: int, wanted: int) -> None:
        super().__init__(f"entry {entry_id.decode()} reached {confirmed} of {wanted} replicas")
        self.entry_id = entry_id
        self.confirmed = confirmed
        self.wanted = wanted


class RateLimited(Exception):
    """A token bucket the request takes from holds too few tokens (shared/token_bucket.py):
    nothing was written. It could pass in `wait_s`; `retry_after_s` is that in whole seconds
    (at least 1), for HTTP's Retry-After."""

    def __init__(self, bucket: token_bucket.Bucket, wait_s: float) -> None:
        super().__init__(f"{bucket.name} is over its limit for {wait_s:.3f}s")
        self.bucket = bucket
        self.wait_s = wait_s
        self.retry_after_s = max(1, math.ceil(wait_s))


Client = redis.Redis | redis.RedisCluster
# What a Redis that cannot answer raises: redis-py's cluster client raises some errors (no node
# reachable, a slot no node serves) outside RedisError.
REDIS_ERRORS: tuple[type[Exception], ...] = (
    redis.RedisError,
    redis.exceptions.RedisClusterException,
)


def connect(settings: Settings) -> Client:
    """A client that fails fast: bounded timeouts and a single immediate retry, on a broken
    connection only (a pooled socket may be stale after a Redis restart), never on a timeout,
    after which the command may have run. Its pool holds at most REDIS_MAX_CONNECTIONS; a caller
    finding none free waits up to REDIS_TIMEOUT_S, then gets a ConnectionError. redis-py uses
    hiredis to parse replies.

    With REDIS_CLUSTER, redis-py's cluster client: it follows MOVED and ASK redirections and,
    after a failover, asks the cluster for its new slot map; every command here names one key
    (or keys of one slot). It retries once, at once, after a broken connection or a timeout
    (having refreshed its slot map), not the ten times with backoff it would by default: a
    request must fail fast. It contacts the cluster when it is made."""
    if settings.redis_cluster:
        return redis.RedisCluster.from_url(
            settings.redis_url,
            max_connections=settings.redis_max_connections,
            socket_timeout=settings.redis_timeout_s,
            socket_connect_timeout=settings.redis_timeout_s,
            health_check_interval=30,
            credential_provider=_credentials(settings),
            retry=Retry(NoBackoff(), 1),
        )
    pool = redis.BlockingConnectionPool.from_url(
        settings.redis_url,
        max_connections=settings.redis_max_connections,
        timeout=settings.redis_timeout_s,
        socket_timeout=settings.redis_timeout_s,
        socket_connect_timeout=settings.redis_timeout_s,
        retry=Retry(NoBackoff(), 1, supported_errors=(redis.ConnectionError,)),
        health_check_interval=30,
        credential_provider=_credentials(settings),
    )
    return redis.Redis(connection_pool=pool)


def _credentials(settings: Settings) -> shared_secrets.RedisCredentials | None:
    """REDIS_AUTH_SECRET's token, read again as it ages, for each new connection."""
    if settings.redis_auth_secret is None:
        return None
    secret = shared_secrets.cached(
        settings.redis_auth_secret, settings.secrets_refresh_s, shared_secrets.redis_credentials
    )
    return shared_secrets.RedisCredentials(secret)


def unique_consumer_name() -> str:
    """Host and pid say where a consumer ran; the random part keeps reused pids apart."""
    return f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"


# Check and append in one atomic step: a check followed by a separate XADD would let concurrent
# requests overshoot the bounds. Capping by MAXLEN instead would delete unread entries.
# KEYS: the stream, its size hash and its ledger (shards.size_key, shards.ledger_key), then
# the token buckets the request takes from (shards.rate_bucket_key), if any.
# ARGV: STREAM_MAX_LEN, STREAM_MAX_BYTES, the request's events (what it takes from each
# bucket), each bucket's rate and burst (token_bucket.bucket_args), then the entry's fields as
# name, value pairs. A bucket short of tokens refuses first, with {'rate_limited', its index,
# the wait in microseconds}; its tokens are taken only once the entry is in.
# The entry's bytes are its fields' names and values; its events, its `n` field (codec). The
# entry goes first: at maxmemory Redis refuses a script's first write, never a later one.
# An empty stream holds nothing, so whatever its counters said was stale (entries removed
# around these scripts): they start again from this entry.
_ADD_IF_ROOM = (
    token_bucket.LUA
    + """
local limited, cost = #KEYS - 3, tonumber(ARGV[3])
local first_field = 4 + 2 * limited
local now, buckets = 0, {}
if limited > 0 then
  local wait, which
  now = buckets_now()
  wait, which, buckets = buckets_check(3, 3, limited, cost, now)
  if which > 0 then return {'rate_limited', which, wait} end
end
local length = redis.call('XLEN', KEYS[1])
if length >= tonumber(ARGV[1]) then return false end
if (tonumber(redis.call('HGET', KEYS[2], 'bytes')) or 0) >= tonumber(ARGV[2]) then
  return false
end
local bytes, events = 0, 0
for i = first_field, #ARGV, 2 do
  bytes = bytes + #ARGV[i] + #ARGV[i + 1]
  if ARGV[i] == 'n' and string.match(ARGV[i + 1], '^%d+$') and #ARGV[i + 1] < 16 then
    events = tonumber(ARGV[i + 1])
  end
end
local id = redis.call('XADD', KEYS[1], '*', unpack(ARGV, first_field))
if length == 0 then redis.call('DEL', KEYS[2], KEYS[3]) end
redis.call('XADD', KEYS[3], id, 'b', bytes, 'n', events)
redis.call('HINCRBY', KEYS[2], 'bytes', bytes)
redis.call('HINCRBY', KEYS[2], 'events', events)
buckets_take(buckets, cost, now)
return id
"""
)

# What removes entries takes their ledger records too (KEYS: the stream, its size hash, its
# ledger) and subtracts what those records added, so the size hash is always the sum of the
# ledger: what the entries admitted through _ADD_IF_ROOM and still held add up to. Never an
# entry's data: reading it into Lua would cost Redis time in proportion to its size. Once the
# stream is empty, the counters and the ledger go (self-healing). Later writes of a script
# are never refused at maxmemory, so consumers can still free memory when Redis is full.
_SETTLE = """
local function forget(ids)
  local bytes, events = 0, 0
  for _, id in ipairs(ids) do
    local record = redis.call('XRANGE', KEYS[3], id, id)[1]
    if record then
      bytes = bytes + tonumber(record[2][2])
      events = events + tonumber(record[2][4])
      redis.call('XDEL', KEYS[3], id)
    end
  end
  return bytes, events
end
local function settle(bytes, events)
  if redis.call('XLEN', KEYS[1]) == 0 then
    redis.call('DEL', KEYS[2], KEYS[3])
    return
  end
  -- Never -0: Lua prints it as such, and HINCRBY refuses it.
  if bytes ~= 0 then redis.call('HINCRBY', KEYS[2], 'bytes', 0 - bytes) end
  if events ~= 0 then redis.call('HINCRBY', KEYS[2], 'events', 0 - events) end
end
"""

# Acknowledged entries are deleted at once when this group is the stream's only one, so the
# stream's length is exactly its backlog: one consumer's stale pending entry cannot hold
# thousands of acknowledged entries behind it (trimming by MINID stops at the oldest pending).
# ARGV: the group, then the entry IDs.
_ACK_AND_DELETE = (
    _SETTLE
    + """
local acked = redis.call('XACK', KEYS[1], ARGV[1], unpack(ARGV, 2))
local groups = redis.call('XINFO', 'GROUPS', KEYS[1])
if #groups == 1 then
  local info = {}
  for i = 1, #groups[1], 2 do info[groups[1][i]] = groups[1][i + 1] end
  if info['name'] == ARGV[1] then
    redis.call('XDEL', KEYS[1], unpack(ARGV, 2))
    local ids = {}
    for i = 2, #ARGV do ids[#ids + 1] = ARGV[i] end
    settle(forget(ids))
  end
end
return acked
"""
)
# Lua's unpack takes at most about 8,000 values: acknowledge in chunks well below that.
ACK_CHUNK = 1000

# Remove the entries below ARGV[1] (exact MINID), at most ARGV[2] ledger records' worth per
# call, so that one call's work stays small; returns {entries removed, 1 if more remain}.
_TRIM_BELOW = (
    _SETTLE
    + """
local chunk = tonumber(ARGV[2])
local records = redis.call('XRANGE', KEYS[3], '-', '(' .. ARGV[1], 'COUNT', chunk + 1)
local limit, more = ARGV[1], 0
if #records > chunk then
  limit, more = records[#records][1], 1
  records[#records] = nil
end
local bytes, events = 0, 0
for _, record in ipairs(records) do
  bytes = bytes + tonumber(record[2][2])
  events = events + tonumber(record[2][4])
end
local removed = redis.call('XTRIM', KEYS[1], 'MINID', limit)
redis.call('XTRIM', KEYS[3], 'MINID', limit)
settle(bytes, events)
return {removed, more}
"""
)
TRIM_CHUNK = 1000

# A consumer may be forgotten only while it holds nothing: deleting one with pending entries
# would drop them from the group for good. Checked and done atomically, for every consumer
# idle longer than ARGV[2] except the caller.
_DELETE_IDLE_EMPTY_CONSUMERS = """
local deleted = 0
for _, consumer in ipairs(redis.call('XINFO', 'CONSUMERS', KEYS[1], ARGV[1])) do
  local info = {}
  for i = 1, #consumer, 2 do info[consumer[i]] = consumer[i + 1] end
  if info['pending'] == 0 and info['idle'] >= tonumber(ARGV[2]) and info['name'] ~= ARGV[3] then
    redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], info['name'])
    deleted = deleted + 1
  end
end
return deleted
"""


def accounting_keys(stream_key: str) -> list[str]:
    """The stream key and the keys that account for its entries, in the order the scripts
    here take them as KEYS: the key, its size hash, its ledger."""
    return [stream_key, shards_module.size_key(stream_key), shards_module.ledger_key(stream_key)]


@dataclass
class EventStream:
    """The producer's view: append one entry per request, while there is room: fewer than
    `max_len` entries and fewer than `max_bytes` bytes of them (so the stream holds at most
    `max_bytes` plus one entry). The entry's size is added to the key's size hash and ledger
    in the same step (shards.size_key, shards.ledger_key).

    With `wait_replicas` > 0, `add` returns only once that many replicas hold the entry
    (Redis's WAIT, like Kafka's acks=all), so a failover to a replica cannot lose it.
    """

    client: Client
    key: str
    max_len: int
    max_bytes: int = Settings.stream_max_bytes
    wait_replicas: int = 0
    wait_timeout_ms: int = 0

    def __post_init__(self) -> None:
        self._add_if_room = self.client.register_script(_ADD_IF_ROOM)
        self.keys = accounting_keys(self.key)

    @classmethod
    def from_settings(cls, settings: Settings, client: Client | None = None) -> EventStream:
        return cls(
            client or connect(settings),
            settings.stream_key,
            settings.stream_max_len,
            max_bytes=settings.stream_max_bytes,
            wait_replicas=settings.redis_wait_replicas,
            wait_timeout_ms=settings.redis_wait_timeout_ms,
        )

    def add(
        self, fields: Fields, cost: int = 0, buckets: tuple[token_bucket.Bucket, ...] = ()
    ) -> EntryId:
        """Append the entry, taking `cost` events from each of `buckets` (in this key's slot,
        checked by the same script): RateLimited if one holds too few, BacklogFull if there
        is no room; either way nothing is written or taken."""
        keys = self.keys + [shards_module.rate_bucket_key(self.key, b.name) for b in buckets]
        args = [
            self.max_len,
            self.max_bytes,
            cost,
            *token_bucket.bucket_args(buckets),
            *(part for pair in fields.items() for part in pair),
        ]
        if self.wait_replicas:
            reply = self._add_and_wait(keys, args)
        else:
            reply = self._add_if_room(keys=keys, args=args)
        if reply is None:
            raise BacklogFull(
                f"stream {self.key} holds {self.max_len} entries or {self.max_bytes} bytes"
            )
        if isinstance(reply, list):  # ['rate_limited', the bucket's index, the wait in us]
            raise RateLimited(buckets[reply[1] - 1], reply[2] / token_bucket.MICROS)
        return reply

    def is_full(self) -> bool:
        """True while `add` would raise BacklogFull."""
        pipe = self.client.pipeline(transaction=False)  # one round trip: the keys share a slot
        pipe.xlen(self.key)
        pipe.hget(self.keys[1], "bytes")
        length, held = pipe.execute()
        return length >= self.max_len or int(held or 0) >= self.max_bytes

    def _add_and_wait(self, keys: list[str], args: list) -> EntryId | list | None:
        """The append and WAIT in one pipeline: one round trip, and on one connection, which
        WAIT needs, since it counts only the writes of the connection it is sent on (on a
        cluster, a connection to the primary that owns the key)."""
        for attempt in range(2):
            node = self._primary_of_key()
            pipe = node.pipeline(transaction=False)
            pipe.evalsha(self._add_if_room.sha, len(keys), *keys, *args)
            pipe.wait(self.wait_replicas, self.wait_timeout_ms)
            try:
                entry_id, confirmed = pipe.execute()
            except redis.exceptions.NoScriptError:
                if attempt:
                    raise
                # A restarted or promoted Redis has no scripts cached; nothing was written.
                node.script_load(_ADD_IF_ROOM)
                continue
            except (redis.exceptions.MovedError, redis.exceptions.ClusterDownError):
                if attempt or not isinstance(self.client, redis.RedisCluster):
                    raise
                # The slot moved (a failover promoted a replica): nothing was written there.
                self.client.nodes_manager.initialize()
                continue
            except (redis.ConnectionError, redis.TimeoutError, redis.exceptions.AskError):
                # The key's primary died, or its slot is migrating. This pipeline went around
                # the cluster client, which would have refreshed its slot map: do it here, so
                # the next request finds the promoted replica. Not retried: it may have run.
                self._refresh_slot_map()
                raise
            written = isinstance(entry_id, bytes)  # not refused (None, or a rate limit's list)
            if written and confirmed < self.wait_replicas:
                raise ReplicationShortfall(entry_id, confirmed, self.wait_replicas)
            return entry_id
        raise AssertionError("unreachable")

    def _primary_of_key(self) -> redis.Redis:
        if not isinstance(self.client, redis.RedisCluster):
            return self.client
        return self.client.get_redis_connection(self.client.get_node_from_key(self.key))

    def _refresh_slot_map(self) -> None:
        if isinstance(self.client, redis.RedisCluster):
            try:
                self.client.nodes_manager.initialize()
            except REDIS_ERRORS as exc:  # no node answers yet: the next request tries again
                log.warning("could not refresh the cluster's slot map: %s", exc)


# How often a producer lists its shards again (well within shards.RETIRE_AFTER_S), and how
# soon after a failure it tries again.
REGISTER_EVERY_S = 3600.0
REGISTER_RETRY_S = 30.0


class ShardedStream:
    """The producer's view of STREAM_SHARDS keys. Each request's entry goes whole to one shard,
    taking turns; a full shard passes it to the next, so a client is refused (`BacklogFull`)
    only when every shard holds STREAM_MAX_LEN entries. An entry written but short of its
    replicas (`ReplicationShortfall`) is never tried again elsewhere."""

    def __init__(self, key: str, shards: list[EventStream]) -> None:
        self.shards = shards
        self.client = shards[0].client
        self.key = key  # the logical stream's name (STREAM_KEY), which no entry is written to
        self.registry = shards_module.registry_key(key)
        self._turns = itertools.count(random.randrange(len(shards)))
        self._register_at = 0.0  # monotonic time of the next registration

    def add(
        self, fields: Fields, cost: int = 0, buckets: tuple[token_bucket.Bucket, ...] = ()
    ) -> EntryId:
        """As EventStream.add. Each shard keeps its own share of every bucket (rate and burst
        over STREAM_SHARDS): requests take turns over the shards, so the shares add up to
        the limit. A shard's bucket that refuses is final (`RateLimited` at once): trying
        the other shards' would give a client STREAM_SHARDS times its limit."""
        shares = tuple(bucket.share(len(self.shards)) for bucket in buckets)
        start = next(self._turns)
        for offset in range(len(self.shards)):
            shard = self.shards[(start + offset) % len(self.shards)]
            try:
                entry_id = shard.add(fields, cost, shares)
            except BacklogFull:
                continue
            self._register()
            return entry_id
        first = self.shards[0]
        raise BacklogFull(
            f"all {len(self.shards)} shards hold {first.max_len} entries or {first.max_bytes} bytes"
        )

    def is_full(self) -> bool:
        """True while no shard would take an entry. A shard that does not answer (its primary
        failing over) takes none, but the others may: only when none answers is that raised."""
        failures: list[Exception] = []
        for shard in self.shards:
            try:
                if not shard.is_full():
                    return False
            except REDIS_ERRORS as exc:
                failures.append(exc)
        if len(failures) == len(self.shards):
            raise failures[0]
        return True

    def _register(self) -> None:
        """List this process's shard keys in the registry, so that consumers drain them even
        after STREAM_SHARDS changes; again every REGISTER_EVERY_S, since a key no longer listed
        (retired after a day of silence) may be written again by a process that was idle.
        After the append, never before: a key retired in between is listed again once it
        holds the entry, so nothing is left unlisted. A failure never fails the request (while
        STREAM_SHARDS is unchanged, consumers drain these keys, listed or not); it is tried
        again REGISTER_RETRY_S later."""
        now = time.monotonic()
        if now < self._register_at:
            return
        try:
            self.client.sadd(self.registry, *(shard.key for shard in self.shards))
        except REDIS_ERRORS as exc:
            log.warning("could not list the shards in %s yet: %s", self.registry, exc)
            self._register_at = now + REGISTER_RETRY_S
            return
        self._register_at = now + REGISTER_EVERY_S


def producer(settings: Settings, client: Client | None = None) -> EventStream | ShardedStream:
    """What ingest (and replay, and redrive) append entries with: STREAM_KEY itself, or its
    STREAM_SHARDS shards."""
    client = client or connect(settings)
    keys = shards_module.shard_keys(settings.stream_key, settings.stream_shards)
    streams = [
        EventStream.from_settings(dataclasses.replace(settings, stream_key=key), client)
        for key in keys
    ]
    if len(streams) == 1:
        return streams[0]
    return ShardedStream(settings.stream_key, streams)


# One entry's size, its fields' names and values, measured inside Redis: an entry too large
# for the consumer is never sent to it. False if its data is gone. KEYS: the stream.
_ENTRY_SIZE = """
local entries = redis.call('XRANGE', KEYS[1], ARGV[1], ARGV[1])
if #entries == 0 then return false end
local size = 0
for _, part in ipairs(entries[1][2]) do size = size + #part end
return size
"""

# Copy one entry into its dead-letter stream inside Redis, as `dead_letter` writes a dead letter
# (original_id, reason, and its fields under FIELD_PREFIX): the consumer never holds its data.
# KEYS: the stream, its dead-letter stream. ARGV: entry ID, reason, MAXLEN, FIELD_PREFIX.
# Returns whether the entry was still there to copy.
_COPY_TO_DEAD_LETTERS = """
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

# Move one page of consumer ARGV[2]'s pending entries, those with IDs in ARGV[6] .. + idle for
# at least ARGV[4] ms, to consumer ARGV[3] (to itself: their idle clocks restart), IDs only
# (JUSTID). At most ARGV[5] of them, so that Redis is busy a few milliseconds per call, and
# without sending their IDs: the reply is {how many moved, the last ID looked at}, or {0} when
# none are left. ARGV[7], unless empty, sets their delivery counts (RETRYCOUNT). KEYS: the
# stream; ARGV[1]: the group.
_MOVE_PENDING_PAGE = """
local rows = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[6], '+', ARGV[5], ARGV[2])
if #rows == 0 then return {0} end
local claim = {'XCLAIM', KEYS[1], ARGV[1], ARGV[3], ARGV[4]}
for _, row in ipairs(rows) do claim[#claim + 1] = row[1] end
if ARGV[7] ~= '' then
  claim[#claim + 1] = 'RETRYCOUNT'
  claim[#claim + 1] = ARGV[7]
end
claim[#claim + 1] = 'JUSTID'
return {#redis.call(unpack(claim)), rows[#rows][1]}
"""
# Entries per _MOVE_PENDING_PAGE call: 4 to 10 ms of Redis's time (100,000 in one XCLAIM took
# it 0.4 s, in one script 0.9 s, while ingest waited), well below what Lua's unpack takes.
CLAIM_PAGE = 1000


@dataclass
class GroupReader:
    """One consumer's view of the stream through a consumer group."""

    client: redis.Redis
    key: str
    group: str
    consumer: str
    # The dead-letter stream keeps this many; older ones stay as their copies under errors/.
    dead_letter_max_len: int = 10_000

    def __post_init__(self) -> None:
        self._forget_idle = self.client.register_script(_DELETE_IDLE_EMPTY_CONSUMERS)
        self._entry_size = self.client.register_script(_ENTRY_SIZE)
        self._copy_to_dead_letters = self.client.register_script(_COPY_TO_DEAD_LETTERS)
        self._move_pending_page = self.client.register_script(_MOVE_PENDING_PAGE)
        self._ack_and_delete = self.client.register_script(_ACK_AND_DELETE)
        self._trim_below = self.client.register_script(_TRIM_BELOW)
        self.keys = accounting_keys(self.key)

    def ensure_group(self) -> None:
        """Create the group at the start of the stream (not `$`), so entries written before
        any consumer ever ran are archived too. Looked up first: Redis refuses XGROUP CREATE
        when it is out of memory, even for a group that exists. The consumer's scripts are
        loaded here too, at the start of each invocation: Redis 6.2 cannot load one first
        used once it is full, and a full Redis is when acknowledging must still work."""
        self._load_scripts()
        if self.client.exists(self.key) and any(
            group["name"] in (self.group, self.group.encode())
            for group in self.client.xinfo_groups(self.key)
        ):
            return
        try:
            self.client.xgroup_create(self.key, self.group, id="0", mkstream=True)
        except redis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    def _load_scripts(self) -> None:
        scripts = (
            self._forget_idle,
            self._entry_size,
            self._copy_to_dead_letters,
            self._move_pending_page,
            self._ack_and_delete,
            self._trim_below,
        )
        try:
            for script in scripts:
                self.client.script_load(script.script)
        except redis.exceptions.OutOfMemoryError as exc:  # already full: each call tries again
            log.warning("could not load the consumer's scripts into a full Redis: %s", exc)

    def read_pending(self, after: EntryId, count: int) -> list[Entry]:
        """This consumer's own delivered-but-unacknowledged entries with IDs above `after`."""
        return self._read(after, count, block_ms=None)

    def read_new(self, count: int, block_ms: int) -> list[Entry]:
        """Entries never delivered to any consumer of the group, waiting up to `block_ms`."""
        return self._read(b">", count, block_ms=block_ms)

    def _read(self, start: EntryId, count: int, block_ms: int | None) -> list[Entry]:
        reply = self.client.xreadgroup(
            self.group, self.consumer, {self.key: start}, count=count, block=block_ms
        )
        return reply[0][1] if reply else []

    def pending_deliveries(self, after: EntryId, count: int) -> list[tuple[EntryId, int]]:
        """Up to `count` of this consumer's own pending entries with IDs above `after`, in ID
        order, each with how often it was delivered: IDs only (XPENDING), no data, so that
        what to read, and how, is decided before anything is read."""
        rows = self.client.xpending_range(
            self.key, self.group, b"(" + after, "+", count, consumername=self.consumer
        )
        return [(row["message_id"], row["times_delivered"]) for row in rows]

    def entry_size(self, entry_id: EntryId) -> int | None:
        """The bytes of one entry's fields (names and values), measured inside Redis without
        sending them; None if its data is gone."""
        return self._entry_size(keys=[self.key], args=[entry_id])

    def dead_letter_unread(self, entry_id: EntryId, reason: str) -> bool:
        """`dead_letter` for an entry too large to read: Redis copies it into the dead-letter
        stream itself, then it is acknowledged. Called, like `dead_letter`, once its record
        (without the data) is under `errors/`. Returns whether the dead letter keeps the
        data: not when Redis is too full for it, nor on a cluster where the dead-letter stream
        lies in another slot than the stream (STREAM_KEY unsharded), since a script reaches
        one slot only; the entry is dropped then, as it can never be archived anyway."""
        dead_key = dead_letter_key(self.key)
        one_slot = shards_module.slot_of(dead_key) == shards_module.slot_of(self.key)
        if isinstance(self.client, redis.RedisCluster) and not one_slot:
            self.dead_letter(entry_id, None, f"{reason}; its data was dropped")
            return False
        kept = True
        try:
            args = [entry_id, reason, self.dead_letter_max_len, FIELD_PREFIX]
            self._copy_to_dead_letters(keys=[self.key, dead_key], args=args)
        except redis.ResponseError as exc:
            # Redis 7 refuses the script's first write as OutOfMemoryError; 6.2 as a script
            # error quoting OOM.
            if not isinstance(exc, redis.exceptions.OutOfMemoryError) and "OOM" not in str(exc):
                raise
            log.error("Redis is full: entry %s is dropped, its record is in the bucket", entry_id)
            kept = False
        self.ack([entry_id])
        return kept

    def idle_consumers(self, min_idle_ms: int) -> list[bytes]:
        """Other consumers not seen for over `min_idle_ms` (crashed, or hung) that hold
        pending entries."""
        me = self.consumer.encode()
        idle = []
        for info in self.client.xinfo_consumers(self.key, self.group):
            name = info["name"] if isinstance(info["name"], bytes) else info["name"].encode()
            if name != me and info["pending"] and info["idle"] > min_idle_ms:
                idle.append(name)
        return idle

    def claim_all_of(self, consumer: bytes, min_idle_ms: int) -> int:
        """Take over every pending entry of `consumer`; returns how many.

        IDs only (JUSTID), not their data, which could be more than the claimer can hold:
        they become its own pending entries, read like those (`read_pending`), a bounded
        read at a time, which counts their delivery (JUSTID does not). Nor is their list
        sent here: Redis pages through it itself (`_MOVE_PENDING_PAGE`), so that each reply
        is two values, however many the dead consumer held (up to 2 x FLUSH_MAX_EVENTS: one
        XPENDING reply listing 100,000 took 43 MiB of the claimer's memory).

        All of them, not entry by entry as each passes the idle time: re-staged together, in
        the order their first owner read them, they are cut into the same objects it stored
        before it died, so the retried flush overwrites those objects. Every entry of an idle
        consumer has been idle at least as long as the consumer, and claiming resets idle
        time, so two consumers never both win the same entry; and only the holder of a lease
        on them (redis-py's Lock, `min_idle_ms` long, renewed at each page) takes pages of
        them, so that two claimers never share them out page by page. A claimer that dies
        midway leaves the rest to be claimed once its lease ends: its own part and the rest
        are then stored apart (duplicates at worst, never a loss).
        """
        lease = self.client.lock(
            f"{self.key}:claiming:{consumer.decode()}", timeout=min_idle_ms / 1000, blocking=False
        )
        if not lease.acquire():
            return 0  # another consumer is taking them

        def still_held() -> bool:
            try:
                return lease.reacquire()
            except redis.exceptions.LockNotOwnedError:  # it paused for longer than the lease
                log.warning("lost the lease on the entries of %s while claiming them", consumer)
                return False  # what it claimed so far it holds, and stages like its own

        try:
            return self._move(consumer, self.consumer, min_idle_ms, None, still_held)
        finally:
            with contextlib.suppress(redis.exceptions.LockError):
                lease.release()

    def _move(
        self,
        owner: bytes | str,
        to: str,
        min_idle_ms: int,
        retrycount: int | None,
        may_go_on: Callable[[], bool] = lambda: True,
    ) -> int:
        """Move `owner`'s pending entries to `to`, a page at a time (`_MOVE_PENDING_PAGE`),
        while `may_go_on()`; returns how many moved."""
        moved, after = 0, b"-"
        retry = "" if retrycount is None else retrycount
        while may_go_on():
            args = [self.group, owner, to, min_idle_ms, CLAIM_PAGE, after, retry]
            reply = self._move_pending_page(keys=[self.key], args=args)
            if len(reply) == 1:
                break
            moved += reply[0]
            after = b"(" + reply[1]
        return moved

    def delivery_counts(self, ids: list[EntryId]) -> dict[EntryId, int]:
        """How often each of these pending entries of this consumer has been delivered."""
        if not ids:
            return {}
        lowest, highest = min(ids, key=_id_key), max(ids, key=_id_key)
        # Other entries of this consumer may lie in the range too: ask for enough rows.
        rows = self.client.xpending_range(
            self.key, self.group, lowest, highest, len(ids) + 10_000, consumername=self.consumer
        )
        wanted = set(ids)
        return {
            row["message_id"]: row["times_delivered"] for row in rows if row["message_id"] in wanted
        }

    def forgive_own_pending(self) -> None:
        """Reset the delivery counts of everything this consumer holds, when the failure was
        not the entries' own (storage was down), so an outage never makes healthy entries
        look like poison."""
        self._claim_own_pending(retrycount=0)

    def keep_pending_alive(self) -> int:
        """Reset the idle time of everything this consumer holds, and its own: a consumer
        that retries storage reads nothing, and would look gone to the others after
        CLAIM_IDLE_MS. Delivery counts are unchanged. Returns how many entries it holds."""
        return self._claim_own_pending(retrycount=None)

    def _claim_own_pending(self, retrycount: int | None) -> int:
        # To itself, with JUSTID: the entries stay where they are, their clocks restart.
        return self._move(self.consumer, self.consumer, 0, retrycount)

    def forget_idle_consumers(self, min_idle_ms: int) -> int:
        """Remove consumers that went away holding nothing; returns how many."""
        return self._forget_idle(keys=[self.key], args=[self.group, min_idle_ms, self.consumer])

    def ack(self, ids: Iterable[EntryId]) -> int:
        ids = list(ids)
        return sum(
            self._ack_and_delete(keys=self.keys, args=[self.group, *ids[i : i + ACK_CHUNK]])
            for i in range(0, len(ids), ACK_CHUNK)
        )

    def dead_letter(self, entry_id: EntryId, fields: Fields | None, reason: str) -> None:
        """Move one entry that can never be archived aside, so it stops blocking the rest and
        stays inspectable. Called once its copy is stored under `errors/` in the bucket, so
        that trimming the dead-letter stream to its bound loses no record of it; if
        Redis is too full for the dead-letter stream, that copy is the record, since holding
        the entry would stop trimming and keep Redis full. A crash in between leaves the
        entry pending, to be dead-lettered again (a duplicate, never a loss)."""
        record: Fields = {b"original_id": entry_id, b"reason": reason.encode()}
        record.update({FIELD_PREFIX + name: value for name, value in (fields or {}).items()})
        try:
            # Exact: dead letters are rare, and an approximate bound trims nothing below ~100.
            self.client.xadd(
                dead_letter_key(self.key),
                record,
                maxlen=self.dead_letter_max_len,
                approximate=False,
            )
        except redis.exceptions.OutOfMemoryError:
            log.error("Redis is full: entry %s is dead-lettered in the bucket only", entry_id)
        self.ack([entry_id])

    def trim_acknowledged(self) -> int:
        """Drop history that every group has acknowledged, and nothing else.

        Everything below the oldest entry still pending, or not yet delivered, in any group
        is done with. Trimming by length instead (MAXLEN) would delete unread entries.
        """
        floor = self._oldest_needed_id()
        if floor is None:
            return 0
        # Exact, not approximate (~): the stream's length is what admission control counts.
        removed, more = 0, True
        while more:
            trimmed, more = self._trim_below(keys=self.keys, args=[floor, TRIM_CHUNK])
            removed += trimmed
        return removed

    def _oldest_needed_id(self) -> EntryId | None:
        floors = []
        for group in self.client.xinfo_groups(self.key):
            if group["pending"]:
                floors.append(self.client.xpending(self.key, group["name"])["min"])
            else:
                floors.append(_next_id(group["last-delivered-id"]))
        return min(floors, key=_id_key) if floors else None


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


def _id_key(entry_id: EntryId | str) -> tuple[int, int]:
    raw = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
    ms, _, seq = raw.partition("-")
    return int(ms), int(seq or 0)


def _next_id(entry_id: EntryId | str) -> bytes:
    ms, seq = _id_key(entry_id)
    return f"{ms}-{seq + 1}".encode()
