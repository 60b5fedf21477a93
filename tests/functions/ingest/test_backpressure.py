"""Admission control instead of capping: a full backlog, a full Redis, or no Redis at all means
503 with Retry-After, and never a 202 for events that were not stored."""

from __future__ import annotations

import dataclasses
from concurrent.futures import ThreadPoolExecutor

import pytest
import redis

from functions.ingest.app import create_app
from local.redis_server import RedisServer
from shared import stream
from tests.conftest import free_port

BATCH = {"batch": [{"type": "track", "userId": "u", "event": "E"}]}


def test_a_full_backlog_is_refused_until_consumers_catch_up(settings, redis_client):
    settings = dataclasses.replace(settings, stream_max_len=3)
    client = create_app(settings).test_client()
    assert [client.post("/batch", json=BATCH).status_code for _ in range(3)] == [202] * 3

    refused = client.post("/batch", json=BATCH)
    assert refused.status_code == 503
    assert refused.headers["Retry-After"] == "5"
    assert refused.get_json()["error"] == "backlog_full"
    assert redis_client.xlen(settings.stream_key) == 3

    reader = stream.GroupReader(redis_client, settings.stream_key, "archiver", "c")
    reader.ensure_group()
    reader.ack([entry_id for entry_id, _ in reader.read_new(10, block_ms=1)])
    reader.trim_acknowledged()
    assert client.post("/batch", json=BATCH).status_code == 202


def test_the_bound_holds_under_concurrent_requests(settings, redis_client):
    settings = dataclasses.replace(settings, stream_max_len=25)
    app = create_app(settings)

    def post(_):
        return app.test_client().post("/batch", json=BATCH).status_code

    with ThreadPoolExecutor(8) as pool:
        statuses = list(pool.map(post, range(80)))
    assert statuses.count(202) == 25 and statuses.count(503) == 55
    assert redis_client.xlen(settings.stream_key) == 25


def test_unread_entries_are_never_trimmed_to_make_room(settings, redis_client):
    settings = dataclasses.replace(settings, stream_max_len=2)
    client = create_app(settings).test_client()
    for _ in range(4):
        client.post("/batch", json=BATCH)
    reader = stream.GroupReader(redis_client, settings.stream_key, "archiver", "c")
    reader.ensure_group()
    reader.trim_acknowledged()
    assert len(reader.read_new(10, block_ms=1)) == 2


@pytest.fixture
def tiny_redis(tmp_path):
    server = RedisServer(free_port(), tmp_path, "--maxmemory", "3mb").start()
    yield server
    server.kill()


def test_redis_out_of_memory_is_a_503_never_a_202(settings, tiny_redis):
    settings = dataclasses.replace(settings, redis_url=tiny_redis.url)
    client = create_app(settings).test_client()
    big_batch = {"batch": [{**BATCH["batch"][0], "pad": "x" * 20_000} for _ in range(10)]}
    statuses = [client.post("/batch", json=big_batch).status_code for _ in range(60)]
    assert 503 in statuses and set(statuses) <= {202, 503}
    first_refusal = statuses.index(503)
    assert statuses[first_refusal:] == [503] * (len(statuses) - first_refusal)
    refused = client.post("/batch", json=big_batch)
    assert refused.headers["Retry-After"] == "1"
    assert refused.get_json()["error"] == "unavailable"
    stored = redis.Redis.from_url(tiny_redis.url).xlen(settings.stream_key)
    assert stored == statuses.count(202)


def test_a_stopped_redis_is_a_503_and_a_restarted_one_is_used_again(settings, tmp_path):
    server = RedisServer(free_port(), tmp_path).start()
    try:
        client = create_app(dataclasses.replace(settings, redis_url=server.url)).test_client()
        assert client.post("/batch", json=BATCH).status_code == 202
        server.kill()
        down = client.post("/batch", json=BATCH)
        assert down.status_code == 503 and down.headers["Retry-After"] == "1"
        assert client.get("/healthz").status_code == 503
        server.start()
        assert client.post("/batch", json=BATCH).status_code == 202
    finally:
        server.kill()


def test_a_stale_pending_entry_does_not_hold_acknowledged_entries_in_the_backlog(
    settings, redis_client
):
    """One entry stuck on a crashed consumer; a live one acknowledges everything after it.
    The stream's length, which admission control counts, is the real backlog."""
    settings = dataclasses.replace(settings, stream_max_len=5)
    client = create_app(settings).test_client()
    crashed = stream.GroupReader(redis_client, settings.stream_key, "archiver", "crashed")
    crashed.ensure_group()
    assert client.post("/batch", json=BATCH).status_code == 202
    crashed.read_new(1, block_ms=1)  # and then it dies, holding one entry
    live = stream.GroupReader(redis_client, settings.stream_key, "archiver", "live")
    for _ in range(3):
        for _ in range(4):
            assert client.post("/batch", json=BATCH).status_code == 202
        live.ack([entry_id for entry_id, _ in live.read_new(10, block_ms=1)])
        live.trim_acknowledged()
    assert redis_client.xlen(settings.stream_key) == 1
    assert redis_client.xpending(settings.stream_key, "archiver")["pending"] == 1


def test_refusals_are_logged_once_per_interval_not_once_per_request(settings, caplog):
    settings = dataclasses.replace(settings, stream_max_len=1)
    client = create_app(settings).test_client()
    client.post("/batch", json=BATCH)
    caplog.clear()
    statuses = [client.post("/batch", json=BATCH).status_code for _ in range(50)]
    assert statuses == [503] * 50
    refusal_lines = [r for r in caplog.records if "refusing events" in r.getMessage()]
    assert len(refusal_lines) == 1


def test_events_not_on_enough_replicas_in_time_are_a_503_replication_timeout(
    settings, replicated_redis
):
    primary, _ = replicated_redis
    on_primary = dataclasses.replace(settings, redis_url=primary.url, redis_wait_timeout_ms=200)
    confirmed = create_app(dataclasses.replace(on_primary, redis_wait_replicas=1)).test_client()
    assert confirmed.post("/batch", json=BATCH).status_code == 202

    short = create_app(dataclasses.replace(on_primary, redis_wait_replicas=2)).test_client()
    refused = short.post("/batch", json=BATCH)
    assert refused.status_code == 503
    assert refused.headers["Retry-After"] == "1"
    assert refused.get_json()["error"] == "replication_timeout"
    segment = short.post("/v1/track", json={"userId": "u", "event": "E"})
    assert segment.status_code == 503
    assert segment.get_json()["code"] == "replication_timeout"
