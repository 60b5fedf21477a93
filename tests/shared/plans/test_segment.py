"""A Segment Public API tracking-plan export (List Rules from Tracking Plan, built from its
documented shape) loads into the same model and enforces the same rules as the native plan."""

from __future__ import annotations

from pathlib import Path

import pytest

from shared.plans.model import PlanError, load_plan
from shared.plans.segment import load_segment_plan
from shared.plans.validation import compile_plan

EXPORT = (Path(__file__).parent / "segment_rules.json").read_text()

# The same rules written natively (Order Completed at its highest version, 2).
NATIVE = """
sources:
  web:
    mode: block
    unplanned: tag
    track:
      Order Completed:
        properties:
          type: object
          required: [revenue]
          additionalProperties: false
          properties: {revenue: {type: number}, currency: {type: string}}
    identify:
      traits: {type: object, required: [email], properties: {email: {type: string}}}
    group:
      traits: {type: object, properties: {employees: {type: integer}}}
    context:
      type: object
      properties: {app: {type: object, required: [version]}}
"""

EVENTS = [
    {"type": "track", "event": "Order Completed", "properties": {"revenue": 1}},
    {"type": "track", "event": "Order Completed", "properties": {"revenue": "1"}},
    {"type": "track", "event": "Order Completed", "properties": {"tax": 1}},
    {"type": "track", "event": "Order Completed", "properties": ["revenue"]},
    {"type": "track", "event": "Signed Up", "properties": {}},
    {"type": "identify", "traits": {"email": 3}},
    {"type": "identify", "traits": {}},
    {"type": "group", "traits": {"employees": "many"}},
    {"type": "page", "name": "Home", "properties": {}, "context": {"app": {}}},
    {"type": "screen", "name": "Home", "context": {"app": {"version": "2"}}},
]


def segment():
    return load_segment_plan(EXPORT, source="web", mode="block", unplanned="tag")


def test_the_export_loads_into_the_native_plan() -> None:
    plan, _ = segment()
    assert plan == load_plan(NATIVE)


@pytest.mark.parametrize("event", EVENTS)
def test_the_export_enforces_the_same_rules(event: dict) -> None:
    from_segment, native = compile_plan(segment()[0]), compile_plan(load_plan(NATIVE))
    found = from_segment.violations(event, "web")
    assert found == native.violations(event, "web")
    assert from_segment.action(found, "web") == native.action(found, "web")


def test_what_does_not_map_is_listed() -> None:
    _, unmapped = segment()
    assert unmapped == [
        "TRACK 'Order Completed': the 'traits' part of the schema",
        "TRACK 'Order Completed' version 1: an older version",
        "PAGE 'Home': page and screen rules are not checked",
    ]


@pytest.mark.parametrize(
    ("text", "named"),
    [
        ('{"data": {}}', "segment: no `rules` list"),
        ('{"rules": [{"type": "ALIAS", "jsonSchema": {}}]}', "unknown rule type 'ALIAS'"),
        ('{"rules": [{"type": "TRACK", "jsonSchema": {}}]}', "needs the event name as `key`"),
        (
            '{"rules": [{"type": "TRACK", "key": "E", "jsonSchema": {"type": "text"}}]}',
            "segment.rules[0] (TRACK 'E').jsonSchema: not a valid JSON Schema",
        ),
        (
            '{"rules": [{"type": "TRACK", "key": "E", "version": 1, "jsonSchema": {}},'
            ' {"type": "TRACK", "key": "E", "version": 1, "jsonSchema": {}}]}',
            "segment.rules[1] (TRACK 'E'): duplicate rule",
        ),
        (
            '{"rules": [{"type": "IDENTIFY", "jsonSchema": {}},'
            ' {"type": "IDENTIFY", "jsonSchema": {}}]}',
            "duplicate IDENTIFY rule",
        ),
    ],
)
def test_a_bad_export_is_refused_naming_the_rule(text: str, named: str) -> None:
    with pytest.raises(PlanError) as refused:
        load_segment_plan(text)
    assert named in str(refused.value)
