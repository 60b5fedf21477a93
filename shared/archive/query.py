"""SQL over the archive: list → prune → read or stream → deduplicate → answer, in an embedded
DuckDB.

`open_archive` lists the objects of an hour range (`reading.list_objects`, which prunes by
partition: nothing outside the range is listed beyond its prefix or downloaded), then:

- the hours whose objects are all compacted ones are **streamed**: opening reads each object's
  footer (its row count, and that it is Parquet of this schema), and DuckDB reads the objects
  itself as the query scans them, through `ObjectFiles` (the bucket as an fsspec filesystem
  over `ObjectStore`): the footer, then the column chunks the SQL uses, in ranged GETs, with
  `dt`/`hour` from the path so that a filter on them skips other hours' objects. Nothing of
  them is held beyond what DuckDB scans;
- the other hours (the consumer's objects not yet compacted, late objects, and the compacted
  objects beside them) are **held**: each downloaded in one GET and decoded (gzip NDJSON by
  DuckDB, `ndjson_in_duckdb`, in a DuckDB of each reading thread; Parquet, and what that
  mapping leaves to Python, by `reading`) and handed to DuckDB as one Arrow table, as are
  compacted objects written before a column of `columns.SCHEMA` existed (derived here), and
  everything while a deletion is pending (`forget`: the IDs it links are found across rows).

DuckDB downloads nothing itself, so no extension (httpfs) is needed, and the connection refuses
to download one.

Two views answer queries:

- `raw_events`: every row of every object read, with `object_key`, the object it came from.
- `events`: each event once, by compaction's rule. Streamed rows are as compaction stored them
  (once per `columns.DEDUP_KEY` within the hour and the DEDUP_WINDOW before it): nothing is
  added to them, so a fully compacted range needs no set of IDs. Of the held rows sharing a
  `source` and a non-NULL `message_id` (a NULL source, anonymous mode, is one source of its
  own), the copy with the earliest `received_at`, then the first in object key order, then the
  first in its object, unless a streamed (compacted) hour within `window_h` (DEDUP_WINDOW) hours
  before holds that key: compaction will drop it. Two sources' events with the same ID are two
  events: an ID is unique only within the source that sent it, and a source whose key is public
  could otherwise hide another's events by sending their IDs first. Rows without a
  `message_id` all stay. With a range, duplicates are resolved among what the range holds.

What the deduplication costs: a window (`row_number() OVER (PARTITION BY source, message_id
ORDER BY received_at, position)`) over the held rows, and an anti-join with the keys of the
compacted objects in the window before them, for every query that reads `events`. Memory: the
held rows, as Arrow, while the query runs; the streamed ones are not held.

Columns of both (see `shared.archive.columns`): `message_id`, `type`, `event`, `name`,
`user_id`, `anonymous_id`, `group_id`, `previous_id`, `source` (text; an empty ID is NULL),
`timestamp`, `original_timestamp`, `sent_at`, `received_at` (TIMESTAMP WITH TIME ZONE, UTC),
`properties`, `traits`, `context`, `integrations`, `extra` (JSON; `extra` holds every other
top-level field the client sent), `country`, `country_code`, `region`, `city`, `browser`, `os`,
`device` (text, from `context`'s location and parsed user agent; NULL where absent), `is_bot`
(BOOLEAN, never NULL), `dt` (DATE) and `hour` (TINYINT) from the object's partition.

A third view, `quarantined`, holds the events a tracking plan quarantined (stored under
`quarantine/`, never in `events`): the columns of `raw_events` and `violations` (JSON, from
`context.violations`), not deduplicated. Its objects are listed and read (held) only for a
query that names it.

An object that changes under a query: one gone between listing and reading makes its hour be
listed and read again; a streamed one gone while DuckDB runs the query makes the archive open
anew and the query run again (`Archive.recover`), at most RELIST_ATTEMPTS times.

An object that cannot be decoded (`reading.Unreadable`: corrupt or truncated gzip, a line that
is not a JSON object, bad Parquet) fails the query with `UnreadableObject`, naming it; with
`skip_unreadable` it is left out and named in `Archive.skipped` instead. Compaction sets such
objects aside under `_unreadable/`, which no query reads.
"""

from __future__ import annotations

import itertools
import json
import re
import shutil
import tempfile
import threading
from collections import defaultdict
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from datetime import date
from typing import Any
from urllib.parse import urlsplit

import botocore.exceptions
import duckdb
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from shared.archive import columns, ndjson_in_duckdb, object_files, partitions, reading
from shared.archive.columns import DEDUP_KEY
from shared.archive.naming import QUARANTINE_ROOT, compacted_part
from shared.archive.object_files import ObjectFiles
from shared.archive.partitions import HourRange, partition
from shared.archive.privacy.store import RegulationStore
from shared.archive.privacy.subjects import without_pending
from shared.archive.reading import ArchivedObject
from shared.archive.storage import ObjectGone, ObjectStore
from shared.regulations import Regulation
from shared.settings import Settings

# How often a partition is listed again when its objects keep disappearing under a query
# (compactions finishing one after another) before the query gives up.
RELIST_ATTEMPTS = 5
# Downloads in flight at once: S3 latency, not CPU, bounds a query over many small objects.
DOWNLOAD_WORKERS = 8
# The tail of a streamed object fetched at opening, for its footer (the row count, the schema):
# what pyarrow reads of a footer first, so that one GET holds it all.
FOOTER_BYTES = 64 * 1024
# DEDUP_WINDOW's default (the settings' own), for callers that give none.
DEDUP_WINDOW_H = Settings.dedup_window_h

_ARCHIVE = "_archive"  # the rows, registered from Arrow
_OBJECTS = "_objects"  # (_object, object_key): which object each row came from
_QUARANTINE, _QUARANTINE_OBJECTS = "_quarantine", "_quarantine_objects"  # the same, held apart
_QUARANTINED_NAME = re.compile(r"\bquarantined\b", re.IGNORECASE)
_ORDINALS = [("_object", pa.int32()), ("_position", pa.int64())]
# The connection downloads nothing: every extension it uses (json, icu) is built into the wheel.
_CONFIG = {
    "autoinstall_known_extensions": False,
    "autoload_known_extensions": False,
    "allow_community_extensions": False,
}

Progress = Callable[[int, int], None]  # (objects read, objects to read)
EVERY_HOUR = HourRange()  # the whole archive


class QueryError(Exception):
    """A query cannot run; the message is one line, safe to show (no secrets)."""


class BadQuery(QueryError):
    """The SQL does not parse, bind or run."""


class BadRange(QueryError):
    """`--from`/`--to` are not dates or hours, or are the wrong way round."""


class ArchiveUnreachable(QueryError):
    """The bucket cannot be listed or read (endpoint, credentials, permissions, bucket)."""


class ArchiveChanging(QueryError):
    """A partition's objects kept disappearing between listing and reading."""


class UnreadableObject(QueryError):
    """An object of the range cannot be decoded (`reading.Unreadable`)."""

    def __init__(self, unreadable: reading.Unreadable) -> None:
        super().__init__(f"cannot read {unreadable.key}: {unreadable.damage.reason}")
        self.key = unreadable.key


def hour_range(start: str | None, end: str | None) -> HourRange:
    """partitions.hour_range, its errors as the query's own (BadRange)."""
    try:
        return partitions.hour_range(start, end)
    except ValueError as exc:
        raise BadRange(str(exc)) from None


def check(sql: str) -> frozenset[str] | None:
    """Refuse SQL that does not parse, or a single SELECT that does not bind to the archive's
    views (`quarantined` among them), before anything is downloaded. The columns of the rows
    such a SELECT reads, as DuckDB plans it over the views (the columns its scans of the rows
    project, and the deduplication's): the rest need not be decoded (`open_archive`'s
    `columns_read`). None, read them all, for anything else, or a plan that does not say so
    plainly: a query's answer never depends on a column left out, as DuckDB itself found
    that it does not read it."""
    with duckdb.connect(":memory:", config=_CONFIG) as con:
        try:
            statements = con.extract_statements(sql)
        except duckdb.Error as exc:
            raise BadQuery(_first_line(exc)) from None
        if not statements:
            raise BadQuery("no SQL statement given")
        if len(statements) != 1 or statements[0].type != duckdb.StatementType.SELECT:
            return None
        _define_views(con, _rows_table([]), [])
        _define_quarantined(con, _rows_table([]), _objects_table([]))
        try:
            con.sql(statements[0].query)
        except duckdb.Error as exc:
            raise BadQuery(_first_line(exc)) from None
        return _columns_read(con, statements[0].query)


def _columns_read(con: Any, select: str) -> frozenset[str] | None:
    """`check`'s answer for a SELECT that binds to the views defined in `con`."""
    try:
        [(_, plan)] = con.sql("EXPLAIN (FORMAT JSON) " + select).fetchall()
        projected = _scanned_columns(json.loads(plan))
    except duckdb.Error as exc:
        _raise_if_interrupted(exc)  # Ctrl-C stops here as anywhere else
        return None
    except (ValueError, TypeError, KeyError, RecursionError):  # a plan shape not foreseen
        return None
    if projected is None:
        return None
    return frozenset(projected) & frozenset(columns.SCHEMA.names) | frozenset(
        (*DEDUP_KEY, "received_at")
    )


# What the Arrow scans of the views' plan may project (`_ARCHIVE`'s and `_OBJECTS`' columns),
# and what a scan's details may hold beside its projections: anything else is a plan this
# code does not read plainly.
_SCANNABLE = frozenset((*columns.SCHEMA.names, "dt", "hour", "_object", "_position", "object_key"))
_SCAN_DETAILS = frozenset({"Function", "Projections", "Estimated Cardinality"})


def _scanned_columns(plan: Any) -> set[str] | None:
    """The columns every Arrow scan of `plan` (DuckDB's EXPLAIN as JSON) projects; None when
    the plan scans none, or a scan says anything but a list of known column names (a filter
    pushed into it, a projection by number): then which columns it reads is not plain."""
    found: set[str] = set()
    scans = 0
    nodes = list(plan) if isinstance(plan, list) else [plan]
    while nodes:
        node = nodes.pop()
        if not isinstance(node, dict):
            return None
        if "ARROW_SCAN" in str(node.get("name", "")):
            details = node.get("extra_info", {})
            projections = details.get("Projections")
            if isinstance(projections, str):
                projections = [projections]
            if (
                not set(details) <= _SCAN_DETAILS
                or not isinstance(projections, list)
                or not set(projections) <= _SCANNABLE
            ):
                return None
            found.update(projections)
            scans += 1
        nodes.extend(node.get("children", []))
    return found if scans else None


@dataclass
class Result:
    """What the last statement of a query returned: its columns, then its rows."""

    relation: Any  # duckdb.DuckDBPyRelation
    archive: Archive | None = None  # what ran it, to run it again if the archive changed
    sql: str = ""
    # Called once the query has run, before any row is returned (the command line's progress).
    ran: Callable[[], None] | None = None

    @property
    def columns(self) -> list[str]:
        return list(self.relation.columns)

    @property
    def types(self) -> list[str]:
        return [str(kind) for kind in self.relation.types]

    def rows(self, batch_size: int = 10_000) -> Iterator[tuple[Any, ...]]:
        """Every row, as Python values. The query runs to its end in this call, so an error at
        run time is raised here, before the caller writes anything."""
        iterator, first = self._running(lambda: self._first(batch_size))
        return iter(()) if first is None else itertools.chain([first], iterator)

    def box(self) -> str:
        """The rows drawn as DuckDB draws them: a box with column names and types; long
        results show their first and last rows and say how many there are."""
        return self._running(lambda: str(self.relation))

    def _first(self, batch_size: int) -> tuple[Iterator[tuple[Any, ...]], Any]:
        iterator = self.relation.iter_rows(batch_size)
        return iterator, next(iterator, None)

    def _running(self, run: Callable[[], Any]) -> Any:
        """`run()`; when DuckDB fails because a streamed object changed meanwhile, the query
        again over the archive opened anew (Archive.recover)."""
        for attempt in itertools.count(1):
            try:
                outcome = run()
            except duckdb.Error as exc:
                if self.archive is None:
                    _raise_if_interrupted(exc)
                    raise BadQuery(_first_line(exc)) from None
                self.archive.recover(exc, attempt)
                again = self.archive.run(self.sql)
                assert again is not None  # it returned rows the first time
                self.relation = again.relation
                continue
            if self.ran is not None:
                self.ran()
            return outcome
        raise AssertionError("unreachable")


@dataclass
class Archive:
    """An in-memory DuckDB holding `events` and `raw_events` over the objects read."""

    connection: Any  # duckdb.DuckDBPyConnection
    objects: list[ArchivedObject] = field(default_factory=list)
    rows: int = 0
    # Objects left out because they cannot be decoded (`skip_unreadable`), and why.
    skipped: list[reading.Unreadable] = field(default_factory=list)
    # Defines `quarantined`, reading the quarantine's objects of the range: done by the first
    # query that names it, so that no other query lists or reads them.
    read_quarantined: Callable[[], None] | None = None
    # The objects DuckDB streams, and how to open the same range anew when one of them is
    # gone before DuckDB read it (a compaction replaced it).
    files: ObjectFiles | None = None
    reopen: Callable[[], Archive] | None = None
    spill: str | None = None  # where DuckDB spills (`_connect`), removed at close

    def run(self, sql: str) -> Result | None:
        """Run every statement of `sql`; the result of the last one, None if it returns none."""
        for attempt in itertools.count(1):
            if self.read_quarantined is not None and _QUARANTINED_NAME.search(sql):
                self.read_quarantined()
                self.read_quarantined = None
            try:
                relation = self.connection.sql(sql)
            except duckdb.Error as exc:
                self.recover(exc, attempt)
                continue
            return None if relation is None else Result(relation, self, sql)
        raise AssertionError("unreachable")

    def recover(self, exc: duckdb.Error, attempt: int) -> None:
        """After DuckDB failed with `exc` on the `attempt`th run of a query: if a streamed object
        was gone, this archive opened anew (listed again: the compaction's new objects read
        instead), for the query to run again; else the error, as the query's own."""
        _raise_if_interrupted(exc)
        if self.files is None or not self.files.gone:
            unreadable = self._unreadable_in(exc)
            if unreadable is not None:
                raise UnreadableObject(unreadable) from None
            raise BadQuery(_first_line(exc)) from None
        if self.reopen is None or attempt > RELIST_ATTEMPTS:
            gone = sorted(self.files.gone)[0]
            raise ArchiveChanging(
                f"objects such as {gone} kept changing while they were read"
                f" ({RELIST_ATTEMPTS} listings); try again"
            ) from None
        fresh = self.reopen()
        self.close()
        # This archive becomes the fresh one; how to open it anew stays.
        vars(self).update({name: v for name, v in vars(fresh).items() if name != "reopen"})

    def scanned(self) -> tuple[int, int]:
        """(streamed objects DuckDB has read from, streamed objects): a query's progress."""
        if self.files is None:
            return 0, 0
        return len(self.files.read), len(self.files.sizes)

    def _unreadable_in(self, exc: duckdb.Error) -> reading.Unreadable | None:
        """The streamed object DuckDB's error names, as Unreadable; None if it names none."""
        message = str(exc)
        for item in self.objects:
            if object_files.url(item.key) in message:
                return reading.Unreadable(item.key, reading.Damage(_first_line(exc), 0))
        return None

    def close(self) -> None:
        _discard(self.connection, self.spill)

    def __enter__(self) -> Archive:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def open_from_settings(
    settings: Settings,
    hours: HourRange = EVERY_HOUR,
    progress: Progress | None = None,
    *,
    skip_unreadable: bool = False,
    columns_read: frozenset[str] | None = None,
) -> Archive:
    """`open_archive` over the bucket and prefix the functions use (`S3_*` variables)."""
    try:
        # Retried, unlike the consumer's: a query has no loop of its own to retry a download.
        store = ObjectStore.from_settings(settings, attempts=4, read_timeout_s=60)
    except (ValueError, botocore.exceptions.BotoCoreError) as exc:  # e.g. an invalid endpoint
        raise ArchiveUnreachable(
            _storage_error(exc, settings.s3_bucket, settings.s3_endpoint_url)
        ) from None
    try:
        pending = RegulationStore(store, settings.s3_prefix).pending_deletions()
    except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as exc:
        raise ArchiveUnreachable(
            _storage_error(exc, settings.s3_bucket, settings.s3_endpoint_url)
        ) from None
    return open_archive(
        store,
        settings.s3_prefix,
        hours,
        progress=progress,
        endpoint=settings.s3_endpoint_url,
        skip_unreadable=skip_unreadable,
        forget=pending,
        window_h=settings.dedup_window_h,
        columns_read=columns_read,
    )


def open_archive(
    store: ObjectStore,
    prefix: str,
    hours: HourRange = EVERY_HOUR,
    *,
    progress: Progress | None = None,
    workers: int = DOWNLOAD_WORKERS,
    endpoint: str | None = None,
    skip_unreadable: bool = False,
    forget: list[Regulation] | None = None,
    window_h: int = DEDUP_WINDOW_H,
    columns_read: frozenset[str] | None = None,
) -> Archive:
    """List the objects of `hours`, read them, and return a DuckDB with `events` and
    `raw_events` over their rows. `endpoint` only names the endpoint in error messages. An
    object that cannot be decoded raises UnreadableObject, or with `skip_unreadable` is left
    out (`Archive.skipped`). The subjects of the pending deletions `forget` are left out, as
    if their deletion were done. `window_h` is the DEDUP_WINDOW, in hours. `columns_read`:
    the only columns of `events` and `raw_events` the queries to come read (what `check`
    says of a query); the objects held are then decoded for those only, the others NULL."""

    def reopen() -> Archive:
        return open_archive(
            store,
            prefix,
            hours,
            workers=workers,
            endpoint=endpoint,
            skip_unreadable=skip_unreadable,
            forget=forget,
            window_h=window_h,
            columns_read=columns_read,
        )

    skipped: dict[ArchivedObject, reading.Unreadable] | None = {} if skip_unreadable else None
    read = _reading(store, hours, workers, endpoint)
    # Finding the subjects a pending deletion links to takes every row in hand, whole.
    needed = None if forget else columns_read
    held = read(prefix, progress, skipped, not forget, needed)
    rows = without_pending(held.rows, forget or [])
    con, spill = _connect()
    files = ObjectFiles(store, held.streamed)
    try:
        con.register_filesystem(files)
        _define_views(con, rows, held.in_hand, held.streamed, window_h)
    except BaseException:
        _discard(con, spill)
        raise

    def quarantined() -> None:  # read only by a query that names it
        # Read after `skipped` was reported: an unreadable object fails the query, never left
        # out unsaid.
        # Held whole: `quarantined` is defined over rows in hand only.
        apart = read(prefix + QUARANTINE_ROOT, None, None, False, None)
        _define_quarantined(con, apart.rows, _objects_table(apart.in_hand))

    left_out = [skipped[item] for item in sorted(skipped or {})]
    objects = sorted([*held.in_hand, *held.streamed])
    count = rows.num_rows + held.streamed_rows
    return Archive(con, objects, count, left_out, quarantined, files, reopen, spill)


def _connect() -> tuple[Any, str]:
    """An in-memory DuckDB, and the directory it spills a large sort or group-by into: a private
    one (mode 0700) under the system's temporary directory, never DuckDB's default `.tmp` in
    the working directory, as what it spills is events; `_discard` removes both."""
    spill = tempfile.mkdtemp(prefix="event-ingest-query-")
    return duckdb.connect(":memory:", config={**_CONFIG, "temp_directory": spill}), spill


def _discard(con: Any, spill: str | None) -> None:
    con.close()
    if spill is not None:
        shutil.rmtree(spill, ignore_errors=True)


@dataclass
class _Held:
    """What opening read of a root: the rows in hand (`in_hand`, the objects they came from in
    key order), and the compacted objects DuckDB streams (`streamed`, `streamed_rows` rows)."""

    rows: pa.Table
    in_hand: list[ArchivedObject]
    streamed: list[ArchivedObject]
    streamed_rows: int


def _reading(
    store: ObjectStore, hours: HourRange, workers: int, endpoint: str | None
) -> Callable[[str, Progress | None, dict | None, bool, frozenset[str] | None], _Held]:
    """`read(under, progress, unreadable, stream, needed)`: the objects of `hours` under the
    root `under`, the compacted hours streamed if `stream`, the others decoded for the columns
    `needed` only (all: None), as `_Held`."""

    def read(
        under: str,
        show: Progress | None,
        unreadable: dict | None,
        stream: bool,
        needed: frozenset[str] | None,
    ) -> _Held:
        try:
            listed = reading.list_objects(store, under, hours)
            reader = _ObjectReader(store, needed)
            tables, footers = _read_all(
                store, under, listed, show, workers, unreadable, stream, reader
            )
        except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as exc:
            raise ArchiveUnreachable(_storage_error(exc, store.bucket, endpoint)) from None
        except reading.Unreadable as exc:
            raise UnreadableObject(exc) from None
        in_hand = sorted(tables)
        rows = _rows_table([(item, tables[item]) for item in in_hand])
        return _Held(rows, in_hand, sorted(footers), sum(footers.values()))

    return read


# --- reading --------------------------------------------------------------------------------


def _read_all(
    store: ObjectStore,
    prefix: str,
    listed: list[ArchivedObject],
    progress: Progress | None,
    workers: int,
    unreadable: dict[ArchivedObject, reading.Unreadable] | None,
    stream: bool,
    reader: _ObjectReader,
) -> tuple[dict[ArchivedObject, pa.Table], dict[ArchivedObject, int]]:
    """Every listed object's rows, in hand, but for the objects of the hours that only hold
    compacted objects (with `stream`), whose footers only are read (their row counts): DuckDB
    streams those. An object that cannot be decoded raises Unreadable, or with `unreadable`
    given, is left out and put there. When an object is gone (a compaction merged it and
    removed it after the listing), everything read from its partition is dropped and the
    partition is listed and read again, so no event is counted twice nor missed."""
    tables: dict[ArchivedObject, pa.Table] = {}
    footers: dict[ArchivedObject, int] = {}
    relisted: dict[tuple[date, int], int] = defaultdict(int)
    total, done = len(listed), 0
    if progress:
        progress(done, total)
    pool = ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="archive-read")
    try:
        pending = listed
        while pending:
            streamed = _compacted_hours(pending) if stream else set()
            futures: dict[Future[pa.Table | int], ArchivedObject] = {
                pool.submit(reader.read, item, (item.dt, item.hour) in streamed): item
                for item in pending
            }
            changed: set[tuple[date, int]] = set()
            for future in as_completed(futures):
                item = futures[future]
                try:
                    read = future.result()
                except ObjectGone:
                    changed.add((item.dt, item.hour))
                except reading.Unreadable as exc:
                    if unreadable is None:
                        raise
                    unreadable[item] = exc
                else:
                    if isinstance(read, int):
                        footers[item] = read
                    else:
                        tables[item] = read
                done += 1
                if progress:
                    progress(done, total)
            pending = []
            for day, hour in sorted(changed):
                relisted[day, hour] += 1
                if relisted[day, hour] > RELIST_ATTEMPTS:
                    raise ArchiveChanging(
                        f"the objects of {partition(day, hour).rstrip('/')} kept changing "
                        f"while they were read ({RELIST_ATTEMPTS} listings); try again"
                    )
                for read_ in (tables, footers, unreadable or {}):
                    for item in [item for item in read_ if (item.dt, item.hour) == (day, hour)]:
                        del read_[item]
                again = reading.list_partition(store, prefix, day, hour)
                total += len(again)
                pending += again
            if pending and progress:
                progress(done, total)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        reader.close()
    return tables, footers


def _compacted_hours(listed: list[ArchivedObject]) -> set[tuple[date, int]]:
    """The hours of `listed` whose objects are all compacted ones."""
    hours: dict[tuple[date, int], bool] = {}
    for item in listed:
        compacted = compacted_part(item.key) is not None
        hours[item.dt, item.hour] = hours.get((item.dt, item.hour), True) and compacted
    return {hour for hour, only_compacted in hours.items() if only_compacted}


class _ObjectReader:
    """Reads the objects of an opening, from the pool's threads: a held object's rows, each in
    one GET (gzip NDJSON decoded by DuckDB, `ndjson_in_duckdb`, in a DuckDB of each thread;
    Parquet, and NDJSON that mapping does not take, by `reading`; with `needed`, only those
    columns), or a streamed object's row count from its footer. `close` closes the threads'
    DuckDBs."""

    def __init__(self, store: ObjectStore, needed: frozenset[str] | None = None) -> None:
        self.store = store
        self.needed = needed
        self._local = threading.local()
        self._connections: list[Any] = []

    def read(self, item: ArchivedObject, streamed: bool) -> pa.Table | int:
        return self._footer_rows(item) if streamed else self._rows(item)

    def close(self) -> None:
        for con in self._connections:
            con.close()

    def _rows(self, item: ArchivedObject) -> pa.Table:
        if item.format != "ndjson" and self.needed is None:
            return reading.read_object(self.store, item)
        body = self.store.get(item.key)  # one GET; ObjectGone when it is gone
        if item.format != "ndjson":
            try:
                return reading.parquet_rows(body, self.needed)
            except reading.DECODE_ERRORS:
                return reading.read_rows(item, body)  # says what is wrong
        con, files = self._connection()
        with files.serving(item.key, body) as name:
            rows = ndjson_in_duckdb.rows(con, name, self.needed)
        if rows is not None:
            return rows
        return reading.read_rows(item, body)  # says what is wrong, or keeps what decodes

    def _footer_rows(self, item: ArchivedObject) -> pa.Table | int:
        """The row count of a streamed object, from its footer; its rows, derived
        (`columns.conform`), if it was written before a column of `columns.SCHEMA` existed, as
        DuckDB cannot derive them."""
        file = self.store.open(item.key, item.size)
        file.fetch(item.size - FOOTER_BYTES, item.size)
        try:
            metadata = pq.ParquetFile(pa.PythonFile(file, mode="r")).metadata
        except reading.DECODE_ERRORS as exc:
            raise reading.Unreadable(item.key, reading.not_parquet(exc)) from None
        if not set(columns.SCHEMA.names) <= set(metadata.schema.names):
            return reading.read_object(self.store, item)
        return metadata.num_rows

    def _connection(self) -> tuple[Any, ObjectFiles]:
        if not hasattr(self._local, "connection"):
            files = ObjectFiles(self.store, [])
            # One object at a time: nothing to spill (an empty temp_directory disables it).
            con = duckdb.connect(":memory:", config={**_CONFIG, "threads": 1, "temp_directory": ""})
            con.execute("SET TimeZone = 'UTC'")
            con.register_filesystem(files)
            self._local.connection, self._local.files = con, files
            self._connections.append(con)
        return self._local.connection, self._local.files


def _rows_table(read: list[tuple[ArchivedObject, pa.Table]]) -> pa.Table:
    """One table of every object's rows, in key order, with the partition columns and the
    ordinals the views need: `_object` (the object's place in key order) and `_position` (the
    row's place in the whole read, which orders duplicates by object, then within one)."""
    schema = columns.SCHEMA
    for column in (*columns.PARTITION_SCHEMA, *(pa.field(n, t) for n, t in _ORDINALS)):
        schema = schema.append(column)
    parts = []
    position = 0
    for ordinal, (item, table) in enumerate(read):
        n = table.num_rows
        table = table.select(columns.SCHEMA.names)
        if table.schema != columns.SCHEMA:
            table = table.cast(columns.SCHEMA)
        extra = [
            pa.repeat(pa.scalar(item.dt, pa.date32()), n),
            pa.repeat(pa.scalar(item.hour, pa.int8()), n),
            pa.repeat(pa.scalar(ordinal, pa.int32()), n),
            _sequence(position, n),
        ]
        parts.append(pa.Table.from_arrays([*table.columns, *extra], schema=schema))
        position += n
    return pa.concat_tables(parts) if parts else schema.empty_table()


def _sequence(start: int, n: int) -> pa.Array:
    """`start`, `start + 1`, ... (`n` of them), made by Arrow: a Python `range` converted one
    integer at a time holds the GIL for each, which the threads decoding objects wait on."""
    return pc.add(pc.cumulative_sum(pa.repeat(pa.scalar(1, pa.int64()), n)), start - 1)


def _objects_table(objects: list[ArchivedObject]) -> pa.Table:
    return pa.table(
        {
            "_object": pa.array(range(len(objects)), pa.int32()),
            "object_key": pa.array([item.key for item in objects], pa.string()),
        }
    )


# --- the views ------------------------------------------------------------------------------


def _select_list(alias: str) -> str:
    """The columns of `events`, read from the Arrow rows: empty IDs as NULL, JSON typed."""
    out = []
    for name in columns.SCHEMA.names:
        ref = f"{alias}.{_quote(name)}"
        if name in columns.ID_COLUMNS:
            out.append(f"NULLIF({ref}, '') AS {_quote(name)}")
        elif name in columns.JSON_COLUMNS:
            out.append(f"CAST({ref} AS JSON) AS {_quote(name)}")
        else:
            out.append(f"{ref} AS {_quote(name)}")
    out += [f"{alias}.dt AS dt", f"{alias}.hour AS hour"]
    return ",\n       ".join(out)


def _define_views(
    con: Any,
    rows: pa.Table,
    in_hand: list[ArchivedObject],
    streamed: list[ArchivedObject] = (),  # type: ignore[assignment]
    window_h: int = DEDUP_WINDOW_H,
) -> None:
    """`raw_events` and `events` over the rows in hand and the `streamed` objects (which DuckDB
    reads itself, through the ObjectFiles registered with `con`)."""
    con.execute("SET TimeZone = 'UTC'")
    con.register(_ARCHIVE, rows)
    con.register(_OBJECTS, _objects_table(in_hand))
    names = ", ".join(_quote(name) for name in (*columns.SCHEMA.names, "dt", "hour"))
    key = ", ".join(_quote(name) for name in DEDUP_KEY)
    typed_stream = (
        f"SELECT {_select_list('s')}, {_object_key('s')} AS object_key FROM {_scan(streamed)} AS s"
    )
    con.execute(
        f"""
CREATE TEMP VIEW raw_events AS
SELECT {_select_list("a")},
       o.object_key AS object_key
FROM {_ARCHIVE} AS a JOIN {_OBJECTS} AS o ON a._object = o._object
{f"UNION ALL {typed_stream}" if streamed else ""}
"""
    )
    window = _window_before(in_hand, streamed, window_h)
    stored_before = (
        f"""
WHERE NOT EXISTS (
  SELECT 1 FROM {_scan(window)} AS w
  WHERE NULLIF(w.message_id, '') = f.message_id AND w.source IS NOT DISTINCT FROM f.source
    AND {_hour_index("w")} BETWEEN {_hour_index("f")} - {window_h} AND {_hour_index("f")} - 1
)"""
        if window
        else ""
    )
    con.execute(
        f"""
CREATE TEMP VIEW events AS
WITH typed AS (
  SELECT {_select_list("a")}, a._position AS _position FROM {_ARCHIVE} AS a
),
first AS (
  SELECT {names} FROM typed
  WHERE message_id IS NOT NULL
  QUALIFY row_number() OVER (
    PARTITION BY {key} ORDER BY received_at NULLS LAST, _position
  ) = 1
)
SELECT {names} FROM first AS f{stored_before}
UNION ALL
SELECT {names} FROM typed WHERE message_id IS NULL
{f"UNION ALL SELECT {names} FROM ({typed_stream})" if streamed else ""}
"""
    )


def _scan(objects: list[ArchivedObject]) -> str:
    """DuckDB's read of Parquet `objects`, with `dt` and `hour` from their paths."""
    names = ", ".join(ndjson_in_duckdb.sql_literal(object_files.url(item.key)) for item in objects)
    return (
        f"read_parquet([{names}], hive_partitioning = true, filename = true,"
        " hive_types = {'dt': DATE, 'hour': TINYINT})"
    )


def _object_key(alias: str) -> str:
    return f"substr({alias}.filename, {len(object_files.url('')) + 1})"


def _hour_index(alias: str) -> str:
    """Hours since 1970 of the row's partition."""
    return f"(datediff('hour', DATE '1970-01-01', {alias}.dt) + {alias}.hour)"


def _window_before(
    in_hand: list[ArchivedObject], streamed: list[ArchivedObject], window_h: int
) -> list[ArchivedObject]:
    """The streamed objects of the `window_h` hours before an hour whose rows are in hand:
    where an earlier, compacted copy of an event in hand may be."""
    hours = {_hour_number(item) for item in in_hand}
    return [
        item
        for item in streamed
        if any(0 < hour - _hour_number(item) <= window_h for hour in hours)
    ]


def _hour_number(item: ArchivedObject) -> int:
    return int(item.hour_start.timestamp()) // 3600


def _define_quarantined(con: Any, rows: pa.Table, objects: pa.Table) -> None:
    """`quarantined`: the events a tracking plan quarantined, as `raw_events` has them (no
    deduplication: each is there to be looked at), with their `violations`."""
    con.register(_QUARANTINE, rows)
    con.register(_QUARANTINE_OBJECTS, objects)
    con.execute(
        f"""
CREATE TEMP VIEW quarantined AS
SELECT {_select_list("a")},
       CAST(json_extract(CAST(a.context AS JSON), '$.violations') AS JSON) AS violations,
       o.object_key AS object_key
FROM {_QUARANTINE} AS a JOIN {_QUARANTINE_OBJECTS} AS o ON a._object = o._object
"""
    )


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


# --- errors ---------------------------------------------------------------------------------


def _raise_if_interrupted(exc: duckdb.Error) -> None:
    """KeyboardInterrupt (Ctrl-C) for a query DuckDB stopped because of one: its own interrupt,
    or one raised while it read an object through ObjectFiles, which it reports as an error
    holding the Python traceback."""
    lines = str(exc).strip().splitlines()
    if isinstance(exc, duckdb.InterruptException) or (
        lines and lines[-1].startswith("KeyboardInterrupt")
    ):
        raise KeyboardInterrupt from None


def _first_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[0] if lines else type(exc).__name__


def _storage_error(exc: Exception, bucket: str, endpoint: str | None) -> str:
    """One line on why the bucket cannot be read; never the credentials, nor a URL's userinfo."""
    where = f"bucket {bucket!r}"
    if endpoint:
        parts = urlsplit(endpoint)
        where += f" at {parts.scheme}://{parts.hostname}" + (f":{parts.port}" if parts.port else "")
    if isinstance(exc, botocore.exceptions.ClientError):
        error = exc.response.get("Error", {})
        code = error.get("Code") or "error"
        message = error.get("Message") or ""
        return f"cannot read {where}: {code}" + (f" ({message})" if message else "")
    if isinstance(exc, botocore.exceptions.NoCredentialsError):
        return f"cannot read {where}: no AWS credentials found"
    if isinstance(
        exc, (botocore.exceptions.EndpointConnectionError, botocore.exceptions.ConnectTimeoutError)
    ):
        return f"cannot reach {where}: the S3 endpoint does not answer"
    if isinstance(exc, botocore.exceptions.ReadTimeoutError):
        return f"cannot read {where}: the S3 endpoint stopped answering"
    reason = re.sub(r"https?://\S+", "<url>", str(exc))
    return f"cannot read {where}: {type(exc).__name__}: {reason}"


__all__ = [
    "Archive",
    "ArchiveChanging",
    "ArchiveUnreachable",
    "BadQuery",
    "BadRange",
    "QueryError",
    "Result",
    "UnreadableObject",
    "check",
    "hour_range",
    "open_archive",
    "open_from_settings",
]
