"""The tracking plan at ingest (TRACKING_PLAN): violations tagged or blocked per source, on
Segment's and the native paths; suppression before validation; counted in /metrics; a changed
plan picked up without restart, a malformed one refused with the old kept; a plan that cannot
be read stops the start. Through the real app (Flask's test client) and a real redis-server;
an `s3://` plan through moto's S3.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path
from typing import Any

import pytest
import redis
from flask.testing import FlaskClient

from functions.ingest.app import create_app
from shared import codec
from shared.archive import ObjectStore
from shared.archive.privacy.store import RegulationStore
from shared.plans.validation import MAX_TAG_BYTES, MAX_VIOLATIONS
from shared.settings import ConfigError, Settings
from tests.metrics_samples import samples, value

RELOAD_S = 0.2
WEB_KEY, SERVER_KEY = "web-key-1", "server-key-1"

PLAN = """
sources:
  web:
    mode: tag
    unplanned: tag
    track:
      Order Completed:
        properties:
          type: object
          required: [revenue]
          properties:
            revenue: {type: number}
    identify:
      traits: {type: object, properties: {email: {type: string}}}
  server:
    mode: block
    unplanned: block
    track:
      Order Completed:
        properties: {type: object, required: [revenue], properties: {revenue: {type: number}}}
"""


def order(revenue: Any = 12.5, **fields: Any) -> dict[str, Any]:
    properties = {} if revenue is None else {"revenue": revenue}
    return {"type": "track", "event": "Order Completed", "userId": "u1",
            "properties": properties, **fields}  # fmt: skip


@pytest.fixture
def plan_file(tmp_path: Path) -> Path:
    path = tmp_path / "plan.yaml"
    path.write_text(PLAN)
    return path


@pytest.fixture
def planned(settings: Settings, plan_file: Path) -> Settings:
    return dataclasses.replace(
        settings,
        tracking_plan=str(plan_file),
        tracking_plan_reload_s=RELOAD_S,
        write_keys=(("web", WEB_KEY), ("server", SERVER_KEY)),
        metrics_public=True,
        suppression_reload_s=RELOAD_S,
    )


@pytest.fixture
def client(planned: Settings) -> FlaskClient:
    return create_app(planned).test_client()


def post(client: FlaskClient, path: str, body: Any, key: str) -> Any:
    return client.post(path, json=body, auth=(key, ""))


def stored(redis_client: redis.Redis, settings: Settings) -> list[dict[str, Any]]:
    found = []
    for _, fields in redis_client.xrange(settings.stream_key):
        found += codec.decode_entry(fields)
    return found


def test_tag_stores_the_event_with_its_violations(client, planned, redis_client) -> None:
    batch = [
        order(),
        order(revenue="12.50"),
        order(revenue=None),
        {"type": "track", "event": "Signed Up", "userId": "u1"},
        {"type": "identify", "userId": "u1", "traits": {"email": 42}},
    ]
    answer = post(client, "/v1/batch", {"batch": batch, "context": {"app": "shop"}}, WEB_KEY)
    assert answer.status_code == 200
    events = stored(redis_client, planned)
    assert len(events) == 5
    tags = [event["context"].get("violations") for event in events]
    assert tags[0] is None
    assert [(t["type"], t["property"]) for t in tags[1]] == [
        ("Datatype-Mismatch", "properties.revenue")
    ]
    assert [(t["type"], t["property"]) for t in tags[2]] == [
        ("Required-Missing", "properties.revenue")
    ]
    assert [(t["type"], t["property"]) for t in tags[3]] == [("Unplanned-Event", "event")]
    assert [(t["type"], t["property"]) for t in tags[4]] == [("Datatype-Mismatch", "traits.email")]
    assert all(t["message"] for tag in tags[1:] for t in tag)
    # The batch's context is every event's, the tag only the violator's.
    assert all(event["context"]["app"] == "shop" for event in events)


def test_block_on_the_native_path_refuses_the_whole_request(client, planned, redis_client) -> None:
    answer = post(client, "/batch", {"batch": [order(), order(revenue="x")]}, SERVER_KEY)
    assert answer.status_code == 400
    assert answer.json["error"] == answer.json["code"] == "tracking_plan_violation"
    [problem] = answer.json["problems"]
    assert (problem["index"], problem["field"]) == (1, "properties.revenue")
    assert problem["message"].startswith("Datatype-Mismatch: ")
    single = post(client, "/events", {"type": "track", "event": "Nope", "userId": "u"}, SERVER_KEY)
    assert single.status_code == 400 and single.json["problems"][0]["field"] == "event"
    assert redis_client.xlen(planned.stream_key) == 0


def test_block_on_segment_paths_is_answered_as_accepted(client, planned, redis_client) -> None:
    before = samples(client.get("/metrics").text)
    batch = [order(messageId="good"), order(revenue="x", messageId="bad"), order(revenue=None)]
    answer = post(client, "/v1/batch", {"batch": batch}, SERVER_KEY)
    single = post(client, "/v1/track", {"event": "Nope", "userId": "u"}, SERVER_KEY)
    assert (answer.status_code, answer.json) == (200, {"success": True})
    assert (single.status_code, single.json) == (200, {"success": True})
    assert [event["messageId"] for event in stored(redis_client, planned)] == ["good"]
    after = samples(client.get("/metrics").text)

    def gained(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert gained("event_ingest_events_blocked_total", route="/v1/batch") == 2
    blocked = samples(client.get("/metrics").text)
    assert (
        sum(v for (name, _), v in blocked.items() if name == "event_ingest_events_blocked_total")
        - sum(v for (name, _), v in before.items() if name == "event_ingest_events_blocked_total")
        == 3
    )
    assert gained("event_ingest_events_accepted_total", route="/v1/batch") == 1
    violations = "event_ingest_tracking_plan_violations_total"
    assert gained(violations, source="server", event="Order Completed", type="Datatype-Mismatch")
    assert gained(violations, source="server", event="Order Completed", type="Required-Missing")
    # An event the plan does not list is counted as `unplanned`, whatever its name.
    assert gained(violations, source="server", event="unplanned", type="Unplanned-Event") == 1


def test_a_suppressed_subject_s_blocked_event_is_answered_2xx_and_stored_nowhere(
    client, planned, redis_client, s3
) -> None:
    store = RegulationStore(ObjectStore(s3, planned.s3_bucket), planned.s3_prefix)
    store.accept(
        redis_client,
        planned.stream_key,
        regulation_type="SUPPRESS_ONLY",
        subject_type="USER_ID",
        subject_ids=["gone"],
    )
    time.sleep(RELOAD_S * 1.5)
    answer = post(client, "/batch", {"batch": [order(revenue="x", userId="gone")]}, SERVER_KEY)
    assert (answer.status_code, answer.json) == (202, {"accepted": 1})
    assert redis_client.xlen(planned.stream_key) == 0


def test_an_event_whose_properties_are_no_object_is_a_violation_not_a_500(
    client, planned, redis_client
) -> None:
    for properties in ([1, 2], "revenue", None):
        event = {**order(), "properties": properties}
        answer = post(client, "/v1/track", event, WEB_KEY)
        assert answer.status_code == 200, answer.text
    tags = [e["context"].get("violations") for e in stored(redis_client, planned)]
    assert len(tags) == 3
    assert all([(t["type"], t["property"]) for t in tag] == [("Datatype-Mismatch", "properties")]
               for tag in tags)  # fmt: skip


def test_what_enrichment_adds_to_context_is_not_checked(
    settings: Settings, tmp_path: Path, redis_client
) -> None:
    """The plan checks the context the client sent: ip and parsedUserAgent, which the server
    adds, are no `Additional-Properties` under a closed context schema."""
    plan = tmp_path / "closed.yaml"
    plan.write_text(
        "sources:\n  default:\n    mode: tag\n    context:\n      type: object\n"
        "      additionalProperties: false\n      properties: {userAgent: {type: string}}\n"
    )
    app = create_app(dataclasses.replace(settings, tracking_plan=str(plan))).test_client()
    agent = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) Chrome/120.0.0.0 Safari/537.36"
    answer = app.post("/v1/track", json={**order(), "context": {"userAgent": agent}},
                      environ_base={"REMOTE_ADDR": "81.2.69.142"})  # fmt: skip
    assert answer.status_code == 200
    [event] = stored(redis_client, settings)
    assert event["context"]["ip"] == "81.2.69.0" and "parsedUserAgent" in event["context"]
    assert "violations" not in event["context"]


def test_a_violation_tag_is_bounded_whatever_the_event(client, planned, redis_client) -> None:
    """An event with a hundred bad properties of long names, and one whose long name its
    message quotes, are tagged with at most MAX_VIOLATIONS, within MAX_TAG_BYTES."""
    closed = "sources:\n  web:\n    mode: tag\n    unplanned: tag\n    track:\n" + (
        "      Big:\n        properties: {type: object, additionalProperties: {type: number}}\n"
    )
    Path(planned.tracking_plan).write_text(closed)
    time.sleep(RELOAD_S * 1.5)
    post(client, "/v1/track", {"event": "Reload", "userId": "u"}, WEB_KEY)  # takes the plan
    bad = {f"p{'x' * 200}{n}": "no" for n in range(100)}
    for event in ({"event": "Big", "properties": bad}, {"event": "é" * 1000}):
        answer = post(client, "/v1/track", {**event, "userId": "u"}, WEB_KEY)
        assert answer.status_code == 200
    *_, big, unnamed = stored(redis_client, planned)
    for event in (big, unnamed):
        tag = event["context"]["violations"]
        assert 1 <= len(tag) <= MAX_VIOLATIONS
        assert len(codec.packed({"violations": tag})) <= MAX_TAG_BYTES
    assert len(big["context"]["violations"]) == MAX_VIOLATIONS


def test_a_changed_plan_is_picked_up_and_a_malformed_one_refused(
    client, planned, redis_client, caplog
) -> None:
    plan = Path(planned.tracking_plan)
    assert post(client, "/batch", {"batch": [order(revenue="x")]}, SERVER_KEY).status_code == 400
    plan.write_text(PLAN.replace("mode: block", "mode: tag", 1))
    time.sleep(RELOAD_S * 1.5)
    assert post(client, "/batch", {"batch": [order(revenue="x")]}, SERVER_KEY).status_code == 202

    plan.write_text(PLAN.replace("mode: block", "mode: sometimes", 1))
    time.sleep(RELOAD_S * 1.5)
    with caplog.at_level(logging.WARNING):
        answer = post(client, "/batch", {"batch": [order(revenue="x")]}, SERVER_KEY)
    assert answer.status_code == 202  # the plan in use stays
    warned = [r.getMessage() for r in caplog.records if "TRACKING_PLAN" in r.getMessage()]
    assert warned and "sources.server.mode" in warned[0] and "keeping" in warned[0]
    plan.unlink()
    time.sleep(RELOAD_S * 1.5)
    assert post(client, "/batch", {"batch": [order(revenue="x")]}, SERVER_KEY).status_code == 202


@pytest.mark.parametrize(
    ("content", "named"),
    [
        (None, "No such file"),
        ("sources:\n  web:\n    mode: sometimes\n", "sources.web.mode"),
        ("sources:\n  web:\n    track:\n      A:\n        properties: {type: 12}\n",
         "sources.web.track.A.properties"),
        ("sources: [", "TRACKING_PLAN"),
    ],
)  # fmt: skip
def test_a_plan_that_cannot_be_used_stops_the_start_in_one_line(
    settings: Settings, tmp_path: Path, content: str | None, named: str
) -> None:
    path = tmp_path / "plan.yaml"
    if content is not None:
        path.write_text(content)
    with pytest.raises(ConfigError) as refused:
        create_app(dataclasses.replace(settings, tracking_plan=str(path)))
    message = str(refused.value)
    assert message.startswith("TRACKING_PLAN: ") and named in message and "\n" not in message


def test_a_plan_in_s3_is_read_and_reloaded(settings: Settings, s3, redis_client) -> None:
    s3.put_object(Bucket=settings.s3_bucket, Key="plans/plan.yaml", Body=PLAN.encode())
    location = f"s3://{settings.s3_bucket}/plans/plan.yaml"
    planned = dataclasses.replace(
        settings,
        tracking_plan=location,
        tracking_plan_reload_s=RELOAD_S,
        write_keys=(("server", SERVER_KEY),),
    )
    client = create_app(planned).test_client()
    assert post(client, "/batch", {"batch": [order(revenue="x")]}, SERVER_KEY).status_code == 400
    s3.put_object(
        Bucket=settings.s3_bucket,
        Key="plans/plan.yaml",
        Body=PLAN.replace("mode: block", "mode: tag", 1).encode(),
    )
    time.sleep(RELOAD_S * 1.5)
    assert post(client, "/batch", {"batch": [order(revenue="x")]}, SERVER_KEY).status_code == 202
    missing = dataclasses.replace(planned, tracking_plan=location + ".gone")
    with pytest.raises(ConfigError, match="no such object"):
        create_app(missing)
