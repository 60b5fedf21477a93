"""One event against a compiled plan: each violation type, each mode's action, non-object
fields."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shared.plans.validation import Violation, load_compiled

PLAN = """
sources:
  web:
    mode: {mode}
    unplanned: {unplanned}
    track:
      Order Completed:
        properties:
          type: object
          required: [revenue]
          additionalProperties: false
          properties:
            revenue: {{type: number}}
            coupon: {{type: string, maxLength: 8}}
    identify:
      traits: {{type: object, required: [email], properties: {{email: {{type: string}}}}}}
    group:
      traits: {{type: object, properties: {{employees: {{type: integer}}}}}}
    context:
      type: object
      properties: {{app: {{type: object, required: [version]}}}}
"""


def plan(mode: str = "tag", unplanned: str = "tag"):
    return load_compiled(PLAN.format(mode=mode, unplanned=unplanned))


def order(properties: object) -> dict:
    return {"type": "track", "event": "Order Completed", "properties": properties}


def test_a_planned_event_that_keeps_the_plan_has_no_violation() -> None:
    assert plan().violations(order({"revenue": 12.5, "coupon": "X"}), "web") == []


def test_unplanned_event() -> None:
    found = plan().violations({"type": "track", "event": "Signed Up", "properties": {}}, "web")
    assert found == [
        Violation("Unplanned-Event", "event", "'Signed Up' is not in the tracking plan")
    ]


def test_required_missing() -> None:
    [violation] = plan().violations(order({}), "web")
    assert violation.type == "Required-Missing"
    assert violation.property == "properties.revenue"
    assert "revenue" in violation.message


def test_datatype_mismatch() -> None:
    [violation] = plan().violations(order({"revenue": "12.50"}), "web")
    assert violation[:2] == ("Datatype-Mismatch", "properties.revenue")
    assert violation.message == '"12.50" is not of type "number"'


def test_additional_properties_one_per_property() -> None:
    found = plan().violations(order({"revenue": 1, "tax": 2, "fee": 3}), "web")
    assert sorted(v.property for v in found) == ["properties.fee", "properties.tax"]
    assert {v.type for v in found} == {"Additional-Properties"}


def test_unknown_violation() -> None:
    [violation] = plan().violations(order({"revenue": 1, "coupon": "MUCH-TOO-LONG"}), "web")
    assert violation[:2] == ("Unknown-Violation", "properties.coupon")


def test_identify_and_group_check_traits() -> None:
    compiled = plan()
    [missing] = compiled.violations({"type": "identify", "traits": {}}, "web")
    assert missing[:2] == ("Required-Missing", "traits.email")
    [mismatch] = compiled.violations({"type": "group", "traits": {"employees": 1.5}}, "web")
    assert mismatch[:2] == ("Datatype-Mismatch", "traits.employees")


def test_context_applies_to_every_type_and_page_has_no_rule_of_its_own() -> None:
    compiled = plan()
    page = {"type": "page", "properties": {"anything": [1]}, "context": {"app": {}}}
    assert compiled.violations(page, "web") == [
        Violation("Required-Missing", "context.app.version", '"version" is a required property')
    ]
    page["context"] = {"app": {"version": "1.0"}}
    assert compiled.violations(page, "web") == []
    assert compiled.violations({"type": "alias", "previousId": "a", "userId": "b"}, "web") == []


@pytest.mark.parametrize("value", [[1, 2], "revenue=1", None, 7, True])
def test_a_field_that_is_not_an_object_is_a_violation(value: object) -> None:
    [violation] = plan().violations(order(value), "web")
    assert violation[:2] == ("Datatype-Mismatch", "properties")
    assert violation.message.endswith("not an object")
    [traits] = plan().violations({"type": "identify", "traits": value}, "web")
    assert traits[:2] == ("Datatype-Mismatch", "traits")


def test_an_absent_field_is_checked_as_empty() -> None:
    [violation] = plan().violations({"type": "track", "event": "Order Completed"}, "web")
    assert violation[:2] == ("Required-Missing", "properties.revenue")


def test_a_source_without_a_section_or_default_is_not_checked() -> None:
    compiled = plan()
    assert compiled.violations(order({}), "ios") == []
    assert compiled.action([Violation("Required-Missing", "p", "m")], "ios") == "store"


def test_default_applies_to_other_sources() -> None:
    compiled = load_compiled("sources: {default: {mode: block, unplanned: block}}")
    unplanned = compiled.violations({"type": "track", "event": "X"}, "ios")
    assert [v.type for v in unplanned] == ["Unplanned-Event"]
    assert compiled.action(unplanned, None) == "block"


@pytest.mark.parametrize("mode", ["tag", "quarantine", "block"])
def test_each_mode_acts_on_a_violation(mode: str) -> None:
    compiled = plan(mode=mode, unplanned="allow")
    assert compiled.action(compiled.violations(order({"revenue": "x"}), "web"), "web") == mode
    assert compiled.action(compiled.violations(order({"revenue": 1}), "web"), "web") == "store"


@pytest.mark.parametrize(
    ("unplanned", "action"),
    [("allow", "store"), ("tag", "tag"), ("quarantine", "quarantine"), ("block", "block")],
)
def test_each_unplanned_value_acts_on_an_unplanned_event(unplanned: str, action: str) -> None:
    compiled = plan(mode="block", unplanned=unplanned)
    found = compiled.violations({"type": "track", "event": "Signed Up"}, "web")
    assert compiled.action(found, "web") == action


def test_the_most_severe_action_wins() -> None:
    # An unplanned event (allowed) whose context breaks the plan: the mode applies.
    compiled = plan(mode="quarantine", unplanned="allow")
    event = {"type": "track", "event": "Signed Up", "context": {"app": {}}}
    found = compiled.violations(event, "web")
    assert [v.type for v in found] == ["Unplanned-Event", "Required-Missing"]
    assert compiled.action(found, "web") == "quarantine"
    # And an unplanned event to block beats a mode of tag.
    compiled = plan(mode="tag", unplanned="block")
    assert compiled.action(compiled.violations(event, "web"), "web") == "block"


# Events of every kind the shortcut of `first_violating` must tell apart from the full check.
EVENTS = st.sampled_from(
    [
        order({"revenue": 12.5}),  # passes
        order({"revenue": "12.5"}),  # Datatype-Mismatch
        order({}),  # Required-Missing
        order([1]),  # not an object
        {"type": "track", "event": "Order Completed"},  # absent: checked as empty
        {"type": "track", "event": "Signed Up", "properties": {}},  # unplanned
        {"type": "track", "event": ["Order Completed"], "properties": {"revenue": 1}},
        {"type": "identify", "traits": {"email": "a@b.c"}},
        {"type": "identify", "traits": {}},
        {"type": "page", "properties": {"anything": [1]}},
        {
            "type": "track",
            "event": "Order Completed",
            "properties": {"revenue": 1},
            "context": {"app": {}},
        },  # breaks the context schema only
    ]
)
WITHOUT_CONTEXT = PLAN[: PLAN.index("    context:")]  # the same plan without its last rule


@pytest.mark.parametrize("template", [PLAN, WITHOUT_CONTEXT], ids=["context", "no context"])
@given(batch=st.lists(EVENTS, max_size=6), source=st.sampled_from(["web", "ios", None]))
def test_the_first_violating_event_is_the_first_with_violations(template, batch, source) -> None:
    compiled = load_compiled(template.format(mode="tag", unplanned="tag"))
    found = [(i, v) for i, e in enumerate(batch) if (v := compiled.violations(e, source))]
    assert compiled.first_violating(batch, source) == (found[0] if found else None)
