"""Queries over compacted hours stream (issue 28): the hours that hold only compacted objects
are read by DuckDB as it scans, a column chunk at a time, never held; copies are resolved by
compaction's rule (docs/querying.md, "Exactly once"); an object replaced under a query is read
again from the new listing; an object whose footer is not Parquet is named."""

from __future__ import annotations

import hashlib
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import boto3
import pytest

from shared.archive import ObjectStore, columns, query
from shared.archive.formats import parquet
from shared.archive.naming import Part, compacted_key
from shared.archive.partitions import HourRange
from shared.settings import Settings
from tests import archives
from tests.shared.archive.conftest import event

PREFIX = "events/"


class CountingStore(ObjectStore):
    """An ObjectStore that remembers the bytes it was asked for, per key."""

    def __init__(self, client: Any, bucket: str) -> None:
        super().__init__(client, bucket)
        self.read: dict[str, int] = {}

    def get(self, key: str, byte_range: tuple[int, int] | None = None) -> bytes:
        body = super().get(key, byte_range)
        self.read[key] = self.read.get(key, 0) + len(body)
        return body


@pytest.fixture
def store(s3: Any, settings: Settings) -> CountingStore:
    return CountingStore(s3, settings.s3_bucket)


def at(hour: int, minute: int = 0) -> str:
    return f"2024-03-05T{hour:02d}:{minute:02d}:00.000Z"


def compacted(store: ObjectStore, hour: int, events: list[dict[str, Any]]) -> str:
    """The events as the one compacted object of `hour` (2024-03-05)."""
    body = parquet.write(columns.to_rows(events), sorted_by_time=True)
    key = compacted_key(PREFIX, datetime(2024, 3, 5, hour, tzinfo=UTC), Part(0, 1), body)
    store.put(key, body, parquet.CONTENT_TYPE)
    return key


def raw(store: ObjectStore, hour: int, events: list[dict[str, Any]]) -> None:
    archives.write_ndjson(store, PREFIX, [(f"{hour}-0".encode(), events)])


def opened(store: ObjectStore, **options: Any) -> query.Archive:
    return query.open_archive(store, PREFIX, HourRange(), **options)


def answer(archive: query.Archive, sql: str) -> list[tuple[Any, ...]]:
    result = archive.run(sql)
    assert result is not None
    return list(result.rows())


def in_hand(archive: query.Archive) -> int:
    """Rows held in memory (the Arrow table the views read besides the streamed objects)."""
    return answer(archive, "SELECT count(*) FROM _archive")[0][0]


def test_a_compacted_hour_is_streamed_a_column_at_a_time(store: CountingStore) -> None:
    events = [
        event(at(13, i % 60), messageId=f"m{i}", properties={"noise": _noise(i)})
        for i in range(5000)
    ]
    key = compacted(store, 13, events)
    size = len(store.get(key))
    store.read.clear()

    with opened(store) as archive:
        assert archive.rows == 5000
        assert in_hand(archive) == 0
        got = answer(archive, "SELECT count(DISTINCT message_id), count(*) FROM events")

    assert got == [(5000, 5000)]
    # The footer at opening, then the footer and the message_id column chunk in the query.
    assert store.read[key] < size / 2, (store.read[key], size)


def _noise(i: int) -> str:
    return "".join(hashlib.sha256(b"%d-%d" % (i, n)).hexdigest() for n in range(4))


def test_streamed_and_held_hours_answer_alike(s3: Any, settings: Settings) -> None:
    """The same rows, compacted or not, give the same `events` and `raw_events`."""
    store = ObjectStore(s3, settings.s3_bucket)
    events = [event(at(13, i), messageId=f"m{i}", userId=f"u{i % 3}") for i in range(12)]
    raw(store, 13, events)
    with opened(store) as archive:
        held = answer(archive, "SELECT * EXCLUDE (object_key) FROM raw_events ORDER BY 1")
        held_events = answer(archive, "SELECT * FROM events ORDER BY 1")
    for key in store.keys_under(PREFIX):
        s3.delete_object(Bucket=settings.s3_bucket, Key=key)
    compacted(store, 13, events)
    with opened(store) as archive:
        assert in_hand(archive) == 0
        streamed = answer(archive, "SELECT * EXCLUDE (object_key) FROM raw_events ORDER BY 1")
        assert answer(archive, "SELECT * FROM events ORDER BY 1") == streamed
    assert streamed == held == held_events


def test_a_copy_after_a_compacted_one_within_the_window_is_left_out(
    store: CountingStore,
) -> None:
    compacted(store, 10, [event(at(10), messageId="twice", properties={"copy": 1})])
    compacted(store, 11, [event(at(11), messageId="other")])
    raw(store, 12, [event(at(12), messageId="twice", properties={"copy": 2})])
    with opened(store, window_h=2) as archive:
        kept = answer(archive, "SELECT message_id, properties->>'copy', hour FROM events")
        assert sorted(kept, key=str) == [("other", None, 11), ("twice", "1", 10)]
        assert answer(archive, "SELECT count(*) FROM raw_events") == [(3,)]


def test_a_copy_beyond_the_window_is_another_event_as_compaction_keeps_it(
    store: CountingStore,
) -> None:
    compacted(store, 9, [event(at(9), messageId="twice", properties={"copy": 1})])
    raw(store, 12, [event(at(12), messageId="twice", properties={"copy": 2})])
    with opened(store, window_h=2) as archive:
        kept = answer(archive, "SELECT properties->>'copy', hour FROM events ORDER BY hour")
    assert kept == [("1", 9), ("2", 12)]


def test_compacted_hours_are_read_as_compaction_left_them(store: CountingStore) -> None:
    """Two compacted hours holding one ID (compacted out of order) keep both: the query adds
    no rule of its own to what compaction stored."""
    compacted(store, 10, [event(at(10), messageId="twice")])
    compacted(store, 11, [event(at(11), messageId="twice")])
    with opened(store) as archive:
        assert in_hand(archive) == 0
        assert answer(archive, "SELECT hour FROM events ORDER BY hour") == [(10,), (11,)]


def test_held_hours_still_keep_the_earliest_copy_among_them(store: CountingStore) -> None:
    raw(store, 10, [event(at(10), messageId="twice", properties={"copy": 1})])
    raw(store, 12, [event(at(12), messageId="twice", properties={"copy": 2})])
    compacted(store, 12, [event(at(12, 1), messageId="twice", properties={"copy": 3})])
    with opened(store, window_h=1) as archive:
        assert in_hand(archive) == 3
        kept = answer(archive, "SELECT properties->>'copy' FROM events")
    assert kept == [("1",)]


def test_an_object_replaced_under_the_query_is_read_from_the_new_listing(
    s3: Any, settings: Settings, store: CountingStore
) -> None:
    """A compaction of late objects replaces an hour's compacted object after the listing: the
    query lists again and answers over the new one, nothing counted twice nor missed."""
    first = [event(at(13, i), messageId=f"m{i}") for i in range(3)]
    old = compacted(store, 13, first)
    with opened(store) as archive:
        other = boto3.client("s3", region_name="us-east-1")
        new = compacted(ObjectStore(other, settings.s3_bucket), 13, [*first, event(at(13, 5))])
        other.delete_object(Bucket=settings.s3_bucket, Key=old)
        assert answer(archive, "SELECT count(*) FROM events") == [(4,)]
        assert [item.key for item in archive.objects] == [new]
        assert answer(archive, "SELECT DISTINCT object_key FROM raw_events") == [(new,)]


def test_an_object_replaced_at_every_listing_gives_up(
    settings: Settings, store: CountingStore
) -> None:
    compacted(store, 13, [event(at(13), messageId="m")])
    with opened(store) as archive:
        other = ObjectStore(boto3.client("s3", region_name="us-east-1"), settings.s3_bucket)
        generation = iter(range(100))

        def replace(**_: Any) -> None:
            for key in other.keys_under(f"{PREFIX}compacted/"):
                other.client.delete_object(Bucket=settings.s3_bucket, Key=key)
            compacted(other, 13, [event(at(13), messageId="m", properties={"g": next(generation)})])

        archive.reopen = _after(archive.reopen, replace)
        replace()
        with pytest.raises(query.ArchiveChanging, match="kept changing"):
            answer(archive, "SELECT count(*) FROM events")


def _after(reopen: Any, then: Any) -> Any:
    def reopened() -> query.Archive:
        fresh = reopen()
        then()
        return fresh

    return reopened


def test_a_compacted_object_that_is_not_parquet_is_named(store: CountingStore) -> None:
    key = compacted(store, 13, [event(at(13), messageId="m")])
    store.put(key, b"not parquet at all" * 10)
    with pytest.raises(query.UnreadableObject, match=f"cannot read {key}: not a Parquet file"):
        opened(store)
    with opened(store, skip_unreadable=True) as archive:
        assert [item.key for item in archive.skipped] == [key]
        assert answer(archive, "SELECT count(*) FROM events") == [(0,)]


def test_a_filter_on_the_partition_reads_no_other_hour(store: CountingStore) -> None:
    """Past the footers read at opening, a query with `WHERE hour = 13` reads nothing of hour
    14's object (DuckDB reads the footer of the first object named, 13's, for the schema)."""
    first = compacted(store, 13, [event(at(13, i), messageId=f"a{i}") for i in range(10)])
    later = compacted(store, 14, [event(at(14, i), messageId=f"b{i}") for i in range(10)])
    with opened(store) as archive:
        store.read.clear()
        assert answer(archive, "SELECT count(*) FROM events WHERE hour = 13") == [(10,)]
        assert answer(
            archive, "SELECT count(*) FROM raw_events WHERE dt = DATE '2024-03-05' AND hour < 14"
        ) == [(10,)]
    assert first in store.read and later not in store.read


def test_ctrl_c_while_duckdb_reads_an_object_is_ctrl_c(
    store: CountingStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """DuckDB reports a KeyboardInterrupt raised in a read through ObjectFiles as an error
    holding its traceback: the query raises KeyboardInterrupt again, not a one-line error."""
    compacted(store, 13, [event(at(13), messageId="m")])
    with opened(store) as archive:

        def interrupted(*_: Any) -> bytes:
            raise KeyboardInterrupt

        monkeypatch.setattr(store, "get", interrupted)
        with pytest.raises(KeyboardInterrupt):
            answer(archive, "SELECT count(DISTINCT message_id) FROM events")


def test_duckdb_spills_into_a_private_directory_removed_at_close(
    store: CountingStore, tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What DuckDB spills (a large sort or group-by) is events: never in the working directory
    (DuckDB's default `.tmp`), only in a directory of the user's own, gone when the query is."""
    monkeypatch.chdir(tmp_path)
    compacted(store, 13, [event(at(13), messageId="m")])
    archive = opened(store)
    spill = Path(answer(archive, "SELECT current_setting('temp_directory')")[0][0])
    assert spill.is_dir() and spill.parent == Path(tempfile.gettempdir())
    assert spill.stat().st_mode & 0o777 == 0o700
    archive.close()
    assert not spill.exists()
    assert list(tmp_path.iterdir()) == []
