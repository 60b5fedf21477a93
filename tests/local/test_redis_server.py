"""The launcher of redis-server used by `make run`, the tests and the benchmark."""

from __future__ import annotations

import pytest
import redis

from local.redis_server import RedisServer
from tests.conftest import free_port


def test_a_port_held_by_another_redis_is_an_error_not_a_silent_reuse(redis_server, tmp_path):
    impostor = RedisServer(redis_server.port, tmp_path)
    with pytest.raises((RuntimeError, TimeoutError)):
        impostor.start(timeout_s=5)
    assert impostor.process.poll() is not None
    assert redis.Redis.from_url(redis_server.url).ping()


def test_restart_on_the_same_aof_keeps_what_was_written(tmp_path):
    server = RedisServer(free_port(), tmp_path).start()
    try:
        client = redis.Redis.from_url(server.url)
        client.xadd("s", {"k": "v"})
        server.stop()
        server.start()
        assert client.xlen("s") == 1
        config = client.config_get("*")
        assert config["appendonly"] == "yes" and config["appendfsync"] == "everysec"
        assert config["maxmemory-policy"] == "noeviction"
    finally:
        server.kill()
