"""Compaction meeting objects that cannot be decoded (`tests.unreadable`): it merges every line
that decodes, sets each such object aside under `<S3_PREFIX>_unreadable/<key>` with its reason
beside it, loses none of its bytes wherever it is killed, and blocks no other hour. Against
moto's in-process S3 and a real redis-server (the locks)."""

from __future__ import annotations

import hashlib
import itertools
import json
from datetime import UTC, datetime
from typing import Any

import pytest

from shared.archive import ObjectStore, reading
from shared.archive.compaction import Compactor
from shared.archive.naming import ROOTS, compacted_part
from shared.archive.partitions import HourRange
from shared.settings import Settings
from tests import archives, unreadable
from tests.archives import Client, Crash, ev
from tests.unreadable import HOUR, NEXT_HOUR, PARTITION

NOW = datetime(2024, 3, 7, tzinfo=UTC)
HOUR_PATH = f"compacted/{PARTITION}"
# "parts": inputs small enough to cut the hour in parts, so that they are read by split steps.
SCENARIOS = {"one part": {}, "parts": {"object_bytes": 600, "step_bytes": 900}}


def unreadable_key(prefix: str, key: str) -> str:
    """Where an unreadable object is set aside (its reason beside it, `.reason.json`)."""
    return f"{prefix}_unreadable/{key}"


def make(settings: Settings, client: Any, **options: Any) -> Compactor:
    return archives.compactor(settings, client, NOW, **options)


def objects(s3: Any, settings: Settings) -> dict[str, bytes]:
    return archives.objects(s3, settings.s3_bucket)


def ids_by_hour(s3: Any, settings: Settings) -> dict[str, set[str]]:
    """The message IDs every reader finds in the archive, by hour (each object read whole)."""
    found: dict[str, set[str]] = {}
    for root in ROOTS:
        prefix = settings.s3_prefix + root
        for item in reading.list_objects(ObjectStore(s3, settings.s3_bucket), prefix, HourRange()):
            hour = f"{item.dt.isoformat()}T{item.hour:02d}"
            rows = reading.read_object(ObjectStore(s3, settings.s3_bucket), item)
            found.setdefault(hour, set()).update(rows["message_id"].to_pylist())
    return found


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_what_decodes_is_compacted_and_each_unreadable_object_set_aside(
    s3: Any, settings: Settings, scenario: str
) -> None:
    prefix = settings.s3_prefix
    damaged = unreadable.write(ObjectStore(s3, settings.s3_bucket), prefix)

    summary = make(settings, s3, **SCENARIOS[scenario]).run()

    results = {result.hour: result for result in summary.hours}
    assert sorted(results[HOUR].unreadable) == sorted(damaged.bad)
    assert results[NEXT_HOUR].state == "compacted"  # the next hour is not blocked
    assert summary.unreadable_objects == summary.as_dict()["unreadable_objects"] == 3
    # Every line that decodes is compacted, the lines before the gzip truncation included.
    assert ids_by_hour(s3, settings) == {HOUR: damaged.readable, NEXT_HOUR: damaged.next_hour}
    stored = objects(s3, settings)
    for key, body in damaged.bad.items():
        assert key not in stored
        assert stored[unreadable_key(prefix, key)] == body, key  # the bytes, unchanged
    reasons = {
        key: json.loads(stored[unreadable_key(prefix, key) + ".reason.json"]) for key in damaged.bad
    }
    truncated = reasons[damaged.truncated]
    assert "truncated" in truncated["reason"] and "line 7" in truncated["reason"]
    assert (truncated["failed_lines"], truncated["rows_read"]) == ([7], 6)
    invalid = reasons[damaged.invalid_line]
    assert "1 line is not a JSON object (line 3: " in invalid["reason"]
    assert (invalid["failed_lines"], invalid["rows_read"]) == ([3], 9)
    parquet = reasons[damaged.bad_parquet]
    assert parquet["reason"].startswith("not a Parquet file")
    assert (parquet["failed_lines"], parquet["rows_read"]) == ([], 0)
    assert {r["key"] for r in reasons.values()} == set(damaged.bad)
    # Nothing else is left: the compacted objects, and what was set aside.
    aside = f"{prefix}_unreadable/"
    assert all(compacted_part(key) or key.startswith(aside) for key in stored), list(stored)

    compactor = make(settings, s3, **SCENARIOS[scenario])
    assert compactor.survey() == []  # _unreadable/ is no hour to compact
    again = compactor.run()
    assert again.unreadable_objects == 0
    assert objects(s3, settings) == stored


def etags(s3: Any, settings: Settings) -> dict[str, str]:
    """Every object's ETag (the MD5 of its bytes), by key: one listing tells the bytes apart."""
    found = {}
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=settings.s3_bucket):
        found.update({item["Key"]: item["ETag"].strip('"') for item in page.get("Contents", [])})
    return found


def test_a_kill_at_any_change_loses_no_bytes_and_a_rerun_ends_the_same(
    s3: Any, settings: Settings
) -> None:
    prefix = settings.s3_prefix
    hours = [datetime.strptime(HOUR, "%Y-%m-%dT%H").replace(tzinfo=UTC)]
    damaged = unreadable.write(ObjectStore(s3, settings.s3_bucket), prefix)
    make(settings, s3).compact(hours)
    expected = etags(s3, settings)
    digests = {key: hashlib.md5(body).hexdigest() for key, body in damaged.bad.items()}

    for die_at in itertools.count():
        attempt = archives.fresh_bucket(s3, settings)
        unreadable.write(ObjectStore(s3, attempt.s3_bucket), prefix)

        def bytes_kept(attempt: Settings = attempt) -> None:
            """Each damaged object's bytes are where it was, or set aside, or both."""
            stored = etags(s3, attempt)
            for key, digest in digests.items():
                kept = digest in (stored.get(key), stored.get(unreadable_key(prefix, key)))
                assert kept, f"{key} lost"

        try:
            make(attempt, Client(s3, die_at, after_change=bytes_kept)).compact(hours)
        except Crash:
            pass
        else:
            break  # it made every change before dying: every step has been killed once
        summary = make(attempt, s3).compact(hours)

        assert {result.state for result in summary.hours} <= {"compacted", "unchanged"}, summary
        assert etags(s3, attempt) == expected, f"killed before change {die_at}"
    assert die_at > 10


def test_an_unreadable_compacted_object_is_set_aside_by_a_rerun_of_its_hour(
    s3: Any, settings: Settings
) -> None:
    """A later hour cannot be checked against an earlier compacted object it cannot read: it
    fails, naming it, and asks the earlier hour to be compacted again, which sets it aside."""
    prefix = settings.s3_prefix
    store = ObjectStore(s3, settings.s3_bucket)
    damaged = unreadable.write(store, prefix)
    make(settings, s3).run()
    [compacted] = [key for key in objects(s3, settings) if compacted_part(key) and HOUR_PATH in key]
    rotten = b"PAR1 bytes that rotted PAR1"
    store.put(compacted, rotten)
    late = [(b"1709643000009-0", [ev("late-0", "14:50", "e", "u")])]
    archives.write_ndjson(store, prefix, late)  # the next hour needs compacting again

    first = make(settings, s3).run()

    # The earlier hour, asked, is compacted again in the same run (after the later one).
    assert [(result.hour, result.state) for result in first.hours] == [
        (NEXT_HOUR, "failed"),
        (HOUR, "compacted"),
    ]
    failed, redone = first.hours
    assert f"Unreadable: {compacted}: its keys cannot be read" in failed.error
    assert "the next run compacts its hour again" in failed.error
    assert redone.unreadable == [compacted]

    again = make(settings, s3).run()

    assert [(result.hour, result.state) for result in again.hours] == [(NEXT_HOUR, "compacted")]
    stored = objects(s3, settings)
    assert stored[unreadable_key(prefix, compacted)] == rotten and compacted not in stored
    # What rotted is lost to readers (it is set aside, not deleted); the rest is all there.
    assert ids_by_hour(s3, settings) == {NEXT_HOUR: damaged.next_hour | {"late-0"}}
    assert make(settings, s3).survey() == []
