"""Quarantine, from the request to the query: the ingest app (a tracking plan in `quarantine`
mode) marks the events in the stream entry (`codec`'s `q`), the consumer stores them under
`quarantine/` in the archive's format and never with the other events, `event-ingest query`
reads them as `quarantined` with their violations, and `events` does not hold them. An older
consumer, which knows no `q`, reads the same entry as all its events. The real app, a real
redis-server and moto's S3."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest
import redis

from functions.ingest.app import create_app
from shared import codec
from shared.archive import ObjectStore, naming, query
from shared.settings import Settings
from tests.conftest import archived_keys
from tests.functions.consumer.drains import Budget, make_drainer

PLAN = """
sources:
  default:
    mode: quarantine
    unplanned: quarantine
    track:
      Order Completed:
        properties: {type: object, required: [revenue], properties: {revenue: {type: number}}}
"""


def order(message_id: str, **properties: Any) -> dict[str, Any]:
    return {"type": "track", "event": "Order Completed", "userId": "u1",
            "messageId": message_id, "properties": properties}  # fmt: skip


@pytest.fixture(params=["ndjson", "parquet"])
def planned(request: pytest.FixtureRequest, settings: Settings, tmp_path: Path) -> Settings:
    plan = tmp_path / "plan.yaml"
    plan.write_text(PLAN)
    return dataclasses.replace(settings, tracking_plan=str(plan), archive_format=request.param)


def test_quarantined_events_are_stored_apart_and_queryable(
    planned: Settings, s3: Any, redis_client: redis.Redis
) -> None:
    client = create_app(planned).test_client()
    batch = [
        order("good", revenue=10),
        order("bad", revenue="10"),
        {"type": "track", "event": "Nope", "userId": "u2", "messageId": "unplanned"},
        order("good-2", revenue=2.5),
    ]
    for path in ("/batch", "/v1/batch"):  # the native path and Segment's: the same
        assert client.post(path, json={"batch": batch}).status_code in (200, 202)
    [(_, entry), _] = redis_client.xrange(planned.stream_key)
    assert entry[b"q"] == b"1,2"
    # An older consumer reads the entry as every event, tagged: deploy consumers first.
    assert [e["messageId"] for e in codec.decode_entry(entry)] == [
        "good", "bad", "unplanned", "good-2",
    ]  # fmt: skip

    make_drainer(planned, s3).drain(Budget(1.5))
    keys = archived_keys(s3, planned.s3_bucket)
    quarantine = planned.s3_prefix + naming.QUARANTINE_ROOT
    root = naming.RAW_ROOTS[planned.archive_format]
    apart = [k for k in keys if k.startswith(quarantine)]
    assert apart and all(k.startswith(quarantine + root + "dt=") for k in apart)
    assert all(k.startswith(planned.s3_prefix + root + "dt=") for k in keys if k not in apart)

    with query.open_archive(ObjectStore(s3, planned.s3_bucket), planned.s3_prefix) as archive:
        stored = archive.run("SELECT message_id FROM events ORDER BY 1").rows()
        assert [row[0] for row in stored] == ["good", "good-2"]
        held = archive.run(
            "SELECT message_id, violations->>'$[0].type' FROM quarantined ORDER BY 1"
        ).rows()
        assert list(held) == [
            ("bad", "Datatype-Mismatch"),
            ("bad", "Datatype-Mismatch"),
            ("unplanned", "Unplanned-Event"),
            ("unplanned", "Unplanned-Event"),
        ]


@pytest.mark.parametrize("mark", [b"x", b"0,9", b"-1", b"1,,2"])
def test_an_entry_with_a_bad_quarantine_mark_is_a_dead_letter(
    settings: Settings, s3: Any, redis_client: redis.Redis, mark: bytes
) -> None:
    entry = codec.encode_entry([order("a"), order("b")])
    redis_client.xadd(settings.stream_key, {**entry, b"q": mark})
    make_drainer(settings, s3).drain(Budget(1))
    keys = archived_keys(s3, settings.s3_bucket)
    assert keys and all(k.startswith(naming.ERRORS_PREFIX) for k in keys)


def test_an_unreadable_quarantine_object_fails_the_query_even_when_skipping(
    settings: Settings, s3: Any
) -> None:
    """`--skip-unreadable` reports what it leaves out when the archive is opened, before any
    query names `quarantined`: an unreadable quarantine object is an error, never unsaid."""
    key = f"{settings.s3_prefix}{naming.QUARANTINE_ROOT}dt=2024-03-05/hour=14/bad.ndjson.gz"
    s3.put_object(Bucket=settings.s3_bucket, Key=key, Body=b"not gzip")
    store = ObjectStore(s3, settings.s3_bucket)
    with query.open_archive(store, settings.s3_prefix, skip_unreadable=True) as archive:
        assert list(archive.run("SELECT count(*) FROM events").rows()) == [(0,)]
        with pytest.raises(query.UnreadableObject, match=r"bad\.ndjson\.gz"):
            archive.run("SELECT count(*) FROM quarantined")
