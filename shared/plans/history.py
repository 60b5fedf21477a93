"""A tracking plan against the archive: what it would have done to the events already stored
(`check`), and a plan drafted from them (`draft`), for `event-ingest plan`.

Both read the exactly-once `events` table of `event-ingest query` (shared/archive/query.py) over
an hour range, as the archive stores each event: `type`, `event`, `properties`, `traits` and
`context` as sent (a field absent from the event is absent here too), under its `source` (the
plan's `default` section for events without one).

`check` counts, per source, event and violation type, the violations the plan finds and what it
would do with each event (tag, quarantine, block), with a few examples (the event's
`messageId`, the property, the message). `draft` writes a plan that every event read satisfies:
a section per source in `tag` mode, every track event name seen, each property with the JSON
types seen for it (`number` for every number: an integer today may be 2.5 tomorrow) and
`required` listing the properties present in every event of that name; `identify` and `group`
traits alike. People edit it from there.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import msgspec

from shared.plans.model import DEFAULT_SOURCE
from shared.plans.validation import CompiledPlan, json_type

# The archive's columns an event is rebuilt from, in this order.
EVENTS_SQL = (
    "SELECT source, message_id, type, event, properties, traits, context FROM events"
    " ORDER BY received_at, message_id"
)
EXAMPLES = 3  # per (source, event, violation type)
ACTIONS = ("tag", "quarantine", "block")

_json = msgspec.json.Decoder()


def archived_events(rows: Iterable[tuple[Any, ...]]) -> Iterator[tuple[str | None, dict]]:
    """(source, event) for each row of EVENTS_SQL: the event as the plan sees it."""
    for source, message_id, kind, name, properties, traits, context in rows:
        event: dict[str, Any] = {"type": kind}
        if message_id is not None:
            event["messageId"] = message_id
        if name is not None:
            event["event"] = name
        for key, value in (("properties", properties), ("traits", traits), ("context", context)):
            if value is not None:
                event[key] = _json.decode(value) if isinstance(value, str | bytes) else value
        yield source, event


@dataclass
class Report:
    """What a plan would have done to the events read."""

    events: int = 0
    # (source, event label, violation type) -> violations found
    violations: Counter = field(default_factory=Counter)
    # (source, action) -> events the plan would have tagged, quarantined or blocked
    actions: Counter = field(default_factory=Counter)
    # (source, event label, violation type) -> up to EXAMPLES (messageId, property, message)
    examples: dict = field(default_factory=lambda: defaultdict(list))

    def as_dict(self) -> dict[str, Any]:
        """The report as JSON-ready data, the same figures as `lines`."""
        return {
            "events": self.events,
            "actions": [
                {"source": source, "action": action, "events": count}
                for (source, action), count in sorted(self.actions.items())
            ],
            "violations": [
                {
                    "source": source,
                    "event": label,
                    "type": kind,
                    "count": count,
                    "examples": [
                        {"messageId": m, "property": p, "message": text}
                        for m, p, text in self.examples[source, label, kind]
                    ],
                }
                for (source, label, kind), count in sorted(self.violations.items())
            ],
        }

    def lines(self) -> Iterator[str]:
        """The report for people."""
        yield f"{self.events} events checked"
        if not self.violations:
            yield "no violation: the plan would have stored every event as it is"
            return
        for (source, action), count in sorted(self.actions.items()):
            yield f"{source}: {count} events would be {_PAST[action]}"
        for (source, label, kind), count in sorted(self.violations.items()):
            yield f"{source} / {label} / {kind}: {count}"
            for message_id, where, text in self.examples[source, label, kind]:
                yield f"    {message_id or '(no messageId)'}: {where}: {text}"


_PAST = {"tag": "tagged", "quarantine": "quarantined", "block": "blocked"}


def check(plan: CompiledPlan, events: Iterable[tuple[str | None, dict]]) -> Report:
    """What `plan` would have done to `events` ((source, event) pairs)."""
    report = Report()
    for source, event in events:
        report.events += 1
        found = plan.violations(event, source)
        if not found:
            continue
        name = source or DEFAULT_SOURCE
        label = plan.event_label(event, source)
        for violation in found:
            key = (name, label, violation.type)
            report.violations[key] += 1
            if len(report.examples[key]) < EXAMPLES:
                report.examples[key].append(
                    (event.get("messageId"), violation.property, violation.message)
                )
        action = plan.action(found, source)
        if action in ACTIONS:
            report.actions[name, action] += 1
    return report


class _Shape:
    """The properties (or traits) seen in the events of one rule: each one's JSON types, and
    in how many of the events it was present."""

    def __init__(self) -> None:
        self.events = 0
        self.types: dict[str, set[str]] = defaultdict(set)
        self.present: Counter = Counter()

    def add(self, fields: Any) -> None:
        self.events += 1
        if not isinstance(fields, dict):
            return
        for key, value in fields.items():
            self.types[key].add(json_type(value))
            self.present[key] += 1

    def schema(self) -> dict[str, Any]:
        properties = {
            key: {"type": sorted(kinds)[0] if len(kinds) == 1 else sorted(kinds)}
            for key, kinds in sorted(self.types.items())
        }
        required = sorted(k for k, n in self.present.items() if n == self.events)
        schema: dict[str, Any] = {"type": "object", "properties": properties}
        if required:
            schema["required"] = required
        return schema


def draft(events: Iterable[tuple[str | None, dict]]) -> dict[str, Any]:
    """A plan document (for YAML or JSON) that every one of `events` satisfies."""
    track: dict[str, dict[str, _Shape]] = defaultdict(lambda: defaultdict(_Shape))
    traits: dict[str, dict[str, _Shape]] = defaultdict(lambda: defaultdict(_Shape))
    sources: set[str] = set()
    for source, event in events:
        name = source or DEFAULT_SOURCE
        sources.add(name)
        kind = event.get("type")
        if kind == "track" and isinstance(event.get("event"), str):
            track[name][event["event"]].add(event.get("properties", {}))
        elif kind in ("identify", "group"):
            traits[name][kind].add(event.get("traits", {}))
    document: dict[str, Any] = {}
    for name in sorted(sources):
        section: dict[str, Any] = {"mode": "tag", "unplanned": "tag"}
        section["track"] = {
            event: {"properties": shape.schema()} for event, shape in sorted(track[name].items())
        }
        for kind in ("identify", "group"):
            if kind in traits[name]:
                section[kind] = {"traits": traits[name][kind].schema()}
        document[name] = section
    return {"sources": document}
