"""Decoding an object's bytes (`reading.decode`): whole objects at once; a damaged one taken
apart, so that every line (or row group) that decodes is kept and what is wrong is said."""

from __future__ import annotations

import gzip
import io
import zlib
from datetime import date
from typing import Any

import msgspec
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from shared.archive import columns, reading
from shared.archive.formats import parquet
from shared.archive.privacy.rewrite import rewrite
from shared.archive.privacy.subjects import Subjects
from shared.archive.storage import ObjectStore
from shared.settings import Settings
from tests.archives import (
    BEFORE_DERIVED_COLUMNS,
    DOCUMENTED_COLUMNS,
    enriched,
    ev,
    release_before_derived_columns,
)


def lines(count: int) -> list[bytes]:
    events = [ev(f"m{i}", f"13:{i % 60:02d}", "e", "u", properties={"i": i}) for i in range(count)]
    return [msgspec.json.encode(event) + b"\n" for event in events]


def ids(rows) -> list[str]:
    return rows["message_id"].to_pylist()


def test_a_whole_object_decodes_at_once_whatever_its_format() -> None:
    text = lines(3)
    rows, damage = reading.decode("ndjson", gzip.compress(b"".join(text)))
    assert (ids(rows), damage) == (["m0", "m1", "m2"], None)
    # gzip(1) reads members one after another, and zeros after the last.
    members = gzip.compress(text[0]) + gzip.compress(b"".join(text[1:])) + b"\0" * 8
    assert ids(reading.decode("ndjson", members)[0]) == ["m0", "m1", "m2"]
    body = parquet.write(columns.to_rows([msgspec.json.decode(line) for line in text]))
    assert ids(reading.decode("parquet", body)[0]) == ["m0", "m1", "m2"]


def test_corrupt_gzip_keeps_the_lines_before_the_fault() -> None:
    text = b"".join(lines(2000))
    body = bytearray(gzip.compress(text, mtime=0))
    body[len(body) // 2] ^= 0xFF  # a byte of the deflate stream in the middle

    rows, damage = reading.decode("ndjson", bytes(body))

    assert damage is not None and damage.reason.startswith("corrupt gzip data")
    # The rows kept are the lines before the fault (some after it may decode as garbage).
    kept = ids(rows)
    assert len(kept) >= 900
    assert kept[:900] == [f"m{i}" for i in range(900)]
    assert damage.rows_read == len(kept)


def test_not_gzip_at_all() -> None:
    rows, damage = reading.decode("ndjson", b"{}\n")
    assert rows.num_rows == 0
    assert damage.reason.startswith("not gzip data")


def test_lines_that_are_not_json_objects_are_counted_and_the_first_listed() -> None:
    text = lines(5)
    text[1] = b'{"messageId": "m1",\n'
    text[3] = b"[1, 2]\n"
    deflate = zlib.compressobj(wbits=31)
    truncated = deflate.compress(b"".join(text) + b'{"messageId":') + deflate.flush(
        zlib.Z_SYNC_FLUSH
    )

    rows, damage = reading.decode("ndjson", truncated)

    assert ids(rows) == ["m0", "m2", "m4"]
    assert damage.lines == (2, 4, 6) and damage.lines_failed == 3 and damage.rows_read == 3
    assert damage.reason.startswith("the gzip data is truncated")
    assert "3 lines are not a JSON object (line 2: " in damage.reason


def test_failing_lines_listed_are_bounded_their_count_is_not() -> None:
    body = gzip.compress(b"nope\n" * (reading.LINES_LISTED + 5))
    rows, damage = reading.decode("ndjson", body)
    assert rows.num_rows == 0
    assert len(damage.lines) == reading.LINES_LISTED
    assert damage.lines_failed == reading.LINES_LISTED + 5


def test_parquet_keeps_the_row_groups_that_read() -> None:
    events = [msgspec.json.decode(line) for line in lines(20)]
    sink = io.BytesIO()
    pq.write_table(columns.to_rows(events), sink, row_group_size=10, compression="zstd")
    body = bytearray(sink.getvalue())
    chunk = pq.ParquetFile(io.BytesIO(body)).metadata.row_group(0).column(0)  # message_id
    middle = chunk.data_page_offset + chunk.total_compressed_size // 2
    body[middle : chunk.data_page_offset + chunk.total_compressed_size] = b"\xff" * (
        chunk.data_page_offset + chunk.total_compressed_size - middle
    )

    rows, damage = reading.decode("parquet", bytes(body))

    assert damage.row_groups == (0,)
    assert damage.reason.startswith("1 of 2 Parquet row groups unreadable (row group 0: ")
    assert ids(rows) == [f"m{i}" for i in range(10, 20)] and damage.rows_read == 10


@pytest.mark.parametrize("body", [b"", b"PAR1", b"not parquet at all"])
def test_not_parquet(body: bytes) -> None:
    rows, damage = reading.decode("parquet", body)
    assert rows.num_rows == 0 and rows.schema == columns.SCHEMA
    assert damage.reason.startswith("not a Parquet file")


def test_read_object_raises_naming_the_object(s3: Any, settings: Settings) -> None:
    key = f"{settings.s3_prefix}dt=2024-03-05/hour=13/1-0_1-0_x.ndjson.gz"
    s3.put_object(Bucket=settings.s3_bucket, Key=key, Body=gzip.compress(b"[]\n"))
    item = reading.ArchivedObject(key, date(2024, 3, 5), 13, 10, "ndjson")

    with pytest.raises(reading.Unreadable) as raised:
        reading.read_object(ObjectStore(s3, settings.s3_bucket), item)

    assert raised.value.key == key
    assert str(raised.value) == f"{key}: {raised.value.damage.reason}"
    assert raised.value.damage.lines == (1,)


# --- objects written before the derived columns (issue 26) -------------------------------------

OLDER_EVENTS = [
    enriched(ev("a", "13:01", "e", "u1"), "France", "FR", bot=True),  # ingest before consumer
    ev("b", "13:02", "e", "u2"),
    ev("c", "13:03", "e", "u3", context={"location": {"country": ["not", "a", "name"]}}),
]
DERIVED = [
    {"country": "France", "country_code": "FR", "browser": "Chrome", "is_bot": True},
    {"country": None, "country_code": None, "browser": None, "is_bot": False},
    {"country": None, "country_code": None, "browser": None, "is_bot": False},
]


def test_an_older_parquet_object_reads_with_its_derived_columns_whole_or_salvaged() -> None:
    with release_before_derived_columns():
        body = parquet.write(columns.to_rows(OLDER_EVENTS))
    assert pq.read_schema(io.BytesIO(body)).names == BEFORE_DERIVED_COLUMNS

    rows, damage = reading.decode("parquet", body)

    assert damage is None and rows.schema == columns.SCHEMA
    assert rows.equals(columns.to_rows(OLDER_EVENTS))  # as this release writes them
    assert rows.select(list(DERIVED[0])).to_pylist() == DERIVED
    # Salvaging reads row group by row group, through the same mapping.
    assert reading._salvage_parquet(body, "")[0].equals(rows)


def test_a_privacy_rewrite_of_an_older_parquet_object_writes_this_releases_columns(
    s3: Any, settings: Settings
) -> None:
    store = ObjectStore(s3, settings.s3_bucket)
    with release_before_derived_columns():
        body = parquet.write(columns.to_rows(OLDER_EVENTS))
    key = f"{settings.s3_prefix}parquet/dt=2024-03-05/hour=13/1-0_1-0_x.parquet"
    store.put(key, body, parquet.CONTENT_TYPE)

    done = rewrite(store, reading.archived_object(key, len(body)), Subjects(frozenset({"u2"})), 3)

    assert (done.removed, done.kept) == (1, 2)
    rows = pq.read_table(io.BytesIO(store.get(key)))
    assert rows.column_names == DOCUMENTED_COLUMNS
    assert rows.select(list(DERIVED[0])).to_pylist() == [DERIVED[0], DERIVED[2]]


def test_a_parquet_object_without_context_reads_nothing_derived_and_no_bot() -> None:
    sink = io.BytesIO()
    pq.write_table(pa.table({"message_id": ["a", "b"]}), sink)
    rows, damage = reading.decode("parquet", sink.getvalue())
    assert damage is None
    assert rows.select(["message_id", "country", "is_bot"]).to_pylist() == [
        {"message_id": "a", "country": None, "is_bot": False},
        {"message_id": "b", "country": None, "is_bot": False},
    ]
