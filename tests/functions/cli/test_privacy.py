"""`event-ingest privacy`: through click's CliRunner, against in-process moto (the regulations
in the bucket) and a real redis-server (the view in force), read back through the store and
`shared.regulations`."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import redis
from click.testing import CliRunner

from functions.cli import main
from shared import regulations
from shared.archive.privacy.store import RegulationStore
from shared.archive.storage import ObjectStore
from shared.regulations import Regulation
from shared.settings import Settings
from tests.conftest import archived_keys, free_port, settings_env
from tests.functions.cli.errors import assert_one_error_line

# IDs distinctive enough that finding one in an output cannot be a coincidence.
ALICE, BOB = "alice-7c1e5d@example.com", "bob-93fa02@example.com"


def privacy(settings: Settings, *args: str, stdin: str | None = None, **env: str):
    return CliRunner().invoke(
        main, ["privacy", *args], input=stdin, env=settings_env(settings, **env)
    )


@pytest.fixture
def store(s3: Any, settings: Settings) -> RegulationStore:
    return RegulationStore(ObjectStore(s3, settings.s3_bucket), settings.s3_prefix)


def accepted(store: RegulationStore, settings: Settings, *args: str, **kw: Any) -> Regulation:
    result = privacy(settings, *args, **kw)
    assert result.exit_code == 0, result.output
    [regulation_id] = result.stdout.split()  # the ID alone, for scripts
    return store.get(regulation_id)


def view(redis_client: redis.Redis, settings: Settings) -> regulations.PrivacyView:
    return regulations.parse_view(redis_client.hgetall(regulations.view_key(settings.stream_key)))


def nothing_written(s3: Any, settings: Settings, redis_client: redis.Redis) -> bool:
    key = regulations.view_key(settings.stream_key)
    return archived_keys(s3, settings.s3_bucket) == [] and not redis_client.exists(key)


# --- accepting ------------------------------------------------------------------------------


def test_delete_is_kept_in_the_bucket_and_in_force_at_once(
    settings: Settings, store: RegulationStore, redis_client: redis.Redis
) -> None:
    regulation = accepted(store, settings, "delete", ALICE, BOB)
    assert (regulation.type, regulation.subject_type) == ("DELETE_ONLY", "USER_ID")
    assert regulation.subject_ids == [ALICE, BOB] and regulation.linked
    assert regulation.state == regulations.PENDING
    in_force = view(redis_client, settings)
    assert in_force.drops({"userId": ALICE}) and in_force.drops({"userId": BOB})
    assert not in_force.suppresses({"userId": ALICE})  # a deletion alone suppresses nothing


@pytest.mark.parametrize(
    ("args", "kind", "subject_type"),
    [
        (["suppress"], "SUPPRESS_ONLY", "USER_ID"),
        (["suppress", "--delete"], "SUPPRESS_WITH_DELETE", "USER_ID"),
        (["suppress", "--anonymous-id"], "SUPPRESS_ONLY", "ANONYMOUS_ID"),
        (["delete", "--anonymous-id"], "DELETE_ONLY", "ANONYMOUS_ID"),
    ],
)
def test_each_kind_of_regulation(
    settings: Settings,
    store: RegulationStore,
    redis_client: redis.Redis,
    args: list[str],
    kind: str,
    subject_type: str,
) -> None:
    regulation = accepted(store, settings, *args, ALICE)
    assert (regulation.type, regulation.subject_type) == (kind, subject_type)
    field = regulations.SUBJECT_FIELDS[subject_type]
    other = "userId" if field == "anonymousId" else "anonymousId"
    in_force = view(redis_client, settings)
    assert in_force.drops({field: ALICE}) and not in_force.drops({other: ALICE})


def test_unsuppress_ends_a_suppression(
    settings: Settings, store: RegulationStore, redis_client: redis.Redis
) -> None:
    accepted(store, settings, "suppress", ALICE, BOB)
    regulation = accepted(store, settings, "unsuppress", BOB)
    assert regulation.type == "UNSUPPRESS" and regulation.state == regulations.FINISHED
    in_force = view(redis_client, settings)
    assert in_force.suppresses({"userId": ALICE}) and not in_force.suppresses({"userId": BOB})


def test_ids_from_a_file_and_stdin_beside_the_arguments(
    tmp_path: Path, settings: Settings, store: RegulationStore
) -> None:
    listed = tmp_path / "ids.txt"
    listed.write_text(f"\n{BOB}\n   \n u-3 \r\n\n")
    from_file = accepted(store, settings, "delete", ALICE, "--from-file", str(listed))
    assert from_file.subject_ids == [ALICE, BOB, "u-3"]
    from_stdin = accepted(store, settings, "delete", "--from-file", "-", stdin=f"{ALICE}\n\n")
    assert from_stdin.subject_ids == [ALICE]


def test_no_linked_limits_a_deletion_to_the_ids_given(
    settings: Settings, store: RegulationStore
) -> None:
    assert not accepted(store, settings, "delete", "--no-linked", ALICE).linked
    both = accepted(store, settings, "suppress", "--delete", "--no-linked", ALICE)
    assert both.type == "SUPPRESS_WITH_DELETE" and not both.linked


def test_json_prints_the_regulation_without_its_ids(
    settings: Settings, store: RegulationStore
) -> None:
    result = privacy(settings, "delete", "--format", "json", ALICE, BOB)
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    stored = store.get(document["id"])
    assert document["subject_count"] == 2
    assert document["subject_hashes"] == stored.subject_hashes
    assert ALICE not in result.output and BOB not in result.output


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["delete"], "give one or more IDs"),
        (["suppress", "--no-linked", "u1"], "--no-linked applies to deletions"),
        (["delete", ""], "subjectIds[0] is not a non-empty string"),
        (["delete", "--from-file", "-"], "give one or more IDs"),
    ],
)
def test_bad_input_is_one_line_and_writes_nothing(
    s3: Any, settings: Settings, redis_client: redis.Redis, args: list[str], fragment: str
) -> None:
    assert_one_error_line(privacy(settings, *args, stdin="\n\n"), fragment)
    assert nothing_written(s3, settings, redis_client)


def test_more_than_5000_ids_are_refused(
    tmp_path: Path, s3: Any, settings: Settings, redis_client: redis.Redis
) -> None:
    listed = tmp_path / "ids.txt"
    listed.write_text("".join(f"u{n}\n" for n in range(regulations.MAX_SUBJECTS + 1)))
    result = privacy(settings, "suppress", "--from-file", str(listed))
    assert_one_error_line(result, "at most 5000")
    assert nothing_written(s3, settings, redis_client)


def test_an_unreachable_redis_is_one_line_and_writes_nothing(
    s3: Any, settings: Settings, redis_client: redis.Redis
) -> None:
    result = privacy(settings, "suppress", ALICE, REDIS_URL=f"redis://127.0.0.1:{free_port()}/0")
    assert_one_error_line(result, "cannot use Redis at redis://127.0.0.1:", "suppressions")
    assert nothing_written(s3, settings, redis_client)


@pytest.mark.parametrize("args", [["delete", ALICE], ["list"], ["show", "20240101T000000-0a"]])
def test_an_unreachable_bucket_is_one_line(s3: Any, settings: Settings, args: list[str]) -> None:
    result = privacy(settings, *args, S3_BUCKET="no-such-bucket-here")
    assert_one_error_line(result, "s3://no-such-bucket-here/events/")


# --- reading --------------------------------------------------------------------------------


def test_list_and_show_never_print_the_ids(settings: Settings, store: RegulationStore) -> None:
    deletion = accepted(store, settings, "delete", ALICE, BOB)
    suppression = accepted(store, settings, "suppress", "--anonymous-id", ALICE)

    listed = privacy(settings, "list", "--format", "json")
    assert listed.exit_code == 0, listed.output
    rows = json.loads(listed.stdout)
    assert [(r["id"], r["subject_count"]) for r in rows] == [(deletion.id, 2), (suppression.id, 1)]
    table = privacy(settings, "list", "--format", "table")
    lines = table.stdout.splitlines()
    assert lines[0].split()[:4] == ["id", "type", "subject", "type"]
    assert deletion.id in lines[1] and "DELETE_ONLY" in lines[1] and "pending" in lines[1]
    assert suppression.id in lines[2] and "ANONYMOUS_ID" in lines[2] and "finished" in lines[2]

    shown = privacy(settings, "show", deletion.id, "--format", "json")
    document = json.loads(shown.stdout)
    assert document["subject_hashes"] == deletion.subject_hashes
    assert document["accepted_at"] == deletion.accepted_at and document["linked"] is True
    described = privacy(settings, "show", deletion.id, "--format", "table")
    assert f"id: {deletion.id}" in described.stdout and "subject_count: 2" in described.stdout
    assert all(hashed in described.stdout for hashed in deletion.subject_hashes)

    for result in (listed, table, shown, described):
        assert result.exit_code == 0, result.output
        assert ALICE not in result.output and BOB not in result.output


def test_list_is_oldest_first_within_one_second(
    settings: Settings, store: RegulationStore, redis_client: redis.Redis
) -> None:
    """IDs sort by the second: of two accepted in one, the later may sort first by name."""
    second = datetime(2024, 1, 1, tzinfo=UTC)
    made = []
    for kind, ms in (("SUPPRESS_ONLY", 100), ("UNSUPPRESS", 600)):
        made.append(regulations.new_regulation(store.key(), kind, "USER_ID", [ALICE], now=second))
        made[-1].accepted_at = f"2024-01-01T00:00:00.{ms}+00:00"
    made[0].id, made[1].id = "20240101T000000-ffffffff", "20240101T000000-00000000"
    for regulation in made:
        store.save(regulation)
    result = privacy(settings, "list", "--format", "json")
    assert [r["type"] for r in json.loads(result.stdout)] == ["SUPPRESS_ONLY", "UNSUPPRESS"]
    store.publish(redis_client, settings.stream_key)
    assert not view(redis_client, settings).suppresses({"userId": ALICE})


def test_list_says_when_there_is_none(s3: Any, settings: Settings) -> None:
    result = privacy(settings, "list", "--format", "table")
    assert result.exit_code == 0 and result.stdout == "no regulations\n"


@pytest.mark.parametrize("regulation_id", ["20240101T000000-00000000", "../key", "x" * 100])
def test_show_of_an_unknown_id_is_one_line(s3: Any, settings: Settings, regulation_id: str) -> None:
    result = privacy(settings, "show", regulation_id)
    assert_one_error_line(result, "no regulation")
