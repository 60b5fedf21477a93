"""`event-ingest privacy run`: the pending deletions carried out from the command line, through
click's CliRunner, against in-process moto and a real redis-server; what it prints, its exit
status, progress on a terminal only, and one line when it fails."""

from __future__ import annotations

import gzip
import json
import time
from typing import Any

import pytest
import redis
from click.testing import CliRunner, Result

from functions.cli import main
from functions.cli.terminal import StatusLine
from shared import codec, stream
from shared.archive.storage import ObjectStore
from shared.settings import Settings
from tests.archives import ev, write_ndjson
from tests.conftest import free_port, settings_env
from tests.functions.cli.errors import assert_one_error_line

SUBJECT = "alice-7c1e5d@example.com"
SETTLED = {"SUPPRESSION_RELOAD_S": "0.01"}  # a deletion is carried out 0.02 s after it is accepted


def privacy(settings: Settings, *args: str, **env: str) -> Result:
    return CliRunner().invoke(main, ["privacy", *args], env=settings_env(settings, **env))


def accepted(settings: Settings) -> str:
    result = privacy(settings, "delete", SUBJECT)
    assert result.exit_code == 0, result.output
    time.sleep(0.05)  # SETTLED's two reload periods
    return result.stdout.strip()


@pytest.fixture
def archive(s3: Any, settings: Settings) -> ObjectStore:
    store = ObjectStore(s3, settings.s3_bucket)
    events = [ev("m1", "13:05", "Viewed", SUBJECT), ev("m2", "13:06", "Viewed", "bob")]
    write_ndjson(store, settings.s3_prefix, [(b"1709650000000-0", events)])
    return store


def archived(store: ObjectStore, settings: Settings) -> bytes:
    return b"".join(
        gzip.decompress(store.get(key)) for key in store.keys_under(f"{settings.s3_prefix}dt=")
    )


def test_run_carries_out_a_deletion_and_prints_what_it_did(
    archive: ObjectStore, settings: Settings
) -> None:
    regulation_id = accepted(settings)
    assert SUBJECT.encode() in archived(archive, settings)

    result = privacy(settings, "run", "--format", "json", **SETTLED)

    assert result.exit_code == 0, result.output
    assert result.stderr == ""  # no progress off a terminal
    done = json.loads(result.stdout)
    assert done["finished"] == [regulation_id] and done["waiting"] == []
    assert done["tally"]["events_deleted"] == 1 and done["tally"]["objects_rewritten"] == 1
    assert SUBJECT.encode() not in archived(archive, settings)
    assert b'"bob"' in archived(archive, settings)
    shown = privacy(settings, "show", regulation_id, "--format", "json")
    assert json.loads(shown.stdout)["state"] == "finished"
    again = privacy(settings, "run", "--format", "table", **SETTLED)
    assert again.exit_code == 0 and again.stdout == "no pending deletions\n"


def test_a_deletion_that_waits_is_not_a_failure(
    archive: ObjectStore, settings: Settings, redis_client: redis.Redis
) -> None:
    producer = stream.EventStream(redis_client, settings.stream_key, 100)
    producer.add(codec.encode_entry([ev("m3", "13:07", "Viewed", SUBJECT)]))  # not archived
    regulation_id = accepted(settings)

    result = privacy(settings, "run", "--format", "table", **SETTLED)

    assert result.exit_code == 0, result.output
    [header, row, counts, left] = result.stdout.splitlines()
    assert header.split() == ["regulation", "state", "waits", "for"]
    assert row.startswith(f"{regulation_id}  running") and "not archived yet" in row
    assert counts.startswith("objects scanned 1, rewritten 1, removed 0; events deleted 1")
    assert left.startswith("1 of 1 deletions not finished yet: not a failure")
    assert json.loads(privacy(settings, "show", regulation_id).stdout)["state"] == "running"


def test_a_deletion_too_recent_to_start_is_said(archive: ObjectStore, settings: Settings) -> None:
    regulation_id = accepted(settings)  # SUPPRESSION_RELOAD_S left at its default: 10 s

    result = privacy(settings, "run", "--format", "table")

    assert result.exit_code == 0, result.output
    assert f"{regulation_id}  pending  accepted less than 0:00:20 ago" in result.stdout
    assert SUBJECT.encode() in archived(archive, settings)


def test_progress_on_a_terminal(
    archive: ObjectStore, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    accepted(settings)
    monkeypatch.setattr(StatusLine, "__enter__", lambda self: self._draw)

    result = privacy(settings, "run", **SETTLED)

    assert result.exit_code == 0, result.output
    assert "finding the objects that hold the subjects' events" in result.stderr
    assert "rewriting 2024-03-05T13 (1/1)" in result.stderr
    assert result.stderr.endswith("\r\033[K")


def test_failures_are_one_line(archive: ObjectStore, s3: Any, settings: Settings) -> None:
    accepted(settings)
    result = privacy(settings, "run", REDIS_URL=f"redis://127.0.0.1:{free_port()}/0", **SETTLED)
    assert_one_error_line(result, "cannot use Redis at redis://127.0.0.1:", "the next run resumes")

    result = privacy(settings, "run", S3_BUCKET="no-such-bucket-here", **SETTLED)
    assert_one_error_line(result, "s3://no-such-bucket-here/events/", "the next run resumes")

    broken = (
        f"{settings.s3_prefix}dt=2024-03-05/hour=14/1709650000001-0_1709650000001-0_0.ndjson.gz"
    )
    archive.put(broken, b"not gzip")
    result = privacy(settings, "run", **SETTLED)
    assert_one_error_line(result, f"cannot read {broken}", "event-ingest compact")
    shown = json.loads(privacy(settings, "list", "--format", "json").stdout)
    assert [r["state"] for r in shown] == ["failed"]  # the next run resumes it
