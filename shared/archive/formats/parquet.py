"""Parquet, zstd-compressed: the rows of `columns.SCHEMA`, as `columns.to_rows` maps the events.

What the files hold, for readers that do not use this project's code (pyarrow, DuckDB, Athena):

- exactly the columns of `columns.SCHEMA`, in its order; `dt` and `hour` are not inside the
  files, only in their path (Hive-style partitions). The columns derived from `context`
  (`country` ... `device`, `is_bot`) come last: objects written before they existed lack them,
  and read with them derived (`columns.conform`) here, NULL in readers that match by name
  (Athena, DuckDB's `union_by_name`);
- timestamps as `TIMESTAMP(isAdjustedToUTC=true, MICROS)` (pyarrow reads `timestamp[us,
  tz=UTC]`, DuckDB `TIMESTAMP WITH TIME ZONE`), never nanoseconds, never INT96;
- zstd at `level` (`GZIP_LEVEL`, 1 to 9; its default 3 is zstd's own); dictionary encoding
  and column statistics (pyarrow's defaults); row groups of `ROW_GROUP_ROWS` (131,072) rows;
  data pages v1, which every reader reads.

Deterministic: the same events give the same bytes, however entries cut them. The writer
stores no clock or random value; its footer names the writer (`created_by: parquet-cpp-arrow
version ...`) and holds the Arrow schema, so a retried flush rewrites its object with the same
bytes while the pyarrow version is the same, and with the same rows across versions.

Staging turns each entry's events into lines of JSON while they are fresh in the CPU's cache
(`columns.to_columns`): per event, its scalars (for an entry whose scalars are all strings, as
ingest writes them; any other is gathered value by value in Python) and the text of its JSON
columns; the Arrow table is built once per object, at flush time (`columns.to_table`, column
by column, the scalars by Arrow's JSON reader, without the GIL). An entry fails at staging for
what JSON cannot hold (a map key JSON has no form for; nesting deeper than the encoder goes,
which Parquet reaches a level or two later than NDJSON, as it encodes each value rather than
the whole event), and is dead-lettered alone; building the table then cannot fail.

`nbytes`, what `FLUSH_MAX_BYTES` counts, is the size of what is staged for a plain entry (the
text of its scalars and JSON columns: 1.01 times its events' NDJSON lines for SDK-like events,
as a part of `context` a derived column reads is written twice, there and with the scalars,
and a missing JSON column is a `null`, but a missing scalar is nothing). Any other entry is
counted at its events' NDJSON size, as NDJSON counts it, although its values gathered as
Python objects take more: 1.8 times that for entries of 100 SDK-like events with an integer
ID, 3.7 times for single ones (a tiny event alone, up to 27 times). The two formats may
therefore cut a stream's flushes in slightly different places: counting the NDJSON size
exactly would mean encoding every event a second time, 0.45 us an event on the consumer's
busiest thread (some 13% of it). The column data the writer compresses is smaller (no field
names, no quoting). What is staged for plain entries takes 1.01 times what is counted for
entries of 100 events, 1.23 times for single-event entries (test_formats measures it).
"""

from __future__ import annotations

from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from shared.archive import columns
from shared.archive.formats import ndjson

SUFFIX = ".parquet"
CONTENT_TYPE = "application/vnd.apache.parquet"
COMPRESSION = "zstd"
ROW_GROUP_ROWS = 131_072
_RECEIVED_AT = columns.SCHEMA.get_field_index("received_at")


def stage(events: list[dict[str, Any]]) -> tuple[columns.Staged, int]:
    with ndjson.as_json():
        staged = columns.to_columns(events)
    if staged.rows is None:  # plain: every value is in the text staged, as JSON
        return staged, len(staged.lines)
    # Values gathered as they are: checked as NDJSON would check them, and counted alike.
    _, nbytes = ndjson.stage(events)
    return staged, nbytes


def encode(staged: list[columns.Staged], level: int = 3) -> bytes:
    return write(columns.to_table(staged), level)


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
