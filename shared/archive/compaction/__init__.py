"""Compaction: the objects of each closed hour merged into a few Parquet objects that hold every
event once, sorted by time; then the merged objects removed.

Which copy of an event stays (the rule `event-ingest query` applies when it reads). Copies of
one event share `columns.DEDUP_KEY`: their `source` and `message_id`. An ID is unique only
within the source that sent it: a source whose write key is public (a browser's) can send any
ID, and must not make another source's events look like copies of its own. Events without a source
(anonymous mode, NULL) are one source of their own, as SQL's `PARTITION BY` groups NULLs.
- within an hour, per key, the copy with the earliest `received_at`, then the first object in
  key order, then the first row in its object; rows without a `message_id` all stay;
- across hours, a copy is dropped when its key is already stored in a *compacted* object of
  the DEDUP_WINDOW hours before (a client's retry across an hour boundary lands in the next
  hour). Only compacted copies count: a raw one may still lose to an earlier copy of its own
  hour, a compacted one never disappears without its event staying stored (compacting again
  keeps it, or an earlier copy that made it redundant). So a later copy is dropped only once
  an earlier one is safely stored, and by induction the earliest copy always survives. The
  window is read, not remembered: each part reads the key columns (alone, by ranged GETs) of
  the parts of the window's compacted objects that can hold its IDs, one object after another
  (downloaded KEYS_AHEAD ahead, compressed), decoded a batch at a time and looked up in the
  part's own keys, so that memory never holds the window's keys at once, however busy it was.

An hour is closed COMPACT_GRACE_S after it ends. It becomes 2^k objects under the compacted
root, `<prefix>compacted/dt=.../hour=.../compacted-<part>-of-<parts>-<digest>.parquet`
(`columns.SCHEMA`, zstd, UTC microseconds, no partition columns inside, row groups sorted by
`received_at`): one while the hour holds less than OBJECT_BYTES of objects, more by size. A
row goes to the part a hash of its `message_id` names (the ID alone: the copies of an event
share it, so every copy meets the others in one part), which is deduplicated on its own, in
memory, in one step. The digest is of the object's bytes: the same rows always make the same
name, and an unchanged part is never written again.

Hours compacted by versions whose key was `message_id` alone stay valid: their objects hold
each ID once, so each key once, in the part the ID's hash names, as now; a plan such a version
left unfinished resumes with the same spills and parts. What it dropped as a copy of another
source's event is gone.

The steps of one hour, each resumable, all recorded under `<prefix>_compaction/` (outside
every root's `dt=` partitions, in names no reader takes for archive objects):
1. plan: list the hour (every root) and write `work/dt=.../hour=.../plan.json`: the objects to
   merge (its inputs, in key order), the number of parts, and how the inputs are cut in steps;
2. split (only for more than one part): read up to STEP_BYTES of inputs, cut their rows by
   part, and store them as one spill object with an index (Arrow IPC, a stream per part);
3. merge, one per part: read the part's rows (its ranges of the spills, or the inputs
   themselves), keep the first copies, drop the keys already compacted in earlier hours, sort
   by time and store the compacted object, then a marker saying so;
   (an input that cannot all be decoded, read in step 2 or 3, gives the rows that do decode,
   and is first copied to `<prefix>_unreadable/<its key>` with `<its key>.reason.json`: step
   4 removes it with the other inputs, so whenever a run dies its bytes are in one place or
   both, and a redone step copies the same bytes again;)
4. commit: ask later hours that are already compacted to check their keys again (only if this
   plan merged new rows: see below), remove the inputs, then the answered requests and the
   plan, then the spills and markers.

A run killed anywhere finds the plan and resumes at the first step without its marker; every
step writes the same names with the same bytes when redone. Inputs are removed only in step
4, after every compacted object of the plan is stored, so a query at any moment finds every
event in a raw or a compacted object (in both at once in between: it deduplicates by
`DEDUP_KEY`, and lists a partition again when an object vanished while it read). Rows
without a `message_id` cannot be told from their copies, so such a query counts them twice
in that moment; ingest gives every event one, so only objects written by other means have any.

Late objects (a consumer down for hours) make a closed hour pending again; its next plan
merges them with its compacted objects. When they hold events that a later, already
compacted hour also holds, the earlier copy now wins: step 4 leaves a request under
`recheck/dt=.../hour=.../` for each compacted (or in-progress) hour of the window after it,
which then reads only the key columns of each part, and rewrites a part only if one of its
keys is now stored earlier.

Two compactions never work on one hour at once: an hour is locked in Redis, under
`<STREAM_KEY>:compaction-lock:<bucket>/<prefix>dt=.../hour=...`, by a lease of COMPACT_LEASE_S
(redis-py's `Lock`: `SET NX PX` with a random token; extended and released only by its holder).
A thread renews it every third of the lease while the run lives, so a step may take longer
than the lease; the run also renews it, checking that it still holds it, before every step and
before removing anything. A run that finds the lock taken skips the hour and reports it busy,
with the time the lease ends unless renewed; the lease of a killed run ends within
COMPACT_LEASE_S. Different hours are compacted in parallel by different runs.

An error in one hour, of whatever type, fails that hour only: the run goes on with the others,
and its Summary lists each failed hour with its reason (the CLI exits non-zero, the function's
invocation ends in an error). A run over every hour it looks after (`run(report=True)`) also
leaves a report in Redis (`shared.status.CompactionReport`: its lag, failed hours and the
unreadable objects set aside) for `event-ingest status` and /metrics, which read only Redis.

Sizing. A step holds about OBJECT_BYTES (or STEP_BYTES) of stored input in memory, decoded:
at the peak about twice the decoded rows, 1 to 3 GB for 128 MiB depending on how well the
events compress, whatever the size of the hour. Measured on a 2-core VM, one core, per run:
about 35,000 events/s from gzip NDJSON (decoding the JSON is 90% of it) and 150,000-250,000
events/s from Parquet (S3's latency aside). An hour at 100,000 events/s (360 million, 35 to
70 GB) becomes 512 or 1,024 parts: 300 to 550 split steps and a merge step per part, each
under about a minute, which one 15-minute invocation after another works through. As NDJSON
that is about 3 hours of one core per hour of events, so that rate needs at least 3
overlapping runs (each takes the oldest hour nobody holds), or ARCHIVE_FORMAT=parquet (well
under an hour per hour).

The package, one module per concern: `plan` (what an hour needs, its parts and steps),
`dedup` (which copy stays: pure functions over tables), `window` (the DEDUP_WINDOW's keys, read
from compacted objects a batch at a time), `locks` (leases on hours), `steps` (one hour's
resumable steps), `reports` (what a run says) and `compactor` (which hours, under the budget).
Object names are `naming`'s, partitions `partitions`', bytes go through `storage.ObjectStore`.
"""

from shared.archive.compaction.compactor import LOOKBACK_H, STAGING, Compactor
from shared.archive.compaction.reports import HourResult, Progress, Summary

__all__ = ["LOOKBACK_H", "STAGING", "Compactor", "HourResult", "Progress", "Summary"]
