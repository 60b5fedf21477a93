"""`event-ingest status`: through click's CliRunner, against a real redis-server, checked
against what XINFO and XPENDING say."""

from __future__ import annotations

import dataclasses
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import redis
from click.testing import CliRunner

from functions.cli import main
from shared import shards
from shared.archive import ObjectStore
from shared.settings import Settings
from shared.stream import EventStream, GroupReader, dead_letter_key
from tests import archives
from tests.conftest import free_port, settings_env
from tests.functions.cli.errors import assert_one_error_line
from tests.shared.status_inputs import add_aged


def status(settings: Settings, *args: str, **env: str):
    return CliRunner().invoke(main, ["status", *args], env=settings_env(settings, **env))


def two_groups_and_a_crashed_consumer(client: redis.Redis, key: str) -> None:
    """`archiver`: a consumer that died holding 4 entries, 6 never read; `warehouse`: all read,
    all acknowledged but 2. The oldest entry is two minutes old."""
    add_aged(client, key, 10, age_s=120)
    crashed = GroupReader(client, key, "archiver", "crashed-host-1")
    crashed.ensure_group()
    crashed.read_new(4, block_ms=None)
    warehouse = GroupReader(client, key, "warehouse", "loader")
    warehouse.ensure_group()
    read = warehouse.read_new(10, block_ms=None)
    warehouse.ack([entry_id for entry_id, _ in read[:8]])
    client.xadd(dead_letter_key(key), {b"reason": b"undecodable"})


def test_json_agrees_with_xinfo_and_xpending(settings: Settings, redis_client) -> None:
    key = settings.stream_key
    two_groups_and_a_crashed_consumer(redis_client, key)

    result = status(settings, "--json")

    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    assert document["key"] == key and document["dead_letters"] == 1
    assert document["length"] == redis_client.xlen(key)
    groups = {g["name"]: g for g in document["groups"]}
    for info in redis_client.xinfo_groups(key):
        name = info["name"].decode()
        assert groups[name]["pending"] == info["pending"]
        assert groups[name]["last_delivered_id"] == info["last-delivered-id"].decode()
        consumers = {c["name"].decode(): c for c in redis_client.xinfo_consumers(key, name)}
        assert {c["name"]: c["pending"] for c in groups[name]["consumers"]} == {
            consumer: info["pending"] for consumer, info in consumers.items()
        }
    archiver = groups["archiver"]
    held = redis_client.xpending_range(key, "archiver", "-", "+", 100, "crashed-host-1")
    assert archiver["pending"] == len(held) == 4
    assert archiver["undelivered"] >= 6  # exact on Redis 7 (lag); at most on 6.2
    assert 119 <= archiver["freshness_s"] < 130
    assert groups["warehouse"]["backlog_entries"] == 2
    assert document["freshness_s"] == archiver["freshness_s"]
    assert archiver["inactive"] is False  # its consumer read moments ago


def test_the_exit_status_follows_the_freshness_threshold(settings: Settings, redis_client) -> None:
    two_groups_and_a_crashed_consumer(redis_client, settings.stream_key)
    assert status(settings, "--json", "--max-freshness", "3600").exit_code == 0
    stale = status(settings, "--json", "--max-freshness", "60")
    assert stale.exit_code == 1
    assert json.loads(stale.stdout)["groups"]  # the status is printed all the same
    assert "exceeds --max-freshness 60s" in stale.stderr and "archiver" in stale.stderr


def test_a_table_for_people_and_the_inactive_group_flagged(
    settings: Settings, redis_client
) -> None:
    two_groups_and_a_crashed_consumer(redis_client, settings.stream_key)
    result = status(settings, "--inactive-after", "0")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0].startswith(f"stream {settings.stream_key}: ") and "1 dead letters" in lines[0]
    assert any(line.startswith("archiver ") and "2m0" in line for line in lines)
    assert any("crashed-host-1" in line and " 4 " in f"{line} " for line in lines)
    assert "group archiver has a backlog and no consumer has read" in result.stdout


def test_before_any_consumer_ran(settings: Settings) -> None:
    result = status(settings)
    assert result.exit_code == 0, result.output
    assert "no consumer group yet" in result.stdout


def test_an_unreachable_redis_is_one_line_without_its_password(settings: Settings) -> None:
    url = f"redis://:s3cret-token@127.0.0.1:{free_port()}/0"
    result = status(settings, REDIS_URL=url, REDIS_TIMEOUT_S="0.3")
    assert_one_error_line(result, "cannot use Redis at redis://***@127.0.0.1:")
    assert "s3cret-token" not in result.output


def test_bad_configuration_is_one_line(settings: Settings) -> None:
    assert_one_error_line(status(settings, STREAM_MAX_LEN="lots"), "STREAM_MAX_LEN")


def test_a_sharded_stream_shows_totals_then_each_shard(settings: Settings, redis_client) -> None:
    sharded = dataclasses.replace(settings, stream_shards=3)
    keys = shards.shard_keys(settings.stream_key, 3)
    for count, key in zip((1, 2, 3), keys, strict=True):
        add_aged(redis_client, key, count, age_s=60 * count)
        GroupReader(redis_client, key, "archiver", "c1").ensure_group()
    document = json.loads(status(sharded, "--json").stdout)
    assert document["length"] == 6 and document["max_len"] == 3 * settings.stream_max_len
    (group,) = document["groups"]
    assert group["backlog_entries"] == 6 and 179 <= group["freshness_s"] < 190  # the stalest
    assert [shard["key"] for shard in document["shards"]] == keys
    assert [shard["length"] for shard in document["shards"]] == [1, 2, 3]
    text = status(sharded).stdout
    assert "3 shards" in text and all(key in text for key in keys)
    # A stream of one key reads as it always did: no shards at all.
    assert "shards" not in json.loads(status(settings, "--json").stdout)


def test_the_bytes_held_are_shown_against_stream_max_bytes(settings: Settings, redis_client):
    producer = EventStream.from_settings(settings, redis_client)
    for size in (1000, 2000, 3000):
        producer.add({b"v": b"1", b"n": b"1", b"d": b"x" * size})
    held = 3 * (1 + 1 + 1 + 1 + 1) + 6000

    document = json.loads(status(settings, "--json", STREAM_MAX_BYTES="3145728").stdout)
    assert (document["bytes"], document["max_bytes"]) == (held, 3 * 1024 * 1024)

    first_line = status(settings, STREAM_MAX_BYTES="3145728").stdout.splitlines()[0]
    assert "3 entries" in first_line and "5.9 KiB (bound 3.0 MiB)" in first_line


def test_the_last_compaction_run_its_lag_failures_and_unreadable_objects(
    settings: Settings, s3: Any
) -> None:
    """`compact` over every hour, with an hour that fails and an object that cannot be read:
    status shows the lag, the failed hour and the object set aside, from Redis alone."""
    none_yet = status(settings, "--json")
    assert none_yet.exit_code == 0 and json.loads(none_yet.stdout)["compaction"] is None
    assert "compaction: no run over every closed hour reported in the last 6h00m" in (
        status(settings).stdout
    )
    archives.write_archive(ObjectStore(s3, settings.s3_bucket), settings.s3_prefix, "ndjson")
    work = f"{settings.s3_prefix}_compaction/work/dt=2024-03-05/hour=13/plan.json"
    s3.put_object(Bucket=settings.s3_bucket, Key=work, Body=b"{")  # a damaged record
    bad = f"{settings.s3_prefix}dt=2024-03-05/hour=15/1709650000009-9_x_0000.ndjson.gz"
    s3.put_object(Bucket=settings.s3_bucket, Key=bad, Body=b"not gzip")
    compacted = CliRunner().invoke(main, ["compact"], env=settings_env(settings))
    assert compacted.exit_code == 1, compacted.output

    result = status(settings, S3_BUCKET="no-such-bucket")  # it reads Redis alone

    assert result.exit_code == 0, result.output
    [line] = [line for line in result.stdout.splitlines() if line.startswith("compaction")]
    assert line.startswith("compaction (every closed hour), last run ")
    assert "oldest closed hour not compacted yet 2024-03-05T13, closed " in line
    assert "1 unreadable objects set aside under events/_unreadable/" in line
    assert "  2024-03-05T13 failed: JSONDecodeError: Expecting " in result.stdout
    document = json.loads(status(settings, "--json").stdout)["compaction"]
    assert document["oldest_hour"] == "2024-03-05T13"
    closed = datetime(2024, 3, 5, 14, tzinfo=UTC) + timedelta(seconds=settings.compact_grace_s)
    lag = (datetime.now(UTC) - closed).total_seconds()
    assert lag - 60 < document["lag_s"] <= lag
    assert [f["hour"] for f in document["failed"]] == ["2024-03-05T13"]
    assert document["unreadable_objects"] == 1 and document["hours_compacted"] == 4
    assert 0 <= document["age_s"] < 60
