"""`event-ingest query`: through click's CliRunner against in-process moto, and as the
installed console script against moto's HTTP server."""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import subprocess
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from functions.cli import main
from shared.archive import ObjectStore
from shared.settings import Settings
from tests import archives, unreadable
from tests.archives import ev
from tests.conftest import archived_keys, free_port, settings_env
from tests.functions.cli import errors
from tests.functions.cli.terminal import console_script, on_terminal

SECRET = "wJalrXUtnFEMI-query-test-secret"


def invoke(settings: Settings, *args: str, **env: str):
    environment = settings_env(settings, AWS_SECRET_ACCESS_KEY=SECRET, **env)
    return CliRunner().invoke(main, ["query", *args], env=environment, catch_exceptions=False)


def csv_rows(text: str) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(text)))


def assert_one_error_line(result, *fragments: str) -> None:
    errors.assert_one_error_line(result, *fragments)
    assert SECRET not in result.output
    assert result.stdout == ""  # a query fails before it writes any of its answer


@pytest.fixture
def archive(s3: Any, settings: Settings) -> None:
    archives.write_archive(ObjectStore(s3, settings.s3_bucket), settings.s3_prefix, "mixed")


# --- answers --------------------------------------------------------------------------------


@pytest.mark.usefixtures("archive")
def test_counts_by_event_as_csv_when_piped(settings: Settings) -> None:
    result = invoke(settings, "SELECT event, count(*) AS n FROM events GROUP BY event")
    assert result.exit_code == 0, result.output
    assert {row["event"]: int(row["n"]) for row in csv_rows(result.stdout)} == archives.BY_EVENT
    assert result.stderr == ""  # no progress when stderr is not a terminal


@pytest.mark.usefixtures("archive")
def test_counts_by_hour_and_user(settings: Settings) -> None:
    result = invoke(settings, "SELECT dt, hour, count(*) AS n FROM events GROUP BY ALL")
    assert {(r["dt"], int(r["hour"])): int(r["n"]) for r in csv_rows(result.stdout)} == (
        archives.BY_HOUR
    )
    result = invoke(settings, "SELECT user_id, count(*) AS n FROM events GROUP BY ALL")
    assert {r["user_id"]: int(r["n"]) for r in csv_rows(result.stdout)} == archives.BY_USER
    result = invoke(settings, "SELECT count(*) AS n FROM raw_events")
    assert csv_rows(result.stdout) == [{"n": str(archives.RAW_ROWS)}]


@pytest.mark.usefixtures("archive")
def test_from_and_to(settings: Settings) -> None:
    result = invoke(
        settings,
        "--from",
        "2024-03-05T14",
        "--to",
        "2024-03-05T15",
        "SELECT event, count(*) AS n FROM events GROUP BY event",
    )
    assert result.exit_code == 0, result.output
    assert {r["event"]: int(r["n"]) for r in csv_rows(result.stdout)} == (
        archives.IN_RANGE_BY_EVENT
    )


@pytest.mark.usefixtures("archive")
def test_json_output(settings: Settings) -> None:
    result = invoke(
        settings,
        "--format",
        "json",
        "SELECT message_id, received_at, properties, dt, hour FROM events "
        "WHERE message_id IN ('m1', 'm9') ORDER BY message_id",
    )
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == [
        {
            "message_id": "m1",
            "received_at": "2024-03-05T13:05:00Z",
            "properties": {"plan": "pro", "copy": 1},
            "dt": "2024-03-05",
            "hour": 13,
        },
        {
            "message_id": "m9",
            "received_at": "2024-03-05T15:30:00Z",
            "properties": {"plan": "pro", "copy": 1},
            "dt": "2024-03-05",
            "hour": 15,
        },
    ]


@pytest.mark.usefixtures("archive")
def test_json_output_of_no_rows(settings: Settings) -> None:
    result = invoke(settings, "--format", "json", "SELECT * FROM events WHERE false")
    assert json.loads(result.stdout) == []


@pytest.mark.usefixtures("archive")
def test_csv_values(settings: Settings) -> None:
    result = invoke(
        settings,
        "SELECT message_id, received_at, properties, extra, true AS yes FROM events "
        "WHERE message_id = 'm3' OR user_id = 'u4' ORDER BY received_at",
    )
    assert csv_rows(result.stdout) == [
        {
            "message_id": "m3",
            "received_at": "2024-03-05T13:07:00Z",
            "properties": '{"plan":"pro"}',
            "extra": '{"channel":"server"}',
            "yes": "true",
        },
        {
            "message_id": "",
            "received_at": "2024-03-05T15:01:00Z",
            "properties": '{"plan":"pro"}',
            "extra": "",
            "yes": "true",
        },
    ]


@pytest.mark.usefixtures("archive")
def test_table_output(settings: Settings) -> None:
    result = invoke(
        settings, "--format", "table", "SELECT event, count(*) AS n FROM events GROUP BY event"
    )
    assert result.exit_code == 0, result.output
    for text in ("event", "n", "Signed Up", "Order Completed", "Page Viewed"):
        assert text in result.stdout
    assert result.stderr == ""


@pytest.mark.usefixtures("archive")
def test_a_statement_without_rows_prints_nothing(settings: Settings) -> None:
    result = invoke(settings, "CREATE TEMP TABLE t AS SELECT * FROM events")
    assert result.exit_code == 0, result.output


# --- errors ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("sql", "fragment"),
    [
        ("SELEC event FROM events", "Parser Error"),
        ("SELECT nope FROM events", "Binder Error"),
        ("SELECT * FROM evnets", "Catalog Error"),
    ],
)
def test_bad_sql_is_one_line_before_any_download(
    settings: Settings, sql: str, fragment: str
) -> None:
    # An endpoint nobody listens on: the SQL is refused before the bucket is asked anything.
    unreachable = f"http://127.0.0.1:{free_port()}"
    assert_one_error_line(invoke(settings, sql, S3_ENDPOINT_URL=unreachable), fragment)


@pytest.mark.usefixtures("archive")
def test_an_error_at_run_time_is_one_line(settings: Settings) -> None:
    result = invoke(settings, "SELECT CAST(event AS INTEGER) FROM events")
    assert_one_error_line(result, "Conversion Error")


@pytest.mark.parametrize(
    ("bounds", "fragment"),
    [
        (["--from", "2024-02-30"], "is not a UTC date"),
        (["--to", "last tuesday"], "is not a UTC date"),
        (["--from", "2024-03-06", "--to", "2024-03-05"], "is after"),
    ],
)
def test_bad_bounds(settings: Settings, bounds: list[str], fragment: str) -> None:
    assert_one_error_line(invoke(settings, *bounds, "SELECT 1"), fragment)


def test_an_unreachable_endpoint(settings: Settings) -> None:
    port = free_port()
    result = invoke(
        settings,
        "SELECT count(*) FROM events",
        S3_ENDPOINT_URL=f"http://user:{SECRET}@127.0.0.1:{port}",
    )
    assert_one_error_line(result, "cannot reach", settings.s3_bucket, f"127.0.0.1:{port}")


def test_a_missing_bucket(s3: Any, settings: Settings) -> None:
    result = invoke(settings, "SELECT 1", S3_BUCKET="no-such-bucket")
    assert_one_error_line(result, "no-such-bucket", "NoSuchBucket")


def test_a_bad_setting(settings: Settings) -> None:
    result = invoke(settings, "SELECT 1", S3_ENDPOINT_URL="ftp://example.com")
    assert_one_error_line(result, "S3_ENDPOINT_URL")


@pytest.mark.parametrize(
    ("damage", "fragment"),
    [
        ("truncated", "the gzip data is truncated"),
        ("invalid_line", "1 line is not a JSON object (line 3: "),
        ("bad_parquet", "not a Parquet file"),
    ],
)
def test_an_unreadable_object_is_one_line_naming_it(
    s3: Any, settings: Settings, damage: str, fragment: str
) -> None:
    damaged = unreadable.write(ObjectStore(s3, settings.s3_bucket), settings.s3_prefix)
    key = getattr(damaged, damage)
    for other in set(damaged.bad) - {key}:
        s3.delete_object(Bucket=settings.s3_bucket, Key=other)

    result = invoke(settings, "SELECT count(*) AS n FROM raw_events")

    assert_one_error_line(result, f"cannot read {key}: ", fragment, "--skip-unreadable")


def test_skip_unreadable_leaves_them_out_and_says_how_many(s3: Any, settings: Settings) -> None:
    damaged = unreadable.write(ObjectStore(s3, settings.s3_bucket), settings.s3_prefix)

    result = invoke(settings, "--skip-unreadable", "SELECT count(*) AS n FROM raw_events")

    assert result.exit_code == 0, result.output
    # The good objects' events: 5 and 1 (Parquet) in hour 13, 5 in hour 14.
    assert csv_rows(result.stdout) == [{"n": "11"}]
    assert result.stderr.splitlines() == [
        f"skipped 3 objects that cannot be read: {damaged.truncated} (the gzip data is "
        "truncated (it ends before its end marker); 1 line is not a JSON object (line 7: "
        "Input data was truncated)) and 2 more"
    ]


def test_a_bad_format_is_a_usage_error(settings: Settings) -> None:
    result = invoke(settings, "--format", "xml", "SELECT 1")
    assert result.exit_code == 2
    assert "Traceback" not in result.output


def test_help_says_the_defaults() -> None:
    result = CliRunner().invoke(main, ["query", "--help"])
    assert result.exit_code == 0
    text = " ".join(result.stdout.split())
    for fragment in ("raw_events", "csv when piped", "--from", "window"):
        assert fragment in text


# --- the console script, against moto's HTTP server ------------------------------------------


def test_the_console_script_over_http(
    settings: Settings, moto_endpoint: str, http_s3: Any, tmp_path: Path
) -> None:
    archives.write_archive(ObjectStore(http_s3, settings.s3_bucket), settings.s3_prefix, "mixed")
    http_settings = dataclasses.replace(settings, s3_endpoint_url=moto_endpoint)
    # A fresh HOME: DuckDB would install extensions under ~/.duckdb; nothing may appear there.
    env = settings_env(http_settings, HOME=str(tmp_path), AWS_SECRET_ACCESS_KEY=SECRET)
    process = subprocess.run(
        [console_script(), "query", "SELECT event, count(*) AS n FROM events GROUP BY event"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert process.returncode == 0, process.stderr
    assert {r["event"]: int(r["n"]) for r in csv_rows(process.stdout)} == archives.BY_EVENT
    assert process.stderr == ""
    assert not (tmp_path / ".duckdb").exists()


def test_the_console_script_fails_in_one_line(settings: Settings, tmp_path: Path) -> None:
    env = settings_env(
        settings, S3_ENDPOINT_URL=f"http://127.0.0.1:{free_port()}", AWS_SECRET_ACCESS_KEY=SECRET
    )
    process = subprocess.run(
        [console_script(), "query", "SELECT count(*) FROM events"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert process.returncode == 1
    assert process.stdout == ""
    assert process.stderr.count("\n") == 1
    assert process.stderr.startswith("Error: cannot reach bucket")
    assert SECRET not in process.stderr


def test_on_a_terminal_a_table_and_progress(
    settings: Settings, moto_endpoint: str, http_s3: Any
) -> None:
    store = ObjectStore(http_s3, settings.s3_bucket)
    objects = len(archives.write_archive(store, settings.s3_prefix, "mixed"))
    env = settings_env(dataclasses.replace(settings, s3_endpoint_url=moto_endpoint))
    text, status = on_terminal(
        [console_script(), "query", "SELECT event, count(*) AS n FROM events GROUP BY 1"], env
    )
    assert status == 0
    assert f"reading objects: {objects}/{objects}" in text
    assert "┌" in text and "Signed Up" in text and "varchar" in text.lower()


# --- the columns derived from `context` (issue 26) ----------------------------------------------

LIBRARY = {"library": {"name": "analytics.js", "version": "2.1.0"}}
LONG_COUNTRY = "Z" * 10_000
# Archived before the enrichment existed: no location, no parsed user agent, no bot flag.
OLDER = [
    ev("o1", "13:01", "Signed Up", "u1"),
    ev("o2", "13:02", "Page Viewed", "u2"),
    ev("o3", "14:01", "Page Viewed", "u3"),
]
ENRICHED = [
    archives.enriched(ev("n1", "13:10", "Signed Up", "u4"), "France", "FR"),
    archives.enriched(ev("n2", "14:10", "Page Viewed", "u5"), "France", "FR", bot=True),
    archives.enriched(ev("n3", "14:11", "Page Viewed", "u6"), "Japan", "JP"),
    archives.enriched(ev("n4", "14:12", "Page Viewed", "u7"), None),  # an address not found
]
# What clients sent as their own `context.location`: stored as sent, never a failed read.
ODD = [
    ev("x1", "14:20", "Page Viewed", "u8", context={**LIBRARY, "location": 42}),
    ev(
        "x2",
        "14:21",
        "Page Viewed",
        "u8",
        context={**LIBRARY, "location": {"country": {"name": "France"}, "city": 7}, "bot": "yes"},
    ),
    ev(
        "x3",
        "14:22",
        "Page Viewed",
        "u8",
        context={**LIBRARY, "location": {"country": LONG_COUNTRY}},
    ),
]
BY_COUNTRY = {"France": 2, "Japan": 1, LONG_COUNTRY: 1, "": 6}  # CSV writes NULL as ""
BY_BOT = {"true": 1, "false": 9}  # the older events' false: never flagged


def write_enriched_archive(s3: Any, settings: Settings, kind: str) -> None:
    """`OLDER` as the release before the derived columns wrote them, then `ENRICHED` and `ODD`
    as this one writes them: NDJSON, Parquet, or both compacted (hour 13 once by the older
    release, then again with a late object by this one)."""
    store = ObjectStore(s3, settings.s3_bucket)
    prefix = settings.s3_prefix
    write = archives.write_ndjson if kind == "ndjson" else archives.write_parquet
    entry = iter(range(1, 100))

    def flush(events: list[dict[str, Any]], writer=write) -> None:
        writer(store, prefix, [(f"1709650000000-{next(entry)}".encode(), events)])

    with archives.release_before_derived_columns():
        flush(OLDER[:1])
        flush(OLDER[1:], archives.write_ndjson if kind == "compacted" else write)
        if kind == "compacted":
            archives.compactor(settings, s3, COMPACTED_AT).run()
    if kind == "compacted":
        old = [key for key in archived_keys(s3, settings.s3_bucket) if "hour=13" in key]
        assert len(old) == 1 and set(parquet_columns(store, old[0])) == set(
            archives.BEFORE_DERIVED_COLUMNS
        )
    flush(ENRICHED[:2])
    flush(ENRICHED[2:], archives.write_ndjson if kind == "compacted" else write)
    flush(ODD)
    if kind == "compacted":
        archives.compactor(settings, s3, COMPACTED_AT).run()
        keys = archived_keys(s3, settings.s3_bucket)
        assert all("/compacted/" in key for key in keys), keys
        for key in keys:  # hour 13 merged its older compacted object with a new one
            assert parquet_columns(store, key) == archives.DOCUMENTED_COLUMNS


COMPACTED_AT = datetime(2024, 3, 7, tzinfo=UTC)


def parquet_columns(store: ObjectStore, key: str) -> list[str]:
    return pq.read_schema(io.BytesIO(store.get(key))).names


@pytest.mark.parametrize("kind", ["ndjson", "parquet", "compacted"])
def test_events_by_country_and_bots_need_no_json_path(
    s3: Any, settings: Settings, kind: str
) -> None:
    write_enriched_archive(s3, settings, kind)

    result = invoke(settings, "SELECT country, count(*) AS n FROM events GROUP BY 1")
    assert result.exit_code == 0, result.output
    assert {r["country"]: int(r["n"]) for r in csv_rows(result.stdout)} == BY_COUNTRY
    result = invoke(settings, "SELECT is_bot, count(*) AS n FROM events GROUP BY 1")
    assert {r["is_bot"]: int(r["n"]) for r in csv_rows(result.stdout)} == BY_BOT
    result = invoke(
        settings,
        "--format",
        "json",
        "SELECT message_id, country, country_code, region, city, browser, os, device, is_bot "
        "FROM raw_events WHERE message_id IN ('o1', 'n2', 'x2') ORDER BY 1",
    )
    assert json.loads(result.stdout) == [
        {
            "message_id": "n2",
            "country": "France",
            "country_code": "FR",
            "region": "France region",
            "city": "France city",
            "browser": "Chrome",
            "os": "Mac OS X",
            "device": "Mac",
            "is_bot": True,
        },
        {"message_id": "o1", **dict.fromkeys(ENRICHED_TEXT), "is_bot": False},
        # A client's own location: a number's text, an object's NULL; "yes" is not a bot flag.
        {"message_id": "x2", **dict.fromkeys(ENRICHED_TEXT), "city": "7", "is_bot": False},
    ]


ENRICHED_TEXT = ["country", "country_code", "region", "city", "browser", "os", "device"]
