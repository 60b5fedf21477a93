"""SQL over the archive: exact counts whatever duplicates the objects hold, in both formats;
pruning by range; objects removed between listing and reading."""

from __future__ import annotations

import itertools
import re
from datetime import UTC, datetime
from typing import Any

import boto3
import pytest

from shared.archive import ObjectStore, query
from shared.archive.naming import ROOTS
from shared.archive.partitions import HourRange
from shared.settings import Settings
from tests import archives


def open_range(s3: Any, settings: Settings, start=None, end=None, **options) -> query.Archive:
    hours = query.hour_range(start, end)
    return query.open_archive(
        ObjectStore(s3, settings.s3_bucket), settings.s3_prefix, hours, **options
    )


def counts(archive: query.Archive, sql: str) -> dict[Any, int]:
    result = archive.run(sql)
    rows = list(result.rows())
    return {row[0] if len(row) == 2 else tuple(map(str, row[:-1])): row[-1] for row in rows}


def by_hour(rows: dict[Any, int]) -> dict[tuple[str, int], int]:
    return {(day, int(hour)): n for (day, hour), n in rows.items()}


@pytest.fixture
def store(s3: Any, settings: Settings) -> ObjectStore:
    return ObjectStore(s3, settings.s3_bucket)


@pytest.fixture(params=["ndjson", "parquet", "mixed"])
def archive(request, s3: Any, settings: Settings, store: ObjectStore) -> query.Archive:
    archives.write_archive(store, settings.s3_prefix, request.param)
    with open_range(s3, settings) as opened:
        yield opened


# --- exact counts ---------------------------------------------------------------------------


def test_each_message_id_once(archive: query.Archive) -> None:
    assert counts(archive, "SELECT 'all', count(*) FROM events") == {"all": archives.EVENTS}
    assert counts(archive, "SELECT 'all', count(*) FROM raw_events") == {"all": archives.RAW_ROWS}
    duplicated = archive.run(
        "SELECT message_id FROM events WHERE message_id IS NOT NULL "
        "GROUP BY message_id HAVING count(*) > 1"
    )
    assert list(duplicated.rows()) == []


def test_counts_by_event_hour_and_user(archive: query.Archive) -> None:
    assert counts(archive, "SELECT event, count(*) FROM events GROUP BY event") == archives.BY_EVENT
    assert (
        by_hour(counts(archive, "SELECT dt, hour, count(*) FROM events GROUP BY dt, hour"))
        == archives.BY_HOUR
    )
    assert (
        by_hour(counts(archive, "SELECT dt, hour, count(*) FROM raw_events GROUP BY ALL"))
        == archives.RAW_BY_HOUR
    )
    assert (
        counts(archive, "SELECT user_id, count(*) FROM events GROUP BY user_id") == archives.BY_USER
    )


def test_the_earliest_copy_wins_then_key_order_then_line_order(archive: query.Archive) -> None:
    kept = counts(
        archive,
        "SELECT message_id, CAST(properties->>'copy' AS INTEGER) FROM events "
        "WHERE message_id IN ('m1', 'm2', 'm4', 'm9')",
    )
    assert kept == archives.KEPT_COPY
    first_hours = counts(
        archive,
        "SELECT message_id, hour FROM events WHERE message_id IN ('m1', 'm4')",
    )
    assert first_hours == {"m1": 13, "m4": 14}


def test_an_empty_message_id_is_null_and_kept(archive: query.Archive) -> None:
    rows = list(archive.run("SELECT message_id, user_id FROM events WHERE user_id = 'u4'").rows())
    assert rows == [(None, "u4")]


def test_columns_and_types(archive: query.Archive) -> None:
    result = archive.run("SELECT * FROM events LIMIT 0")
    assert result.columns == [*archives.DOCUMENTED_COLUMNS, "dt", "hour"]
    types = dict(zip(result.columns, result.types, strict=True))
    assert types["received_at"] == "TIMESTAMP WITH TIME ZONE"
    assert types["properties"] == "JSON"
    assert types["extra"] == "JSON"
    assert types["dt"] == "DATE"
    assert types["hour"] == "TINYINT"
    raw = archive.run("SELECT * FROM raw_events LIMIT 0")
    assert raw.columns == [*result.columns, "object_key"]


def test_json_timestamps_and_extra_fields(archive: query.Archive) -> None:
    row = next(
        archive.run(
            "SELECT context->>'$.library.name', extra->>'channel', received_at, object_key "
            "FROM raw_events WHERE message_id = 'm3'"
        ).rows()
    )
    assert row[:3] == ("analytics-python", "server", datetime(2024, 3, 5, 13, 7, tzinfo=UTC))
    # NDJSON at the prefix's root, Parquet under parquet/ (naming.RAW_ROOTS).
    assert re.match(r"events/(parquet/)?dt=2024-03-05/hour=13/1709650000000-0_", row[3])


def test_the_formats_give_the_same_rows(s3: Any, settings: Settings) -> None:
    answers = []
    for fmt in ("ndjson", "parquet", "mixed"):
        tag = f"{settings.s3_prefix}{fmt}/"
        archives.write_archive(ObjectStore(s3, settings.s3_bucket), tag, fmt)
        hours = HourRange()
        with query.open_archive(ObjectStore(s3, settings.s3_bucket), tag, hours) as archive:
            rows = archive.run(
                "SELECT * FROM events ORDER BY received_at, message_id, properties::VARCHAR"
            ).rows()
            answers.append(list(rows))
    assert len(answers[0]) == archives.EVENTS
    assert answers[0] == answers[1] == answers[2]


def test_an_empty_archive(s3: Any, settings: Settings) -> None:
    with open_range(s3, settings) as archive:
        assert archive.objects == []
        assert list(archive.run("SELECT count(*) FROM events").rows()) == [(0,)]
        assert "received_at" in archive.run("SELECT * FROM raw_events").columns


def test_several_statements_answer_with_the_last(archive: query.Archive) -> None:
    result = archive.run(
        "CREATE TEMP TABLE signups AS SELECT * FROM events WHERE event = 'Signed Up'; "
        "SELECT count(*) FROM signups"
    )
    assert list(result.rows()) == [(4,)]


# --- ranges ---------------------------------------------------------------------------------


def test_a_range_downloads_and_lists_nothing_outside_it(
    s3: Any, settings: Settings, store: ObjectStore
) -> None:
    keys = archives.write_archive(store, settings.s3_prefix, "mixed")
    calls = archives.Calls(s3)
    with open_range(s3, settings, "2024-03-05T14", "2024-03-05T15") as archive:
        assert (
            counts(archive, "SELECT event, count(*) FROM events GROUP BY event")
            == archives.IN_RANGE_BY_EVENT
        )
        assert by_hour(counts(archive, "SELECT dt, hour, count(*) FROM events GROUP BY ALL")) == {
            ("2024-03-05", 14): 3,
            ("2024-03-05", 15): 3,
        }
    # Each root (NDJSON's, Parquet's, the compacted one) is pruned alike; the mixed archive has
    # objects in the first two.
    in_range = tuple(
        f"events/{root}dt=2024-03-05/hour={hour}/" for root in ROOTS for hour in ("14", "15")
    )
    assert sorted(calls.gets) == sorted(k for k in keys if k.startswith(in_range))
    assert len(calls.gets) == archives.IN_RANGE_OBJECTS
    expected_lists = []
    for root in ROOTS:
        expected_lists += [(f"events/{root}", "/")]
        if root != "compacted/":  # nothing there: no day to look into
            expected_lists += [
                (f"events/{root}dt=2024-03-05/", "/"),
                (f"events/{root}dt=2024-03-05/hour=14/", None),
                (f"events/{root}dt=2024-03-05/hour=15/", None),
            ]
    assert sorted(calls.lists) == sorted(expected_lists)


def test_a_range_of_whole_days(s3: Any, settings: Settings, store: ObjectStore) -> None:
    archives.write_archive(store, settings.s3_prefix, "ndjson")
    calls = archives.Calls(s3)
    with open_range(s3, settings, "2024-03-05", "2024-03-06") as archive:
        assert counts(archive, "SELECT 'all', count(*) FROM events") == {"all": 9}
    assert all(not key.startswith("events/dt=2024-03-04/") for key in calls.gets)
    assert ("events/dt=2024-03-04/", "/") not in calls.lists
    assert not any(prefix.startswith("events/dt=2024-03-04/") for prefix, _ in calls.lists)


def at(day: int, hour: int) -> datetime:
    return datetime(2024, 3, day, hour, tzinfo=UTC)


@pytest.mark.parametrize(
    ("start", "end", "hours"),
    [
        (None, None, HourRange(None, None)),
        ("2024-03-05", None, HourRange(at(5, 0), None)),
        (None, "2024-03-05", HourRange(None, at(5, 23))),
        ("2024-03-05T14:30", "2024-03-05 15", HourRange(at(5, 14), at(5, 15))),
        ("2024-03-05T14:59:59Z", "2024-03-05T14", HourRange(at(5, 14), at(5, 14))),
    ],
)
def test_hour_range(start, end, hours) -> None:
    assert query.hour_range(start, end) == hours


@pytest.mark.parametrize(
    ("start", "end", "message"),
    [
        ("2024-13-01", None, "is not a UTC date"),
        ("yesterday", None, "is not a UTC date"),
        ("2024-03-05T24", None, "is not a UTC date"),
        ("2024-03-05T14garbage", None, "is not a UTC date"),
        ("2024-03-06", "2024-03-05", "is after"),
    ],
)
def test_bad_ranges(start, end, message) -> None:
    with pytest.raises(query.BadRange, match=message):
        query.hour_range(start, end)


# --- objects removed while a query reads --------------------------------------------------

HOUR_13 = "events/dt=2024-03-05/hour=13/"


def compact_on_read(s3: Any, settings: Settings, nth: int) -> list[str]:
    """Before the `nth` GetObject of hour 13, do what a compaction does to it: store one
    merged, deduplicated Parquet object, then remove the objects it merged."""
    seen = itertools.count(1)
    done: list[str] = []
    other = boto3.client("s3", region_name="us-east-1")  # the compactor's own client

    def compact(params: dict[str, Any], **_: Any) -> None:
        if done or not params["Key"].startswith(HOUR_13) or next(seen) != nth:
            return
        sources = [
            item["Key"]
            for item in other.list_objects_v2(Bucket=settings.s3_bucket, Prefix=HOUR_13)["Contents"]
        ]
        merged, ids = [], set()
        for flush in archives.FLUSHES:
            for _, events in flush:
                for event in events:
                    if event["receivedAt"].startswith("2024-03-05T13") and (
                        event["messageId"] not in ids
                    ):
                        ids.add(event["messageId"])
                        merged.append(event)
        key = f"{HOUR_13}compacted-0000.parquet"
        other.put_object(Bucket=settings.s3_bucket, Key=key, Body=archives.parquet_bytes(merged))
        for source in sources:
            other.delete_object(Bucket=settings.s3_bucket, Key=source)
        done.append(key)

    s3.meta.events.register("before-parameter-build.s3.GetObject", compact)
    return done


@pytest.mark.parametrize("nth", [1, 2], ids=["before-any-read", "after-one-read"])
def test_an_object_compacted_away_while_reading(
    s3: Any, settings: Settings, store: ObjectStore, nth: int
) -> None:
    archives.write_archive(store, settings.s3_prefix, "ndjson")
    done = compact_on_read(s3, settings, nth)
    with open_range(s3, settings, workers=1) as archive:
        assert done, "the compaction did not run during the query"
        assert counts(archive, "SELECT 'all', count(*) FROM events") == {"all": archives.EVENTS}
        assert (
            counts(archive, "SELECT event, count(*) FROM events GROUP BY event")
            == archives.BY_EVENT
        )
        # The merged object replaced the four rows of hour 13, none counted twice.
        raw_13 = counts(
            archive, "SELECT object_key, count(*) FROM raw_events WHERE hour = 13 GROUP BY ALL"
        )
        assert raw_13 == {done[0]: 3}
        assert counts(archive, "SELECT 'all', count(*) FROM raw_events") == {
            "all": archives.RAW_ROWS - 1
        }
        assert done[0] in [item.key for item in archive.objects]


def test_a_partition_that_keeps_changing_gives_up(
    s3: Any, settings: Settings, store: ObjectStore
) -> None:
    archives.write_archive(store, settings.s3_prefix, "ndjson")
    other = boto3.client("s3", region_name="us-east-1")
    generation = itertools.count()

    def replace(params: dict[str, Any], **_: Any) -> None:
        key = params["Key"]
        if key.startswith(HOUR_13):
            body = other.get_object(Bucket=settings.s3_bucket, Key=key)["Body"].read()
            suffix = ".ndjson.gz"
            other.put_object(
                Bucket=settings.s3_bucket,
                Key=f"{HOUR_13}gen{next(generation):04d}{suffix}",
                Body=body,
            )
            other.delete_object(Bucket=settings.s3_bucket, Key=key)

    s3.meta.events.register("before-parameter-build.s3.GetObject", replace)
    with pytest.raises(query.ArchiveChanging, match="dt=2024-03-05/hour=13"):
        open_range(s3, settings, workers=1)


# --- errors ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("sql", "message"),
    [
        ("SELEC 1", "Parser Error"),
        ("SELECT nope FROM events", "Binder Error"),
        ("SELECT * FROM evnets", "Catalog Error"),
        ("", "no SQL statement"),
    ],
)
def test_check_refuses_bad_sql_before_reading(sql: str, message: str) -> None:
    with pytest.raises(query.BadQuery, match=message) as caught:
        query.check(sql)
    assert "\n" not in str(caught.value)


def test_check_accepts_good_sql() -> None:
    query.check("SELECT event, count(*) FROM events GROUP BY event")
    query.check("SELECT object_key FROM raw_events; SELECT 1")
    query.check("CREATE TEMP TABLE t AS SELECT 1 AS x; SELECT x FROM t")


def test_an_error_at_run_time_is_one_line(archive: query.Archive) -> None:
    with pytest.raises(query.BadQuery, match="Conversion Error") as caught:
        list(archive.run("SELECT CAST(event AS INTEGER) FROM events").rows())
    assert "\n" not in str(caught.value)


def test_a_missing_bucket(s3: Any, settings: Settings) -> None:
    with pytest.raises(query.ArchiveUnreachable, match="NoSuchBucket"):
        query.open_archive(ObjectStore(s3, "no-such-bucket"), "events/")
