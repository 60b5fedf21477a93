"""Segment's own Python SDK, pointed at the gunicorn-served ingest function by changing only
its host and write key, delivers every event into the archive."""

from __future__ import annotations

import uuid

import pytest
from segment.analytics.client import Client

from local import stack
from local.stack import stop_process
from tests.conftest import archived_events, settings_env, wait_until
from tests.sdks.conftest import SOURCE, WRITE_KEY


def send_every_type(client: Client, rounds: int) -> dict[str, dict]:
    """Send `rounds` events of each of the six types; return what was sent by messageId."""
    sent = {}
    for i in range(rounds):
        calls = [
            (
                "track",
                dict(user_id=f"u{i}", event="Order Completed", properties={"i": i, "t": 1.5}),
            ),
            ("identify", dict(user_id=f"u{i}", traits={"email": f"u{i}@example.com"})),
            ("page", dict(anonymous_id=f"a{i}", name="Home", properties={"path": "/"})),
            ("screen", dict(user_id=f"u{i}", name="Settings", properties={"tab": "x"})),
            ("group", dict(user_id=f"u{i}", group_id=f"g{i}", traits={"plan": "pro"})),
            ("alias", dict(previous_id=f"a{i}", user_id=f"u{i}")),
        ]
        for kind, arguments in calls:
            message_id = str(uuid.uuid4())
            getattr(client, kind)(message_id=message_id, **arguments)
            sent[message_id] = {"type": kind, **arguments}
    return sent


@pytest.mark.parametrize("use_gzip", [False, True], ids=["plain", "gzip"])
def test_segment_sdk_events_reach_the_archive_intact(settings, http_s3, gunicorn_url, use_gzip):
    errors = []
    client = Client(
        write_key=WRITE_KEY,
        host=gunicorn_url,
        gzip=use_gzip,
        max_retries=3,
        upload_size=100,
        on_error=lambda error, batch: errors.append(error),
    )
    sent = send_every_type(client, rounds=350)  # 2,100 events
    client.flush()
    client.join()
    assert errors == []

    runner = stack.start_runner(settings_env(settings))
    try:
        archived = wait_until(
            lambda: (
                (found := archived_events(http_s3, settings.s3_bucket))
                and len(found) >= len(sent)
                and found
            ),
            timeout_s=90,
            interval_s=1,
            what="every SDK event in the archive",
        )
    finally:
        assert stop_process(runner) == 0

    by_id = {event["messageId"]: event for event in archived}
    assert len(archived) == len(by_id) == len(sent)
    for message_id, expected in sent.items():
        event = by_id[message_id]
        assert event["type"] == expected["type"]
        assert event["source"] == SOURCE
        assert event["context"]["library"]["name"] == "analytics-python"
        assert "writeKey" not in event and WRITE_KEY not in str(event)
        for sdk_name, api_name in [
            ("properties", "properties"),
            ("traits", "traits"),
            ("user_id", "userId"),
            ("anonymous_id", "anonymousId"),
            ("group_id", "groupId"),
            ("previous_id", "previousId"),
            ("name", "name"),
            ("event", "event"),
        ]:
            if sdk_name in expected:
                assert event[api_name] == expected[sdk_name], (message_id, api_name)
        assert event["originalTimestamp"] and event["timestamp"].endswith("Z")


def test_segment_sdk_with_a_wrong_key_delivers_nothing(settings, gunicorn_url, redis_client):
    errors = []
    client = Client(
        write_key="wk_wrong",
        host=gunicorn_url,
        max_retries=0,
        on_error=lambda error, batch: errors.append(error),
    )
    client.track(user_id="u", event="E")
    client.flush()
    client.join()
    assert errors and getattr(errors[0], "status", None) == 401
    assert not redis_client.exists(settings.stream_key)
