"""A tracking plan as it runs: gunicorn (two workers) serving the ingest function with
TRACKING_PLAN, the loop runner driving the consumer, moto's HTTP server as S3. Each violation
type in each mode, on the native path and Segment's, ends where the mode says: tagged in the
archive, under `quarantine/`, or nowhere (400 on the native path, accepted on Segment's). A
changed plan reaches every worker without a restart."""

from __future__ import annotations

import base64
import dataclasses
import json
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from local import stack
from local.stack import stop_process
from shared.archive import naming
from tests.conftest import archived_events, gunicorn_serving, settings_env, wait_until

RELOAD_S = 0.5
KEYS = {"tagger": "key-tag", "quarantiner": "key-quarantine", "blocker": "key-block"}
RULES = """
    track:
      Order Completed:
        properties:
          type: object
          required: [revenue]
          additionalProperties: false
          properties:
            revenue: {type: number}
            currency: {enum: [EUR, USD]}
"""
PLAN = "sources:\n" + "".join(
    f"  {source}:\n    mode: {mode}\n    unplanned: {mode}\n{RULES}"
    for source, mode in (("tagger", "tag"), ("quarantiner", "quarantine"), ("blocker", "block"))
)

# One event per violation type, and one that satisfies the plan.
VIOLATING = {
    "Unplanned-Event": {"event": "Signed Up", "properties": {}},
    "Required-Missing": {"event": "Order Completed", "properties": {"currency": "EUR"}},
    "Datatype-Mismatch": {"event": "Order Completed", "properties": {"revenue": "12"}},
    "Additional-Properties": {"event": "Order Completed", "properties": {"revenue": 1, "x": 1}},
    "Unknown-Violation": {
        "event": "Order Completed",
        "properties": {"revenue": 1, "currency": "X"},
    },
}
VALID = {"event": "Order Completed", "properties": {"revenue": 1, "currency": "EUR"}}


@pytest.fixture
def settings(settings, moto_endpoint):
    return dataclasses.replace(settings, s3_endpoint_url=moto_endpoint)


def post(url: str, path: str, body: dict, key: str) -> tuple[int, dict]:
    auth = base64.b64encode(f"{key}:".encode()).decode()
    headers = {"Content-Type": "application/json", "Authorization": f"Basic {auth}"}
    request = urllib.request.Request(url + path, json.dumps(body).encode(), headers)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def event(source: str, path: str, kind: str, fields: dict) -> dict[str, Any]:
    message_id = f"{source}|{path}|{kind}"
    return {"type": "track", "userId": "u1", "messageId": message_id, **fields}


def test_each_violation_in_each_mode_on_both_paths_ends_where_the_mode_says(
    settings, http_s3, tmp_path: Path
) -> None:
    plan = tmp_path / "plan.yaml"
    plan.write_text(PLAN)
    keys = ",".join(f"{source}:{key}" for source, key in KEYS.items())
    env = {"TRACKING_PLAN": str(plan), "TRACKING_PLAN_RELOAD_S": str(RELOAD_S), "WRITE_KEYS": keys}
    with gunicorn_serving(settings, **env) as url:
        for source, key in KEYS.items():
            for path in ("/batch", "/v1/batch"):
                valid = event(source, path, "valid", VALID)
                assert post(url, path, {"batch": [valid]}, key)[0] in (200, 202)
                for kind, fields in VIOLATING.items():
                    status, body = post(
                        url, path, {"batch": [event(source, path, kind, fields)]}, key
                    )
                    if source == "blocker" and path == "/batch":
                        assert status == 400 and body["error"] == "tracking_plan_violation"
                        assert body["problems"][0]["message"].startswith(kind)
                    else:
                        assert status in (200, 202), body

        runner = stack.start_runner(settings_env(settings))
        try:
            expected = 2 * (1 + 5) * 2 + 2  # tagger and quarantiner both paths; blocker's valid
            wait_until(
                lambda: len(archived_events(http_s3, settings.s3_bucket)) >= expected,
                timeout_s=60,
                interval_s=0.5,
                what="the events in the archive and the quarantine",
            )
        finally:
            assert stop_process(runner) == 0
        quarantine = settings.s3_prefix + naming.QUARANTINE_ROOT
        held = {e["messageId"]: e for e in archived_events(http_s3, settings.s3_bucket, quarantine)}
        stored = {
            e["messageId"]: e
            for e in archived_events(http_s3, settings.s3_bucket, settings.s3_prefix)
            if e["messageId"] not in held
        }
        for path in ("/batch", "/v1/batch"):
            for kind in VIOLATING:
                tagged = stored[f"tagger|{path}|{kind}"]["context"]["violations"]
                assert tagged[0]["type"] == kind
                apart = held[f"quarantiner|{path}|{kind}"]["context"]["violations"]
                assert apart[0]["type"] == kind
                assert f"blocker|{path}|{kind}" not in stored | held
            for source in KEYS:
                valid = stored[f"{source}|{path}|valid"]
                assert "violations" not in valid.get("context", {})
        assert len(stored) == 2 * 6 + 2 * 1 + 2 and len(held) == 2 * 5

        # A changed plan reaches every worker: the blocker now only tags.
        plan.write_text(
            PLAN.replace("mode: block\n    unplanned: block", "mode: tag\n    unplanned: tag")
        )
        time.sleep(RELOAD_S * 2)
        bad = event("blocker", "/batch", "again", VIOLATING["Datatype-Mismatch"])
        answers = [post(url, "/batch", {"batch": [bad]}, KEYS["blocker"])[0] for _ in range(20)]
        assert answers == [202] * 20
