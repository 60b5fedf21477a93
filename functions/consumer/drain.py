"""The consumer's drain loop on one key: recover, read, stage, flush, acknowledge, until the
budget ends.

One call of `Drainer.drain` drains one key (a shard) for one invocation of the consumer
function (functions/consumer/sharded.py runs one per key). It reads top to bottom:

0. make sure Redis holds the privacy regulations in force (functions/consumer/privacy.py):
   staging leaves out the events they cover, and acknowledges their entries all the same;
1. recover (functions/consumer/recovery.py): re-read this consumer's own pending entries, then
   take over all pending entries of consumers not seen for longer than CLAIM_IDLE_MS; flush
   them on their own;
2. loop: read new entries, stage them (in ARCHIVE_FORMAT), flush when a buffering hint is
   reached, claim again from time to time;
3. finish: when the remaining time reaches the margin, stop reading, flush, return.

A flush stores the buffer's objects through the archive writer (functions/consumer/writer.py),
then acknowledges their entries.

Memory is bounded whatever the entries: a read holds at most READ_MAX_BYTES (`read_count`),
the buffer a size hint (FLUSH_MAX_BYTES) and one entry more, and one flush is in flight.
Entries read again (pending ones) are looked at before they are read: one delivered more than
MAX_DELIVERIES times (it may kill the consumer) is dead-lettered, and never read at all if it
is larger than READ_MAX_BYTES.

An entry is acknowledged only after every object holding its events is stored. A crash at
any point leaves unacknowledged entries pending, and step 1 (here or in another consumer)
stages them again in the same order, so the retried flush produces the same object keys.

Touches the consumer group of its key and, through the writer, object storage.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from functions.consumer.privacy import PrivacyFilter
from functions.consumer.recovery import Recovery
from functions.consumer.sizing import read_count
from functions.consumer.summary import Summary
from functions.consumer.writer import ArchiveWriter
from shared import codec, garbage_collection, metrics, stream
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

# Longest single blocking read, so the loop notices its deadline, flush age and stop signals.
MAX_BLOCK_MS = 1000
# Stop reading this long before the budget ends, to leave time to flush and acknowledge.
STOP_MARGIN_MS = 10_000
# Dead letters are JSON documents (`error_object`).
ERROR_CONTENT_TYPE = "application/json"


class Drainer:
    """Moves entries from the consumer group into the archive. Reused across invocations."""

    def __init__(
        self,
        settings: Settings,
        reader: stream.GroupReader,
        store: ObjectStore,
        privacy: PrivacyFilter | None = None,
    ) -> None:
        self.settings = settings
        self.reader = reader
        self.store = store
        # One per process where drainers share one (functions/consumer/sharded.py).
        self.privacy = privacy or PrivacyFilter(settings, lambda: reader.client, store)
        self.sleep = time.sleep
        # A shard's entry IDs may equal another shard's: its objects' (and dead letters')
        # names carry its key.
        self.object_salt = "" if reader.key == settings.stream_key else reader.key

    @classmethod
    def for_key(
        cls,
        settings: Settings,
        client: stream.Client,
        store: ObjectStore,
        key: str,
        name: str,
        privacy: PrivacyFilter | None = None,
    ) -> Drainer:
        """The drainer of one key of the logical stream (a shard), as consumer `name`."""
        reader = stream.GroupReader(
            client=client,
            key=key,
            group=settings.consumer_group,
            consumer=name,
            dead_letter_max_len=settings.dead_letter_max_len,
        )
        return cls(settings, reader, store, privacy)

    def drain(self, remaining_ms: RemainingMs) -> Summary:
        self.privacy.ensure_published()  # before anything is read: what must not be archived
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
        self.object_salt = drainer.object_salt
        self.privacy = drainer.privacy
        self.remaining_ms = remaining_ms
        self.margin_ms = min(STOP_MARGIN_MS, remaining_ms() // 4)
        self.read_count = read_count(self.settings)
        self.summary = Summary(consumer=self.reader.consumer)
        self.counters = metrics.ConsumerCounters(self.summary)
        self.buffer = self.new_buffer()
        self.storage_down = False
        self.flusher = flusher
        self.in_flight: Future | None = None
        self.writer = ArchiveWriter(
            store=drainer.store,
            reader=self.reader,
            summary=self.summary,
            claim_idle_ms=self.settings.claim_idle_ms,
            remaining_ms=remaining_ms,
            margin_ms=self.margin_ms,
            sleep=drainer.sleep,
        )
        self.recovery = Recovery(self)

    def new_buffer(self) -> Buffer:
        return Buffer(format=self.settings.archive_format, salt=self.object_salt)

    # --- recovery (functions/consumer/recovery.py) --------------------------------------------

    def recover(self) -> None:
        self.recovery.recover()

    def claim_if_due(self) -> None:
        self.recovery.claim_if_due()

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
                with garbage_collection.paused():
                    dropped = self._stage_entry(entry_id, fields)
            except (codec.UndecodableEntry, UnarchivableEvent) as exc:
                self.dead_letter(entry_id, fields, str(exc))
                continue
            self.summary.events_dropped_privacy += dropped
            if size_hint_reached(self.buffer, self.settings):
                self.flush(in_background=True)

    def _stage_entry(self, entry_id: stream.EntryId, fields: stream.Fields) -> int:
        """Decode one entry and add its events to the buffer; how many privacy dropped. Called
        without cyclic garbage collection: decoding makes a few containers per event, all
        acyclic, which the collector would walk again and again (its decoded events are gone
        when this returns, before the collector runs again)."""
        if not fields:
            raise codec.UndecodableEntry("entry data is gone from the stream")
        decoded = codec.decode_entry(fields)
        marked = codec.quarantined_of(fields, len(decoded))
        events, quarantined = _apart(decoded, marked)
        kept = self.privacy.kept(events)
        kept_apart = self.privacy.kept(quarantined) if quarantined else quarantined
        # An entry left with no event is still acknowledged with this flush.
        self.buffer.add(entry_id, kept, kept_apart)
        return len(decoded) - len(kept) - len(kept_apart)

    def dead_letter(
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
        if not self.writer.store_all([letter], ERROR_CONTENT_TYPE):
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
        """While storage fails, the writer retries with capped, jittered backoff; when time
        runs out, leave the entries pending."""
        started = time.monotonic()
        objects = [
            (key, body)
            for key, body, _ in buffer.objects(self.settings.s3_prefix, self.settings.gzip_level)
        ]
        try:
            if not self.writer.store_all(objects, buffer.content_type):
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


def _apart(
    events: list[dict[str, Any]], quarantined: frozenset[int]
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """An entry's events for the archive, and those for the quarantine (`codec`'s `q`)."""
    if not quarantined:
        return events, []
    archived = [event for index, event in enumerate(events) if index not in quarantined]
    return archived, [events[index] for index in sorted(quarantined)]
