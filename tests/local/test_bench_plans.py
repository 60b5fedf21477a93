"""The `plans` phase's measurement (local/bench/plan_cost.py) compares what it says: the app it
calls planned checks the bodies' events against a 50-event plan (the valid ones pass untouched,
one in ten of the others is tagged), the other stores them as sent; and the rows give the cost
and the verdict against issue 27's target."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import msgspec
import pytest
import redis
import yaml

from local.bench import in_process, phases, plan_cost, report, run
from shared import codec
from shared.plans.validation import load_compiled
from shared.settings import Settings

REQUESTS = 10


def stored(client: redis.Redis, stream_key: str) -> list[dict[str, Any]]:
    return [
        event for _, fields in client.xrange(stream_key) for event in codec.decode_entry(fields)
    ]


def test_the_plan_has_50_events_and_the_valid_bodies_satisfy_it() -> None:
    plan = load_compiled(yaml.safe_dump(plan_cost.plan_document()))
    assert len(plan.plan.sources["default"].track) == plan_cost.PLANNED_EVENTS == 50
    for kind, broken in (("valid", 0), ("10% violating", 10)):
        body = plan_cost.bodies(100, kind, variants=1)
        [document] = [msgspec.json.decode(b) for b in body.bodies]
        found = [plan.violations(event, "bench") for event in document["batch"]]
        assert sum(1 for v in found if v) == broken
        assert all(v[0].type == "Datatype-Mismatch" for v in found if v)


def test_the_planned_app_tags_and_the_other_stores_as_sent(
    settings: Settings, redis_client: redis.Redis, tmp_path: Path
) -> None:
    plan = tmp_path / "plan.yaml"
    plan.write_text(yaml.safe_dump(plan_cost.plan_document()))
    apps = plan_cost._apps(settings.redis_url, settings.stream_key, str(plan))
    body = plan_cost.bodies(10, "10% violating", variants=1)
    for name in ("on", "off"):
        in_process.cpu_per_request_us(apps[name], body, 1)
    events = stored(redis_client, settings.stream_key)
    on, off = events[:10], events[10:]
    assert [("violations" in e.get("context", {})) for e in on] == [False] * 9 + [True]
    assert not any("violations" in e.get("context", {}) for e in off)


def test_the_rows_say_the_cost_and_the_verdict(settings: Settings) -> None:
    rows = plan_cost._measure(
        settings.redis_url, settings.stream_key, REQUESTS, (1, 10), check_events=1000
    )
    assert [(r["events_per_request"], r["kind"]) for r in rows] == [
        (1, "valid"), (1, "10% violating"), (10, "valid"), (10, "10% violating"),
    ]  # fmt: skip
    for row in rows:
        assert row["rounds"] == 9 and row["requests"] == REQUESTS
        assert row["on_us"] > 0 and row["off_us"] > 0
        assert row["cost_us_per_event"] == pytest.approx(
            (row["on_us"] - row["off_us"]) / row["events_per_request"], abs=0.11
        )
        # The check alone costs something, less than a whole request, per event as per row.
        assert 0 < row["check_us"] < row["on_us"]
        assert row["check_us_per_event"] == pytest.approx(
            row["check_us"] / row["events_per_request"], abs=0.011
        )
        if row["kind"] == "valid":  # the target: what the events that keep the plan cost
            assert row["met"] == (row["check_us_per_event"] <= plan_cost.TARGET_US_PER_EVENT)
            assert ("NOT met" in report.plan_line(row)) == (not row["met"])
        else:
            assert row["met"] is None and "no target" in report.plan_line(row)
    # What the check alone times is the check: describing and tagging a violation costs more
    # than passing (about 17 µs against 1 per event).
    valid, violating = (r["check_us"] for r in rows if r["events_per_request"] == 10)
    assert violating > valid
    assert report.plan_lines({"plans": {"planned_events": 50, "rows": rows}})[1].startswith(
        "a tracking plan's cost (issue 27)"
    )


def test_the_phase_runs_alone_and_needs_only_redis() -> None:
    assert run.parse_args(["--phase", "plans"]).phases == ["plans"]
    assert phases.needs(["plans"]) == {"redis"}
