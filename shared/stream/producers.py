"""The producer's side: append one entry per request while there is room, on one key or shards.

`EventStream` appends to one stream key through the ledger's admission script (bounds by
entries and bytes, token buckets, one atomic step), with WAIT for replicas pipelined when
REDIS_WAIT_REPLICAS is set, so the ingest hot path is one round trip. `ShardedStream` spreads
requests over STREAM_SHARDS keys and lists them in the registry; `producer` picks one or the
other from settings. May touch: Redis (appends, the shard registry), `shared.shards` for key
names, `shared.token_bucket`. Never the consumer group's commands.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import redis

from shared import shards as shards_module
from shared import token_bucket
from shared.settings import Settings
from shared.stream.connection import REDIS_ERRORS, Client, connect
from shared.stream.entries import EntryId, Fields
from shared.stream.ledger import ADD_IF_ROOM, accounting_keys

log = logging.getLogger(__name__)


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
        self._add_if_room = self.client.register_script(ADD_IF_ROOM)
        self.keys = accounting_keys(self.key)
        # Where an append without WAIT goes: alone, or with the other appends the process has
        # in flight (send_appends_with).
        grouped = _grouping is not None and type(self.client) is redis.Redis
        self._send = _grouping(self.client) if grouped else self.client.execute_command

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
            reply = self._add_without_wait(keys, args)
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

    def _add_without_wait(self, keys: list[str], args: list) -> EntryId | list | None:
        """The append script, as redis-py's Script runs it (loaded again into a Redis that lost
        it), sent by `_send`: the client's command path, or the process's grouping of the
        appends it has in flight (send_appends_with). Not through Script, whose own wrapping is
        a tenth of the round trip's CPU for a single event."""
        command = ("EVALSHA", self._add_if_room.sha, len(keys), *keys, *args)
        try:
            return self._send(*command)
        except redis.exceptions.NoScriptError:
            # A restarted or promoted Redis has no scripts cached; nothing was written.
            self.client.script_load(ADD_IF_ROOM)
            return self._send(*command)

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
                node.script_load(ADD_IF_ROOM)
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


# What sends the appends of a process that has several in flight at once (a gevent worker: one
# greenlet per request), given its client: installed by local/gevent_appends.py.
Grouping = Callable[[redis.Redis], Callable[..., Any]]
_grouping: Grouping | None = None


def send_appends_with(grouping: Grouping | None) -> None:
    """Send the appends (without WAIT, on one Redis) of the EventStreams made from now on
    through `grouping(client)`, which takes a command's parts and returns its reply or raises
    its error, as `client.execute_command` does; None: each alone again."""
    global _grouping
    _grouping = grouping


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
