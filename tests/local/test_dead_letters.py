"""Inspecting and re-driving dead letters, against a real redis-server."""

from __future__ import annotations

import pytest

from local import dead_letters
from shared import codec, stream
from tests.conftest import settings_env


@pytest.fixture
def env(settings, monkeypatch):
    for name, value in settings_env(settings).items():
        monkeypatch.setenv(name, value)


def dead_letter_one(settings, redis_client, fields) -> bytes:
    entry_id = redis_client.xadd(settings.stream_key, fields)
    reader = stream.GroupReader(redis_client, settings.stream_key, "archiver", "c")
    reader.ensure_group()
    reader.read_new(10, block_ms=1)
    reader.dead_letter(entry_id, fields, "delivered 11 times, never archived")
    return entry_id


def test_list_shows_each_dead_letter_and_its_reason(env, settings, redis_client, capsys):
    original = dead_letter_one(settings, redis_client, {b"v": b"99", b"d": b"x"})
    assert dead_letters.main(["list"]) == 0
    out = capsys.readouterr().out
    assert original.decode() in out and "never archived" in out


def test_redrive_puts_the_original_entry_back_and_removes_the_dead_letter(
    env, settings, redis_client
):
    fields = codec.encode_entry([{"type": "track", "userId": "u", "event": "E"}])
    original = dead_letter_one(settings, redis_client, fields)
    assert dead_letters.main(["redrive"]) == 0
    assert redis_client.xlen(stream.dead_letter_key(settings.stream_key)) == 0
    [(_, new_fields)] = redis_client.xrange(settings.stream_key, min=f"({original.decode()}")
    assert new_fields == fields


def test_redrive_of_an_unknown_id_fails_and_changes_nothing(env, settings, redis_client):
    dead_letter_one(settings, redis_client, {b"v": b"99"})
    before = redis_client.xlen(settings.stream_key)
    with pytest.raises(KeyError):
        dead_letters.main(["redrive", "1-1"])
    assert redis_client.xlen(settings.stream_key) == before
    assert redis_client.xlen(stream.dead_letter_key(settings.stream_key)) == 1
