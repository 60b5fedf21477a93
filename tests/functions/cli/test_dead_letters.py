"""`event-ingest dead-letters`: through click's CliRunner, against a real redis-server."""

from __future__ import annotations

import dataclasses
import json

from click.testing import CliRunner

from functions.cli import main
from shared import codec, shards, stream
from shared.settings import Settings
from tests.conftest import free_port, settings_env
from tests.functions.cli.errors import assert_one_error_line

TRACK = {"type": "track", "userId": "u", "event": "E", "receivedAt": "2026-11-30T10:00:00Z"}


def dead_letters(settings: Settings, *args: str, **env: str):
    return CliRunner().invoke(main, ["dead-letters", *args], env=settings_env(settings, **env))


def dead_letter_one(settings, redis_client, fields, max_len: int = 10_000) -> bytes:
    entry_id = redis_client.xadd(settings.stream_key, fields)
    reader = stream.GroupReader(
        redis_client, settings.stream_key, "archiver", "c", dead_letter_max_len=max_len
    )
    reader.ensure_group()
    reader.read_new(10, block_ms=1)
    reader.dead_letter(entry_id, fields, "delivered 11 times, never archived")
    return entry_id


def dead_ids(settings, redis_client) -> list[str]:
    key = stream.dead_letter_key(settings.stream_key)
    return [dead_id.decode() for dead_id, _ in redis_client.xrange(key)]


def test_list_shows_each_dead_letter_its_events_and_reason(settings, redis_client):
    original = dead_letter_one(settings, redis_client, codec.encode_entry([TRACK, TRACK]))
    table = dead_letters(settings, "list")
    assert table.exit_code == 0, table.output
    assert original.decode() in table.stdout and "never archived" in table.stdout
    assert "1 dead letters" in table.stdout
    [row] = json.loads(dead_letters(settings, "list", "--json").stdout)
    assert row["original_id"] == original.decode() and row["event_count"] == 2


def test_show_decodes_the_events_or_gives_the_raw_fields(settings, redis_client):
    dead_letter_one(settings, redis_client, codec.encode_entry([TRACK]))
    dead_letter_one(settings, redis_client, {b"v": b"99", b"d": b"\xc1garbage"})
    decodable, undecodable = dead_ids(settings, redis_client)
    shown = json.loads(dead_letters(settings, "show", decodable).stdout)
    assert [event["event"] for event in shown["events"]] == ["E"]
    raw = json.loads(dead_letters(settings, "show", undecodable).stdout)
    assert "events" not in raw and raw["undecodable"]
    assert raw["fields"]["v"] == "OTk="  # base64 of b"99"


def test_redrive_puts_the_original_entry_back_and_removes_the_dead_letter(settings, redis_client):
    fields = codec.encode_entry([TRACK])
    original = dead_letter_one(settings, redis_client, fields)
    [dead_id] = dead_ids(settings, redis_client)
    result = dead_letters(settings, "redrive", dead_id)
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith(f"{dead_id} -> ")
    assert dead_ids(settings, redis_client) == []
    [(_, new_fields)] = redis_client.xrange(settings.stream_key, min=f"({original.decode()}")
    assert new_fields == fields


def test_redrive_asks_for_ids_or_all(settings, redis_client):
    dead_letter_one(settings, redis_client, codec.encode_entry([TRACK]))
    assert dead_letters(settings, "redrive").exit_code == 2  # usage error: nothing done
    assert len(dead_ids(settings, redis_client)) == 1
    assert dead_letters(settings, "redrive", "--all").exit_code == 0
    assert dead_ids(settings, redis_client) == []


def test_redrive_of_an_unknown_id_fails_and_changes_nothing(settings, redis_client):
    dead_letter_one(settings, redis_client, {b"v": b"99"})
    before = redis_client.xlen(settings.stream_key)
    assert_one_error_line(dead_letters(settings, "redrive", "1-1"), "no dead letter 1-1")
    assert redis_client.xlen(settings.stream_key) == before


def test_redrive_into_a_full_stream_keeps_the_dead_letter(settings, redis_client):
    dead_letter_one(settings, redis_client, codec.encode_entry([TRACK]))
    redis_client.xadd(settings.stream_key, {b"filler": b"1"})
    result = dead_letters(settings, "redrive", "--all", STREAM_MAX_LEN="1")
    assert_one_error_line(result, "STREAM_MAX_LEN")
    assert len(dead_ids(settings, redis_client)) == 1


def test_the_dead_letter_stream_keeps_its_bound(settings, redis_client):
    for _ in range(5):
        dead_letter_one(settings, redis_client, {b"v": b"99"}, max_len=3)
    assert len(dead_ids(settings, redis_client)) == 3


def test_an_unreachable_redis_is_one_line(settings):
    url = f"redis://127.0.0.1:{free_port()}/0"
    result = dead_letters(settings, "list", REDIS_URL=url, REDIS_TIMEOUT_S="0.3")
    assert_one_error_line(result, "cannot use Redis at redis://127.0.0.1:")


def test_a_sharded_streams_dead_letters_name_their_shard(settings, redis_client):
    """One dead-letter stream per shard, whose IDs may be the same in two shards: listed
    with their shard, shown and re-driven by shard when an ID is ambiguous."""
    sharded = dataclasses.replace(settings, stream_shards=2)
    keys = shards.shard_keys(settings.stream_key, 2)
    letter = {b"original_id": b"1-1", b"reason": b"poison", b"field:n": b"1", b"field:v": b"1"}
    for key in keys:
        redis_client.xadd(stream.dead_letter_key(key), letter, id="1700000000000-0")
    rows = json.loads(dead_letters(sharded, "list", "--json").stdout)
    assert sorted(row["shard"] for row in rows) == keys
    ambiguous = dead_letters(sharded, "show", "1700000000000-0")
    assert ambiguous.exit_code == 1 and "--shard" in ambiguous.output
    shown = dead_letters(sharded, "show", "1700000000000-0", "--shard", keys[1])
    assert json.loads(shown.stdout)["shard"] == keys[1]
    redriven = dead_letters(sharded, "redrive", "--all")
    assert redriven.exit_code == 0, redriven.output
    assert not any(redis_client.xlen(stream.dead_letter_key(key)) for key in keys)
    assert sum(redis_client.xlen(key) for key in keys) == 2  # back on the shards
