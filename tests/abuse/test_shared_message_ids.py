"""A source's message IDs sent first by another source: the genuine events must survive.

A browser source's write key is public, and server sources often use predictable IDs
(`order-1234`). Whoever sends such an ID first under the public key must not make the archive's
readers (`event-ingest query`, compaction, replay, the Athena view) take the genuine event for
a copy of theirs: an event is one per (`source`, `message_id`), and anonymous events (no
source) are a source of their own. Real parts: the ingest app and the consumer's drain against
a real redis-server and moto's in-process S3; the Athena view's SQL from template.yaml run in
DuckDB.
"""

from __future__ import annotations

import base64
import dataclasses
import time
from datetime import UTC, datetime
from typing import Any

import pytest
import redis

from functions.consumer.drain import Drainer
from functions.ingest.app import create_app
from shared import codec, stream
from shared.archive import ObjectStore, partitions, query
from shared.archive.compaction import Compactor
from shared.archive.replay import Replayer
from shared.settings import Settings
from tests import archives
from tests.archives import ev
from tests.athena_in_duckdb import athena_in_duckdb, insert

WEB_KEY = "wk_public_in_every_page"
BACKEND_KEY = "wk_backend_secret"
EVERY_HOUR = partitions.HourRange()


@pytest.fixture
def keyed(settings: Settings) -> Settings:
    return dataclasses.replace(settings, write_keys=(("web", WEB_KEY), ("backend", BACKEND_KEY)))


def send(app: Any, key: str, path: str, *events: dict[str, Any]) -> None:
    auth = {"Authorization": "Basic " + base64.b64encode(f"{key}:".encode()).decode()}
    response = app.post(path, json={"batch": list(events)}, headers=auth)
    assert response.status_code in (200, 202), response.get_data(as_text=True)


def drain(settings: Settings, s3: Any) -> None:
    client = stream.connect(settings)
    store = ObjectStore(s3, settings.s3_bucket)
    drainer = Drainer.for_key(settings, client, store, settings.stream_key, "c1")
    deadline = time.monotonic() + 1.5
    drainer.drain(lambda: max(0, int((deadline - time.monotonic()) * 1000)))


def order(total: int | None, **fields: Any) -> dict[str, Any]:
    """The backend's order event (with its total), or a forged one (without)."""
    return {
        "type": "track",
        "event": "Order Completed",
        "messageId": "order-1234",
        "userId": "u1",
        "properties": {} if total is None else {"total": total},
        **fields,
    }


def answer(settings: Settings, s3: Any, sql: str) -> list[tuple]:
    """What `event-ingest query` answers over the whole archive."""
    with query.open_archive(
        ObjectStore(s3, settings.s3_bucket), settings.s3_prefix, EVERY_HOUR
    ) as archive:
        return list(archive.run(sql).rows())


def compact(settings: Settings, s3: Any) -> None:
    later = time.time() + 3 * 3600  # every hour written is closed by then
    store = ObjectStore(s3, settings.s3_bucket)
    client = redis.Redis.from_url(settings.redis_url)
    summary = Compactor(settings, store, client, clock=lambda: later).run()
    assert summary.hours and all(h.state == "compacted" for h in summary.hours), summary


def replayed(settings: Settings, s3: Any, client: redis.Redis) -> list[dict[str, Any]]:
    into = f"{settings.stream_key}-replayed"
    producer = stream.EventStream(client, into, 1000)
    store = ObjectStore(s3, settings.s3_bucket)
    Replayer(store, settings.s3_prefix, producer, settings.dedup_window_h).run(EVERY_HOUR)
    return [event for _, fields in client.xrange(into) for event in codec.decode_entry(fields)]


ORDERS = (
    "SELECT source, CAST(properties->>'total' AS INTEGER) FROM events "
    "WHERE message_id = 'order-1234' ORDER BY source"
)


def test_a_public_key_sending_a_servers_id_first_hides_nothing(
    keyed: Settings, s3: Any, redis_client: redis.Redis
) -> None:
    app = create_app(keyed).test_client()
    # The attacker's copy comes first, and claims the backend's source (ingest overrides it).
    send(app, WEB_KEY, "/v1/batch", order(None, source="backend"))  # as analytics.js sends
    send(app, BACKEND_KEY, "/batch", order(99))  # as a server library sends
    send(app, BACKEND_KEY, "/batch", order(99))  # the backend's retry: still one event
    drain(keyed, s3)
    genuine_and_forged = [("backend", 99), ("web", None)]

    assert answer(keyed, s3, ORDERS) == genuine_and_forged
    assert answer(keyed, s3, "SELECT count(*) FROM raw_events") == [(3,)]

    events = replayed(keyed, s3, redis_client)
    assert sorted((e["source"], e["properties"].get("total")) for e in events) == [
        ("backend", 99),
        ("web", None),
    ]

    compact(keyed, s3)
    # Stored once each, for good: the raw rows are what compaction kept.
    assert answer(keyed, s3, ORDERS) == genuine_and_forged
    assert answer(keyed, s3, "SELECT count(*) FROM raw_events") == [(2,)]


def test_forged_ids_compacted_in_an_earlier_hour_drop_only_their_own_copies(
    settings: Settings, s3: Any, redis_client: redis.Redis
) -> None:
    store = ObjectStore(s3, settings.s3_bucket)
    # Each hour is compacted after the one before, whose copies then drop later ones.
    written = [
        ev("order-5678", "13:10", "Order Completed", "u1", source="web"),  # forged
        ev("anon-1", "13:20", "Page Viewed", "u2", source=None),
        ev("order-5678", "14:05", "Order Completed", "u1", source="backend"),  # genuine
        ev("anon-1", "14:30", "Page Viewed", "u2", source=None),  # a retry
        ev("order-5678", "15:01", "Order Completed", "u1", source="backend"),  # a retry
    ]
    for n, event in enumerate(written):
        if event["source"] is None:
            del event["source"]  # anonymous mode: ingest stores no source
        archives.write_ndjson(store, settings.s3_prefix, [(f"{n}-0".encode(), [event])])
    survivors = [("2024-03-05", 13, "web"), ("2024-03-05", 14, "backend")]
    per_id = (
        "SELECT CAST(dt AS VARCHAR), hour, source FROM events WHERE message_id = '{}' ORDER BY 1, 2"
    )

    assert answer(settings, s3, per_id.format("order-5678")) == survivors
    assert answer(settings, s3, per_id.format("anon-1")) == [("2024-03-05", 13, None)]
    events = replayed(settings, s3, redis_client)
    assert [(e["receivedAt"][11:16], e["messageId"], e.get("source")) for e in events] == [
        ("13:10", "order-5678", "web"),
        ("13:20", "anon-1", None),
        ("14:05", "order-5678", "backend"),
    ]

    compact(settings, s3)
    assert answer(settings, s3, per_id.format("order-5678")) == survivors
    assert answer(settings, s3, per_id.format("anon-1")) == [("2024-03-05", 13, None)]
    assert answer(settings, s3, "SELECT count(*) FROM raw_events") == [(3,)]


# --- the Athena view --------------------------------------------------------------------------


def test_the_athena_view_keeps_one_copy_per_source_and_message_id() -> None:
    con = athena_in_duckdb()
    moment = datetime(2024, 3, 5, 13, 30, tzinfo=UTC)
    # The forged copy, the earliest, as NDJSON; the genuine one as Parquet, its retry compacted.
    forged = {"message_id": "order-1234", "source": "web"}
    genuine = {"message_id": "order-1234", "source": "backend", "properties": '{"total":99}'}
    insert(con, "events_ndjson", "s3://a/dt/1.ndjson.gz", "2024-03-05T13:00:00.000Z", **forged)
    insert(con, "events_parquet", "s3://a/parquet/2.parquet", moment, **genuine)
    retried = moment.replace(minute=40)
    insert(con, "events_compacted", "s3://a/compacted/3.parquet", retried, **genuine)
    # Anonymous mode: no source, one event sent twice.
    for n in (1, 2):
        stamp = f"2024-03-05T13:5{n}:00Z"
        insert(con, "events_ndjson", f"s3://a/dt/{n + 3}.ndjson.gz", stamp, message_id="anon-1")

    rows = con.execute(
        "SELECT message_id, source, properties, received_at FROM events ORDER BY 1, 2"
    ).fetchall()
    assert rows == [
        ("anon-1", None, None, datetime(2024, 3, 5, 13, 51, tzinfo=UTC)),
        ("order-1234", "backend", '{"total":99}', moment),
        ("order-1234", "web", None, datetime(2024, 3, 5, 13, 0, tzinfo=UTC)),
    ]
