"""Compaction: the objects of each closed hour merged into a few Parquet objects that hold every
event once, sorted by time; then the merged objects removed.

Which copy of an event stays (the rule `event-ingest query` applies when it reads). Copies of
one event share `DEDUP_KEY`: their `source` and `message_id`. An ID is unique only within the
source that sent it: a source whose write key is public (a browser's) can send any ID, and must
not make another source's events look like copies of its own. Events without a source
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
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import io
import json
import logging
import re
import threading
import time
import zlib
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import UTC, date, datetime, timedelta
from itertools import islice
from typing import Any, TypeVar

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import redis
import redis.lock

from shared import status, stream
from shared.archive import columns, reading
from shared.archive.formats import parquet
from shared.archive.naming import (
    COMPACTED_ROOT,
    REASON_SUFFIX,
    ROOTS,
    UNREADABLE_ROOT,
    unreadable_key,
)
from shared.archive.reading import ArchivedObject, Damage, HourRange, ObjectGone
from shared.archive.storage import ObjectStore
from shared.settings import Settings

log = logging.getLogger(__name__)

# Sizing, in stored bytes as listed (gzip NDJSON or Parquet: about 100-200 bytes an event).
# A compacted object holds about this much input, which one merge step holds in memory ...
OBJECT_BYTES = 128 * 2**20
# ... and a split step reads about this much (each reads at least one object).
STEP_BYTES = 128 * 2**20
MAX_PARTS = 4096
# Downloads in flight at once within a step.
READ_THREADS = 8
# The DEDUP_WINDOW check reads the key columns of earlier compacted objects one at a time,
# downloading (not decoding) up to this many ahead, so that S3's latency overlaps the
# decoding (each more costs an object's compressed keys, about 20 bytes a row), in batches of
# at least this many rows.
KEYS_AHEAD = 2
KEY_BATCH_ROWS = 16_384
# A Parquet footer is read with this much of the object's end (Arrow's first read of it too).
FOOTER_BYTES = 64 * 1024
# No step starts with less than this left of the budget (or a quarter of it, when smaller).
STOP_MARGIN_MS = 60_000
# The scheduled function looks back this far for hours to compact (late objects included).
LOOKBACK_H = 7 * 24

# What copies of one event share (see above); NULL sources group together, as in SQL.
DEDUP_KEY = ("source", "message_id")

STAGING = "_compaction/"
# Where objects that cannot be decoded are set aside, each with a `.reason.json` beside it.
UNREADABLE = UNREADABLE_ROOT
ORDER = "_order"  # a row's input object (high 32 bits) and place in it: the tie-break
HOUR = timedelta(hours=1)

_COMPACTED = re.compile(
    re.escape(COMPACTED_ROOT)
    + r"dt=[\d-]{10}/hour=\d\d/compacted-(\d{4})-of-(\d{4})-[0-9a-f]{16}\.parquet$"
)
_PARTITION = re.compile(r"dt=(\d{4}-\d{2}-\d{2})/hour=(\d{2})/")
_SPILL_SCHEMA = columns.SCHEMA.append(pa.field(ORDER, pa.int64()))
_IPC = pa.ipc.IpcWriteOptions(compression="zstd")

T = TypeVar("T")
RemainingMs = Callable[[], int]


class LockLost(Exception):
    """This run's lock on an hour expired and may be held by another run."""


class OutOfTime(Exception):
    """The budget left is below the stop margin: no further step starts."""


# --- hours and names ------------------------------------------------------------------------


def hour_label(hour: datetime) -> str:
    return hour.strftime("%Y-%m-%dT%H")


def parse_hour(text: str) -> datetime:
    """`YYYY-MM-DDTHH` (or `YYYY-MM-DD HH`), UTC: a bound `reading.parse_bound` reads, but
    not a bare date."""
    if re.fullmatch(r"\d{4}-\d{2}-\d{2}", text.strip()):
        raise ValueError(f"{text.strip()!r} is not an hour (YYYY-MM-DDTHH)")
    return reading.parse_bound(text)


def partition_of(hour: datetime) -> str:
    return f"dt={hour:%Y-%m-%d}/hour={hour:%H}/"


def hour_in(key: str) -> datetime | None:
    match = _PARTITION.search(key)
    if match is None:
        return None
    day = date.fromisoformat(match[1])
    return datetime(day.year, day.month, day.day, int(match[2]), tzinfo=UTC)


@dataclass(frozen=True)
class Part:
    """Where a compacted object stands: part `index` of `count`."""

    index: int
    count: int


def compacted_part(key: str) -> Part | None:
    """The part a compacted object holds, from its name; None for any other object."""
    match = _COMPACTED.search(key)
    if match is None:
        return None
    part = Part(int(match[1]), int(match[2]))
    return part if part.index < part.count else None


def compacted_key(prefix: str, hour: datetime, part: Part, body: bytes) -> str:
    """`<prefix>compacted/dt=.../hour=.../compacted-<part>-of-<parts>-<digest of body>.parquet`"""
    digest = hashlib.blake2b(body, digest_size=8).hexdigest()
    name = f"compacted-{part.index:04d}-of-{part.count:04d}-{digest}.parquet"
    return f"{prefix}{COMPACTED_ROOT}{partition_of(hour)}{name}"


def parts_for(total_bytes: int, object_bytes: int = OBJECT_BYTES) -> int:
    """The power of two of parts that keeps each near `object_bytes` or under."""
    needed = max(1, -(-total_bytes // object_bytes))
    return min(MAX_PARTS, 1 << (needed - 1).bit_length())


def part_of_ids(ids: pa.ChunkedArray | pa.Array, count: int) -> list[int]:
    """Each row's part: CRC-32 of its `message_id` (stable across processes and versions)
    modulo `count`, a power of two; rows without one go to part 0. The source is left out: the
    copies of an event share their ID, and the hours compacted already were cut by it alone."""
    if count == 1:
        return [0] * len(ids)
    mask = count - 1
    return [0 if v is None else zlib.crc32(v.encode()) & mask for v in ids.to_pylist()]


# --- deduplication: pure functions over tables ----------------------------------------------


def with_order(rows: pa.Table, ordinal: int) -> pa.Table:
    """`rows` of the input at `ordinal` (its place in key order), with their tie-break."""
    base = ordinal << 32
    return rows.append_column(ORDER, pa.array(range(base, base + rows.num_rows), pa.int64()))


# Given a table of `DEDUP_KEY` columns, the places in it of the rows whose key is stored
# before (in the DEDUP_WINDOW's compacted hours), in any order.
StoredBefore = Callable[[pa.Table], pa.Array]


def first_copies(
    rows: pa.Table, drop: pa.Table | None = None, *, stored_before: StoredBefore | None = None
) -> pa.Table:
    """One row per `DEDUP_KEY` (the earliest `received_at`, then the lowest ORDER), and every
    row without a `message_id`; less the rows whose key is stored before: in `drop` (a table of
    the key's columns) or where `stored_before` says. Sorted by `received_at`, then ORDER. The
    rows are copied once, by the final `take`: only the keys are sorted."""
    order = pc.sort_indices(rows, [("received_at", "ascending", "at_end"), (ORDER, "ascending")])
    keys = rows.select(DEDUP_KEY).take(order)
    positions = pa.array(range(keys.num_rows), pa.int64())
    firsts = first_positions(keys, drop, stored_before=stored_before)
    keep = pc.or_(pc.is_in(positions, value_set=firsts), pc.invert(pc.is_valid(keys["message_id"])))
    return rows.take(order.filter(keep))


def first_positions(
    keys: pa.Table, earlier: pa.Table | None = None, *, stored_before: StoredBefore | None = None
) -> pa.Array:
    """The place in `keys` (`DEDUP_KEY` columns, in order of precedence) of the first row of
    each key with a `message_id`, except the keys stored before (in `earlier`, or where
    `stored_before` places them): no row of theirs is first."""
    own = keys.select(DEDUP_KEY)
    ranked = own.append_column("rank", pa.array(range(own.num_rows), pa.int64()))
    firsts = (
        ranked.filter(pc.is_valid(ranked["message_id"]))
        .group_by(list(DEDUP_KEY), use_threads=False)  # NULL sources form one group
        .aggregate([("rank", "min")])["rank_min"]
        .combine_chunks()
    )
    del ranked
    if earlier is not None:
        stored_before = functools.partial(stored_positions, stored=earlier)
    if stored_before is None or not len(firsts):
        return firsts
    stored = stored_before(own)
    return firsts.filter(pc.invert(pc.is_in(firsts, value_set=stored)))


def stored_positions(keys: pa.Table, stored: pa.Table) -> pa.Array:
    """The places in `keys` of the rows whose key (`DEDUP_KEY`) `stored` holds; a row without a
    `message_id` is never stored. Matched by `message_id` first (a hash set of `stored`'s IDs),
    then exactly, NULL sources matching each other, among the few rows whose ID is there."""
    stored_ids = stored["message_id"].cast(pa.string())
    maybe = pc.is_in(keys["message_id"], value_set=stored_ids, skip_nulls=True)
    places = pc.indices_nonzero(maybe.fill_null(False)).cast(pa.int64())
    if not len(places):
        return places
    near = keys.select(DEDUP_KEY).take(places)
    twins = stored.filter(pc.is_in(stored_ids, value_set=near["message_id"].combine_chunks()))
    found = (
        _exact_keys(near)
        .append_column("place", places)
        .join(_exact_keys(twins), keys=["source", "anonymous", "message_id"], join_type="left semi")
    )
    return found["place"].combine_chunks()


def _exact_keys(keys: pa.Table) -> pa.Table:
    """`DEDUP_KEY` as join keys without NULLs, so that a join matches NULL sources together,
    as the group-by does: the source (empty when NULL) and whether it is NULL."""
    source = keys["source"].cast(pa.string())
    return pa.table(
        {
            "source": source.fill_null(""),
            "anonymous": source.is_null(),
            "message_id": keys["message_id"].cast(pa.string()),
        }
    )


def parquet_bytes(rows: pa.Table) -> bytes:
    """A compacted object: the archive's Parquet, declared sorted by time. The same rows
    always give the same bytes."""
    return parquet.write(rows, sorted_by_time=True)


def _ipc_bytes(rows: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, _SPILL_SCHEMA, options=_IPC) as writer:
        writer.write_table(rows.cast(_SPILL_SCHEMA))
    return sink.getvalue().to_pybytes()


# --- the lock -------------------------------------------------------------------------------


class HourLocks:
    """Leases on hours in Redis: redis-py's `Lock` (`SET key token NX PX lease`), extended and
    released only by the holder of the token (compare-and-set in Lua), so an expired holder
    can neither free nor extend a lock another run took meanwhile."""

    def __init__(self, client: redis.Redis, namespace: str, lease_s: float) -> None:
        self.client = client
        self.namespace = namespace
        self.lease_s = lease_s

    def key(self, hour: datetime) -> str:
        return f"{self.namespace}{partition_of(hour)}"

    def acquire(self, hour: datetime) -> HourLock | None:
        """The hour's lease, renewed until released; None when another run holds it."""
        # Not thread-local: the renewing thread uses the token the acquiring thread got.
        lock = self.client.lock(
            self.key(hour), timeout=self.lease_s, blocking=False, thread_local=False
        )
        return HourLock(lock, self.lease_s) if lock.acquire() else None

    def held_until(self, hour: datetime) -> datetime | None:
        """When the lease on `hour` ends unless its holder renews it, to the second rounded
        up; None when nobody holds it (by this machine's clock, with Redis's time to live)."""
        left_ms = self.client.pttl(self.key(hour))
        if left_ms < 0:
            return None
        ends = datetime.now(UTC) + timedelta(milliseconds=left_ms)
        return ends.replace(microsecond=0) + timedelta(seconds=1 if ends.microsecond else 0)


class HourLock:
    """A held lease, renewed by a thread of its own every third of the lease until released,
    so that a step may last longer than the lease while its run lives."""

    def __init__(self, lock: redis.lock.Lock, lease_s: float) -> None:
        self.lock = lock
        self.key = lock.name
        self.lease_s = lease_s
        self._guard = threading.Lock()  # one Redis call on the lease at a time
        self._released = threading.Event()
        self._lost: str | None = None
        self._renewer = threading.Thread(target=self._keep, name=f"lease {self.key}", daemon=True)
        self._renewer.start()

    def renew(self) -> None:
        """Extend the lease to a whole one now; LockLost if it ran out meanwhile."""
        with self._guard:
            if self._lost is None and not self._released.is_set():
                try:
                    self.lock.reacquire()
                except redis.exceptions.LockNotOwnedError:
                    self._lost = f"the lease {self.key} ran out; another run may hold it"
            if self._lost is not None:
                raise LockLost(self._lost)

    def release(self) -> None:
        self._released.set()
        with self._guard:
            try:
                if self._lost is None:
                    self.lock.release()
            except redis.exceptions.LockNotOwnedError:
                pass  # it ran out: nothing of ours to free
            except redis.RedisError:
                log.warning("could not release %s; it ends by itself", self.key, exc_info=True)
        self._renewer.join()

    def _keep(self) -> None:
        while not self._released.wait(self.lease_s / 3):
            try:
                self.renew()
            except LockLost:
                return  # the run finds out at its next `renew`, before it changes anything
            except redis.RedisError:
                # Two more tries before the lease runs out.
                log.warning("could not renew %s; trying again", self.key, exc_info=True)


# --- objects in the bucket ------------------------------------------------------------------


class _RangedFile(io.RawIOBase):
    """A stored object as a seekable file whose reads are ranged GETs, so that reading one
    Parquet column downloads the footer and that column only; or served from the byte ranges
    `fetch` downloaded beforehand."""

    def __init__(self, client: Any, bucket: str, key: str, size: int) -> None:
        super().__init__()
        self.client, self.bucket, self.key, self.size = client, bucket, key, size
        self.position = 0
        self.fetched: list[tuple[int, bytes]] = []  # (offset, bytes)

    def fetch(self, start: int, end: int) -> None:
        """Download bytes `start` to `end` (excluded) now, for reads to come."""
        start, end = max(0, start), min(end, self.size)
        if start < end:
            self.fetched.append((start, _get(self.client, self.bucket, self.key, (start, end - 1))))

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self.position, io.SEEK_END: self.size}[whence]
        self.position = max(0, base + offset)
        return self.position

    def tell(self) -> int:
        return self.position

    def readinto(self, buffer: Any) -> int:
        body = self.read_buffer(len(buffer))
        buffer[: len(body)] = body
        return len(body)

    def read_buffer(self, size: int) -> bytes | memoryview:
        """The next `size` bytes, not copied when fetched already (pyarrow reads through this
        when a file has it, without `read`'s copies)."""
        end = min(self.position + size, self.size)
        if end <= self.position:
            return b""
        body = self._fetched(self.position, end)
        if body is None:
            body = _get(self.client, self.bucket, self.key, (self.position, end - 1))
        self.position += len(body)
        return body

    def _fetched(self, start: int, end: int) -> memoryview | None:
        for offset, body in self.fetched:
            if offset <= start and end <= offset + len(body):
                return memoryview(body)[start - offset : end - offset]
        return None


def _get(client: Any, bucket: str, key: str, byte_range: tuple[int, int] | None = None) -> bytes:
    options = {"Range": f"bytes={byte_range[0]}-{byte_range[1]}"} if byte_range else {}
    try:
        return client.get_object(Bucket=bucket, Key=key, **options)["Body"].read()
    except client.exceptions.NoSuchKey:
        raise ObjectGone(key) from None


@dataclass
class _Bucket:
    """The few things compaction does with the bucket, over `ObjectStore`'s client."""

    store: ObjectStore

    @property
    def client(self) -> Any:
        return self.store.client

    def get(self, key: str, byte_range: tuple[int, int] | None = None) -> bytes:
        return _get(self.client, self.store.bucket, key, byte_range)

    def get_json(self, key: str) -> Any | None:
        try:
            return json.loads(self.get(key))
        except ObjectGone:
            return None

    def put(self, key: str, body: bytes, content_type: str = parquet.CONTENT_TYPE) -> None:
        self.store.put(key, body, content_type)

    def put_json(self, key: str, document: Any) -> None:
        body = json.dumps(document, sort_keys=True, separators=(",", ":")).encode()
        self.store.put(key, body, "application/json")

    def delete(self, keys: Iterable[str]) -> int:
        """Remove `keys` (absent ones are no error); return how many were asked for."""
        keys = list(keys)
        for start in range(0, len(keys), 1000):
            chunk = keys[start : start + 1000]
            answer = self.client.delete_objects(
                Bucket=self.store.bucket,
                Delete={"Objects": [{"Key": key} for key in chunk], "Quiet": True},
            )
            if answer.get("Errors"):
                error = answer["Errors"][0]
                raise OSError(f"could not remove {error['Key']}: {error.get('Message')}")
        return len(keys)

    def keys_under(self, prefix: str) -> list[str]:
        keys = []
        paginator = self.client.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=self.store.bucket, Prefix=prefix):
            keys += [item["Key"] for item in page.get("Contents", [])]
        return sorted(keys)

    def count_unreadable(self, prefix: str) -> int:
        """The objects set aside under `<prefix>_unreadable/` (their reasons not counted)."""
        keys = self.keys_under(f"{prefix}{UNREADABLE}")
        return sum(1 for key in keys if not key.endswith(".reason.json"))

    def list(self, prefix: str, hours: HourRange) -> list[ArchivedObject]:
        """Every archived object of `hours`, raw and compacted, in key order: each root
        (`naming.ROOTS`) listed as an archive of its own, so that none is missed however
        `reading` treats roots (a set: an object listed twice counts once)."""
        found = set()
        for root in ROOTS:
            found.update(reading.list_objects(self.client, self.store.bucket, prefix + root, hours))
        return sorted(found)

    def partition(self, prefix: str, hour: datetime) -> list[ArchivedObject]:
        """Every archived object of one hour, raw and compacted, in key order."""
        found = set()
        for root in ROOTS:
            found.update(
                reading.list_partition(
                    self.client, self.store.bucket, prefix + root, hour.date(), hour.hour
                )
            )
        return sorted(found)

    def compacted(self, prefix: str, first: datetime, last: datetime) -> list[ArchivedObject]:
        """The compacted objects of the hours `first` to `last`: a listing per day (a day of
        compacted hours is one page), not one per hour."""
        found = []
        day = first.date()
        while day <= last.date():
            for page in self.client.get_paginator("list_objects_v2").paginate(
                Bucket=self.store.bucket, Prefix=f"{prefix}{COMPACTED_ROOT}dt={day.isoformat()}/"
            ):
                for item in page.get("Contents", []):
                    hour = hour_in(item["Key"])
                    if compacted_part(item["Key"]) and hour and first <= hour <= last:
                        found.append(_archived(item["Key"], item["Size"]))
            day += timedelta(days=1)
        return found

    def read_rows(self, item: ArchivedObject) -> tuple[pa.Table, Damage | None]:
        """The object's rows that decode, and what did not (`reading.read_salvaging`)."""
        return reading.read_salvaging(self.client, self.store.bucket, item)

    def copy(self, source: str, target: str) -> None:
        """Copy an object within the bucket (server-side: its bytes do not pass through here)."""
        try:
            self.client.copy_object(
                Bucket=self.store.bucket,
                Key=target,
                CopySource={"Bucket": self.store.bucket, "Key": source},
            )
        except self.client.exceptions.NoSuchKey:
            raise ObjectGone(source) from None

    def key_batches(self, items: list[ArchivedObject], rows: int) -> Iterator[pa.Table]:
        """The `DEDUP_KEY` columns of `items` (Parquet), object after object, in batches of
        about `rows` rows: decoded a batch at a time, downloaded up to KEYS_AHEAD objects
        ahead (compressed, as stored: S3's latency is paid once per KEYS_AHEAD objects)."""
        pool = ThreadPoolExecutor(KEYS_AHEAD, thread_name_prefix="compact-keys")
        try:
            upcoming = iter(items)
            ahead = deque(
                pool.submit(self.key_columns, item) for item in islice(upcoming, KEYS_AHEAD)
            )
            while ahead:
                file, key = ahead.popleft().result()
                for item in islice(upcoming, 1):
                    ahead.append(pool.submit(self.key_columns, item))
                yield from self._decoded(file, key, rows)
        finally:
            pool.shutdown(wait=True, cancel_futures=True)

    def key_columns(self, item: ArchivedObject) -> tuple[pq.ParquetFile, str]:
        """A Parquet object's footer and `DEDUP_KEY` column chunks downloaded (a GET each),
        not decoded; and its key."""
        file = _RangedFile(self.client, self.store.bucket, item.key, item.size)
        try:
            file.fetch(item.size - FOOTER_BYTES, item.size)
            parquet_file = pq.ParquetFile(file)
            meta = parquet_file.metadata
            names = [meta.schema.column(index).name for index in range(meta.num_columns)]
            for group in range(meta.num_row_groups):
                for name in DEDUP_KEY:
                    chunk = meta.row_group(group).column(names.index(name))
                    start = chunk.data_page_offset
                    if chunk.has_dictionary_page and chunk.dictionary_page_offset:
                        start = min(start, chunk.dictionary_page_offset)
                    file.fetch(start, start + chunk.total_compressed_size)
        except ObjectGone:
            raise
        except (OSError, ValueError, pa.ArrowException) as exc:
            raise self._why_unread(item.key, exc) from exc
        return parquet_file, item.key

    def _decoded(self, file: pq.ParquetFile, key: str, rows: int) -> Iterator[pa.Table]:
        batches = file.iter_batches(batch_size=rows, columns=list(DEDUP_KEY), use_threads=False)
        try:
            for batch in batches:
                yield pa.Table.from_batches([batch])
        except ObjectGone:
            raise
        except (OSError, pa.ArrowException) as exc:
            raise self._why_unread(key, exc) from exc

    def _why_unread(self, key: str, exc: Exception) -> Exception:
        """Why a Parquet object's keys could not be read: it is gone (ObjectGone), the bucket
        does not answer (the GET that checks it raises), or its bytes are bad (Unreadable)."""
        self.get(key, (0, 0))
        return reading.Unreadable(key, Damage(f"its keys cannot be read: {_one_line(exc)}", 0))

    def read_keys(self, item: ArchivedObject) -> pa.Table:
        """The `DEDUP_KEY` columns of a Parquet object, without its other columns."""
        file = _RangedFile(self.client, self.store.bucket, item.key, item.size)
        try:
            keys = pq.ParquetFile(file).read(columns=list(DEDUP_KEY))
        except ObjectGone:
            raise
        except (OSError, pa.ArrowException):
            self.get(item.key, (0, 0))  # raises ObjectGone if that was the trouble
            raise
        return keys.combine_chunks()


def _parallel(function: Callable[[Any], T], items: list[Any]) -> list[T]:
    if len(items) <= 1:
        return [function(item) for item in items]
    with ThreadPoolExecutor(min(READ_THREADS, len(items)), thread_name_prefix="compact") as pool:
        return list(pool.map(function, items))


def _archived(key: str, size: int) -> ArchivedObject:
    hour = hour_in(key)
    fmt = next(f for suffix, f in reading.FORMAT_OF_SUFFIX.items() if key.endswith(suffix))
    return ArchivedObject(key, hour.date(), hour.hour, size, fmt)


# --- what an hour needs ---------------------------------------------------------------------


@dataclass(frozen=True)
class HourState:
    """A closed hour that needs compacting, as a survey found it."""

    hour: datetime
    raw_objects: int
    compacted_objects: int
    bytes: int
    in_progress: bool  # a plan an earlier run left unfinished
    rechecks: int  # earlier hours that gained events since this one was compacted

    @property
    def label(self) -> str:
        return hour_label(self.hour)


def _needs_work(objects: list[ArchivedObject], rechecks: int, in_progress: bool) -> bool:
    """Raw objects, requests to check again, a plan left over, or compacted objects that do not
    form one complete-looking set of parts (what an interrupted older plan may leave)."""
    parts = [compacted_part(item.key) for item in objects]
    if in_progress or rechecks or None in parts:
        return True
    return len({p.count for p in parts}) > 1 or len({p.index for p in parts}) < len(parts)


@dataclass
class Plan:
    """What one compaction of an hour merges, and in which steps. Stored as `plan.json`; a
    rerun follows it to the end, whatever it lists now."""

    hour: str
    parts: int
    inputs: list[str]  # in key order: an input's place is its ORDER ordinal
    sizes: list[int]
    direct: list[int]  # inputs each merge reads as they are (its part's compacted objects)
    batches: list[list[int]]  # the other inputs, cut by part in one split step per batch
    rechecks: list[str]  # the requests to check again this plan answers
    window_h: int

    @property
    def id(self) -> str:
        body = json.dumps(asdict(self), sort_keys=True).encode()
        return hashlib.blake2b(body, digest_size=8).hexdigest()

    @property
    def new_rows(self) -> bool:
        """Whether it merges raw objects (events the hours after it may hold too)."""
        return any(compacted_part(key) is None for key in self.inputs)

    def direct_inputs(self, part: int) -> list[int]:
        if self.parts == 1:
            return self.direct
        return [i for i in self.direct if compacted_part(self.inputs[i]).index == part]


# --- reports --------------------------------------------------------------------------------


@dataclass
class HourResult:
    hour: str
    # compacted | unchanged (nothing to do) | busy (locked by another run) | partial (out of
    # time; the next run resumes) | failed (see error; the next run resumes)
    state: str
    events_read: int = 0
    events_written: int = 0
    objects_written: int = 0
    objects_removed: int = 0
    steps: int = 0
    error: str | None = None
    # busy: when the other run's lease ends unless it renews it (ISO 8601, UTC)
    busy_until: str | None = None
    # The inputs this run set aside under `_unreadable/` (their rows that decode were merged).
    unreadable: list[str] = field(default_factory=list)


@dataclass
class Progress:
    hour: str
    step: str
    hours_done: int
    hours_total: int


@dataclass
class Summary:
    hours: list[HourResult] = field(default_factory=list)
    hours_left: int = 0  # not started: the budget ran out first
    out_of_time: bool = False
    # Objects that could not be decoded, set aside under `_unreadable/` by this run.
    unreadable_objects: int = 0
    # `run` only (it surveys the hours after its work): since the oldest closed hour of its
    # range not yet compacted closed (0 when none is left), and that hour.
    lag_s: float | None = None
    oldest_hour: str | None = None
    report: status.CompactionReport | None = None  # built (and left in Redis) by run(report=True)

    def count(self, state: str) -> int:
        return sum(1 for result in self.hours if result.state == state)

    def failures(self) -> list[str]:
        """`<hour>: <why>` for each hour that failed, or set unreadable objects aside (it is
        compacted, but someone must look at them): what makes the run a failure."""
        found = []
        for r in self.hours:
            if r.state == "failed":
                found.append(f"{r.hour}: {r.error}")
            elif r.unreadable:
                others = f" and {len(r.unreadable) - 1} more" if len(r.unreadable) > 1 else ""
                found.append(
                    f"{r.hour}: unreadable objects set aside under {UNREADABLE} (their reasons "
                    f"beside them; what decoded was compacted): {r.unreadable[0]}{others}"
                )
        return found

    def as_dict(self) -> dict[str, Any]:
        read = sum(r.events_read for r in self.hours)
        written = sum(r.events_written for r in self.hours)
        return {
            "hours_compacted": self.count("compacted"),
            "hours_unchanged": self.count("unchanged"),
            "hours_partial": self.count("partial"),
            "hours_busy": self.count("busy"),
            "hours_failed": self.count("failed"),
            "hours_left": self.hours_left,
            "events_read": read,
            "events_written": written,
            "duplicates_dropped": read - written,
            "objects_written": sum(r.objects_written for r in self.hours),
            "objects_removed": sum(r.objects_removed for r in self.hours),
            "steps": sum(r.steps for r in self.hours),
            "out_of_time": self.out_of_time,
            "errors": self.failures(),
            "unreadable_objects": self.unreadable_objects,
            "lag_s": self.lag_s,
            "oldest_hour": self.oldest_hour,
        }


# --- the compactor --------------------------------------------------------------------------


class _Budget:
    def __init__(self, remaining_ms: RemainingMs | None) -> None:
        self.remaining_ms = remaining_ms
        self.margin_ms = min(STOP_MARGIN_MS, remaining_ms() // 4) if remaining_ms else 0

    def exhausted(self) -> bool:
        return self.remaining_ms is not None and self.remaining_ms() < self.margin_ms

    def check(self) -> None:
        if self.exhausted():
            raise OutOfTime()


class Compactor:
    """Compacts closed hours of the archive. Reused across invocations of the function."""

    def __init__(
        self,
        settings: Settings,
        store: ObjectStore,
        redis_client: redis.Redis,
        *,
        object_bytes: int = OBJECT_BYTES,
        step_bytes: int = STEP_BYTES,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.bucket = _Bucket(store)
        self.prefix = settings.s3_prefix
        self.staging = f"{settings.s3_prefix}{STAGING}"
        self.redis = redis_client
        namespace = f"{settings.stream_key}:compaction-lock:{store.bucket}/{settings.s3_prefix}"
        self.locks = HourLocks(redis_client, namespace, settings.compact_lease_s)
        self.object_bytes = object_bytes
        self.step_bytes = step_bytes
        self.clock = clock

    @classmethod
    def from_settings(cls, settings: Settings) -> Compactor:
        # Unlike the consumer's, retried: a failed step costs a rerun of the step.
        store = ObjectStore.from_settings(settings, attempts=4, read_timeout_s=60)
        return cls(settings, store, stream.connect(settings))

    # --- which hours ----------------------------------------------------------------------

    def closes_at(self, hour: datetime) -> datetime:
        return hour + HOUR + timedelta(seconds=self.settings.compact_grace_s)

    def now(self) -> datetime:
        return datetime.fromtimestamp(self.clock(), UTC)

    def survey(self, hours: HourRange | None = None) -> list[HourState]:
        """The closed hours in `hours` (default: all) that need compacting, oldest first."""
        now = self.now()
        last_closed = (now - timedelta(seconds=self.settings.compact_grace_s) - HOUR).replace(
            minute=0, second=0, microsecond=0
        )
        hours = hours or HourRange()
        if hours.end is None or hours.end > last_closed:  # open hours are not even listed
            hours = HourRange(hours.start, last_closed)
        listed: dict[datetime, list[ArchivedObject]] = {}
        for item in self.bucket.list(self.prefix, hours):
            listed.setdefault(_hour_of(item), []).append(item)
        in_progress = {hour_in(key) for key in self.bucket.keys_under(f"{self.staging}work/")}
        rechecks: dict[datetime, int] = {}
        for key in self.bucket.keys_under(f"{self.staging}recheck/"):
            rechecks[hour_in(key)] = rechecks.get(hour_in(key), 0) + 1
        states = []
        for hour in sorted((set(listed) | in_progress | set(rechecks)) - {None}):
            if not hours.holds_hour(hour.date(), hour.hour) or self.closes_at(hour) > now:
                continue
            objects = listed.get(hour, [])
            if not _needs_work(objects, rechecks.get(hour, 0), hour in in_progress):
                continue
            compacted = sum(1 for item in objects if compacted_part(item.key))
            states.append(
                HourState(
                    hour=hour,
                    raw_objects=len(objects) - compacted,
                    compacted_objects=compacted,
                    bytes=sum(item.size for item in objects),
                    in_progress=hour in in_progress,
                    rechecks=rechecks.get(hour, 0),
                )
            )
        return states

    # --- doing it -------------------------------------------------------------------------

    def run(
        self,
        hours: HourRange | None = None,
        remaining_ms: RemainingMs | None = None,
        progress: Callable[[Progress], None] | None = None,
        *,
        report: bool = False,
    ) -> Summary:
        """Compact every closed hour in `hours` (default: all) that needs it, oldest first;
        then, while time is left, the hours that this asked to check again. The hours that
        still need it after that give the lag. With `report` (a run over every hour its
        caller looks after), the lag, failed hours and unreadable objects go to Redis."""
        budget = _Budget(remaining_ms)
        summary = Summary()
        tried: set[datetime] = set()
        while True:
            # Surveyed after the last batch too (the lag), out of time or not.
            left = [s.hour for s in self.survey(hours)]
            pending = [hour for hour in left if hour not in tried]
            if not pending or summary.out_of_time:
                break
            self._compact(pending, budget, progress, summary)
            tried.update(pending)
        if left:
            summary.oldest_hour = hour_label(left[0])
        summary.lag_s = (self.now() - self.closes_at(left[0])).total_seconds() if left else 0.0
        if report:
            self.write_report(summary, hours or HourRange())
        return summary

    def run_scheduled(self, remaining_ms: RemainingMs) -> Summary:
        """What the scheduled function does: the closed hours of the last LOOKBACK_H hours."""
        start = self.now().replace(minute=0, second=0, microsecond=0) - LOOKBACK_H * HOUR
        return self.run(HourRange(start=start), remaining_ms, report=True)

    def write_report(self, summary: Summary, hours: HourRange) -> None:
        """The run's report (`summary.report`), for `event-ingest status` and /metrics, which
        read only Redis. Failing to leave it fails nothing: the last one stays until it
        expires, and the warning is logged."""
        try:
            summary.report = status.CompactionReport(
                finished_at=datetime.now(UTC).isoformat(timespec="seconds"),
                scope=_scope(hours),
                lag_s=summary.lag_s or 0.0,
                oldest_hour=summary.oldest_hour,
                hours_compacted=summary.count("compacted"),
                failed=tuple(
                    status.FailedHour(r.hour, r.error) for r in summary.hours if r.state == "failed"
                ),
                unreadable_objects=self.bucket.count_unreadable(self.prefix),
            )
            status.write_compaction_report(self.redis, self.settings.stream_key, summary.report)
        except Exception:  # the run's own outcome stands; this is its echo
            log.warning("could not leave the compaction report in Redis", exc_info=True)

    def compact(
        self,
        hours: list[datetime],
        remaining_ms: RemainingMs | None = None,
        progress: Callable[[Progress], None] | None = None,
    ) -> Summary:
        """Compact each of `hours` (closed, or refused), oldest first, while the budget lasts.
        A failure fails its hour only; the next run resumes it."""
        now = self.now()
        for hour in hours:
            if self.closes_at(hour) > now:
                raise ValueError(
                    f"{hour_label(hour)} is not closed yet: it closes at "
                    f"{self.closes_at(hour):%Y-%m-%dT%H:%M:%SZ} (COMPACT_GRACE_S after it ends)"
                )
        summary = Summary()
        self._compact(hours, _Budget(remaining_ms), progress, summary)
        return summary

    def _compact(
        self,
        hours: list[datetime],
        budget: _Budget,
        progress: Callable[[Progress], None] | None,
        summary: Summary,
    ) -> None:
        hours = sorted(set(hours))
        for done, hour in enumerate(hours):
            if budget.exhausted():
                summary.hours_left = len(hours) - done
                summary.out_of_time = True
                break

            def report(step: str, hour: datetime = hour, done: int = done) -> None:
                if progress:
                    progress(Progress(hour_label(hour), step, done, len(hours)))

            result = HourResult(hour_label(hour), "compacted")
            summary.hours.append(result)
            lock = self.locks.acquire(hour)
            if lock is None:
                result.state = "busy"
                until = self.locks.held_until(hour)
                result.busy_until = until and until.isoformat(timespec="seconds")
                report("busy", done=done + 1)
                continue
            try:
                _HourRun(self, hour, lock, budget, summary, result, report).run()
            except OutOfTime:
                result.state = "partial"
                summary.hours_left = len(hours) - done - 1
                summary.out_of_time = True
                break
            except Exception as exc:  # whatever it is, it fails this hour only
                log.warning("compacting %s failed: %s", result.hour, exc, exc_info=True)
                result.state, result.error = "failed", _one_line(exc)
            finally:
                lock.release()
            report(result.state, done=done + 1)


def _hour_of(item: ArchivedObject) -> datetime:
    return datetime(item.dt.year, item.dt.month, item.dt.day, item.hour, tzinfo=UTC)


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def _scope(hours: HourRange) -> str:
    """The hours a run looked after, in words."""
    if hours.start is None and hours.end is None:
        return "every closed hour"
    first = hour_label(hours.start) if hours.start else "the first"
    return f"closed hours from {first} to {hour_label(hours.end) if hours.end else 'now'}"


class _HourRun:
    """One run's work on one locked hour: plan (or find the plan), then its steps."""

    def __init__(
        self,
        compactor: Compactor,
        hour: datetime,
        lock: HourLock,
        budget: _Budget,
        summary: Summary,
        result: HourResult,
        report: Callable[[str], None],
    ) -> None:
        self.c = compactor
        self.bucket = compactor.bucket
        self.hour = hour
        self.lock = lock
        self.budget = budget
        self.summary = summary  # the run's: what it counts for the whole run (unreadable objects)
        self.result = result
        self.report = report
        self.work = f"{compactor.staging}work/{partition_of(hour)}"
        self._earlier: list[ArchivedObject] | None = None
        self._indexes: dict[int, dict[str, list[int]]] | None = None
        self._merged: dict[int, dict[str, Any]] = {}
        self._tally = threading.Lock()  # inputs are read, and set aside, by several threads

    def run(self) -> None:
        plan_key = f"{self.work}plan.json"
        done = set(self.bucket.keys_under(self.work))
        stored = self.bucket.get_json(plan_key) if plan_key in done else None
        if stored is None:
            self.bucket.delete(done)  # what a finished plan left behind
            plan = self.plan()
            if plan is None:
                self.result.state = "unchanged"
                return
            self.bucket.put_json(plan_key, asdict(plan))
            done = set()
        else:
            plan = Plan(**stored)
        batches = len(plan.batches)
        steps = [(f"split {i + 1}/{batches}", self.split, i) for i in range(batches)]
        steps += [(f"merge {b + 1}/{plan.parts}", self.merge, b) for b in range(plan.parts)]
        steps += [("commit", self.commit, 0)]
        for name, step, index in steps:
            if self.marker(plan, step, index) in done:
                continue
            self.budget.check()
            self.report(name)
            self.lock.renew()
            step(plan, index)
            self.result.steps += 1
        if not self.result.objects_written and not self.result.objects_removed:
            self.result.state = "unchanged"  # checked again, and nothing was to drop

    def marker(self, plan: Plan, step: Callable[..., None], index: int) -> str:
        """The object that says a step is done (the commit's never is: it runs every time)."""
        if step == self.split:
            return f"{self.work}{plan.id}/split-{index:05d}.json"
        if step == self.merge:
            return f"{self.work}{plan.id}/merge-{index:04d}.json"
        return f"{self.work}{plan.id}/committed"

    def staged(self, plan: Plan) -> list[str]:
        """Every object the plan's steps store under the work prefix."""
        keys = []
        for batch in range(len(plan.batches)):
            marker = self.marker(plan, self.split, batch)
            keys += [marker, marker.removesuffix(".json") + ".arrows"]
        return keys + [self.marker(plan, self.merge, part) for part in range(plan.parts)]

    # --- 1. plan ----------------------------------------------------------------------------

    def plan(self) -> Plan | None:
        c = self.c
        objects = self.bucket.partition(c.prefix, self.hour)
        rechecks = self.bucket.keys_under(f"{c.staging}recheck/{partition_of(self.hour)}")
        if not _needs_work(objects, len(rechecks), in_progress=False):
            return None
        parts = [compacted_part(item.key) for item in objects]
        existing = max((p.count for p in parts if p), default=0)
        total = sum(item.size for item in objects)
        count = max(existing, parts_for(total, c.object_bytes)) if None in parts else existing
        count = count or 1
        if count == 1:
            direct = list(range(len(objects)))
        else:
            direct = [i for i, p in enumerate(parts) if p and p.count == count]
        batches: list[list[int]] = []
        size = 0
        for i, item in enumerate(objects):
            if i in direct:
                continue
            if not batches or size + item.size > c.step_bytes:
                batches.append([])
                size = 0
            batches[-1].append(i)
            size += item.size
        return Plan(
            hour=hour_label(self.hour),
            parts=count,
            inputs=[item.key for item in objects],
            sizes=[item.size for item in objects],
            direct=direct,
            batches=batches,
            rechecks=rechecks,
            window_h=c.settings.dedup_window_h,
        )

    def input(self, plan: Plan, index: int) -> ArchivedObject:
        return _archived(plan.inputs[index], plan.sizes[index])

    def read_inputs(self, plan: Plan, indexes: list[int]) -> list[pa.Table]:
        """The inputs' rows that decode, with their ORDER. An input that cannot all be decoded
        is set aside first (its rows that decode are merged like any others)."""

        def read(index: int) -> pa.Table:
            item = self.input(plan, index)
            rows, damage = self.bucket.read_rows(item)
            if damage is not None:
                self.set_aside(item, damage)
            return with_order(rows, index)

        return _parallel(read, indexes)

    def set_aside(self, item: ArchivedObject, damage: Damage) -> None:
        """Copy an input that cannot all be decoded to `<prefix>_unreadable/`, its reason
        beside it, before the commit removes it with the other inputs: whenever a run dies,
        its bytes are in one place or both. A redone step writes the same two objects again."""
        target = unreadable_key(self.c.prefix, item.key)
        self.bucket.copy(item.key, target)
        reason = {
            "key": item.key,
            "format": item.format,
            "bytes": item.size,
            "reason": damage.reason,
            "failed_lines": list(damage.lines),
            "failed_line_count": damage.lines_failed,
            "failed_row_groups": list(damage.row_groups),
            "rows_read": damage.rows_read,
            "rows_kept_by": f"compaction of {hour_label(self.hour)}",
        }
        self.bucket.put_json(target + REASON_SUFFIX, reason)
        log.warning("set %s aside as %s: %s", item.key, target, damage.reason)
        with self._tally:
            self.summary.unreadable_objects += 1
            self.result.unreadable.append(item.key)

    # --- 2. split ---------------------------------------------------------------------------

    def split(self, plan: Plan, batch: int) -> None:
        rows = pa.concat_tables(self.read_inputs(plan, plan.batches[batch]))
        parts = part_of_ids(rows["message_id"], plan.parts)
        counts = [0] * plan.parts
        for part in parts:
            counts[part] += 1
        rows = rows.take(pc.sort_indices(pa.array(parts, pa.int32())))  # stable: keeps order
        chunks, index, offset, start = [], {}, 0, 0
        for part, count in enumerate(counts):
            if count:
                chunk = _ipc_bytes(rows.slice(start, count))
                index[str(part)] = [offset, len(chunk)]
                chunks.append(chunk)
                offset += len(chunk)
                start += count
        self.bucket.put(f"{self.work}{plan.id}/split-{batch:05d}.arrows", b"".join(chunks))
        self.bucket.put_json(self.marker(plan, self.split, batch), index)

    def indexes(self, plan: Plan) -> dict[int, dict[str, list[int]]]:
        if self._indexes is None:
            keys = [self.marker(plan, self.split, i) for i in range(len(plan.batches))]
            found = _parallel(self.bucket.get_json, keys)
            if None in found:
                raise ObjectGone(keys[found.index(None)])
            self._indexes = dict(enumerate(found))
        return self._indexes

    # --- 3. merge ---------------------------------------------------------------------------

    def merge(self, plan: Plan, part: int) -> None:
        direct = plan.direct_inputs(part)
        ranges = [
            (f"{self.work}{plan.id}/split-{batch:05d}.arrows", index[str(part)])
            for batch, index in self.indexes(plan).items()
            if str(part) in index
        ]

        def stored_before(keys: pa.Table) -> pa.Array:
            return self.stored_earlier(plan, part, keys)

        outcome = None
        if not ranges and len(direct) == 1 and compacted_part(plan.inputs[direct[0]]):
            outcome = self.unchanged(plan, direct[0], stored_before)
        if outcome is None:
            outcome = self.rewrite(plan, part, direct, ranges, stored_before)
        self.result.events_read += outcome["rows_in"]
        self.result.events_written += outcome["rows_out"]
        self.bucket.put_json(self.marker(plan, self.merge, part), outcome)
        self._merged[part] = outcome

    def rewrite(
        self,
        plan: Plan,
        part: int,
        direct: list[int],
        ranges: list[tuple[str, list[int]]],
        stored_before: StoredBefore,
    ) -> dict[str, Any]:
        """The part's rows read, deduplicated, sorted and stored (unless stored already)."""
        tables = self.read_inputs(plan, direct) + _parallel(self.read_spill, ranges)
        rows = pa.concat_tables(tables) if tables else _SPILL_SCHEMA.empty_table()
        del tables
        rows_in = rows.num_rows
        kept = first_copies(rows, stored_before=stored_before)
        del rows  # before encoding: the peak is the inputs and their first copies, once
        key = None
        if kept.num_rows:
            body = parquet_bytes(kept)
            key = compacted_key(self.c.prefix, self.hour, Part(part, plan.parts), body)
            if key not in plan.inputs:  # else stored already, byte for byte
                self.bucket.put(key, body)
                self.result.objects_written += 1
        return {"key": key, "rows_in": rows_in, "rows_out": kept.num_rows}

    def unchanged(self, plan: Plan, index: int, stored_before: StoredBefore) -> dict | None:
        """A part whose only input is its own compacted object, when none of its keys is
        stored earlier now (each of its rows with a `message_id` is still a first copy): it
        stays as it is, its key columns read only."""
        try:
            keys = self.bucket.read_keys(self.input(plan, index))
        except (OSError, pa.ArrowException):  # rewritten: reading it whole tells why
            return None
        keyed = keys.num_rows - keys["message_id"].null_count
        if len(first_positions(keys, stored_before=stored_before)) < keyed:
            return None
        return {"key": plan.inputs[index], "rows_in": keys.num_rows, "rows_out": keys.num_rows}

    def read_spill(self, spill: tuple[str, list[int]]) -> pa.Table:
        key, (offset, length) = spill
        body = self.bucket.get(key, (offset, offset + length - 1))
        return pa.ipc.open_stream(pa.py_buffer(body)).read_all()

    def stored_earlier(self, plan: Plan, part: int, keys: pa.Table) -> pa.Array:
        """The places in `keys` (`DEDUP_KEY` columns) of the keys that a compacted object of
        the window's earlier hours stores (one that may hold `part`'s IDs). Their key columns
        are read one object at a time, a batch of at least `keys`' length at a time, so that
        memory holds `keys` and a batch, however many events the window holds; and each key
        of the window is looked up once, in a hash set of the batch's IDs."""
        batch_rows = max(KEY_BATCH_ROWS, keys.num_rows)
        for attempt in range(3):
            if self._earlier is None or attempt:
                first = self.hour - plan.window_h * HOUR
                self._earlier = self.bucket.compacted(self.c.prefix, first, self.hour - HOUR)
            overlapping = []
            for item in self._earlier:
                other = compacted_part(item.key)
                common = min(other.count, plan.parts)
                if other.index % common == part % common:
                    overlapping.append(item)
            found = [pa.array([], pa.int64())]
            try:
                for stored in self.bucket.key_batches(overlapping, batch_rows):
                    found.append(stored_positions(keys, stored))
            except ObjectGone:  # that hour was compacted again meanwhile: list it again
                continue
            except reading.Unreadable as exc:
                raise self.salvage_later(exc) from exc
            return pa.concat_arrays(found)
        raise ObjectGone(f"the objects of the {plan.window_h} hours before kept changing")

    def salvage_later(self, unreadable: reading.Unreadable) -> reading.Unreadable:
        """An earlier hour's compacted object whose keys cannot be read fails this hour (the
        keys it holds are unknown), and asks its own hour to be compacted again: that reads
        it whole, keeps what decodes and sets it aside, after which this hour goes through."""
        hour = hour_in(unreadable.key)
        digest = hashlib.blake2b(unreadable.key.encode(), digest_size=8).hexdigest()
        request = f"{self.c.staging}recheck/{partition_of(hour)}unreadable-{digest}.json"
        self.bucket.put_json(request, {"hour": hour_label(hour), "unreadable": unreadable.key})
        reason = f"{unreadable.damage.reason}; the next run compacts its hour again"
        damage = dataclasses.replace(unreadable.damage, reason=reason)
        return reading.Unreadable(unreadable.key, damage)

    # --- 4. commit --------------------------------------------------------------------------

    def commit(self, plan: Plan, _: int = 0) -> None:
        missing = [part for part in range(plan.parts) if part not in self._merged]
        found = _parallel(self.bucket.get_json, [self.marker(plan, self.merge, p) for p in missing])
        if None in found:
            raise ObjectGone("a merge marker of the plan being committed")
        self._merged.update(zip(missing, found, strict=True))
        outputs = {outcome["key"] for outcome in self._merged.values() if outcome["key"]}
        if plan.new_rows:
            self.ask_later_hours_to_recheck(plan)
        self.lock.renew()
        self.result.objects_removed += self.bucket.delete(
            key for key in plan.inputs if key not in outputs
        )
        # A request left (the plan gone) only costs a check; a plan left without its markers
        # would redo merges whose inputs are gone: the markers go last.
        self.bucket.delete([*plan.rechecks, f"{self.work}plan.json"])
        self.bucket.delete(self.staged(plan))

    def ask_later_hours_to_recheck(self, plan: Plan) -> None:
        """Later hours in the window that are compacted (or being compacted) may hold a copy
        of an event this plan merged, which now wins: ask them to check again."""
        last = self.hour + plan.window_h * HOUR
        listed = self.bucket.compacted(self.c.prefix, self.hour + HOUR, last)
        later = {_hour_of(item) for item in listed}
        for key in self.bucket.keys_under(f"{self.c.staging}work/"):
            hour = hour_in(key)
            if key.endswith("/plan.json") and hour and self.hour < hour <= last:
                later.add(hour)
        for hour in sorted(later):
            name = f"{hour_label(self.hour)}-{plan.id}.json"
            key = f"{self.c.staging}recheck/{partition_of(hour)}{name}"
            self.bucket.put_json(key, {"hour": hour_label(self.hour), "plan": plan.id})
