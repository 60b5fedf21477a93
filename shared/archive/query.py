"""SQL over the archive: list → prune → read → deduplicate → answer, in an embedded DuckDB.

`open_archive` lists the objects of an hour range (`reading.list_objects`, which prunes by
partition: nothing outside the range is listed beyond its prefix or downloaded), downloads and
decodes them with boto3 (`reading.read_object`, the same for gzip NDJSON and Parquet), and hands
the rows to an in-process DuckDB as one Arrow table. DuckDB never touches S3 itself, so no
extension (httpfs) is needed, and the connection refuses to download one.

Two views answer queries:

- `raw_events`: every row of every object read, with `object_key`, the object it came from.
- `events`: each event once: of the rows sharing a `source` and a non-NULL `message_id`
  (`columns.DEDUP_KEY`; a NULL source, anonymous mode, is one source of its own), the copy
  with the earliest `received_at`, then the first in object key order, then the first in its
  object. Two sources' events with the same ID are two events: an ID is unique only within the
  source that sent it, and a source whose key is public could otherwise hide another's events
  by sending their IDs first. Rows without a `message_id` all stay. With a range, duplicates
  are resolved among what the range holds: a copy whose earlier twin lies outside it counts.

What the deduplication costs: `events` is a window (`row_number() OVER (PARTITION BY source,
message_id ORDER BY received_at, position)`) over every row of the range. DuckDB hashes all
rows by their key, sorts each group, and keeps one, for every query that reads `events` (it is
a view: nothing is paid by a query that reads only `raw_events`). Time and memory grow with
the rows read, not with what the query asks for: roughly a group-by over the key on top of the
query itself. Filters on `dt`/`hour` in the query are not pushed below the window;
bound the range with `--from`/`--to` instead. After compaction the archive stores each event
once, and `raw_events` gives the same answers without the window.

Columns of both (see `shared.archive.columns`): `message_id`, `type`, `event`, `name`,
`user_id`, `anonymous_id`, `group_id`, `previous_id`, `source` (text; an empty ID is NULL),
`timestamp`, `original_timestamp`, `sent_at`, `received_at` (TIMESTAMP WITH TIME ZONE, UTC),
`properties`, `traits`, `context`, `integrations`, `extra` (JSON; `extra` holds every other
top-level field the client sent), `country`, `country_code`, `region`, `city`, `browser`, `os`,
`device` (text, from `context`'s location and parsed user agent; NULL where absent), `is_bot`
(BOOLEAN, never NULL), `dt` (DATE) and `hour` (TINYINT) from the object's partition.

A third view, `quarantined`, holds the events a tracking plan quarantined (stored under
`quarantine/`, never in `events`): the columns of `raw_events` and `violations` (JSON, from
`context.violations`), not deduplicated. Its objects are listed and read only for a query that
names it.

Memory: the rows of the range are held decoded, as Arrow, while the query runs.

An object that cannot be decoded (`reading.Unreadable`: corrupt or truncated gzip, a line that
is not a JSON object, bad Parquet) fails the query with `UnreadableObject`, naming it; with
`skip_unreadable` it is left out and named in `Archive.skipped` instead. Compaction sets such
objects aside under `_unreadable/`, which no query reads.
"""

from __future__ import annotations

import itertools
import re
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

from shared.archive import columns, partitions, reading
from shared.archive.columns import DEDUP_KEY
from shared.archive.naming import QUARANTINE_ROOT
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


def check(sql: str) -> None:
    """Refuse SQL that does not parse, or a single SELECT that does not bind to the archive's
    views, before anything is downloaded."""
    with duckdb.connect(":memory:", config=_CONFIG) as con:
        try:
            statements = con.extract_statements(sql)
        except duckdb.Error as exc:
            raise BadQuery(_first_line(exc)) from None
        if not statements:
            raise BadQuery("no SQL statement given")
        if len(statements) == 1 and statements[0].type == duckdb.StatementType.SELECT:
            _define_views(con, _rows_table([]), _objects_table([]))
            try:
                con.sql(statements[0].query)
            except duckdb.Error as exc:
                raise BadQuery(_first_line(exc)) from None


@dataclass
class Result:
    """What the last statement of a query returned: its columns, then its rows."""

    relation: Any  # duckdb.DuckDBPyRelation

    @property
    def columns(self) -> list[str]:
        return list(self.relation.columns)

    @property
    def types(self) -> list[str]:
        return [str(kind) for kind in self.relation.types]

    def rows(self, batch_size: int = 10_000) -> Iterator[tuple[Any, ...]]:
        """Every row, as Python values. The query runs to its end in this call, so an error at
        run time is raised here, before the caller writes anything."""
        try:
            iterator = self.relation.iter_rows(batch_size)
            first = next(iterator, None)
        except duckdb.Error as exc:
            raise BadQuery(_first_line(exc)) from None
        return iter(()) if first is None else itertools.chain([first], iterator)

    def box(self) -> str:
        """The rows drawn as DuckDB draws them: a box with column names and types; long
        results show their first and last rows and say how many there are."""
        try:
            return str(self.relation)
        except duckdb.Error as exc:
            raise BadQuery(_first_line(exc)) from None


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

    def run(self, sql: str) -> Result | None:
        """Run every statement of `sql`; the result of the last one, None if it returns none."""
        if self.read_quarantined is not None and _QUARANTINED_NAME.search(sql):
            self.read_quarantined()
            self.read_quarantined = None
        try:
            relation = self.connection.sql(sql)
        except duckdb.Error as exc:
            raise BadQuery(_first_line(exc)) from None
        return None if relation is None else Result(relation)

    def close(self) -> None:
        self.connection.close()

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
) -> Archive:
    """List the objects of `hours`, read them, and return a DuckDB with `events` and
    `raw_events` over their rows. `endpoint` only names the endpoint in error messages. An
    object that cannot be decoded raises UnreadableObject, or with `skip_unreadable` is left
    out (`Archive.skipped`). The subjects of the pending deletions `forget` are left out, as
    if their deletion were done."""
    skipped: dict[ArchivedObject, reading.Unreadable] | None = {} if skip_unreadable else None

    def read(
        under: str, show: Progress | None, unreadable: dict | None
    ) -> tuple[pa.Table, list[ArchivedObject]]:
        try:
            listed = reading.list_objects(store, under, hours)
            tables = _read_all(store, under, listed, show, workers, unreadable)
        except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as exc:
            raise ArchiveUnreachable(_storage_error(exc, store.bucket, endpoint)) from None
        except reading.Unreadable as exc:
            raise UnreadableObject(exc) from None
        objects = sorted(tables)
        rows = _rows_table([(item, tables[item]) for item in objects])
        return without_pending(rows, forget or []), objects

    rows, objects = read(prefix, progress, skipped)
    con = duckdb.connect(":memory:", config=_CONFIG)
    try:
        _define_views(con, rows, _objects_table(objects))
    except BaseException:
        con.close()
        raise

    def quarantined() -> None:  # read only by a query that names it
        # Read after `skipped` was reported: an unreadable object fails the query, never left
        # out unsaid.
        held, apart = read(prefix + QUARANTINE_ROOT, None, None)
        _define_quarantined(con, held, _objects_table(apart))

    left_out = [skipped[item] for item in sorted(skipped or {})]
    return Archive(con, objects, rows.num_rows, left_out, quarantined)


# --- reading --------------------------------------------------------------------------------


def _read_all(
    store: ObjectStore,
    prefix: str,
    listed: list[ArchivedObject],
    progress: Progress | None,
    workers: int,
    unreadable: dict[ArchivedObject, reading.Unreadable] | None,
) -> dict[ArchivedObject, pa.Table]:
    """Every listed object's rows. An object that cannot be decoded raises Unreadable, or with
    `unreadable` given, is left out and put there. When an object is gone (a compaction merged
    it and removed it after the listing), everything read from its partition is dropped and
    the partition is listed and read again, so no event is counted twice nor missed."""
    tables: dict[ArchivedObject, pa.Table] = {}
    relisted: dict[tuple[date, int], int] = defaultdict(int)
    total, done = len(listed), 0
    if progress:
        progress(done, total)
    pool = ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="archive-read")
    try:
        pending = listed
        while pending:
            futures: dict[Future[pa.Table], ArchivedObject] = {
                pool.submit(reading.read_object, store, item): item for item in pending
            }
            changed: set[tuple[date, int]] = set()
            for future in as_completed(futures):
                item = futures[future]
                try:
                    tables[item] = future.result()
                except ObjectGone:
                    changed.add((item.dt, item.hour))
                except reading.Unreadable as exc:
                    if unreadable is None:
                        raise
                    unreadable[item] = exc
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
                for read in (tables, unreadable or {}):
                    for item in [item for item in read if (item.dt, item.hour) == (day, hour)]:
                        del read[item]
                again = reading.list_partition(store, prefix, day, hour)
                total += len(again)
                pending += again
            if pending and progress:
                progress(done, total)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    return tables


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
            pa.array(range(position, position + n), pa.int64()),
        ]
        parts.append(pa.Table.from_arrays([*table.columns, *extra], schema=schema))
        position += n
    return pa.concat_tables(parts) if parts else schema.empty_table()


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


def _define_views(con: Any, rows: pa.Table, objects: pa.Table) -> None:
    con.execute("SET TimeZone = 'UTC'")
    con.register(_ARCHIVE, rows)
    con.register(_OBJECTS, objects)
    names = ", ".join(_quote(name) for name in (*columns.SCHEMA.names, "dt", "hour"))
    key = ", ".join(_quote(name) for name in DEDUP_KEY)
    con.execute(
        f"""
CREATE TEMP VIEW raw_events AS
SELECT {_select_list("a")},
       o.object_key AS object_key
FROM {_ARCHIVE} AS a JOIN {_OBJECTS} AS o ON a._object = o._object
"""
    )
    con.execute(
        f"""
CREATE TEMP VIEW events AS
WITH typed AS (
  SELECT {_select_list("a")}, a._position AS _position FROM {_ARCHIVE} AS a
)
SELECT {names} FROM typed
WHERE message_id IS NOT NULL
QUALIFY row_number() OVER (
  PARTITION BY {key} ORDER BY received_at NULLS LAST, _position
) = 1
UNION ALL
SELECT {names} FROM typed WHERE message_id IS NULL
"""
    )


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
