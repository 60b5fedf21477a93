"""Parquet, zstd-compressed: the rows of `columns.SCHEMA`, as `columns.to_rows` maps the events.

What the files hold, for readers that do not use this project's code (pyarrow, DuckDB, Athena):

- exactly the columns of `columns.SCHEMA`, in its order; `dt` and `hour` are not inside the
  files, only in their path (Hive-style partitions). The columns derived from `context`
  (`country` ... `device`, `is_bot`) come last: objects written before they existed lack them,
  and read with them derived (`columns.conform`) here, NULL in readers that match by name
  (Athena, DuckDB's `union_by_name`);
- timestamps as `TIMESTAMP(isAdjustedToUTC=true, MICROS)` (pyarrow reads `timestamp[us,
  tz=UTC]`, DuckDB `TIMESTAMP WITH TIME ZONE`), never nanoseconds, never INT96;
- zstd at `level` (`GZIP_LEVEL`, 1 to 9; its default 3 is zstd's own); dictionary encoding,
  column statistics and row groups of up to 1,048,576 rows (pyarrow's defaults: a flush of at
  most `FLUSH_MAX_EVENTS` rows is one row group); data pages v1, which every reader reads.

Deterministic: the same events give the same bytes, however entries cut them. The writer
stores no clock or random value; its footer names the writer (`created_by: parquet-cpp-arrow
version ...`) and holds the Arrow schema, so a retried flush rewrites its object with the same
bytes while the pyarrow version is the same, and with the same rows across versions.

Staging maps each entry's events to column values at once (`columns.to_columns`), so that an
event that cannot become a row fails its entry, which is dead-lettered alone, never a flush.
The Arrow table is built once per object, at flush time: building one costs tens of
microseconds whatever its size, which per entry made single-event entries ten times slower.

`nbytes` is the size of the entry's events as NDJSON lines, exactly what the NDJSON format
counts: `FLUSH_MAX_BYTES` means the same in both formats and cuts a stream's flushes in the
same places. The column data the writer compresses is about 85% of that (no field names, no
quoting; the benchmark's events, measured before the columns derived from `context`, which
add their values' text and about 29 bytes an event in memory). Staged values take about as
much memory as NDJSON lines for entries of 100 events, and about three times as much for
single-event entries (3.6 KB per event of 520 bytes), bounded by the same hints.
"""

from __future__ import annotations

from itertools import chain
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from shared.archive import columns
from shared.archive.formats.ndjson import encode_lines
from shared.archive.partitions import UnarchivableEvent

SUFFIX = ".parquet"
CONTENT_TYPE = "application/vnd.apache.parquet"
COMPRESSION = "zstd"
ROW_GROUP_ROWS = 131_072
_RECEIVED_AT = columns.SCHEMA.get_field_index("received_at")

Columns = dict[str, list[Any]]  # one entry's events as `columns.SCHEMA`'s columns


def stage(events: list[dict[str, Any]]) -> tuple[Columns, int]:
    try:
        values = columns.to_columns(events)
    except (ValueError, TypeError, OverflowError, pa.ArrowException) as exc:
        raise UnarchivableEvent(f"cannot be written as Parquet rows: {exc}") from exc
    return values, len(encode_lines(events))


def encode(staged: list[Columns], level: int = 3) -> bytes:
    merged = {name: list(chain.from_iterable(part[name] for part in staged)) for name in staged[0]}
    return write(pa.Table.from_pydict(merged, schema=columns.SCHEMA), level)


def write(rows: pa.Table, level: int = 3, sorted_by_time: bool = False) -> bytes:
    """A table of `columns.SCHEMA` as one Parquet object's bytes: the consumer's objects and
    the compacted ones (`sorted_by_time`: declared sorted by `received_at`). Row groups of
    ROW_GROUP_ROWS, each written from one contiguous chunk, so that pages are cut the same way
    however the rows arrived: the bytes depend on the rows alone."""
    table = rows.select(columns.SCHEMA.names).cast(columns.SCHEMA)
    sorting = [pq.SortingColumn(_RECEIVED_AT)] if sorted_by_time else None
    sink = pa.BufferOutputStream()
    with pq.ParquetWriter(
        sink,
        columns.SCHEMA,
        compression=COMPRESSION,
        compression_level=level,
        coerce_timestamps="us",
        allow_truncated_timestamps=False,
        sorting_columns=sorting,
    ) as writer:
        for start in range(0, table.num_rows, ROW_GROUP_ROWS):
            group = table.slice(start, ROW_GROUP_ROWS).combine_chunks()
            writer.write_table(group, row_group_size=ROW_GROUP_ROWS)
    return sink.getvalue().to_pybytes()
