"""The consumer's drain loop: recover, read, stage, flush, acknowledge, until the budget ends.

One call of `Drainer.drain` is one invocation of the consumer function. It reads top to bottom:

1. recover: re-read this consumer's own pending entries, then take over all pending entries
   of consumers not seen for longer than CLAIM_IDLE_MS; flush them on their own;
2. loop: read new entries, stage them (in ARCHIVE_FORMAT), flush when a buffering hint is
   reached, claim again from time to time;
3. finish: when the remaining time reaches the margin, stop reading, flush, return.

Memory is bounded whatever the entries: a read holds at most READ_MAX_BYTES (`read_count`),
the buffer a size hint (FLUSH_MAX_BYTES) and one entry more, and one flush is in flight.
Entries read again (pending ones) are looked at before they are read: one delivered more than
MAX_DELIVERIES times (it may kill the consumer) is dead-lettered, and never read at all if it
is larger than READ_MAX_BYTES.

An entry is acknowledged only after every object holding its events is stored. A crash at
any point leaves unacknowledged entries pending, and step 1 (here or in another consumer)
stages them again in the same order, so the retried flush produces the same object keys.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import asdict, dataclass, replace

import redis
from botocore.exceptions import BotoCoreError, ClientError

from shared import codec, metrics, shards, stream
from shared.archive import (
    Buffer,
    ObjectStore,
    UnarchivableEvent,
    error_object,
    flush_due,
    size_hint_reached,
)
from shared.settings import Settings

log = logging.getLogger(__name__)

RemainingMs = Callable[[], int]

# Most entries per XREADGROUP (fewer when they may be large: `read_count`); one entry is one
# HTTP request's events.
READ_COUNT = 200
# Longest single blocking read, so the loop notices its deadline, flush age and stop signals.
MAX_BLOCK_MS = 1000
# Stop reading this long before the budget ends, to leave time to flush and acknowledge.
STOP_MARGIN_MS = 10_000
# Backoff between attempts to store a flush while object storage fails.
RETRY_FIRST_S, RETRY_MAX_S = 0.2, 20.0
# Dead letters are JSON documents (`error_object`).
ERROR_CONTENT_TYPE = "application/json"


@dataclass
class Summary:
    consumer: str
    entries_read: int = 0
    events_archived: int = 0
    objects_written: int = 0
    entries_claimed: int = 0
    entries_dead_lettered: int = 0
    consumers_removed: int = 0
    store_failures: int = 0
    unflushed_entries: int = 0
    bytes_written: int = 0

    def as_dict(self) -> dict[str, int | str]:
        return asdict(self)

    @classmethod
    def total(cls, summaries: list[Summary]) -> Summary:
        """One invocation's tallies over every shard it drained."""
        total = cls(consumer=summaries[0].consumer)
        for summary in summaries:
            for name, value in asdict(summary).items():
                if isinstance(value, int):
                    setattr(total, name, getattr(total, name) + value)
        return total


def read_count(settings: Settings) -> int:
    """Entries per read, so that one read holds at most READ_MAX_BYTES. XREADGROUP counts
    entries, not bytes: each may be the largest ingest writes (`codec.max_entry_bytes` of
    MAX_BODY_BYTES). At least one, whatever READ_MAX_BYTES says; at most READ_COUNT."""
    largest = codec.max_entry_bytes(settings.max_body_bytes)
    return max(1, min(READ_COUNT, settings.read_max_bytes // largest))


# The least a shard's share of FLUSH_MAX_BYTES may be: objects smaller than this cost more in
# requests than they save in memory.
MIN_SHARE_BYTES = 1024 * 1024


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


class ShardedDrainer:
    """Drains every key of the logical stream (shared/shards.py: the STREAM_SHARDS shards, and
    any key a previous STREAM_SHARDS wrote): one Drainer per key, all side by side within the
    same budget, so that one shard's backlog never waits behind another's. Every consumer
    drains every shard; the group on each shard shares its entries among them, and claims
    from those that went away, exactly as on a single stream. With one key it is that key's
    Drainer alone, as before shards existed.

    Its Redis pool holds a connection for each of those threads (`connections_needed`), more
    than REDIS_MAX_CONNECTIONS when there are many keys: a thread waiting for a connection
    while another's blocking read holds it would fail the invocation after REDIS_TIMEOUT_S.
    Connections are cheap for Redis (maxclients is 10,000, 65,000 on ElastiCache), and the
    threads mostly wait on their sockets; fewer threads taking shards in turn would make each
    shard wait for the others' reads."""

    def __init__(self, settings: Settings, client: stream.Client, store: ObjectStore) -> None:
        self.settings = settings
        self.client = client
        # What `client` was made with (`stream.connect(settings)`).
        self.pool_size = settings.redis_max_connections
        self.store = store
        self.consumer = settings.consumer_name or stream.unique_consumer_name()
        self.drainers: dict[str, Drainer] = {}

    @classmethod
    def from_settings(cls, settings: Settings) -> ShardedDrainer:
        needed = connections_needed(settings.stream_shards)
        sized = replace(settings, redis_max_connections=max(settings.redis_max_connections, needed))
        return cls(sized, stream.connect(sized), ObjectStore.from_settings(settings))

    def drain(self, remaining_ms: RemainingMs) -> Summary:
        keys = shards.keys_to_drain(
            self.client, self.settings.stream_key, self.settings.stream_shards
        )
        self._make_room(len(keys))
        drainers = [self._drainer(key) for key in keys]
        hints = buffering_share(self.settings, len(drainers))  # for this call's keys
        for drainer in drainers:
            drainer.settings = hints
        if len(drainers) == 1:
            return drainers[0].drain(remaining_ms)
        with ThreadPoolExecutor(len(drainers), thread_name_prefix="shard") as pool:
            runs = dict(
                zip(keys, (pool.submit(d.drain, remaining_ms) for d in drainers), strict=True)
            )
            wait(runs.values())
        failed = [
            run.exception()
            for key, run in runs.items()
            if run.exception() is not None and not self._retired_meanwhile(key, run.exception())
        ]
        if failed:  # the other shards were drained; the failed one's entries stay pending
            raise failed[0]
        self._retire(keys)
        return Summary.total([run.result() for run in runs.values() if run.exception() is None])

    def _make_room(self, keys: int) -> None:
        """A pool with a connection for every thread draining `keys` keys: more than
        STREAM_SHARDS asked for while the keys of a previous STREAM_SHARDS are drained too."""
        needed = connections_needed(keys)
        if needed <= self.pool_size:
            return
        log.info("%d keys to drain: a pool of %d Redis connections", keys, needed)
        self.settings = replace(self.settings, redis_max_connections=needed)
        previous, self.client = self.client, stream.connect(self.settings)
        self.pool_size = needed
        self.drainers.clear()  # their readers use the previous client
        previous.close()

    def _retired_meanwhile(self, key: str, error: BaseException) -> bool:
        """Another consumer removed this retired key while this one drained it: nothing was
        left in it, so its error (NOGROUP) is no failure."""
        current = shards.shard_keys(self.settings.stream_key, self.settings.stream_shards)
        if key in current or "NOGROUP" not in str(error) or self.client.exists(key):
            return False
        self.drainers.pop(key, None)
        return True

    def _retire(self, keys: list[str]) -> None:
        """Remove the keys a previous STREAM_SHARDS wrote, once they are done with."""
        for key in keys:
            if shards.retire_if_drained(
                self.client, self.settings.stream_key, self.settings.stream_shards, key
            ):
                log.info("removed %s: drained, and no longer written", key)
                self.drainers.pop(key, None)

    def _drainer(self, key: str) -> Drainer:
        if key not in self.drainers:
            self.drainers[key] = Drainer.for_key(
                self.settings, self.client, self.store, key, self.consumer
            )
        return self.drainers[key]


class Drainer:
    """Moves entries from the consumer group into the archive. Reused across invocations."""

    def __init__(self, settings: Settings, reader: stream.GroupReader, store: ObjectStore) -> None:
        self.settings = settings
        self.reader = reader
        self.store = store
        self.sleep = time.sleep
        # A shard's entry IDs may equal another shard's: its objects' (and dead letters')
        # names carry its key.
        self.object_salt = "" if reader.key == settings.stream_key else reader.key

    @classmethod
    def for_key(
        cls, settings: Settings, client: stream.Client, store: ObjectStore, key: str, name: str
    ) -> Drainer:
        """The drainer of one key of the logical stream (a shard), as consumer `name`."""
        reader = stream.GroupReader(
            client=client,
            key=key,
            group=settings.consumer_group,
            consumer=name,
            dead_letter_max_len=settings.dead_letter_max_len,
        )
        return cls(settings, reader, store)

    def drain(self, remaining_ms: RemainingMs) -> Summary:
        self.reader.ensure_group()
        with ThreadPoolExecutor(1, thread_name_prefix="flush") as flusher:
            run = _Run(self, remaining_ms, flusher)
            try:
                run.recover()
                while run.may_read():
                    run.claim_if_due()
                    # Staged as read, kept in no variable: the next read never overlaps it.
                    run.stage(self.reader.read_new(run.read_count, block_ms=run.block_ms()))
                    if flush_due(run.buffer, self.settings, time.monotonic()):
                        run.flush()
                run.flush()
            finally:
                run.wait_for_flush()
                run.counters.sync()
        if run.storage_down:
            # Not the entries' fault: keep their delivery counts from marking them as poison.
            self.reader.forgive_own_pending()
        return run.summary


class _Run:
    """The state of one `drain` call: its buffer, its clock and its tallies."""

    def __init__(
        self, drainer: Drainer, remaining_ms: RemainingMs, flusher: ThreadPoolExecutor
    ) -> None:
        self.settings = drainer.settings
        self.reader = drainer.reader
        self.store = drainer.store
        self.sleep = drainer.sleep
        self.object_salt = drainer.object_salt
        self.remaining_ms = remaining_ms
        self.margin_ms = min(STOP_MARGIN_MS, remaining_ms() // 4)
        self.read_count = read_count(self.settings)
        self.summary = Summary(consumer=self.reader.consumer)
        self.counters = metrics.ConsumerCounters(self.summary)
        self.buffer = self.new_buffer()
        self.storage_down = False
        self.flusher = flusher
        self.in_flight: Future | None = None
        self.next_claim_at = 0.0
        self.next_keep_alive_at = 0.0

    def new_buffer(self) -> Buffer:
        return Buffer(format=self.settings.archive_format, salt=self.object_salt)

    # --- recovery ---------------------------------------------------------------------------

    def recover(self) -> None:
        """Own pending entries first (this process failed to finish them before), then others'."""
        self.stage_held()
        self.flush()
        self.claim_if_due()

    def claim_if_due(self) -> None:
        now = time.monotonic()
        if now < self.next_claim_at or self.storage_down:
            return
        self.next_claim_at = now + self.settings.claim_idle_ms / 2000
        idle = self.reader.idle_consumers(self.settings.claim_idle_ms)
        if idle:
            # Our own buffer first, acknowledged, so that claimed entries never join it.
            self.flush()
        for consumer in idle:
            claimed = self.reader.claim_all_of(consumer, self.settings.claim_idle_ms)
            if not claimed or self.storage_down:
                continue
            log.info("claimed %d entries of %s, which went away", claimed, consumer)
            self.summary.entries_claimed += claimed
            # They are all this consumer holds now: into objects of their own, one consumer
            # at a time, in the order it read them.
            self.stage_held()
            self.flush()
        self.summary.consumers_removed += self.reader.forget_idle_consumers(
            self.settings.claim_idle_ms
        )

    def stage_held(self) -> None:
        """Stage every entry this consumer holds (its pending entries, left by a run that
        failed, or just claimed), in ID order, one bounded read at a time.

        Their delivery counts are looked at before they are read (XPENDING: IDs, no data).
        An entry delivered more than MAX_DELIVERIES times keeps failing, and may kill the
        consumer: it is dead-lettered alone (`_set_aside`). One at its last delivery is read
        and stored alone (`_last_try`), so that the entries it was read with are archived
        before it may kill the consumer again, and only it goes past the limit."""
        after = b"0"
        while not self.storage_down:
            held = self.reader.pending_deliveries(after, self.read_count)
            if not held:
                return
            entry_id, deliveries = held[0]
            if deliveries > self.settings.max_deliveries:
                self._set_aside(after, entry_id, deliveries)
                after = entry_id
            elif deliveries == self.settings.max_deliveries:
                self._last_try(after)
                after = entry_id
            else:
                after = self._stage_batch(after, held)

    def _stage_batch(
        self, after: stream.EntryId, held: list[tuple[stream.EntryId, int]]
    ) -> stream.EntryId:
        """Read and stage the held entries up to the first at its delivery limit; returns the
        last ID staged."""
        limit = self.settings.max_deliveries
        count = next((n for n, (_, d) in enumerate(held) if d >= limit), len(held))
        entries = self.reader.read_pending(after, count)
        self.stage(entries)
        return entries[-1][0] if entries else held[count - 1][0]

    def _last_try(self, after: stream.EntryId) -> None:
        """Stage the next held entry in an object of its own, acknowledged before anything
        else is read. Storing what was staged before it cuts objects where an earlier run may
        not have: if that run stored them before it died, some events are stored twice (in
        a crash loop only; compaction keeps one copy)."""
        self.flush()
        self.stage(self.reader.read_pending(after, 1))
        self.flush()

    def _set_aside(self, after: stream.EntryId, entry_id: stream.EntryId, deliveries: int) -> None:
        """Dead-letter the next held entry, `entry_id`, delivered `deliveries` times: read
        alone, if the consumer can hold it; if it is larger than READ_MAX_BYTES, never read
        (its data goes to the dead-letter stream inside Redis, its record to the bucket)."""
        size = self.reader.entry_size(entry_id)
        if size is not None and size > self.settings.read_max_bytes:
            reason = (
                f"delivered {deliveries} times, never archived; {size} bytes, more than "
                f"READ_MAX_BYTES ({self.settings.read_max_bytes}): not read"
            )
            self._dead_letter(entry_id, None, reason, unread=True)
            return
        for read_id, fields in self.reader.read_pending(after, 1):
            if read_id == entry_id:  # else no longer held: nothing to do
                self.summary.entries_read += 1
                reason = f"delivered {deliveries + 1} times, never archived"  # this read too
                self._dead_letter(entry_id, fields, reason)

    # --- reading and staging ----------------------------------------------------------------

    def may_read(self) -> bool:
        return not self.storage_down and self.remaining_ms() > self.margin_ms

    def block_ms(self) -> int:
        # Below the socket timeout, or an idle stream would look like a dead Redis.
        wait_ms = min(self.remaining_ms() - self.margin_ms, self.settings.redis_timeout_s * 500)
        if self.buffer.started_at is not None:
            age_s = time.monotonic() - self.buffer.started_at
            wait_ms = min(wait_ms, int((self.settings.flush_interval_s - age_s) * 1000))
        return max(1, min(int(wait_ms), MAX_BLOCK_MS))

    def stage(self, entries: list[stream.Entry]) -> None:
        """Add entries to the buffer, cutting a flush as soon as a size hint is reached."""
        for entry_id, fields in entries:
            if self.storage_down:
                return  # what is left stays pending and is re-read once storage is back
            self.summary.entries_read += 1
            try:
                if not fields:
                    raise codec.UndecodableEntry("entry data is gone from the stream")
                self.buffer.add(entry_id, codec.decode_entry(fields))
            except (codec.UndecodableEntry, UnarchivableEvent) as exc:
                self._dead_letter(entry_id, fields, str(exc))
                continue
            if size_hint_reached(self.buffer, self.settings):
                self.flush(in_background=True)

    def _dead_letter(
        self,
        entry_id: stream.EntryId,
        fields: stream.Fields | None,
        reason: str,
        unread: bool = False,
    ) -> None:
        """Set aside an entry that can never be archived, in the bucket's `errors/` and the
        dead-letter stream, then acknowledge it, so that it stops blocking the rest. An
        `unread` entry's record in the bucket has no data: Redis copies it to the
        dead-letter stream."""
        log.error("dead-lettering entry %s: %s", entry_id.decode(), reason)
        self.wait_for_flush()  # one writer at a time keeps the tallies exact
        letter = error_object(entry_id, fields, reason, shard=self.object_salt)
        if not self._store_all([letter], ERROR_CONTENT_TYPE):
            self.storage_down = True
            return
        if unread:
            self.reader.dead_letter_unread(entry_id, reason)
        else:
            self.reader.dead_letter(entry_id, fields, reason)
        self.summary.entries_dead_lettered += 1

    # --- flushing -----------------------------------------------------------------------------

    def flush(self, in_background: bool = False) -> None:
        """Store every object of the buffer, then acknowledge its entries, on the flusher
        thread; wait for it unless `in_background`.

        Only a cut by a size hint runs in the background, so that reading and decoding the
        next entries overlaps compressing and uploading these (zlib and sockets release the
        GIL). Such a cut depends only on the entries, so entries read meanwhile do not change
        how a re-read after a crash is cut; a cut by age or by the end of the budget does
        depend on timing, so nothing more is read until it is acknowledged. One flush is in
        flight at a time, and flushes are acknowledged in order."""
        buffer, self.buffer = self.buffer, self.new_buffer()
        self.wait_for_flush()
        if not buffer.entry_ids:
            return
        if self.storage_down:
            self.summary.unflushed_entries += len(buffer.entry_ids)
            return
        self.in_flight = self.flusher.submit(self._store_and_ack, buffer)
        if not in_background:
            self.wait_for_flush()

    def wait_for_flush(self) -> None:
        """Wait for the flush in flight; an error it met (Redis gone, say) is raised here."""
        in_flight, self.in_flight = self.in_flight, None
        if in_flight is not None:
            in_flight.result()

    def _store_and_ack(self, buffer: Buffer) -> None:
        """While storage fails, retry with capped, jittered backoff; when time runs out,
        leave the entries pending."""
        started = time.monotonic()
        objects = [
            (key, body)
            for key, body, _ in buffer.objects(self.settings.s3_prefix, self.settings.gzip_level)
        ]
        try:
            if not self._store_all(objects, buffer.content_type):
                self.storage_down = True
                self.summary.unflushed_entries += len(buffer.entry_ids)
                log.error("storage unavailable; %d entries stay pending", len(buffer.entry_ids))
                return
            self.reader.ack(buffer.entry_ids)
            self.summary.events_archived += buffer.events
            self.reader.trim_acknowledged()
        finally:
            metrics.FLUSH_DURATION.observe(time.monotonic() - started)
            self.counters.sync()

    def _store_all(self, objects: list[tuple[str, bytes]], content_type: str) -> bool:
        """Put every object, retrying while storage fails; False if time runs out first."""
        delay = RETRY_FIRST_S
        # A live consumer touches Redis several times per CLAIM_IDLE_MS, even while it waits.
        max_delay = min(RETRY_MAX_S, self.keep_alive_interval_s())
        while objects:
            key, body = objects[0]
            try:
                self.store.put(key, body, content_type)
            except (BotoCoreError, ClientError) as exc:
                self.summary.store_failures += 1
                log.warning("storing %s failed (%s); retrying in %.1fs", key, exc, delay)
                if self.remaining_ms() - self.margin_ms / 2 < delay * 1000:
                    return False
                self.keep_pending_alive()
                self.sleep(delay * random.uniform(0.5, 1.0))
                delay = min(delay * 2, max_delay)
                continue
            objects.pop(0)
            self.summary.objects_written += 1
            self.summary.bytes_written += len(body)
        return True

    def keep_alive_interval_s(self) -> float:
        return self.settings.claim_idle_ms / 4000

    def keep_pending_alive(self) -> None:
        """While storage fails, show the other consumers that this one is slow, not dead, so
        they do not claim what it holds (and archive it a second time)."""
        now = time.monotonic()
        if now < self.next_keep_alive_at:
            return
        self.next_keep_alive_at = now + self.keep_alive_interval_s()
        try:
            held = self.reader.keep_pending_alive()
        except redis.RedisError as exc:  # Redis down too: nobody can claim meanwhile either
            log.warning("could not keep pending entries alive: %s", exc)
            return
        log.info("storage still failing; %d pending entries kept alive", held)
