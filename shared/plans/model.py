"""The tracking plan as a model, read from YAML or JSON text.

The shape, one section per source (the write key's `source` name; `default` for every other
source)::

    sources:
      web:
        mode: tag              # tag | quarantine | block: what a violation does (default tag)
        unplanned: tag         # allow | tag | quarantine | block: a track event not planned
                               # (default allow)
        track:
          Order Completed:
            properties: {type: object, required: [revenue]}
        identify:
          traits: {type: object}
        group:
          traits: {type: object}
        context: {type: object}   # every event of the source, whatever its type

Loading refuses, with one line naming the rule, anything else: a key not in this shape, a mode or
`unplanned` value not listed, a schema that is not valid JSON Schema (checked against its
meta-schema: draft 7 when the schema says `$schema` draft-07, 2020-12 when it says nothing), a
duplicate key (YAML and JSON alike: a plan is never silently merged), an event name that YAML
reads as something other than text (`on:`, `123:`: quote it), and a plan without sources.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import jsonschema_rs
import yaml

MODES = ("tag", "quarantine", "block")
UNPLANNED = ("allow", "tag", "quarantine", "block")
DEFAULT_SOURCE = "default"

Schema = dict[str, Any] | bool

_SOURCE_KEYS = ("mode", "unplanned", "track", "identify", "group", "context")


class PlanError(ValueError):
    """A plan that cannot be used; the message is one line and names the rule."""


@dataclass(frozen=True)
class SourcePlan:
    """One source's section: its actions and the schemas of its rules."""

    name: str
    mode: str = "tag"
    unplanned: str = "allow"
    track: Mapping[str, Schema] = field(default_factory=dict)
    identify: Schema | None = None
    group: Schema | None = None
    context: Schema | None = None

    def as_document(self) -> dict[str, Any]:
        """The section as a plan file writes it: what `source_from_dict` reads back."""
        document: dict[str, Any] = {
            "mode": self.mode,
            "unplanned": self.unplanned,
            "track": {name: {"properties": schema} for name, schema in self.track.items()},
        }
        for key in ("identify", "group"):
            if (traits := getattr(self, key)) is not None:
                document[key] = {"traits": traits}
        if self.context is not None:
            document["context"] = self.context
        return document


@dataclass(frozen=True)
class Plan:
    """A deployment's tracking plan: a section per source name."""

    sources: Mapping[str, SourcePlan]

    def for_source(self, source: str | None) -> SourcePlan | None:
        """The section that applies to `source`: its own, else `default`, else none."""
        section = self.sources.get(source) if source is not None else None
        return section if section is not None else self.sources.get(DEFAULT_SOURCE)


class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that refuses a key written twice in one mapping (PyYAML keeps the last)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: set = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            if key in seen:
                line = key_node.start_mark.line + 1
                raise PlanError(f"duplicate key {key!r} at line {line}")
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def _unique_pairs(pairs: list[tuple[str, Any]]) -> dict:
    result = {}
    for key, value in pairs:
        if key in result:
            raise PlanError(f"duplicate key {key!r}")
        result[key] = value
    return result


def parse_text(text: str) -> Any:
    """The document of a plan file, JSON when it starts with `{`, YAML otherwise."""
    try:
        if text.lstrip().startswith("{"):
            return json.loads(text, object_pairs_hook=_unique_pairs)
        return yaml.load(text, Loader=_UniqueKeyLoader)  # a SafeLoader: builds no objects
    except (yaml.YAMLError, json.JSONDecodeError) as error:
        raise PlanError(f"not YAML or JSON: {' '.join(str(error).split())}") from None


def check_schema(schema: Any, rule: str) -> Schema:
    """`schema` if it is a valid JSON Schema, else PlanError naming `rule`."""
    if not isinstance(schema, dict | bool):
        raise PlanError(f"{rule}: a schema must be an object, not {type(schema).__name__}")
    try:
        jsonschema_rs.meta.validate(schema)
    except (jsonschema_rs.ValidationError, jsonschema_rs.ReferencingError) as error:
        raise PlanError(f"{rule}: not a valid JSON Schema: {_first_line(error)}") from None
    return schema


def _first_line(error: Exception) -> str:
    text = getattr(error, "message", None) or str(error)
    return text.strip().splitlines()[0] if text.strip() else type(error).__name__


def _mapping(value: Any, rule: str) -> dict:
    if not isinstance(value, dict):
        raise PlanError(f"{rule}: must be a mapping, not {type(value).__name__}")
    for key in value:
        if not isinstance(key, str):
            raise PlanError(f"{rule}: key {key!r} is not text (quote it)")
    return value


def _only(value: dict, allowed: tuple[str, ...], rule: str) -> None:
    unknown = [key for key in value if key not in allowed]
    if unknown:
        raise PlanError(f"{rule}: unknown key {unknown[0]!r} (allowed: {', '.join(allowed)})")


def _one_schema(section: Any, key: str, rule: str) -> Schema:
    """The schema under `key` of a `{key: schema}` rule (`traits`, `properties`)."""
    section = _mapping(section, rule)
    _only(section, (key,), rule)
    if key not in section:
        raise PlanError(f"{rule}: missing {key!r}")
    return check_schema(section[key], f"{rule}.{key}")


def one_of(value: Any, choices: tuple[str, ...], rule: str) -> str:
    """`value` if it is one of `choices`; else a PlanError naming `rule`."""
    if value not in choices:
        raise PlanError(f"{rule}: {value!r} is not one of {', '.join(choices)}")
    return value


def source_from_dict(name: str, section: Any) -> SourcePlan:
    """One source's section, checked."""
    rule = f"sources.{name}"
    section = _mapping(section, rule)
    _only(section, _SOURCE_KEYS, rule)
    track = {}
    for event, rules in _mapping(section.get("track", {}) or {}, f"{rule}.track").items():
        track[event] = _one_schema(rules, "properties", f"{rule}.track.{event}")
    return SourcePlan(
        name=name,
        mode=one_of(section.get("mode", "tag"), MODES, f"{rule}.mode"),
        unplanned=one_of(section.get("unplanned", "allow"), UNPLANNED, f"{rule}.unplanned"),
        track=track,
        identify=(
            _one_schema(section["identify"], "traits", f"{rule}.identify")
            if "identify" in section
            else None
        ),
        group=(
            _one_schema(section["group"], "traits", f"{rule}.group") if "group" in section else None
        ),
        context=(
            check_schema(section["context"], f"{rule}.context") if "context" in section else None
        ),
    )


def plan_from_dict(document: Any) -> Plan:
    """A plan from its parsed document, checked."""
    document = _mapping(document, "plan")
    _only(document, ("sources",), "plan")
    sources = _mapping(document.get("sources") or {}, "sources")
    if not sources:
        raise PlanError("plan: no sources (give at least one, or `default`)")
    return Plan({name: source_from_dict(name, section) for name, section in sources.items()})


def load_plan(text: str) -> Plan:
    """A plan from the text of a YAML or JSON file; PlanError (one line) when it is unusable."""
    return plan_from_dict(parse_text(text))
