"""`event-ingest query` decodes the objects it holds (NDJSON, and Parquet not yet compacted) for
the columns the SQL reads only (issue 28): DuckDB's own plan of the SQL over the archive's
views names them (`query.check` names them), and the answers are the same as with every column
decoded, Parquet written before the derived columns existed included."""

from __future__ import annotations

import io
from typing import Any

import pyarrow.parquet as pq
import pytest

from shared.archive import ObjectStore, columns, query
from shared.settings import Settings
from tests import archives
from tests.shared.archive.conftest import event

PREFIX = "events/"
KEYS = {"message_id", "source", "received_at"}  # the dedup rule's, always read
EVENTS = [
    event(
        "2024-03-05T13:00:00.000Z",
        messageId="a",
        properties={"plan": "pro", "n": 1.5},
        context={"location": {"country": "France"}, "parsedUserAgent": {"browser": "Chrome"}},
        sentAt="not a time",  # kept in `extra`
        channel="web",
    ),
    event("2024-03-05T13:01:00.000Z", messageId="a", properties={"plan": "copy"}),  # a copy
    event(
        "2024-03-05T13:02:00.000Z",
        messageId="b",
        userId=42,
        originalTimestamp="2024-03-05 13:01:59+01:00",  # a shape Python parses
        context={"bot": True},
    ),
    event("2024-03-05T14:00:00.000Z", messageId="c", event="other", traits={"x": None}),
    event("2024-03-05T14:01:00.000Z", event="no id"),
]
QUERIES = [
    "SELECT event, count(*) AS n FROM events GROUP BY event ORDER BY n DESC, event",
    "SELECT * FROM events ORDER BY message_id NULLS LAST, event",
    "SELECT e FROM events e ORDER BY e.message_id NULLS LAST",
    "SELECT count(*) FROM raw_events",
    "SELECT country, browser, is_bot, count(*) FROM events GROUP BY ALL ORDER BY ALL",
    "SELECT extra, sent_at, original_timestamp FROM raw_events ORDER BY received_at",
    "SELECT extra FROM raw_events ORDER BY received_at",  # time values Python takes out of it
    "SELECT count(extra) FROM events",
    "SELECT properties->>'plan' AS plan FROM events WHERE user_id IS NULL ORDER BY plan",
    "SELECT COLUMNS('.*_id') FROM events ORDER BY ALL",
    "WITH t AS (SELECT * FROM raw_events) SELECT count(DISTINCT traits) FROM t",
]


FORMATS = ["ndjson", "parquet", "parquet-before-derived-columns"]


@pytest.fixture(params=FORMATS)
def store(s3: Any, settings: Settings, request: pytest.FixtureRequest) -> ObjectStore:
    store = ObjectStore(s3, settings.s3_bucket)
    flush = [(b"1-0", EVENTS[:3]), (b"2-0", EVENTS[3:])]
    if request.param == "ndjson":
        archives.write_ndjson(store, PREFIX, flush)
        return store
    keys = archives.write_parquet(store, PREFIX, flush)
    if request.param == "parquet-before-derived-columns":  # as the release before wrote them
        for key in keys:
            rows = pq.read_table(io.BytesIO(store.get(key))).drop(list(columns.DERIVED_COLUMNS))
            sink = io.BytesIO()
            pq.write_table(rows, sink)
            store.put(key, sink.getvalue(), "application/vnd.apache.parquet")
    return store


def answer(store: ObjectStore, sql: str, columns_read: frozenset[str] | None) -> list[tuple]:
    with query.open_archive(store, PREFIX, columns_read=columns_read) as archive:
        return list(archive.run(sql).rows())


@pytest.mark.parametrize("sql", QUERIES, ids=range(len(QUERIES)))
def test_the_answer_is_the_same_with_only_the_columns_read_decoded(
    store: ObjectStore, sql: str
) -> None:
    assert answer(store, "SELECT count(*) FROM raw_events", None) == [(len(EVENTS),)]
    assert answer(store, sql, query.check(sql)) == answer(store, sql, None)


def test_a_query_of_the_quarantine_is_checked_like_any_other() -> None:
    """`quarantined` binds as the other views do (it was refused before anything was read)."""
    sql = "SELECT message_id, violations FROM quarantined"
    assert query.check(sql) == {"message_id", "context", *KEYS}  # violations: from `context`
    with pytest.raises(query.BadQuery, match="no_such_column"):
        query.check("SELECT no_such_column FROM quarantined")


def test_a_group_by_reads_its_column_and_the_dedup_keys_only() -> None:
    sql = "SELECT event, count(*) FROM events GROUP BY event"
    assert query.check(sql) == {"event", *KEYS}
    assert query.check("SELECT count(*) FROM raw_events") == KEYS


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT e FROM events e",
        "SELECT * FROM raw_events",
        "SELECT to_json(r) FROM raw_events r",
        "SELECT * FROM quarantined",
    ],
    ids=["row-as-struct", "star", "row-as-json", "quarantined"],
)
def test_a_query_reading_whole_rows_reads_every_column(sql: str) -> None:
    assert query.check(sql) == set(columns.SCHEMA.names)


@pytest.mark.parametrize(
    "sql",
    ["SELECT 1; SELECT 2", "CREATE TABLE x AS SELECT 1"],
    ids=["two-statements", "not-a-select"],
)
def test_what_the_plan_does_not_say_plainly_reads_everything(sql: str) -> None:
    assert query.check(sql) is None


def test_columns_not_read_are_not_decoded(store: ObjectStore) -> None:
    """The proof that the work is left out: a column the SQL does not read is NULL in the rows
    held (seen here through a second query, which a single `event-ingest query` never runs)."""
    needed = query.check("SELECT event FROM events")
    assert needed is not None and "properties" not in needed
    [(decoded,)] = answer(store, "SELECT count(properties) FROM raw_events", needed)
    assert decoded == 0
    [(decoded,)] = answer(store, "SELECT count(properties) FROM raw_events", None)
    assert decoded == 2  # the two copies of "a" have properties


@pytest.mark.parametrize(
    "scan",
    [
        {"Projections": "event", "Filters": "country='FR'"},  # a filter pushed into the scan
        {"Projections": ["#1", "#14"]},  # columns by number
        {"Projections": "event, properties"},  # not one name
        {"Function": "PYTHON_ARROW_SCAN"},  # no projections
    ],
    ids=["filter", "numbers", "joined", "none"],
)
def test_a_scan_that_does_not_name_its_columns_plainly_reads_everything(scan: dict) -> None:
    """A plan shape this code does not read plainly (another DuckDB release may write one)
    reads every column, never a guess."""
    plan = [{"name": "PROJECTION", "children": [{"name": "PYTHON_ARROW_SCAN", "extra_info": scan}]}]
    assert query._scanned_columns(plan) is None
    plain = {"name": "PYTHON_ARROW_SCAN", "extra_info": {"Projections": ["event", "_object"]}}
    assert query._scanned_columns([{"name": "PROJECTION", "children": [plain]}]) == {
        "event",
        "_object",
    }
    assert query._scanned_columns([{"name": "PROJECTION", "children": []}]) is None


def test_a_query_nested_past_what_the_plan_reader_goes_reads_everything() -> None:
    sql = "SELECT event FROM events"
    for _ in range(495):  # binds in DuckDB; its plan is nested past what json.loads reads
        sql = f"SELECT event FROM ({sql} LIMIT 5)"
    assert query.check(sql) is None
