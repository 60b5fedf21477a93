"""`event-ingest compact`: through click's CliRunner, against in-process moto and a real
redis-server (the locks), with the archive of `tests.archives` written by the real writers."""

from __future__ import annotations

import csv
import importlib
import io
import json
import re
from datetime import UTC, datetime
from typing import Any

import pytest
from click.testing import CliRunner

from functions.cli import main
from functions.cli.terminal import StatusLine
from shared.archive import ObjectStore, partitions
from shared.archive.compaction import Compactor, steps
from shared.archive.naming import unreadable_key
from shared.settings import Settings
from tests import archives
from tests.conftest import archived_keys, free_port, settings_env
from tests.functions.cli.errors import assert_one_error_line

# The module (the package's `compact` is the click command).
compact_command = importlib.import_module("functions.cli.compact")
HOURS = ["2024-03-04T23", "2024-03-05T13", "2024-03-05T14", "2024-03-05T15", "2024-03-06T00"]


def invoke(settings: Settings, *args: str, **env: str):
    return CliRunner().invoke(main, list(args), env=settings_env(settings, **env))


def compact(settings: Settings, *args: str, **env: str):
    return invoke(settings, "compact", *args, **env)


@pytest.fixture
def archive(s3: Any, settings: Settings) -> list[str]:
    return archives.write_archive(ObjectStore(s3, settings.s3_bucket), settings.s3_prefix, "mixed")


def query(settings: Settings, sql: str) -> list[dict[str, str]]:
    result = invoke(settings, "query", "--format", "csv", sql)
    assert result.exit_code == 0, result.output
    return list(csv.DictReader(io.StringIO(result.stdout)))


ANSWERS = {
    "SELECT event, count(*) AS n FROM events GROUP BY ALL ORDER BY ALL": "by event",
    "SELECT dt, hour, count(*) AS n FROM events GROUP BY ALL ORDER BY ALL": "by hour",
    "SELECT user_id, count(*) AS n FROM events GROUP BY ALL ORDER BY ALL": "by user",
    "SELECT message_id, received_at, properties FROM events ORDER BY ALL": "rows",
}


@pytest.mark.usefixtures("archive")
def test_queries_answer_the_same_after_compaction(s3: Any, settings: Settings) -> None:
    before = {sql: query(settings, sql) for sql in ANSWERS}

    result = compact(settings)

    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)  # piped: JSON
    assert summary["hours_compacted"] == len(HOURS)
    assert summary["duplicates_dropped"] == archives.RAW_ROWS - archives.EVENTS
    assert [h["hour"] for h in summary["hours"]] == HOURS
    assert result.stderr == ""  # no progress when stderr is not a terminal
    assert {sql: query(settings, sql) for sql in ANSWERS} == before
    # The archive now stores each event once: the raw view needs no deduplication.
    assert query(settings, "SELECT count(*) AS n FROM raw_events") == [{"n": str(archives.EVENTS)}]
    assert all("/compacted-" in key for key in archived_keys(s3, settings.s3_bucket))


@pytest.mark.usefixtures("archive")
def test_a_table_then_nothing_to_do(settings: Settings) -> None:
    result = compact(settings, "--format", "table")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0].split() == [
        "hour",
        "state",
        "events_read",
        "events_written",
        "objects_written",
        "objects_removed",
    ]
    assert [line.split()[:2] for line in lines[1:-1]] == [[h, "compacted"] for h in HOURS]
    assert lines[-1].startswith("5 hours compacted, 5 duplicate copies dropped")

    again = compact(settings, "--format", "table")
    assert again.exit_code == 0, again.output
    assert again.stdout == "nothing to compact\n"


@pytest.mark.usefixtures("archive")
def test_dry_run_lists_the_hours_and_changes_nothing(s3: Any, settings: Settings) -> None:
    keys = archived_keys(s3, settings.s3_bucket)

    result = compact(settings, "--dry-run", "--from", "2024-03-05", "--to", "2024-03-05T14")

    assert result.exit_code == 0, result.output
    states = json.loads(result.stdout)
    assert [(s["hour"], s["raw_objects"], s["compacted_objects"]) for s in states] == [
        ("2024-03-05T13", 2, 0),
        ("2024-03-05T14", 3, 0),
    ]
    assert archived_keys(s3, settings.s3_bucket) == keys
    table = compact(settings, "--dry-run", "--hour", "2024-03-06T00", "--format", "table")
    assert table.stdout.splitlines()[1].split()[:3] == ["2024-03-06T00", "1", "0"]
    assert table.stdout.splitlines()[-1] == "1 hours to compact"


@pytest.mark.usefixtures("archive")
def test_named_hours_only(s3: Any, settings: Settings) -> None:
    result = compact(settings, "--hour", "2024-03-05T13", "--hour", "2024-03-05 14")
    assert result.exit_code == 0, result.output
    assert [h["hour"] for h in json.loads(result.stdout)["hours"]] == [
        "2024-03-05T13",
        "2024-03-05T14",
    ]
    compacted = [key for key in archived_keys(s3, settings.s3_bucket) if "/compacted-" in key]
    assert len(compacted) == 2


@pytest.mark.usefixtures("archive")
def test_progress_on_a_terminal(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(StatusLine, "__enter__", lambda self: self._draw)
    result = compact(settings, "--hour", "2024-03-05T13")
    assert result.exit_code == 0, result.output
    assert "compacting 2024-03-05T13 (1/1): merge 1/1" in result.stderr
    assert "compacting 2024-03-05T13 (1/1): commit" in result.stderr
    assert result.stderr.endswith("\r\033[K")


@pytest.mark.usefixtures("archive")
@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["--hour", "2024-03-05"], "is not an hour (YYYY-MM-DDTHH)"),
        (["--hour", "2024-03-05T1x"], "'2024-03-05T1x' is not"),
        (["--hour", datetime.now(UTC).strftime("%Y-%m-%dT%H")], "is not closed yet"),
        (["--from", "2024-03-06", "--to", "2024-03-05"], "--from 2024-03-06 is after --to"),
        (["--hour", "2024-03-05T13", "--from", "2024-03-05"], "not both"),
    ],
)
def test_bad_options_are_one_line(settings: Settings, args: list[str], fragment: str) -> None:
    assert_one_error_line(compact(settings, *args), fragment)


def test_an_unreachable_bucket_is_one_line(s3: Any, settings: Settings) -> None:
    result = compact(settings, S3_BUCKET="no-such-bucket-here")
    assert_one_error_line(result, "cannot read the archive at s3://no-such-bucket-here/events/")


@pytest.mark.usefixtures("archive")
def test_an_unreachable_redis_is_one_line(settings: Settings) -> None:
    result = compact(settings, REDIS_URL=f"redis://127.0.0.1:{free_port()}/0")
    assert_one_error_line(result, "cannot use Redis at redis://127.0.0.1:", "compaction locks")


@pytest.mark.usefixtures("archive")
def test_a_busy_hour_named_is_an_error(s3: Any, settings: Settings, redis_client) -> None:
    store = ObjectStore(s3, settings.s3_bucket)
    held = Compactor(settings, store, redis_client).locks.acquire(
        datetime(2024, 3, 5, 13, tzinfo=UTC)
    )
    result = compact(settings, "--hour", "2024-03-05T13")
    assert_one_error_line(result, "2024-03-05T13 (until ", "Z, unless renewed): being compacted")
    until = json.loads(result.stdout)["hours"][0]["busy_until"]
    lease_ends = datetime.fromisoformat(until) - datetime.now(UTC)
    assert 0 < lease_ends.total_seconds() <= settings.compact_lease_s + 1
    assert f"(until {until.replace('+00:00', 'Z')}, unless renewed)" in result.stderr
    held.release()
    assert compact(settings, "--hour", "2024-03-05T13").exit_code == 0


@pytest.mark.usefixtures("archive")
def test_a_run_says_which_hours_it_skipped_as_busy_and_until_when(
    s3: Any, settings: Settings, redis_client
) -> None:
    store = ObjectStore(s3, settings.s3_bucket)
    held = Compactor(settings, store, redis_client).locks.acquire(
        datetime(2024, 3, 5, 14, tzinfo=UTC)
    )
    try:
        result = compact(settings, "--format", "table")
    finally:
        held.release()
    assert result.exit_code == 0, result.output  # busy is no failure: the other run does it
    [line] = [line for line in result.stdout.splitlines() if line.startswith("skipped")]
    assert re.fullmatch(
        r"skipped as busy \(another run holds them\): 2024-03-05T14 "
        r"\(until \d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ, unless renewed\)",
        line,
    )
    assert "oldest closed hour not compacted yet: 2024-03-05T14 (closed " in result.stdout


def damage_plan(s3: Any, settings: Settings, hour: str, body: bytes) -> None:
    """A work record of an hour, damaged: whatever the error it causes, the hour fails."""
    key = f"{settings.s3_prefix}_compaction/work/dt={hour[:10]}/hour={hour[11:]}/plan.json"
    s3.put_object(Bucket=settings.s3_bucket, Key=key, Body=body)


@pytest.mark.usefixtures("archive")
def test_each_failed_hour_is_named_with_its_reason_and_the_others_done(
    s3: Any, settings: Settings
) -> None:
    damage_plan(s3, settings, "2024-03-05T14", b"{")
    damage_plan(s3, settings, "2024-03-05T15", b'{"hour": "2024-03-05T15"}')

    result = compact(settings)

    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output and "Aborted!" not in result.output
    lines = result.stderr.splitlines()
    assert lines[0] == "Error: 2 of 5 hours failed (the next run resumes them):"
    assert lines[1].startswith("  2024-03-05T14: JSONDecodeError: Expecting ")
    assert lines[2].startswith("  2024-03-05T15: TypeError: Plan.__init__() missing ")
    assert len(lines) == 3
    states = {h["hour"]: h["state"] for h in json.loads(result.stdout)["hours"]}
    failed = {"2024-03-05T14": "failed", "2024-03-05T15": "failed"}
    assert states == {**dict.fromkeys(HOURS, "compacted"), **failed}


@pytest.mark.usefixtures("archive")
def test_an_eof_error_is_its_hours_failure_not_aborted(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """click takes an EOFError that reaches it for an interrupted prompt (`Aborted!`)."""
    planned = steps.HourRun.plan

    def truncated(run: steps.HourRun) -> Any:
        if partitions.hour_label(run.hour) == "2024-03-05T13":
            raise EOFError("Compressed file ended before the end-of-stream marker was reached")
        return planned(run)

    monkeypatch.setattr(steps.HourRun, "plan", truncated)

    result = compact(settings)

    assert_one_error_line(
        result, "1 of 5 hours failed", "2024-03-05T13: EOFError: Compressed file ended"
    )
    assert "Aborted!" not in result.output


@pytest.mark.usefixtures("archive")
def test_a_corrupt_object_fails_its_hour_only(s3: Any, settings: Settings) -> None:
    """Its hour is compacted without it (it is set aside), and the run is a failure naming
    the hour and the object, so that someone looks at it."""
    key = f"{settings.s3_prefix}dt=2024-03-05/hour=14/1709650000009-9_x_0000.ndjson.gz"
    s3.put_object(Bucket=settings.s3_bucket, Key=key, Body=b"not gzip")

    result = compact(settings)

    assert_one_error_line(result, "1 of 5 hours failed: 2024-03-05T14: unreadable objects", key)
    assert "the next run resumes" not in result.stderr  # nothing is left to resume
    states = {h["hour"]: h["state"] for h in json.loads(result.stdout)["hours"]}
    assert states == dict.fromkeys(HOURS, "compacted")
    assert json.loads(result.stdout)["unreadable_objects"] == 1
    assert key not in archived_keys(s3, settings.s3_bucket)
    assert unreadable_key(settings.s3_prefix, key) in archived_keys(s3, settings.s3_bucket)
