"""`event-ingest plan`: `check` a plan against an archive with known violations (exact counts),
`draft` a plan from the same archive under which `check` finds none, and `from-segment` turning
Segment's Public API export into a plan that ingest enforces. Through click's CliRunner against
in-process moto and the real ingest app on a real redis-server."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner

from functions.cli import main
from functions.ingest.app import create_app
from shared import codec
from shared.archive import ObjectStore
from shared.settings import Settings
from tests.archives import write_ndjson, write_parquet
from tests.conftest import settings_env
from tests.functions.cli import errors

AT = "2024-03-05T14:10:00.000Z"

PLAN = """
sources:
  web:
    mode: tag
    unplanned: quarantine
    track:
      Order Completed:
        properties:
          type: object
          required: [revenue]
          properties: {revenue: {type: number}, coupon: {type: string}}
    identify:
      traits: {type: object, properties: {email: {type: string}}}
  default:
    mode: block
    track:
      Order Completed:
        properties: {type: object, additionalProperties: false, properties: {revenue: {}}}
"""


def event(n: int, source: str | None, **fields: Any) -> dict[str, Any]:
    base = {"type": "track", "messageId": f"m{n}", "userId": "u", "timestamp": AT,
            "receivedAt": AT, "event": "Order Completed", "properties": {"revenue": 1}}  # fmt: skip
    return {**base, **({"source": source} if source else {}), **fields}


EVENTS = [
    event(1, "web"),
    event(2, "web", properties={"revenue": "12"}),  # Datatype-Mismatch
    event(3, "web", properties={"coupon": "X"}),  # Required-Missing
    event(4, "web", properties={"revenue": "1", "coupon": 5}),  # two Datatype-Mismatch
    event(5, "web", event="Signed Up", properties={"plan": "team"}),  # Unplanned-Event
    event(6, "web", type="identify", event=None, traits={"email": 42}),  # Datatype-Mismatch
    event(7, None, properties={"revenue": 2, "extra": True}),  # default: Additional-Properties
    event(8, None),
]


@pytest.fixture
def archive(s3: Any, settings: Settings) -> None:
    store = ObjectStore(s3, settings.s3_bucket)
    clean = [{k: v for k, v in e.items() if v is not None} for e in EVENTS]
    write_ndjson(store, settings.s3_prefix, [(b"1709647800000-0", clean[:5])])
    write_parquet(store, settings.s3_prefix, [(b"1709647800001-0", clean[5:])])


def invoke(settings: Settings, *args: str) -> Any:
    return CliRunner().invoke(
        main, ["plan", *args], env=settings_env(settings), catch_exceptions=False
    )


@pytest.mark.usefixtures("archive")
def test_check_reports_exact_counts_per_source_event_and_type(
    settings: Settings, tmp_path: Path
) -> None:
    plan = tmp_path / "plan.yaml"
    plan.write_text(PLAN)
    result = invoke(settings, "check", str(plan), "--format", "json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["events"] == 8
    counts = {(v["source"], v["event"], v["type"]): v["count"] for v in report["violations"]}
    assert counts == {
        ("web", "Order Completed", "Datatype-Mismatch"): 3,
        ("web", "Order Completed", "Required-Missing"): 1,
        ("web", "unplanned", "Unplanned-Event"): 1,
        ("web", "identify", "Datatype-Mismatch"): 1,
        ("default", "Order Completed", "Additional-Properties"): 1,
    }
    actions = {(a["source"], a["action"]): a["events"] for a in report["actions"]}
    assert actions == {("web", "tag"): 4, ("web", "quarantine"): 1, ("default", "block"): 1}
    [mismatch] = [v for v in report["violations"] if v["type"] == "Datatype-Mismatch"
                  and v["event"] == "Order Completed"]  # fmt: skip
    assert [e["messageId"] for e in mismatch["examples"]] == ["m2", "m4", "m4"]
    assert {e["property"] for e in mismatch["examples"]} == {
        "properties.revenue", "properties.coupon",
    }  # fmt: skip
    text = invoke(settings, "check", str(plan))
    assert "web: 4 events would be tagged" in text.stdout
    assert "default / Order Completed / Additional-Properties: 1" in text.stdout


@pytest.mark.usefixtures("archive")
def test_a_drafted_plan_finds_no_violation_in_the_archive_it_was_drafted_from(
    settings: Settings, tmp_path: Path
) -> None:
    drafted = tmp_path / "drafted.yaml"
    result = invoke(settings, "draft", "--out", str(drafted))
    assert result.exit_code == 0, result.output
    document = yaml.safe_load(drafted.read_text())
    web = document["sources"]["web"]
    assert set(web["track"]) == {"Order Completed", "Signed Up"}
    order = web["track"]["Order Completed"]["properties"]
    assert order["properties"]["revenue"]["type"] == ["number", "string"]
    assert order["properties"]["coupon"]["type"] == ["number", "string"]
    assert "required" not in order  # revenue is missing from m3
    assert web["identify"]["traits"]["required"] == ["email"]
    assert set(document["sources"]) == {"web", "default"}
    check = invoke(settings, "check", str(drafted), "--format", "json")
    assert json.loads(check.stdout)["violations"] == []
    again = invoke(settings, "draft", "--out", str(drafted))
    assert again.exit_code == 1 and "exists" in again.output


def test_a_plan_that_cannot_be_used_is_one_line(settings: Settings, tmp_path: Path) -> None:
    plan = tmp_path / "plan.yaml"
    plan.write_text("sources:\n  web:\n    mode: sometimes\n")
    errors.assert_one_error_line(invoke(settings, "check", str(plan)), "sources.web.mode")
    errors.assert_one_error_line(
        invoke(settings, "check", str(tmp_path / "missing.yaml")), "missing.yaml"
    )


# A tracking plan's rules as Segment's Public API lists them (GET /tracking-plans/{id}/rules):
# built from its documented shape (docs/tracking-plans.md cites it).
SEGMENT_EXPORT = {
    "data": {
        "rules": [
            {
                "type": "TRACK",
                "key": "Order Completed",
                "version": 1,
                "jsonSchema": {
                    "$schema": "http://json-schema.org/draft-07/schema#",
                    "type": "object",
                    "properties": {
                        "properties": {
                            "type": "object",
                            "required": ["revenue"],
                            "properties": {"revenue": {"type": "number"}},
                        },
                        "context": {},
                        "traits": {},
                    },
                },
            },
            {
                "type": "IDENTIFY",
                "version": 1,
                "jsonSchema": {
                    "$schema": "http://json-schema.org/draft-07/schema#",
                    "type": "object",
                    "properties": {
                        "traits": {
                            "type": "object",
                            "properties": {"email": {"type": "string"}},
                        }
                    },
                },
            },
            {"type": "PAGE", "key": "Home", "version": 1, "jsonSchema": {}},
        ],
        "pagination": {"current": "MA==", "totalEntries": 3},
    }
}


def test_a_segment_export_becomes_a_plan_ingest_enforces(
    settings: Settings, tmp_path: Path, redis_client: Any
) -> None:
    export = tmp_path / "rules.json"
    export.write_text(json.dumps(SEGMENT_EXPORT))
    plan = tmp_path / "plan.yaml"
    result = CliRunner().invoke(
        main,
        ["plan", "from-segment", str(export), "--source", "web", "--mode", "block",
         "--out", str(plan)],
        catch_exceptions=False,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "not mapped: " in result.stderr and "PAGE" in result.stderr
    keyed = dataclasses.replace(settings, tracking_plan=str(plan), write_keys=(("web", "web-key"),))
    client = create_app(keyed).test_client()

    def send(body: dict) -> int:
        return client.post("/batch", json={"batch": [body]}, auth=("web-key", "")).status_code

    assert send({"type": "track", "event": "Order Completed", "properties": {"revenue": 3},
                 "userId": "u"}) == 202  # fmt: skip
    assert send({"type": "track", "event": "Order Completed", "properties": {"revenue": "3"},
                 "userId": "u"}) == 400  # fmt: skip
    assert send({"type": "identify", "traits": {"email": 7}, "userId": "u"}) == 400
    assert send({"type": "track", "event": "Other", "userId": "u"}) == 202  # unplanned: allow
    stored = [e for _, f in redis_client.xrange(keyed.stream_key) for e in codec.decode_entry(f)]
    assert [e.get("event") for e in stored] == ["Order Completed", "Other"]
