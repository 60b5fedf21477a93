"""The archive's objects as an fsspec filesystem (shared/archive/object_files.py): DuckDB reads
Parquet through it a column at a time, in ranged GETs of ObjectStore, with the partitions from
the path; gzip NDJSON too; an object gone after its listing is reported, never read as empty."""

from __future__ import annotations

import gzip
from typing import Any

import boto3
import duckdb
import pytest

from shared.archive import columns, reading
from shared.archive.formats import parquet
from shared.archive.object_files import ObjectFiles, key_of, url
from shared.archive.storage import ObjectStore
from shared.settings import Settings
from tests.shared.archive.conftest import event

HOUR_13 = "events/compacted/dt=2024-03-05/hour=13/compacted-0000-of-0001-a.parquet"
HOUR_14 = "events/compacted/dt=2024-03-05/hour=14/compacted-0000-of-0001-b.parquet"
NDJSON = "events/dt=2024-03-05/hour=14/1709650000000-0_x.ndjson.gz"
ROWS = 10_000


class CountingStore(ObjectStore):
    """An ObjectStore that remembers the byte ranges it was asked for."""

    def __init__(self, client: Any, bucket: str) -> None:
        super().__init__(client, bucket)
        self.ranges: list[tuple[str, int, int]] = []

    def get(self, key: str, byte_range: tuple[int, int] | None = None) -> bytes:
        assert byte_range is not None, "a whole object was downloaded"
        self.ranges.append((key, *byte_range))
        return super().get(key, byte_range)

    def bytes_read(self, key: str) -> int:
        return sum(end - start + 1 for k, start, end in self.ranges if k == key)


def events(hour: int, count: int) -> list[dict[str, Any]]:
    return [
        event(
            f"2024-03-05T{hour}:{i // 1000 % 60:02d}:00.000Z",
            messageId=f"m{hour}-{i}",
            properties={"n": i, "noise": f"{i * 2654435761 % 2**32:08x}" * 4},
        )
        for i in range(count)
    ]


@pytest.fixture
def store(s3: Any, settings: Settings) -> CountingStore:
    store = CountingStore(s3, settings.s3_bucket)
    store.put(HOUR_13, parquet.write(columns.to_rows(events(13, ROWS))))
    store.put(HOUR_14, parquet.write(columns.to_rows(events(14, 10))))
    lines = b"".join(b'{"messageId":"n%d","properties":{"n":%d}}\n' % (i, i) for i in range(500))
    store.put(NDJSON, gzip.compress(lines))
    return store


def connect(store: ObjectStore) -> tuple[Any, ObjectFiles]:
    listed = [
        reading.archived_object(key, size)
        for key, size in store.objects_under("events/")
        if reading.archived_object(key, size)
    ]
    files = ObjectFiles(store, listed)
    con = duckdb.connect(":memory:")
    con.register_filesystem(files)
    return con, files


def scan(keys: list[str]) -> str:
    names = ", ".join(f"'{url(key)}'" for key in keys)
    return (
        f"read_parquet([{names}], hive_partitioning = true, filename = true,"
        " hive_types = {'dt': DATE, 'hour': TINYINT})"
    )


def test_a_column_is_read_alone_in_ranged_gets(store: CountingStore) -> None:
    con, _ = connect(store)
    total = store.client.head_object(Bucket=store.bucket, Key=HOUR_13)["ContentLength"]

    # Not count(*) nor max(): DuckDB answers those from the footer's statistics.
    answer = con.sql(f"SELECT count(DISTINCT message_id) FROM {scan([HOUR_13])}").fetchall()

    assert answer == [(ROWS,)]
    assert store.bytes_read(HOUR_13) > 0.1 * total, "the column was not read"
    assert store.bytes_read(HOUR_13) < total / 2, (store.bytes_read(HOUR_13), total)


def test_the_rows_and_partitions_are_what_the_reader_gives(store: CountingStore) -> None:
    con, _ = connect(store)
    rows = con.sql(
        f"SELECT message_id, properties, received_at, dt, hour, filename FROM {scan([HOUR_14])}"
        " ORDER BY message_id"
    ).fetchall()
    expected = reading.parquet_rows(store.get(HOUR_14, (0, 1 << 30))).sort_by("message_id")
    assert [row[0] for row in rows] == expected["message_id"].to_pylist()
    assert [row[1] for row in rows] == expected["properties"].to_pylist()
    assert [row[2] for row in rows] == expected["received_at"].to_pylist()
    assert {(str(row[3]), row[4]) for row in rows} == {("2024-03-05", 14)}
    assert {key_of(row[5]) for row in rows} == {HOUR_14}


def test_a_filter_on_the_partition_reads_nothing_of_the_others(store: CountingStore) -> None:
    """(DuckDB reads the footer of the first object named, for the schema, whatever the
    filter.)"""
    con, _ = connect(store)
    answer = con.sql(f"SELECT count(*) FROM {scan([HOUR_14, HOUR_13])} WHERE hour = 14")
    assert answer.fetchall() == [(10,)]
    assert store.bytes_read(HOUR_13) == 0


def test_gzip_ndjson_is_read_natively(store: CountingStore) -> None:
    con, _ = connect(store)
    answer = con.sql(
        f"SELECT count(*), sum((json->>'$.properties.n')::INTEGER) "
        f"FROM read_ndjson_objects('{url(NDJSON)}', compression = 'gzip')"
    )
    assert answer.fetchall() == [(500, sum(range(500)))]


def test_an_object_gone_after_its_listing_fails_the_read_and_is_named(
    store: CountingStore,
) -> None:
    con, files = connect(store)
    boto3.client("s3", region_name="us-east-1").delete_object(Bucket=store.bucket, Key=HOUR_14)
    with pytest.raises(duckdb.Error):
        con.sql(f"SELECT count(*) FROM {scan([HOUR_13, HOUR_14])}").fetchall()
    assert files.gone == {HOUR_14}


def test_only_the_listed_objects_are_there_and_none_can_be_written(
    store: CountingStore,
) -> None:
    _, files = connect(store)
    with pytest.raises(FileNotFoundError):
        files.info(url("events/elsewhere.parquet"))
    with pytest.raises(PermissionError, match="never written"):
        files.open(url(HOUR_14), "wb")
    assert files.ls(url("events/compacted/dt=2024-03-05/hour=14/"), detail=False) == [HOUR_14]
