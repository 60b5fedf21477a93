"""Redis away from ingest: one log line when the outage begins and one when it ends, with how
many requests were refused, never one per request. Against a redis-server the test stops."""

from __future__ import annotations

import dataclasses
import logging

import pytest

from functions.ingest.app import create_app
from local.redis_server import RedisServer
from tests.conftest import free_port

BATCH = {"batch": [{"type": "track", "userId": "u", "event": "E"}]}
REFUSED = 25


@pytest.fixture
def own_redis(tmp_path):
    server = RedisServer(free_port(), tmp_path / "redis").start()
    yield server
    server.kill()


def app_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "functions.ingest.app"]


def test_an_outage_is_logged_once_with_what_was_refused(settings, own_redis, caplog):
    settings = dataclasses.replace(settings, redis_url=own_redis.url, redis_timeout_s=0.5)
    client = create_app(settings).test_client()
    assert client.post("/batch", json=BATCH).status_code == 202
    caplog.set_level(logging.WARNING, logger="functions.ingest.app")
    caplog.clear()  # the app's warnings at start

    own_redis.kill()
    statuses = [client.post("/batch", json=BATCH).status_code for _ in range(REFUSED)]
    assert statuses == [503] * REFUSED
    [began] = app_lines(caplog)
    assert began.startswith("stream unavailable, answering 503: ")

    caplog.clear()
    own_redis.start()  # the same port and data: Redis is back
    assert [client.post("/batch", json=BATCH).status_code for _ in range(3)] == [202] * 3
    [ended] = app_lines(caplog)
    assert ended.startswith("stream available again after ")
    assert ended.endswith(f"of outage: {REFUSED} requests refused")

    caplog.clear()
    own_redis.kill()  # the next outage is told at once, not an interval later
    assert client.post("/batch", json=BATCH).status_code == 503
    assert [line.split(":")[0] for line in app_lines(caplog)] == [
        "stream unavailable, answering 503"
    ]
