"""The formats: how staged events become an object's bytes (gzip NDJSON, Parquet), and what
readers that know nothing of this project (pyarrow, DuckDB) find in a Parquet object."""

from __future__ import annotations

import gc
import gzip
import io
import json
import subprocess
import sys
import tracemalloc
from datetime import UTC, date, datetime
from pathlib import Path
from types import ModuleType
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from local.stack import ROOT
from shared import codec
from shared.archive import Buffer, ObjectStore, UnarchivableEvent, columns, reading
from shared.archive.formats import named, ndjson, parquet
from shared.archive.formats.ndjson import compress, encode_lines
from shared.settings import ARCHIVE_FORMATS, Settings
from tests import archives
from tests.fresh_process import in_a_fresh_process
from tests.shared.archive.conftest import event

# --- the interface ------------------------------------------------------------------------


@pytest.mark.parametrize("name", ARCHIVE_FORMATS)
def test_every_format_has_the_small_interface(name: str) -> None:
    module = named(name)
    assert isinstance(module, ModuleType)
    assert module.SUFFIX.startswith(".") and module.CONTENT_TYPE
    staged, nbytes = module.stage([event(i=1), event(i=2)])
    assert nbytes > 0
    assert isinstance(module.encode([staged], 3), bytes)


def test_formats_are_found_by_name() -> None:
    assert named("ndjson") is ndjson
    assert named("parquet") is parquet
    assert {named(name).SUFFIX for name in ARCHIVE_FORMATS} == set(reading.FORMAT_OF_SUFFIX)


@pytest.mark.parametrize("name", ["csv", "../settings", "formats"])
def test_an_unknown_format_is_refused(name: str) -> None:
    with pytest.raises(ValueError, match="no archive format"):
        named(name)


def test_an_ndjson_consumer_never_loads_pyarrow() -> None:
    """A format's module is imported only when chosen: pyarrow costs an NDJSON consumer
    neither start time nor memory."""
    code = (
        "import sys, functions.consumer.app\n"
        "from shared.archive import Buffer\n"
        "buffer = Buffer()\n"
        "buffer.add(b'1-0', [{'receivedAt': '2024-03-05T14:00:00.000Z'}])\n"
        "list(buffer.objects('events/'))\n"
        "assert 'pyarrow' not in sys.modules, 'pyarrow was imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


# --- NDJSON -------------------------------------------------------------------------------


def test_encode_line_is_one_json_line() -> None:
    e = event(properties={"text": "line\nbreak ünï 🚀", "n": 2**63})
    line = encode_lines([e])
    assert line.endswith(b"\n")
    assert line.count(b"\n") == 1
    assert json.loads(line) == e


def test_compress_is_deterministic() -> None:
    lines = [encode_lines([event(i=i)]) for i in range(50)]
    assert compress(lines) == compress(list(lines))
    assert compress(lines) != compress(lines[:-1])


def test_compress_gunzips_to_ndjson_lines() -> None:
    events = [event(i=i, text="ü") for i in range(5)]
    body = compress([encode_lines([e]) for e in events])
    assert body[:2] == b"\x1f\x8b"
    text = gzip.decompress(body)
    assert text.endswith(b"\n")
    assert [json.loads(line) for line in text.splitlines()] == events


def test_compress_has_no_timestamp_in_the_header() -> None:
    body = compress([b"{}\n"])
    assert body[4:8] == b"\x00\x00\x00\x00"  # gzip MTIME field


def test_ndjson_stages_lines_and_counts_their_bytes() -> None:
    events = [event(i=1), event(i=2)]
    lines, nbytes = ndjson.stage(events)
    assert lines == encode_lines(events)
    assert nbytes == len(lines)
    assert ndjson.encode([lines, lines], 5) == compress([lines, lines], 5)


# --- Parquet ------------------------------------------------------------------------------

# Every column set, and the awkward values: integer IDs, an empty ID, an unparseable client
# timestamp, nested JSON, and fields beyond the documented columns.
EVENTS = [
    {
        "type": "track",
        "event": "Order Completed",
        "messageId": "m-1",
        "userId": "u1",
        "anonymousId": "a1",
        "receivedAt": "2024-03-05T14:00:00.123Z",
        "timestamp": "2024-03-05T13:59:59.5+01:00",
        "originalTimestamp": "2024-03-05T12:59:59.123456Z",
        "sentAt": "2024-03-05T14:00:00Z",
        "properties": {"total": 9.99, "items": [1, 2], "text": "ünï 🚀"},
        "context": {"library": {"name": "analytics-python", "version": "2.3"}},
        "integrations": {"All": True},
        "_metadata": {"bundled": []},
    },
    {
        "type": "identify",
        "messageId": "m-2",
        "userId": 42,
        "anonymousId": "",
        "receivedAt": "2024-03-05T14:10:00.000Z",
        "originalTimestamp": "yesterday",
        "traits": {"email": "a@example.com", "name": "Zoë"},
        "channel": "server",
    },
    {
        "type": "group",
        "messageId": "m-3",
        "groupId": "g1",
        "previousId": None,
        "receivedAt": "2024-03-05T14:20:00.000Z",
        "traits": {"plan": "pro"},
    },
    {
        "type": "alias",
        "messageId": "m-4",
        "userId": "u2",
        "previousId": "u1",
        "receivedAt": "2024-03-05T14:30:00.000Z",
        "source": "web",
    },
    {
        "type": "page",
        "name": "Home",
        "messageId": "m-5",
        "anonymousId": "a2",
        "receivedAt": "2024-03-05T14:40:00.000Z",
    },
]

TIMESTAMP_COLUMNS = ["timestamp", "original_timestamp", "sent_at", "received_at"]


def parquet_body(events: list[dict[str, Any]] = EVENTS, level: int = 3) -> bytes:
    """One object's bytes, as a Buffer stages and encodes them: one stage per entry."""
    return parquet.encode([parquet.stage([e])[0] for e in events], level)


def test_parquet_is_readable_by_plain_pyarrow_with_the_documented_columns() -> None:
    table = pq.read_table(io.BytesIO(parquet_body()))

    assert table.schema.equals(columns.SCHEMA, check_metadata=False)
    assert table.column_names == archives.DOCUMENTED_COLUMNS
    for name in TIMESTAMP_COLUMNS:
        assert table.schema.field(name).type == pa.timestamp("us", tz="UTC")
    # No partition columns inside: they are the object's path.
    assert "dt" not in table.column_names and "hour" not in table.column_names
    assert table.equals(columns.to_rows(EVENTS))


def test_parquet_values_are_the_events_as_the_columns_map_them() -> None:
    rows = pq.read_table(io.BytesIO(parquet_body())).to_pylist()
    first, second = rows[0], rows[1]
    assert first["timestamp"] == datetime(2024, 3, 5, 12, 59, 59, 500000, tzinfo=UTC)
    assert first["original_timestamp"] == datetime(2024, 3, 5, 12, 59, 59, 123456, tzinfo=UTC)
    assert json.loads(first["properties"]) == EVENTS[0]["properties"]
    assert json.loads(first["extra"]) == {"_metadata": {"bundled": []}}
    assert second["user_id"] == "42" and second["anonymous_id"] is None
    assert second["original_timestamp"] is None
    assert json.loads(second["extra"]) == {"channel": "server", "originalTimestamp": "yesterday"}


def test_parquet_file_layout_microsecond_utc_timestamps_and_zstd() -> None:
    metadata = pq.ParquetFile(io.BytesIO(parquet_body())).metadata
    assert metadata.num_rows == len(EVENTS) and metadata.num_row_groups == 1
    schema = metadata.schema
    for name in TIMESTAMP_COLUMNS:
        column = schema.column(schema.names.index(name))
        assert column.physical_type == "INT64"  # never INT96
        logical = json.loads(column.logical_type.to_json())
        assert logical["Type"] == "Timestamp"
        assert (logical["isAdjustedToUTC"], logical["timeUnit"]) == (True, "microseconds")
    row_group = metadata.row_group(0)
    assert {row_group.column(i).compression for i in range(row_group.num_columns)} == {"ZSTD"}


def test_parquet_is_readable_by_plain_duckdb(tmp_path: Path) -> None:
    path = tmp_path / "object.parquet"
    path.write_bytes(parquet_body())
    con = duckdb.connect()

    described = con.sql("DESCRIBE SELECT * FROM read_parquet(?)", params=[str(path)]).fetchall()
    types = {name: kind for name, kind, *_ in described}
    assert list(types) == columns.SCHEMA.names
    for name in TIMESTAMP_COLUMNS:
        assert types[name] == "TIMESTAMP WITH TIME ZONE"
    assert types.pop(columns.IS_BOT) == "BOOLEAN"
    assert {types[name] for name in types if name not in TIMESTAMP_COLUMNS} == {"VARCHAR"}

    table = con.sql("SELECT * FROM read_parquet(?)", params=[str(path)]).to_arrow_table()
    expected = columns.to_rows(EVENTS)
    for name in columns.SCHEMA.names:
        got = table.column(name)
        if name in TIMESTAMP_COLUMNS:  # the same instants, whatever zone DuckDB displays
            got = got.cast(pa.timestamp("us", tz="UTC"))
        assert got.to_pylist() == expected.column(name).to_pylist(), name


def test_duckdb_reads_older_and_newer_objects_together_by_name(tmp_path: Path) -> None:
    """Objects written before the derived columns hold a prefix of this release's columns: a
    reader matching by name (as Athena's Parquet tables do) reads theirs as NULL."""
    events = [archives.enriched(EVENTS[0], "France", "FR", bot=True)]
    with archives.release_before_derived_columns():
        (tmp_path / "1-older.parquet").write_bytes(parquet.write(columns.to_rows(events)))
    (tmp_path / "2-newer.parquet").write_bytes(parquet.write(columns.to_rows(events)))

    rows = duckdb.sql(
        "SELECT country, is_bot FROM read_parquet(?, union_by_name = true) ORDER BY 1 NULLS FIRST",
        params=[str(tmp_path / "*.parquet")],
    ).fetchall()
    assert rows == [(None, None), ("France", True)]


def test_duckdb_reads_the_partitions_from_the_path_only(tmp_path: Path) -> None:
    folder = tmp_path / "dt=2024-03-05" / "hour=14"
    folder.mkdir(parents=True)
    (folder / "1-0_5-0_abc.parquet").write_bytes(parquet_body())
    rows = duckdb.connect().sql(
        "SELECT dt, hour, count(*) FROM read_parquet(?, hive_partitioning = true) GROUP BY ALL",
        params=[str(tmp_path / "*" / "*" / "*.parquet")],
    )
    assert rows.fetchall() == [(date(2024, 3, 5), 14, len(EVENTS))]


def test_parquet_bytes_are_deterministic() -> None:
    # Written again by another process (another hash seed), as a retried flush is.
    assert parquet_body() == in_a_fresh_process(parquet_body)
    assert parquet_body() != parquet_body(EVENTS[:-1])
    # What a retried flush would write: staged again from the same entries.
    staged = [parquet.stage([e])[0] for e in EVENTS]
    assert parquet.encode(staged, 3) == parquet.encode(list(staged), 3) == parquet_body()


def test_parquet_metadata_holds_no_clock_or_random_value() -> None:
    metadata = pq.ParquetFile(io.BytesIO(parquet_body())).metadata
    assert metadata.created_by.startswith("parquet-cpp-arrow version ")
    assert set(metadata.metadata) == {b"ARROW:schema"}  # the Arrow schema, nothing else


def test_parquet_compression_level_is_used() -> None:
    many = [dict(event(i=i), messageId=f"m-{i}", properties={"n": i}) for i in range(2000)]
    assert parquet_body(many, 9) != parquet_body(many, 1)


def test_parquet_stages_the_rows_and_counts_what_it_stages() -> None:
    """FLUSH_MAX_BYTES counts what Parquet stages: a plain entry's text; an entry whose values
    are gathered as they are (an integer ID), its size as NDJSON lines, as NDJSON counts it."""
    events = [event(i=i, messageId=f"m-{i}", properties={"n": i}) for i in range(100)]
    staged, nbytes = parquet.stage(events)
    assert staged.rows is None
    assert columns.to_table([staged]).equals(columns.to_rows(events))
    assert nbytes == len(staged.lines)
    gathered = [dict(events[0], userId=7), *events[1:]]
    staged_gathered, nbytes_gathered = parquet.stage(gathered)
    assert staged_gathered.rows is not None
    assert nbytes_gathered == ndjson.stage(gathered)[1]
    # What the writer encodes before compression is somewhat smaller: no names, no quotes ...
    rows = columns.to_rows(events)
    derived = list(columns.DERIVED_COLUMNS)
    assert rows.drop_columns(derived).nbytes < nbytes
    # ... beside the columns derived from `context`, which repeat part of it: NULL here, they
    # cost Arrow an offset per row and text column (4 bytes) and validity bits, 29 bytes an
    # event in memory (and a bit per row and column in the file): not ignorable on these
    # 130-byte events; on enriched ones, those bytes plus the text of the values repeated.
    assert rows.select(derived).nbytes <= 30 * len(events)


def test_parquet_object_is_the_same_however_entries_cut_the_events() -> None:
    one_stage = parquet.encode([parquet.stage(EVENTS)[0]], 3)
    assert parquet_body() == one_stage


@pytest.mark.parametrize("fmt", [ndjson, parquet], ids=["ndjson", "parquet"])
def test_an_event_json_cannot_hold_is_unarchivable(fmt: ModuleType) -> None:
    """A map whose key is neither text nor a number (MsgPack has them, JSON has not): staging
    says "unarchivable" in both formats, so that the drain loop dead-letters that entry alone
    instead of failing every flush that holds it. Parquet stages nothing JSON could not hold,
    and building its table from what it staged cannot fail."""
    with pytest.raises(UnarchivableEvent, match="JSON"):
        fmt.stage([event(), event(properties={None: 1})])
    deep: list[Any] = []
    for _ in range(5000):  # nested deeper than the JSON encoder goes
        deep = [deep]
    with pytest.raises(UnarchivableEvent, match="JSON"):
        fmt.stage([event(), event(properties={"deep": deep})])


@pytest.mark.parametrize("per_entry", [100, 1])
def test_staged_parquet_takes_a_bounded_multiple_of_what_it_counts(per_entry: int) -> None:
    """FLUSH_MAX_BYTES counts what Parquet stages, about the events' NDJSON size; what that
    takes in memory stays within a small multiple of it, on events of about 500 bytes like
    these, as SDKs send them, decoded from stream entries as the consumer has them (each value
    its own object): measured 1.01x for 100-event entries and 1.23x for single events, the
    count 1.01x the NDJSON size (staging the values gathered per event: 1.75x and 3.6x of the
    lines; Python lists per column before that: 1.9x and 10.6x)."""
    context = {
        "library": {"name": "analytics.js", "version": "next-1.70.0"},
        "ip": "203.0.113.0",
        "userAgent": "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 Chrome/124.0",
        "locale": "en-US",
    }
    entries = [
        [
            event(
                messageId=f"ajs-next-{n:08d}-{i:03d}-8e62-4662-8bb0-eecb16fd41e7",
                anonymousId=f"7623c8e7-1711-4747-b1a5-{n:012d}",
                timestamp="2024-03-05T14:59:58.123Z",
                properties={"orderId": f"o-{n}", "revenue": 41.5, "currency": "USD", "items": i},
                context=context,
            )
            for i in range(per_entry)
        ]
        for n in range(3000 // per_entry)
    ]
    packed = [codec.encode_entry(events) for events in entries]
    lines = sum(len(encode_lines(events)) for events in entries)
    gc.collect()
    tracemalloc.start()
    try:
        staged = [parquet.stage(codec.decode_entry(fields))[0] for fields in packed]
        gc.collect()
        used = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    assert len(staged) == len(entries)
    counted = sum(parquet.stage(codec.decode_entry(fields))[1] for fields in packed)
    assert used < (1.15 if per_entry == 100 else 1.5) * counted
    assert 0.95 * lines < counted < 1.1 * lines


@pytest.mark.parametrize(
    "moment", ["0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59-01:00"], ids=["min", "max"]
)
def test_a_client_timestamp_out_of_range_in_utc_is_kept_in_extra(moment: str) -> None:
    """Valid ISO-8601 that no UTC timestamp can hold (ingest checks no originalTimestamp):
    NULL, its raw value in `extra`, as for any unreadable timestamp."""
    rows, _ = parquet.stage([event(originalTimestamp=moment)])
    [row] = pq.read_table(io.BytesIO(parquet.encode([rows], 3))).to_pylist()
    assert row["original_timestamp"] is None
    assert json.loads(row["extra"]) == {"originalTimestamp": moment}


def test_parquet_of_no_rows_is_still_a_readable_object() -> None:
    body = parquet.encode([parquet.stage([])[0]], 3)
    table = pq.read_table(io.BytesIO(body))
    assert table.num_rows == 0 and table.schema.equals(columns.SCHEMA, check_metadata=False)


# --- both formats read back alike -----------------------------------------------------------


def test_a_mixed_archive_reads_back_as_equal_rows_for_equal_events(
    s3: Any, settings: Settings
) -> None:
    """A deployment that switched ARCHIVE_FORMAT: NDJSON objects and Parquet objects of the
    same events read back, through `reading.read_object`, as the same rows."""
    store = ObjectStore(s3, settings.s3_bucket)
    for archive_format in ARCHIVE_FORMATS:
        buffer = Buffer(format=archive_format)
        for n, e in enumerate(EVENTS):
            buffer.add(f"{n + 1}-0".encode(), [e])
        for key, body, _ in buffer.objects(settings.s3_prefix):
            store.put(key, body, buffer.content_type)

    tables = {}
    for item in s3.list_objects_v2(Bucket=settings.s3_bucket)["Contents"]:
        key = item["Key"]
        suffix = next(s for s in reading.FORMAT_OF_SUFFIX if key.endswith(s))
        archived = reading.ArchivedObject(
            key, date(2024, 3, 5), 14, item["Size"], reading.FORMAT_OF_SUFFIX[suffix]
        )
        tables[archived.format] = reading.read_object(ObjectStore(s3, settings.s3_bucket), archived)

    assert set(tables) == {"ndjson", "parquet"}
    assert tables["parquet"].equals(tables["ndjson"])
    assert tables["parquet"].equals(columns.to_rows(EVENTS))
