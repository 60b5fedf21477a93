"""The consumer's recovery step: finish what was left pending. It stages again the entries
this consumer holds (left by a run that failed), takes over those of consumers not seen for
longer than CLAIM_IDLE_MS, and sets aside an entry delivered more than MAX_DELIVERIES times.

It works through a drain run's small interface (`Run`: stage, flush, dead-letter) and touches
the consumer group through the run's reader (pending entries, claims, idle consumers).
"""

from __future__ import annotations

import logging
import time
from typing import Protocol

from functions.consumer.summary import Summary
from shared import stream
from shared.settings import Settings

log = logging.getLogger(__name__)


class Run(Protocol):
    """What recovery asks of the drain run it belongs to."""

    settings: Settings
    reader: stream.GroupReader
    read_count: int
    summary: Summary
    storage_down: bool

    def stage(self, entries: list[stream.Entry]) -> None: ...

    def flush(self, in_background: bool = False) -> None: ...

    def dead_letter(
        self,
        entry_id: stream.EntryId,
        fields: stream.Fields | None,
        reason: str,
        unread: bool = False,
    ) -> None: ...


class Recovery:
    """Recovery for one drain run: at its start (`recover`), then from time to time
    (`claim_if_due`), every half CLAIM_IDLE_MS while storage works."""

    def __init__(self, run: Run) -> None:
        self.run = run
        self.settings = run.settings
        self.reader = run.reader
        self.next_claim_at = 0.0

    def recover(self) -> None:
        """Own pending entries first (this process failed to finish them before), then others'."""
        self.stage_held()
        self.run.flush()
        self.claim_if_due()

    def claim_if_due(self) -> None:
        now = time.monotonic()
        if now < self.next_claim_at or self.run.storage_down:
            return
        self.next_claim_at = now + self.settings.claim_idle_ms / 2000
        idle = self.reader.idle_consumers(self.settings.claim_idle_ms)
        if idle:
            # Our own buffer first, acknowledged, so that claimed entries never join it.
            self.run.flush()
        for consumer in idle:
            claimed = self.reader.claim_all_of(consumer, self.settings.claim_idle_ms)
            if not claimed or self.run.storage_down:
                continue
            log.info("claimed %d entries of %s, which went away", claimed, consumer)
            self.run.summary.entries_claimed += claimed
            # They are all this consumer holds now: into objects of their own, one consumer
            # at a time, in the order it read them.
            self.stage_held()
            self.run.flush()
        self.run.summary.consumers_removed += self.reader.forget_idle_consumers(
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
        while not self.run.storage_down:
            held = self.reader.pending_deliveries(after, self.run.read_count)
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
        self.run.stage(entries)
        return entries[-1][0] if entries else held[count - 1][0]

    def _last_try(self, after: stream.EntryId) -> None:
        """Stage the next held entry in an object of its own, acknowledged before anything
        else is read. Storing what was staged before it cuts objects where an earlier run may
        not have: if that run stored them before it died, some events are stored twice (in
        a crash loop only; compaction keeps one copy)."""
        self.run.flush()
        self.run.stage(self.reader.read_pending(after, 1))
        self.run.flush()

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
            self.run.dead_letter(entry_id, None, reason, unread=True)
            return
        for read_id, fields in self.reader.read_pending(after, 1):
            if read_id == entry_id:  # else no longer held: nothing to do
                self.run.summary.entries_read += 1
                reason = f"delivered {deliveries + 1} times, never archived"  # this read too
                self.run.dead_letter(entry_id, fields, reason)
