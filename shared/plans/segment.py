"""A tracking plan as Segment's Public API exports it, read into the same model.

The export is the answer of "List Rules from Tracking Plan" (`GET /tracking-plans/{id}/rules`):
`{"data": {"rules": [...], "pagination": {...}}}` (the bare `{"rules": [...]}` or the list of
rules are read too). Each rule has a `type` (`TRACK`, `IDENTIFY`, `GROUP`, `COMMON`, `PAGE`,
`SCREEN`), a `key` (the event name, for `TRACK`), a `version` and a `jsonSchema`: a draft-07 schema
of the whole event, whose `properties.properties`, `properties.traits` and `properties.context`
are the schemas of those fields. A Segment plan is connected to sources but says nothing of them
or of what to do with a violation, so the caller names the source section and its `mode` and
`unplanned`.

What maps:

- `TRACK` rule, `jsonSchema.properties.properties` -> `track.<key>.properties`.
- `IDENTIFY` and `GROUP` rules, `jsonSchema.properties.traits` -> `identify.traits`,
  `group.traits`.
- `COMMON` rule, `jsonSchema.properties.context` -> `context` (it applies to every event).

What does not map, listed by `load_segment_plan` (`unmapped`) rather than dropped silently:

- `PAGE` and `SCREEN` rules: the plan has no page or screen rules.
- any other part of a rule's `jsonSchema`: the `context` or `traits` of a `TRACK` rule, the
  `context` or `properties` of an `IDENTIFY`/`GROUP` rule, the `traits` or `properties` of
  `COMMON`, and constraints on the event itself (`required` at the top, other top-level keys).
  Empty parts (`{}`, which Segment writes for every part not set) are not listed.
- older versions of an event: a `TRACK` key given in several versions is checked against the
  highest (Segment picks a version by `context.protocols.event_version`, which this plan does not).
- `labels`, `description`, timestamps: not rules.
"""

from __future__ import annotations

import json
from typing import Any

from shared.plans.model import (
    MODES,
    UNPLANNED,
    Plan,
    PlanError,
    check_schema,
    one_of,
    plan_from_dict,
)

_FIELD = {"TRACK": "properties", "IDENTIFY": "traits", "GROUP": "traits", "COMMON": "context"}
_WHOLE_EVENT_KEYS = {"$schema", "type", "properties", "labels", "description", "title"}


def _rules(document: Any) -> list:
    if isinstance(document, dict) and isinstance(document.get("data"), dict):
        document = document["data"]
    if isinstance(document, dict):
        document = document.get("rules")
    if not isinstance(document, list):
        raise PlanError("segment: no `rules` list (expected the List Rules answer)")
    return document


def load_segment_plan(
    text: str, source: str = "default", mode: str = "tag", unplanned: str = "allow"
) -> tuple[Plan, list[str]]:
    """The plan of one source from a Segment export, and what of the export does not map."""
    try:
        document = json.loads(text)
    except json.JSONDecodeError as error:
        raise PlanError(f"segment: not JSON: {error}") from None
    one_of(mode, MODES, "mode")
    one_of(unplanned, UNPLANNED, "unplanned")
    section: dict[str, Any] = {"mode": mode, "unplanned": unplanned}
    track: dict[str, dict] = {}
    versions: dict[str, Any] = {}
    unmapped: list[str] = []
    for index, rule in enumerate(_rules(document)):
        where = f"segment.rules[{index}]"
        if not isinstance(rule, dict):
            raise PlanError(f"{where}: not an object")
        kind, key, version = rule.get("type"), rule.get("key"), rule.get("version")
        name = f"{kind} {key!r}" if key else str(kind)
        where = f"{where} ({name})"
        if kind in ("PAGE", "SCREEN"):
            unmapped.append(f"{name}: page and screen rules are not checked")
            continue
        if kind not in _FIELD:
            raise PlanError(f"{where}: unknown rule type {kind!r}")
        whole = check_schema(rule.get("jsonSchema"), f"{where}.jsonSchema")
        parts = whole.get("properties", {}) if isinstance(whole, dict) else {}
        if not isinstance(parts, dict):
            raise PlanError(f"{where}.jsonSchema.properties: not an object")
        field = _FIELD[kind]
        for other, schema in parts.items():
            if other != field and schema not in ({}, True):
                unmapped.append(f"{name}: the {other!r} part of the schema")
        for extra in sorted(set(whole) - _WHOLE_EVENT_KEYS if isinstance(whole, dict) else ()):
            unmapped.append(f"{name}: the event-level {extra!r}")
        schema = parts.get(field, {})
        if kind == "TRACK":
            if not isinstance(key, str) or not key:
                raise PlanError(f"{where}: a TRACK rule needs the event name as `key`")
            if key in versions:
                if version == versions[key]:
                    raise PlanError(f"{where}: duplicate rule (same key and version)")
                if _older(version, versions[key]):
                    unmapped.append(f"{name} version {version}: an older version")
                    continue
                unmapped.append(f"{name} version {versions[key]}: an older version")
            versions[key] = version
            track[key] = {"properties": schema}
        else:
            target = kind.lower()
            if target in section:
                raise PlanError(f"{where}: duplicate {kind} rule")
            section[target] = schema if kind == "COMMON" else {"traits": schema}
    if track:
        section["track"] = track
    if "common" in section:
        section["context"] = section.pop("common")
    return plan_from_dict({"sources": {source: section}}), unmapped


def _older(version: Any, than: Any) -> bool:
    try:
        return float(version) < float(than)
    except (TypeError, ValueError):
        return False
