"""Loading a tracking plan: the issue's shape in YAML and JSON, and every bad plan refused with
one line naming the rule."""

from __future__ import annotations

import json

import pytest
import yaml

from shared.plans.model import PlanError, load_plan, source_from_dict
from shared.plans.validation import load_compiled

ISSUE_EXAMPLE = """
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
"""


def test_the_issue_example_loads() -> None:
    plan = load_plan(ISSUE_EXAMPLE)
    web = plan.sources["web"]
    assert (web.mode, web.unplanned) == ("tag", "tag")
    assert web.track["Order Completed"]["required"] == ["revenue"]
    assert web.identify == {"type": "object", "properties": {"email": {"type": "string"}}}
    assert web.group is None and web.context is None


def test_json_loads_the_same_plan() -> None:
    as_json = json.dumps(yaml.safe_load(ISSUE_EXAMPLE))
    assert load_plan(as_json) == load_plan(ISSUE_EXAMPLE)


def test_a_source_without_a_section_gets_default() -> None:
    plan = load_plan("sources: {default: {mode: block}, web: {}}")
    assert plan.for_source("web").name == "web"
    assert plan.for_source("ios").name == "default"
    assert plan.for_source(None).name == "default"
    assert load_plan("sources: {web: {}}").for_source("ios") is None


@pytest.mark.parametrize(
    ("text", "named"),
    [
        ("sources: {}", "plan: no sources"),
        ("{}", "plan: no sources"),
        ("other: 1\nsources: {web: {}}", "plan: unknown key 'other'"),
        ("sources: {web: {mode: drop}}", "sources.web.mode: 'drop' is not one of"),
        ("sources: {web: {unplanned: omit}}", "sources.web.unplanned: 'omit' is not one of"),
        ("sources: {web: {colour: red}}", "sources.web: unknown key 'colour'"),
        (
            "sources: {web: {track: {Signed Up: {traits: {}}}}}",
            "sources.web.track.Signed Up: unknown key 'traits'",
        ),
        ("sources: {web: {track: {Signed Up: {}}}}", "sources.web.track.Signed Up: missing"),
        ("sources: {web: {identify: {properties: {}}}}", "sources.web.identify: unknown key"),
        (
            "sources: {web: {track: {Signed Up: {properties: {type: text}}}}}",
            "sources.web.track.Signed Up.properties: not a valid JSON Schema",
        ),
        (
            "sources: {web: {track: {Signed Up: {properties: {required: revenue}}}}}",
            "sources.web.track.Signed Up.properties: not a valid JSON Schema",
        ),
        (
            "sources: {web: {group: {traits: {minProperties: -1}}}}",
            "sources.web.group.traits: not a valid JSON Schema",
        ),
        ("sources: {web: {context: [1]}}", "sources.web.context: a schema must be an object"),
        ("sources: {web: {track: {on: {properties: {}}}}}", "key True is not text"),
        ("sources: {web: [1]}", "sources.web: must be a mapping"),
        ("sources: [", "not YAML or JSON"),
    ],
)
def test_a_bad_plan_is_refused_naming_the_rule(text: str, named: str) -> None:
    with pytest.raises(PlanError) as refused:
        load_compiled(text)
    assert named in str(refused.value)
    assert "\n" not in str(refused.value)


def test_a_pattern_that_is_not_a_regex_is_refused_at_compile() -> None:
    text = "sources: {web: {track: {E: {properties: {properties: {a: {pattern: '(['}}}}}}}"
    with pytest.raises(PlanError, match=r"^sources\.web\.track\.E\.properties: "):
        load_compiled(text)


@pytest.mark.parametrize(
    "text",
    [
        "sources:\n  web: {}\n  web: {mode: block}\n",
        "sources:\n  web:\n    track:\n      Signed Up: {properties: {}}\n"
        "      Signed Up: {properties: {required: [plan]}}\n",
        "sources:\n  web:\n    mode: tag\n    mode: block\n",
    ],
)
def test_a_duplicate_yaml_key_is_refused_not_merged(text: str) -> None:
    with pytest.raises(PlanError, match=r"^duplicate key '\w+( Up)?' at line \d+$"):
        load_plan(text)


def test_a_duplicate_json_key_is_refused() -> None:
    text = '{"sources": {"web": {"track": {"E": {"properties": {}}, "E": {"properties": {}}}}}}'
    with pytest.raises(PlanError, match="duplicate key 'E'"):
        load_plan(text)


@pytest.mark.parametrize(
    "section",
    [
        {"mode": "block", "unplanned": "tag", "track": {}},
        {
            "mode": "quarantine",
            "unplanned": "allow",
            "track": {"Order Completed": {"properties": {"type": "object", "required": ["a"]}}},
            "identify": {"traits": {"type": "object"}},
            "group": {"traits": True},
            "context": {"type": "object", "properties": {"app": {"type": "object"}}},
        },
    ],
    ids=["bare", "every rule"],
)
def test_a_section_written_out_reads_back_the_same(section: dict) -> None:
    read = source_from_dict("web", section)
    assert read.as_document() == section
    assert source_from_dict("web", read.as_document()) == read
