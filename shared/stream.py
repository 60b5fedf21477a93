"""Redis Streams access: add, read, acknowledge, claim, trim and dead-letter entries.

This module knows Redis commands and nothing about events or objects: entries are opaque
field maps (see `codec`). The ingest hot path (`EventStream.add`) is one round trip, with
its WAIT for replicas pipelined when REDIS_WAIT_REPLICAS is set; so is acknowledging.
Commands that need memory (XADD, XGROUP CREATE) are kept off the consumer's path when Redis
is full, so consumers can always drain and free memory.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import os
import random
import secrets
import socket
import time
from collections.abc import Iterable
from dataclasses import dataclass

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from shared import secrets as shared_secrets
from shared import shards as shards_module
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
    """The stream holds STREAM_MAX_LEN entries: accept nothing until consumers catch up."""


class ReplicationShortfall(Exception):
    """The entry was written, but fewer replicas than REDIS_WAIT_REPLICAS confirmed it in
    time: a failover now could lose it, so the request must not be answered as accepted."""

    def __init__(self, entry_id: EntryId, confirmed: int, wanted: int) -> None:
        super().__init__(f"entry {entry_id.decode()} reached {confirmed} of {wanted} replicas")
        self.entry_id = entry_id
        self.confirmed = confirmed
        self.wanted = wanted


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


# Check and append in one atomic step: a length check followed by a separate XADD would let
# concurrent requests overshoot the bound. Capping by MAXLEN instead would delete unread entries.
_ADD_IF_ROOM = """
if redis.call('XLEN', KEYS[1]) >= tonumber(ARGV[1]) then return false end
return redis.call('XADD', KEYS[1], '*', unpack(ARGV, 2))
"""

# Acknowledged entries are deleted at once when this group is the stream's only one, so the
# stream's length is exactly its backlog: one consumer's stale pending entry cannot hold
# thousands of acknowledged entries behind it (trimming by MINID stops at the oldest pending).
_ACK_AND_DELETE = """
local acked = redis.call('XACK', KEYS[1], ARGV[1], unpack(ARGV, 2))
local groups = redis.call('XINFO', 'GROUPS', KEYS[1])
if #groups == 1 then
  local info = {}
  for i = 1, #groups[1], 2 do info[groups[1][i]] = groups[1][i + 1] end
  if info['name'] == ARGV[1] then redis.call('XDEL', KEYS[1], unpack(ARGV, 2)) end
end
return acked
"""
# Lua's unpack takes at most about 8,000 values: acknowledge in chunks well below that.
ACK_CHUNK = 1000

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


@dataclass
class EventStream:
    """The producer's view: append one entry per request, while there is room.

    With `wait_replicas` > 0, `add` returns only once that many replicas hold the entry
    (Redis's WAIT, like Kafka's acks=all), so a failover to a replica cannot lose it.
    """

    client: Client
    key: str
    max_len: int
    wait_replicas: int = 0
    wait_timeout_ms: int = 0

    def __post_init__(self) -> None:
        self._add_if_room = self.client.register_script(_ADD_IF_ROOM)

    @classmethod
    def from_settings(cls, settings: Settings, client: Client | None = None) -> EventStream:
        return cls(
            client or connect(settings),
            settings.stream_key,
            settings.stream_max_len,
            wait_replicas=settings.redis_wait_replicas,
            wait_timeout_ms=settings.redis_wait_timeout_ms,
        )

    def add(self, fields: Fields) -> EntryId:
        args = [self.max_len, *(part for pair in fields.items() for part in pair)]
        if self.wait_replicas:
            entry_id = self._add_and_wait(args)
        else:
            entry_id = self._add_if_room(keys=[self.key], args=args)
        if entry_id is None:
            raise BacklogFull(f"stream {self.key} holds {self.max_len} entries")
        return entry_id

    def is_full(self) -> bool:
        """True while `add` would raise BacklogFull."""
        return self.client.xlen(self.key) >= self.max_len

    def _add_and_wait(self, args: list) -> EntryId | None:
        """The append and WAIT in one pipeline: one round trip, and on one connection, which
        WAIT needs, since it counts only the writes of the connection it is sent on (on a
        cluster, a connection to the primary that owns the key)."""
        for attempt in range(2):
            node = self._primary_of_key()
            pipe = node.pipeline(transaction=False)
            pipe.evalsha(self._add_if_room.sha, 1, self.key, *args)
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
            if entry_id is not None and confirmed < self.wait_replicas:
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

    def add(self, fields: Fields) -> EntryId:
        start = next(self._turns)
        for offset in range(len(self.shards)):
            shard = self.shards[(start + offset) % len(self.shards)]
            try:
                entry_id = shard.add(fields)
            except BacklogFull:
                continue
            self._register()
            return entry_id
        raise BacklogFull(f"all {len(self.shards)} shards hold {self.shards[0].max_len} entries")

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
        self._ack_and_delete = self.client.register_script(_ACK_AND_DELETE)

    def ensure_group(self) -> None:
        """Create the group at the start of the stream (not `$`), so entries written before
        any consumer ever ran are archived too. Looked up first: Redis refuses XGROUP CREATE
        when it is out of memory, even for a group that exists."""
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

    def claim_all_of(self, consumer: bytes, min_idle_ms: int) -> list[Entry]:
        """Take over every pending entry of `consumer`, in ID order.

        All of them at once, not entry by entry as each passes the idle time: re-staged
        together, in the order their first owner read them, they are cut into the same
        objects it stored before it died, so the retried flush overwrites those objects.
        Every entry of an idle consumer has been idle at least as long as the consumer, and
        claiming resets idle time, so two consumers never both win the same entry.
        """
        rows = self.client.xpending_range(
            self.key, self.group, "-", "+", 1_000_000, consumername=consumer
        )
        ids = [row["message_id"] for row in rows]
        return (
            self.client.xclaim(self.key, self.group, self.consumer, min_idle_ms, ids) if ids else []
        )

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
        rows = self.client.xpending_range(
            self.key, self.group, "-", "+", 1_000_000, consumername=self.consumer
        )
        if ids := [row["message_id"] for row in rows]:
            # To itself, with JUSTID: the entries stay where they are, their clocks restart.
            self.client.xclaim(
                self.key, self.group, self.consumer, 0, ids, retrycount=retrycount, justid=True
            )
        return len(ids)

    def forget_idle_consumers(self, min_idle_ms: int) -> int:
        """Remove consumers that went away holding nothing; returns how many."""
        return self._forget_idle(keys=[self.key], args=[self.group, min_idle_ms, self.consumer])

    def ack(self, ids: Iterable[EntryId]) -> int:
        ids = list(ids)
        return sum(
            self._ack_and_delete(keys=[self.key], args=[self.group, *ids[i : i + ACK_CHUNK]])
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
        return self.client.xtrim(self.key, minid=floor, approximate=False)

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
