"""The whole pipeline as it runs: gunicorn serving the ingest function, the loop runner driving
the consumer function as a subprocess, and moto's HTTP server as S3."""

from __future__ import annotations

import dataclasses
import io
import json
import signal
import subprocess
import sys
import urllib.request
import uuid

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from local import stack
from local.stack import stop_process
from shared import events
from shared.archive import columns
from tests.conftest import (
    archived_events,
    archived_keys,
    pending_count,
    settings_env,
    wait_until,
)


@pytest.fixture
def settings(settings, moto_endpoint):
    return dataclasses.replace(settings, s3_endpoint_url=moto_endpoint)


def post_json(url: str, body: dict) -> tuple[int, dict]:
    request = urllib.request.Request(
        url, json.dumps(body).encode(), {"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def sent_batch(size: int) -> list[dict]:
    kinds = [
        {"type": "track", "event": "Order Completed", "properties": {"total": 9.99, "n": [1, 2]}},
        {"type": "identify", "traits": {"email": "a@example.com", "name": "Zoë"}},
        {"type": "page", "name": "Home"},
        {"type": "group", "groupId": "g1", "traits": {"plan": "pro"}},
    ]
    return [
        {**kinds[i % len(kinds)], "userId": f"user-{i}", "messageId": str(uuid.uuid4())}
        for i in range(size)
    ]


def test_every_posted_event_is_archived_exactly_once_with_its_fields(
    settings, http_s3, gunicorn_url
):
    sent = {}
    for _ in range(40):
        batch = sent_batch(25)
        status, body = post_json(f"{gunicorn_url}/batch", {"batch": batch})
        assert (status, body) == (202, {"accepted": 25})
        sent.update({event["messageId"]: event for event in batch})
    single = {"type": "screen", "anonymousId": "anon", "name": "Settings"}
    status, _ = post_json(f"{gunicorn_url}/events", single)
    assert status == 202
    status, body = post_json(f"{gunicorn_url}/batch", {"batch": [{"type": "track"}]})
    assert status == 400 and body["problems"][0]["index"] == 0

    runner = stack.start_runner(settings_env(settings))
    try:
        wait_until(
            lambda: len(archived_events(http_s3, settings.s3_bucket)) >= len(sent) + 1,
            timeout_s=60,
            interval_s=0.5,
            what="all events in the archive",
        )
    finally:
        assert stop_process(runner) == 0

    archived = archived_events(http_s3, settings.s3_bucket)
    by_id = {}
    for event in archived:
        assert event["messageId"] not in by_id, "an event was archived twice"
        by_id[event["messageId"]] = event
    assert len(archived) == len(sent) + 1
    for message_id, original in sent.items():
        stored = by_id[message_id]
        assert {k: stored[k] for k in original} == original
        assert stored["receivedAt"].endswith("Z")
    assert any(e.get("anonymousId") == "anon" for e in archived)


def test_ctrl_c_flushes_what_the_runner_holds(settings, http_s3, gunicorn_url, redis_client):
    """SIGINT ends the invocation early; the runner flushes before it exits."""
    long_interval = dataclasses.replace(settings, flush_interval_s=600, claim_idle_ms=1_200_000)
    runner = stack.start_runner(settings_env(long_interval))
    try:
        batch = sent_batch(10)
        assert post_json(f"{gunicorn_url}/batch", {"batch": batch})[0] == 202
        wait_until(
            lambda: pending_count(redis_client, settings) == 1,
            what="the runner to read the batch",
        )
        assert archived_keys(http_s3, settings.s3_bucket) == []
        runner.send_signal(signal.SIGINT)
        assert runner.wait(timeout=30) == 0
    finally:
        stop_process(runner)
    assert len(archived_events(http_s3, settings.s3_bucket)) == 10


CRASH_BEFORE_ACK = """
import os, signal
from shared import stream
def die(self, ids):
    os.kill(os.getpid(), signal.SIGKILL)
stream.GroupReader.ack = die
from local import runner
runner.main()
"""


def test_sigkill_between_store_and_ack_loses_nothing_and_rewrites_same_keys(
    settings, http_s3, gunicorn_url, redis_client
):
    sent = set()
    for _ in range(20):
        batch = sent_batch(10)
        assert post_json(f"{gunicorn_url}/batch", {"batch": batch})[0] == 202
        sent.update(event["messageId"] for event in batch)

    env = settings_env(settings)
    crashing = subprocess.Popen([sys.executable, "-c", CRASH_BEFORE_ACK], env=env, cwd=stack.ROOT)
    assert crashing.wait(timeout=60) == -signal.SIGKILL
    keys_written = archived_keys(http_s3, settings.s3_bucket)
    assert keys_written, "the crashing consumer stored its objects before dying"
    assert pending_count(redis_client, settings) == 20

    runner = stack.start_runner(env)
    try:
        wait_until(
            lambda: pending_count(redis_client, settings) == 0,
            timeout_s=60,
            what="the dead consumer's entries to be claimed and acknowledged",
        )
    finally:
        assert stop_process(runner) == 0

    assert archived_keys(http_s3, settings.s3_bucket) == keys_written
    archived = [e["messageId"] for e in archived_events(http_s3, settings.s3_bucket)]
    assert sorted(archived) == sorted(sent)


def archived_rows(client, bucket: str) -> pa.Table | None:
    """Every row of every Parquet object in the bucket."""
    tables = [
        pq.read_table(io.BytesIO(client.get_object(Bucket=bucket, Key=key)["Body"].read()))
        for key in archived_keys(client, bucket)
        if key.endswith(".parquet")
    ]
    return pa.concat_tables(tables) if tables else None


def test_with_archive_format_parquet_every_posted_event_is_one_row(settings, http_s3, gunicorn_url):
    sent = {}
    for _ in range(10):
        batch = sent_batch(25)
        assert post_json(f"{gunicorn_url}/batch", {"batch": batch}) == (202, {"accepted": 25})
        sent.update({event["messageId"]: event for event in batch})

    runner = stack.start_runner(settings_env(settings, ARCHIVE_FORMAT="parquet"))
    try:
        wait_until(
            lambda: (
                (rows := archived_rows(http_s3, settings.s3_bucket)) is not None
                and rows.num_rows >= len(sent)
            ),
            timeout_s=60,
            interval_s=0.5,
            what="all events in the archive",
        )
    finally:
        assert stop_process(runner) == 0

    keys = archived_keys(http_s3, settings.s3_bucket)
    assert all(k.startswith(f"{settings.s3_prefix}parquet/dt=") for k in keys)
    assert all(k.endswith(".parquet") for k in keys)
    rows = archived_rows(http_s3, settings.s3_bucket)
    assert rows.schema.equals(columns.SCHEMA, check_metadata=False)
    assert sorted(rows.column("message_id").to_pylist()) == sorted(sent)
    for row in rows.to_pylist():
        # What ingest stored: the event as sent, stamped with receivedAt (and timestamp, which
        # these events lack), read back from the row itself, and enriched with the client's
        # address, loopback's, anonymized (docs/enrichment.md).
        received_at = events.format_timestamp(row["received_at"])
        event = sent[row["message_id"]]
        context = {**event.get("context", {}), "ip": "127.0.0.0"}
        stored = {**event, "receivedAt": received_at, "timestamp": received_at, "context": context}
        assert row == columns.to_rows([stored]).to_pylist()[0]
