"""One event checked against a tracking plan: its violations, and what the plan does about them.

Every schema is compiled once, when the plan is compiled (`compile_plan`); checking an event is
then one dict lookup for its rule and a compiled `is_valid`, with the detailed errors walked only
when the event is invalid.

What is checked, by the event's `type`:

- `track`: `properties` against the event name's schema; a name the plan does not list gives one
  `Unplanned-Event` (and no other check of its properties).
- `identify`, `group`: `traits` against the section's schema, when it has one.
- `page`, `screen`, `alias`: no rule of their own (the plan has no section for them).
- every type, `page`/`screen`/`alias` included: `context` against the section's `context`
  schema, when it has one (the issue's "context every event must satisfy").

A field that is absent is checked as `{}` (SDKs leave out empty properties); one that is present
but not an object (a list, a string, `null`) is a `Datatype-Mismatch` on the field, never an
exception.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal, NamedTuple

import jsonschema_rs

from shared.plans.model import DEFAULT_SOURCE, Plan, PlanError, Schema, load_plan

UNPLANNED_EVENT = "Unplanned-Event"
REQUIRED_MISSING = "Required-Missing"
DATATYPE_MISMATCH = "Datatype-Mismatch"
ADDITIONAL_PROPERTIES = "Additional-Properties"
UNKNOWN_VIOLATION = "Unknown-Violation"

Action = Literal["store", "tag", "quarantine", "block"]
# Severity order: when several violations call for different actions, the most severe wins.
_SEVERITY: dict[str, int] = {"store": 0, "allow": 0, "tag": 1, "quarantine": 2, "block": 3}
_ACTIONS: tuple[Action, ...] = ("store", "tag", "quarantine", "block")

# jsonschema-rs error kinds (ValidationErrorKind subclasses, by `kind.name`) to RudderStack's names.
_KIND_TYPES = {
    "required": REQUIRED_MISSING,
    "type": DATATYPE_MISMATCH,
    "additionalProperties": ADDITIONAL_PROPERTIES,
}


# Bounds on what one event's violations hold (the tag, `context.violations`, is stored with the
# event: its size must be a constant ingest can count, events.max_stored_bytes): at most this
# many violations, paths and messages cut to these many UTF-8 bytes (a message may quote the
# value, which the client chose).
MAX_VIOLATIONS = 5
MAX_PROPERTY_BYTES = 96
MAX_MESSAGE_BYTES = 120
# The most MsgPack bytes `context.violations` adds to an event: its key (11) and array header
# (1); per violation a map header (1), "type" (5) and the longest type (1 + 21), "property" (9)
# and "message" (8), each text with a 2-byte header.
MAX_TAG_BYTES = 12 + MAX_VIOLATIONS * (
    1 + 5 + 22 + 9 + 2 + MAX_PROPERTY_BYTES + 8 + 2 + MAX_MESSAGE_BYTES
)


class Violation(NamedTuple):
    """One way an event breaks its plan: RudderStack's `type`, the property path, one line."""

    type: str
    property: str
    message: str

    def as_dict(self) -> dict[str, str]:
        return {"type": self.type, "property": self.property, "message": self.message}


@dataclass(frozen=True)
class _CompiledSource:
    mode: str
    unplanned: str
    track: Mapping[str, Any]
    identify: Any
    group: Any
    context: Any


def _compile(schema: Schema, rule: str) -> Any:
    # validator_for honours `$schema` (Segment's rules say draft-07) and takes 2020-12 otherwise;
    # compiling also catches what the meta-schema does not (a pattern that is not a regex, a
    # `$ref` that does not resolve).
    try:
        return jsonschema_rs.validator_for(schema)
    except (jsonschema_rs.ValidationError, jsonschema_rs.ReferencingError, ValueError) as error:
        first = (getattr(error, "message", None) or str(error)).strip().splitlines()
        raise PlanError(f"{rule}: does not compile: {first[0] if first else error}") from None


class CompiledPlan:
    """A plan with every schema compiled: an event's `violations`, the `action` they call for."""

    def __init__(self, plan: Plan) -> None:
        self.plan = plan
        self._sources: dict[str, _CompiledSource] = {}
        for name, section in plan.sources.items():
            rule = f"sources.{name}"
            self._sources[name] = _CompiledSource(
                mode=section.mode,
                unplanned=section.unplanned,
                track={
                    event: _compile(schema, f"{rule}.track.{event}.properties")
                    for event, schema in section.track.items()
                },
                identify=_optional(section.identify, f"{rule}.identify.traits"),
                group=_optional(section.group, f"{rule}.group.traits"),
                context=_optional(section.context, f"{rule}.context"),
            )
        self._default = self._sources.get(DEFAULT_SOURCE)

    def _section(self, source: str | None) -> _CompiledSource | None:
        return self._sources.get(source, self._default)  # `source` None: no such key

    def first_violating(
        self, events: list[dict], source: str | None, start: int = 0
    ) -> tuple[int, list[Violation]] | None:
        """The position of the first of `events` from `start` on that breaks a rule of the
        plan of `source`, and its violations; None if none does. Ingest asks it of every
        request, and most events pass: a planned track event that passes costs a schema check
        and a few lookups, the section being looked up once per call."""
        section = self._section(source)
        if section is None:
            return None
        track = section.track if section.context is None else None  # else: every rule, always
        for index in range(start, len(events)):
            event = events[index]
            if track is not None and event.get("type") == "track":
                name = event.get("event")
                validator = track.get(name) if type(name) is str else None
                properties = event.get("properties")
                if (
                    validator is not None
                    and type(properties) is dict
                    and validator.is_valid(properties)
                ):
                    continue
            if found := _section_violations(section, event):
                return index, found
        return None

    def violations(self, event: dict, source: str | None) -> list[Violation]:
        """The event's violations of the plan of `source` (`default` if it has no section)."""
        section = self._section(source)
        return [] if section is None else _section_violations(section, event)

    def event_label(self, event: dict, source: str | None) -> str:
        """The event's name as the metrics count it, from a bounded set: a track event's name
        if the plan of `source` lists it, else `unplanned`; any other event's type."""
        kind = event.get("type")
        if kind != "track":
            return str(kind)
        section = self._section(source)
        name = event.get("event")
        planned = section is not None and isinstance(name, str) and name in section.track
        return name if planned else "unplanned"

    def action(self, violations: list[Violation], source: str | None) -> Action:
        """What to do with an event with these violations: the most severe action any calls for.

        An `Unplanned-Event` calls for the section's `unplanned` (`allow` is `store`), every other
        violation for its `mode`. So `unplanned: allow` lets an unplanned event through untouched
        only when nothing else is wrong with it: with a `context` violation too, `mode` applies.
        """
        section = self._section(source)
        if section is None or not violations:
            return "store"
        worst = 0
        for violation in violations:
            wanted = section.unplanned if violation.type == UNPLANNED_EVENT else section.mode
            worst = max(worst, _SEVERITY[wanted])
        return _ACTIONS[worst]


def _section_violations(section: _CompiledSource, event: dict) -> list[Violation]:
    """The event's violations of one source's section, at most MAX_VIOLATIONS."""
    found: list[Violation] = []
    kind = event.get("type")
    if kind == "track":
        name = event.get("event")
        validator = section.track.get(name) if type(name) is str else None
        if validator is None:
            message = _cut(f"{name!r} is not in the tracking plan", MAX_MESSAGE_BYTES)
            found.append(Violation(UNPLANNED_EVENT, "event", message))
        else:
            _check(validator, event, "properties", found)
    elif kind == "identify" and section.identify is not None:
        _check(section.identify, event, "traits", found)
    elif kind == "group" and section.group is not None:
        _check(section.group, event, "traits", found)
    if section.context is not None and len(found) < MAX_VIOLATIONS:
        _check(section.context, event, "context", found)
    return found if len(found) <= MAX_VIOLATIONS else found[:MAX_VIOLATIONS]


def _optional(schema: Schema | None, rule: str) -> Any:
    return None if schema is None else _compile(schema, rule)


def _check(validator: Any, event: dict, field: str, found: list[Violation]) -> None:
    value = event.get(field, _ABSENT)
    if value is _ABSENT:
        value = {}
    elif not isinstance(value, dict):
        found.append(
            Violation(DATATYPE_MISMATCH, field, f"{field} is {_json_type(value)}, not an object")
        )
        return
    if validator.is_valid(value):
        return
    # Errors are produced as they are asked for: an event with thousands of bad properties
    # costs no more than MAX_VIOLATIONS of them.
    for error in validator.iter_errors(value):
        found.extend(_violations_of(error, field))
        if len(found) >= MAX_VIOLATIONS:
            return


_ABSENT = object()


def json_type(value: Any) -> str:
    """The JSON Schema type of a decoded JSON value (`number` for integers too)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"


_WITH_ARTICLE = {"boolean": "a boolean", "number": "a number", "string": "a string",
                 "array": "an array", "object": "an object"}  # fmt: skip


def _json_type(value: Any) -> str:
    """How a message names the type of `value`: `null`, `a number`, `an array`."""
    kind = json_type(value)
    return _WITH_ARTICLE.get(kind, kind)


def _violations_of(error: jsonschema_rs.ValidationError, field: str) -> list[Violation]:
    path = ".".join([field, *(str(part) for part in error.instance_path)])
    kind = error.kind
    name = kind.name
    text = error.message.strip()
    message = _cut(text.splitlines()[0] if text else name, MAX_MESSAGE_BYTES)
    if name == "required":
        return [Violation(REQUIRED_MISSING, _cut(f"{path}.{kind.property}"), message)]
    if name == "additionalProperties":
        return [
            Violation(ADDITIONAL_PROPERTIES, _cut(f"{path}.{unexpected}"), message)
            for unexpected in kind.unexpected[:MAX_VIOLATIONS]
        ]
    return [Violation(_KIND_TYPES.get(name, UNKNOWN_VIOLATION), _cut(path), message)]


def _cut(text: str, limit: int = MAX_PROPERTY_BYTES) -> str:
    """`text` in at most `limit` UTF-8 bytes, cut at a character boundary, marked by "…"."""
    encoded = text.encode("utf-8", "replace")
    if len(encoded) <= limit:
        return text
    return encoded[: limit - 3].decode("utf-8", "ignore") + "…"


def compile_plan(plan: Plan) -> CompiledPlan:
    """Every schema of `plan` compiled; PlanError naming the rule of one that does not compile."""
    return CompiledPlan(plan)


def load_compiled(text: str) -> CompiledPlan:
    """A plan's YAML or JSON text, loaded, checked and compiled."""
    return compile_plan(load_plan(text))
