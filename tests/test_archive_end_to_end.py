"""The archive read back, after events went through the whole stack: gunicorn, the stream, the
loop runner (in each archive format), moto's HTTP server. Some events are sent twice in two
requests (a client's retry), so two objects hold them; `event-ingest query` counts each once,
before and after `event-ingest compact`, and after compaction the raw rows are exact too."""

from __future__ import annotations

import dataclasses
import json
import shutil
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from pathlib import Path

import pytest
from click.testing import CliRunner

from functions.cli import main
from local import stack
from local.stack import stop_process
from shared.archive import ObjectStore
from shared.archive.compaction import Compactor
from shared.archive.naming import COMPACTED_ROOT
from shared.stream import connect
from tests.conftest import archived_keys, settings_env, wait_until

EVENTS = ["Signed Up", "Order Completed", "Page Viewed"]


@pytest.fixture
def settings(settings, moto_endpoint):
    return dataclasses.replace(settings, s3_endpoint_url=moto_endpoint)


def batch(first: int, count: int) -> list[dict]:
    return [
        {
            "type": "track",
            "event": EVENTS[i % len(EVENTS)],
            "userId": f"u{i % 4}",
            "messageId": f"m-{i:04d}",
        }
        for i in range(first, first + count)
    ]


def post(url: str, events: list[dict]) -> None:
    body = json.dumps({"batch": events}).encode()
    request = urllib.request.Request(f"{url}/batch", body, {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as answer:
        assert answer.status == 202


def query(settings, sql: str, console_script: bool = False) -> list[dict]:
    """`event-ingest query --format json`: with `console_script`, the installed script in a
    process of its own; else the same click command in this process (CliRunner, the settings
    as its environment), which saves a Python start and the query's imports, about 1 s of
    each query's 1.4 s. The raw counts go through the script, the other answers in-process."""
    args = ["query", "--format", "json", sql]
    if not console_script:
        result = CliRunner().invoke(main, args, env=settings_env(settings))
        assert result.exit_code == 0, (result.output, result.exception)
        return json.loads(result.stdout)
    script = shutil.which("event-ingest", path=str(Path(sys.executable).parent))
    assert script, "the event-ingest console script is not installed"
    done = subprocess.run(
        [script, *args],
        env=settings_env(settings),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def counts(settings, sql: str) -> dict:
    return {tuple(row.values())[:-1]: tuple(row.values())[-1] for row in query(settings, sql)}


@pytest.mark.parametrize("archive_format", ["ndjson", "parquet"])
def test_queries_count_each_event_once_before_and_after_compaction(
    settings, http_s3, gunicorn_url, redis_client, archive_format
):
    env = settings_env(settings, ARCHIVE_FORMAT=archive_format)
    runner = stack.start_runner(env)
    try:
        post(gunicorn_url, batch(0, 90))
        wait_until(lambda: archived_keys(http_s3, settings.s3_bucket), what="a first object")
        # A retry of 30 events already archived, beside 30 new ones: a second object.
        post(gunicorn_url, batch(60, 60))
        wait_until(
            lambda: len(archived_keys(http_s3, settings.s3_bucket, settings.s3_prefix)) >= 2,
            what="a second object",
        )
    finally:
        assert stop_process(runner) == 0
    suffix = ".parquet" if archive_format == "parquet" else ".ndjson.gz"
    assert all(k.endswith(suffix) for k in archived_keys(http_s3, settings.s3_bucket, "events/"))

    expected_by_event = Counter(EVENTS[i % 3] for i in range(120))
    expected_by_user = Counter(f"u{i % 4}" for i in range(120))
    by_event = "SELECT event, count(*) AS n FROM events GROUP BY event"
    by_user = "SELECT user_id, count(*) AS n FROM events GROUP BY user_id"
    by_hour = "SELECT dt, hour, count(*) AS n FROM events GROUP BY ALL"
    raw = "SELECT count(*) AS n FROM raw_events"

    def answers() -> tuple:
        return (
            counts(settings, by_event),
            counts(settings, by_user),
            sum(counts(settings, by_hour).values()),
        )

    before = answers()
    assert before == (
        {(e,): n for e, n in expected_by_event.items()},
        {(u,): n for u, n in expected_by_user.items()},
        120,
    )
    assert query(settings, raw, console_script=True) == [{"n": 150}]

    # Compaction, an hour later (the hour the events landed in is then closed).
    store = ObjectStore.from_settings(settings)
    compactor = Compactor(settings, store, connect(settings), clock=lambda: time.time() + 7200)
    summary = compactor.run()
    assert [hour.error for hour in summary.hours] == [None] * len(summary.hours)
    assert answers() == before
    assert query(settings, raw, console_script=True) == [{"n": 120}]  # now exact too
    keys = archived_keys(http_s3, settings.s3_bucket, settings.s3_prefix)
    archived = [k for k in keys if "/dt=" in k]
    assert archived and all(k.startswith(settings.s3_prefix + COMPACTED_ROOT) for k in archived)
    assert not redis_client.keys(f"{settings.stream_key}:compaction-lock:*")
