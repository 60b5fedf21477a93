"""`event-ingest replay`: through click's CliRunner, against moto's in-process S3 and a real
redis-server."""

from __future__ import annotations

import json
from typing import Any

import pytest
from click.testing import CliRunner

from functions.cli import main
from shared import codec
from shared.archive import ObjectStore
from shared.settings import Settings
from tests import archives, unreadable
from tests.conftest import free_port, settings_env
from tests.functions.cli.errors import assert_one_error_line


def replay(settings: Settings, *args: str, **env: str):
    return CliRunner().invoke(main, ["replay", *args], env=settings_env(settings, **env))


@pytest.fixture
def archive(s3: Any, settings: Settings) -> None:
    archives.write_archive(ObjectStore(s3, settings.s3_bucket), settings.s3_prefix, "mixed")


@pytest.mark.usefixtures("archive")
def test_a_range_onto_a_second_stream_key(settings: Settings, redis_client) -> None:
    into = f"{settings.stream_key}-warehouse"
    result = replay(settings, "--from", "2024-03-05T14", "--to", "2024-03-05T15", "--into", into)
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)  # piped: JSON
    assert summary["into"] == into and summary["events_replayed"] == 6
    assert summary["hours_done"] == ["2024-03-05T14", "2024-03-05T15"]
    events = [e for _, f in redis_client.xrange(into) for e in codec.decode_entry(f)]
    ids = {e.get("messageId") for e in events}
    assert ids == {"m1", "m4", "m5", "m6", "m9", None}
    assert redis_client.xlen(settings.stream_key) == 0  # the main stream untouched


def test_an_unreadable_object_stops_the_replay_in_one_line_naming_it(
    s3: Any, settings: Settings, redis_client
) -> None:
    damaged = unreadable.write(ObjectStore(s3, settings.s3_bucket), settings.s3_prefix)

    result = replay(settings, "--from", unreadable.HOUR, "--to", unreadable.NEXT_HOUR)

    # Objects are read in key order: the truncated one is the first damaged one.
    assert_one_error_line(result, f"cannot read {damaged.truncated}: ", "truncated", "resumes")
    assert redis_client.xlen(settings.stream_key) == 0  # nothing of its hour went out


def test_a_range_backwards_is_one_line(settings: Settings) -> None:
    result = replay(settings, "--from", "2024-03-06", "--to", "2024-03-05")
    assert_one_error_line(result, "--from 2024-03-06 is after --to 2024-03-05")


def test_a_bad_bound_is_one_line(settings: Settings) -> None:
    assert_one_error_line(
        replay(settings, "--from", "yesterday", "--to", "2024-03-05"), "yesterday"
    )


@pytest.mark.usefixtures("archive")
def test_an_unreachable_redis_is_one_line(settings: Settings) -> None:
    url = f"redis://:tok3n@127.0.0.1:{free_port()}/0"
    result = replay(
        settings, "--from", "2024-03-05", "--to", "2024-03-05", REDIS_URL=url, REDIS_TIMEOUT_S="0.3"
    )
    assert_one_error_line(result, "cannot use Redis at redis://***@127.0.0.1:")
    assert "tok3n" not in result.output
