"""Carrying out the pending deletions: one pass over every place events are stored.

A pass takes every pending deletion together:
0. it finishes what a pass killed while concluding left undone (earlier versions of finished
   regulations, Redis's copy of what is in force);
1. it waits until each is SETTLE_RELOADS reload periods old, so that every ingest process and
   consumer has seen it (from then on the consumer drops its subjects' events: a re-flushed
   pending entry, a redriven dead letter or a replay brings nothing back);
2. it looks whether the stream still holds entries from before the deletions: the consumer
   archives them (without the subjects' events) and then deletes them. Looked at before
   anything is found, so that an object stored meanwhile by a consumer that read its entries
   before a deletion was accepted is found by this pass or, the entry still being there now,
   by the next one; the deletions finish only with a pass that found none;
3. it finds the anonymous IDs the archive links to the subjects' userIds, then the objects
   holding any subject's events (`finder`);
4. hour by hour, under the hour's compaction lock (a compaction never merges an object being
   rewritten, nor a rewrite an hour being merged), it rewrites every object of the hour that
   holds a subject (`rewrite`), removes the older versions that hold one, and discards
   compaction's work in progress for the hour (its spills hold events; the next compaction
   plans again). An hour is marked under `_privacy/deleting/` while it is gone through, so
   that a pass killed in it goes through it again even once no object of it holds a subject
   (its older versions and spills may);
5. it removes the subjects from the quarantine (`quarantine/`: every object, and their older
   versions), the dead letters and the objects set aside as unreadable.
A deletion is finished when a pass went through every step with nothing left (no busy hour,
no entry waiting); its IDs in clear are then dropped, its hashes and counts kept. Every step
can be done again: a pass killed anywhere is resumed by the next, which ends the same way
(the counts of a killed pass are lost with it: `progress` is what the passes that ended saw).

With a time budget (`remaining_ms`, the scheduled function's), no hour and no step after the
hours starts with less than the compactor's margin left; a pass cut short leaves the
deletions running, and the next one resumes them.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from shared import regulations, shards
from shared.archive import partitions, reading
from shared.archive.compaction import locks
from shared.archive.compaction.compactor import STAGING, Budget, OutOfTime, RemainingMs
from shared.archive.compaction.locks import HourLock
from shared.archive.compaction.reports import one_line
from shared.archive.naming import ERRORS_PREFIX, QUARANTINE_ROOT, ROOTS, UNREADABLE_ROOT
from shared.archive.privacy import letters, unreadable, versions
from shared.archive.privacy.finding import Finder
from shared.archive.privacy.rewrite import rewrite
from shared.archive.privacy.store import ROOT, RegulationStore
from shared.archive.privacy.subjects import Subjects
from shared.archive.privacy.tally import Tally
from shared.archive.reading import Unreadable
from shared.archive.storage import ObjectGone, ObjectStore
from shared.regulations import Regulation
from shared.settings import Settings
from shared.stream.entries import id_key

log = logging.getLogger(__name__)

# A deletion is carried out once this many reload periods (SUPPRESSION_RELOAD_S) have passed
# since it was accepted: every process then drops its subjects' events.
SETTLE_RELOADS = 2
HOURS = f"{ROOT}deleting/"  # `<hour label>`: an hour a pass is going through
OUT_OF_TIME = "out of time: the next pass resumes"

Say = Callable[[str], None]


@dataclass
class Pass:
    """What one pass did, for the CLI and the scheduled function."""

    regulations: list[str] = field(default_factory=list)  # the deletions it carried out
    finished: list[str] = field(default_factory=list)
    waiting: list[str] = field(default_factory=list)  # why they are not finished yet
    not_yet: dict[str, str] = field(default_factory=dict)  # too recent to start: id -> why
    out_of_time: bool = False  # its time budget ran out: the next pass resumes
    hours_left: int = 0  # hours not gone through for lack of time
    tally: Tally = field(default_factory=Tally)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class Deletion:
    def __init__(
        self,
        settings: Settings,
        store: ObjectStore,
        redis_client: Any,
        finder: Callable[[], Finder],
        *,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.settings = settings
        self.store = store
        self.redis = redis_client
        self.regulations = RegulationStore(store, settings.s3_prefix)
        self.make_finder = finder
        self.clock = clock
        namespace = locks.namespace(settings.stream_key, store.bucket, settings.s3_prefix)
        self.locks = locks.HourLocks(redis_client, namespace, settings.compact_lease_s)
        self.marks = f"{settings.s3_prefix}{HOURS}"

    def run(self, remaining_ms: RemainingMs | None = None, *, progress: Say | None = None) -> Pass:
        """One pass over every pending deletion; `remaining_ms`: the time left (a Lambda
        context's `get_remaining_time_in_millis`), None for no limit; `progress`: told each
        step as it starts."""
        budget, say = Budget(remaining_ms), progress or (lambda _step: None)
        result = Pass()
        every = self.regulations.all()
        self._tidy(every)
        due = self._due(every, result)
        if not due:
            return result
        for regulation in due:
            regulation.state = regulations.RUNNING
            self.regulations.save(regulation)
        try:
            say("looking for entries from before the deletions in the stream")
            self._stream_drained(due, result)
            budget.check()
            say("finding the objects that hold the subjects' events")
            subjects, found = self._subjects(due, result.tally)
            self._archive(subjects, found, result, budget, say)
            budget.check()
            say("dead letters and objects set aside")
            self._letters_and_set_aside(subjects, result.tally)
        except OutOfTime:
            result.out_of_time = True
            result.waiting.append(OUT_OF_TIME)
        except Exception as exc:
            self._failed(due, result, exc)
            raise
        self._conclude(due, result)
        return result

    # --- the steps --------------------------------------------------------------------------

    def _tidy(self, every: list[Regulation]) -> None:
        """What a pass killed after finishing a deletion left undone."""
        if every:
            self.regulations.drop_finished_history(every)
            self.regulations.publish_if_stale(self.redis, self.settings.stream_key, every)

    def _due(self, every: list[Regulation], result: Pass) -> list[Regulation]:
        settle = timedelta(seconds=SETTLE_RELOADS * self.settings.suppression_reload_s)
        due = []
        for regulation in self.regulations.pending_deletions(every):
            accepted = datetime.fromisoformat(regulation.accepted_at)
            if self.clock() - accepted < settle:
                result.not_yet[regulation.id] = f"accepted less than {settle} ago"
            else:
                due.append(regulation)
        result.regulations = [r.id for r in due]
        return due

    def _stream_drained(self, due: list[Regulation], result: Pass) -> None:
        """Whether the stream still holds entries from before the deletions (see step 2)."""
        newest = max(datetime.fromisoformat(r.accepted_at) for r in due)
        newest_ms = int(newest.timestamp() * 1000)
        for key in shards.shard_keys(self.settings.stream_key, self.settings.stream_shards):
            oldest = self.redis.xrange(key, count=1)
            if oldest and id_key(oldest[0][0])[0] <= newest_ms:
                result.waiting.append(f"{key}: entries from before the deletion not archived yet")

    def _subjects(self, due: list[Regulation], tally: Tally) -> tuple[Subjects, set[str]]:
        """The subjects, their links found (and kept), and the objects holding their events."""
        linking = [r for r in due if r.linked and r.field_name == "userId"]
        finder = self.make_finder()
        try:
            if linking:
                self._remember_links(linking, finder.linked(Subjects.of(linking).user_ids))
            subjects = Subjects.of(due)
            found = finder.objects(subjects)
            tally.objects_scanned += finder.objects_scanned
        finally:
            finder.close()
        return subjects, found

    def _remember_links(self, linking: list[Regulation], found: set[str]) -> None:
        """Keep the links found with the regulations, before anything is rewritten: the events
        that link them are deleted by this pass, and a later pass must still know them."""
        for regulation in linking:
            known = set(regulation.linked_ids)
            if not found <= known:
                regulation.linked_ids = sorted(known | found)
                self.regulations.save(regulation)

    def _archive(
        self, subjects: Subjects, found: set[str], result: Pass, budget: Budget, say: Say
    ) -> None:
        marks = self.store.keys_under(self.marks)
        marked = {partitions.parse_hour(key[len(self.marks) :]) for key in marks}
        hours = sorted({h for h in map(partitions.hour_in, found) if h is not None} | marked)
        for done, hour in enumerate(hours):
            if budget.exhausted():
                result.hours_left = len(hours) - done
                raise OutOfTime()
            label = partitions.hour_label(hour)
            say(f"rewriting {label} ({done + 1}/{len(hours)})")
            lock = self.locks.acquire(hour)
            if lock is None:
                result.waiting.append(f"{label}: being compacted; the next pass rewrites it")
                continue
            try:
                mark = f"{self.marks}{label}"
                if hour not in marked:
                    self.store.put_json(mark, {"hour": label})
                self._rewrite_hour(hour, subjects, result.tally, lock)
                versions.purge(self.store, mark)  # every version: it leaves no trace
            finally:
                lock.release()

    def _rewrite_hour(
        self, hour: datetime, subjects: Subjects, tally: Tally, lock: HourLock
    ) -> None:
        prefix, partition = self.settings.s3_prefix, partitions.partition_of(hour)
        for item in reading.list_partition(self.store, prefix, hour.date(), hour.hour):
            lock.renew()
            self._rewrite_one(item, subjects, tally)
        # Older versions: of the objects rewritten, and of those merged or removed since (a
        # compaction's inputs).
        for root in ROOTS:
            tally.versions_deleted += versions.sweep(
                self.store, prefix + root + partition, subjects
            )
        # Compaction's spills of this hour hold events: its next run plans again.
        tally.versions_deleted += versions.purge(self.store, f"{prefix}{STAGING}work/{partition}")

    def _rewrite_one(self, item: reading.ArchivedObject, subjects: Subjects, tally: Tally) -> None:
        try:
            done = rewrite(self.store, item, subjects, self.settings.gzip_level)
        except Unreadable:
            tally.undecodable.append(item.key)
            return
        except ObjectGone:  # merged and removed meanwhile: its events are in what was listed
            return
        if done is not None:
            tally.events_deleted += done.removed
            tally.shared_devices_kept += done.shared_devices
            tally.objects_removed += done.emptied
            tally.objects_rewritten += not done.emptied

    def _quarantine(self, subjects: Subjects, tally: Tally) -> None:
        """The events a tracking plan quarantined: every object of `quarantine/` (no finder
        looks there, and the quarantine is small), and their older versions."""
        quarantine = self.settings.s3_prefix + QUARANTINE_ROOT
        for item in reading.list_objects(self.store, quarantine, partitions.HourRange()):
            tally.objects_scanned += 1
            self._rewrite_one(item, subjects, tally)
        for root in ROOTS:
            tally.versions_deleted += versions.sweep(self.store, quarantine + root, subjects)

    def _letters_and_set_aside(self, subjects: Subjects, tally: Tally) -> None:
        self._quarantine(subjects, tally)
        keys = shards.shard_keys(self.settings.stream_key, self.settings.stream_shards)
        tally.add(letters.scrub_bucket_letters(self.store, subjects))
        dead_keys = [shards.dead_letter_key(key) for key in keys]
        tally.add(letters.scrub_dead_letter_streams(self.redis, dead_keys, subjects))
        prefix, level = self.settings.s3_prefix, self.settings.gzip_level
        tally.add(unreadable.scrub_unreadable(self.store, prefix, subjects, level))
        for place in (ERRORS_PREFIX, f"{prefix}{UNREADABLE_ROOT}"):
            tally.versions_deleted += versions.sweep(self.store, place, subjects)

    # --- outcomes ---------------------------------------------------------------------------

    def _conclude(self, due: list[Regulation], result: Pass) -> None:
        finished = not result.waiting
        now = self.clock().isoformat(timespec="milliseconds")
        for regulation in due:
            regulation.progress = _summed(regulation.progress, result.tally.progress())
            regulation.progress["identities_linked"] = len(regulation.linked_ids)
            regulation.undecodable = sorted(set(result.tally.undecodable))
            regulation.error = None
            if finished:
                regulation.state, regulation.finished_at = regulations.FINISHED, now
                regulation.forget_ids()
                result.finished.append(regulation.id)
            self.regulations.save(regulation)
            if finished:  # its earlier versions name the subjects in clear
                self.regulations.drop_history(regulation.id)
        if finished:  # the consumer stops dropping what is no longer suppressed
            self.regulations.publish(self.redis, self.settings.stream_key)

    def _failed(self, due: list[Regulation], result: Pass, exc: Exception) -> None:
        for regulation in due:
            regulation.state = regulations.FAILED
            regulation.error = one_line(exc)
            regulation.progress = _summed(regulation.progress, result.tally.progress())
            self.regulations.save(regulation)


def _summed(earlier: dict[str, int], this_pass: dict[str, int]) -> dict[str, int]:
    """A regulation's progress over every pass that worked on it."""
    names = earlier.keys() | this_pass.keys()
    return {name: earlier.get(name, 0) + this_pass.get(name, 0) for name in sorted(names)}
