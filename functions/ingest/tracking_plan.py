"""The tracking plan at ingest (TRACKING_PLAN, shared/plans/): each event a request stores is
checked against the plan of its source, and its violations act as the plan says:

- `tag`: the event is stored with `context.violations` (at most MAX_VIOLATIONS of them, each
  `{type, property, message}`), in a context of its own (a batch's shared context is copied);
- `quarantine`: the event is tagged alike and stored under a root of its own (`quarantine/`),
  never with the other events: the stream entry marks it (`codec`'s `q` field), and the
  consumer stores it there;
- `block`: the event is not stored. On Segment's paths the request is still answered as
  accepted (an SDK can do nothing with a 400 but drop the batch, or retry it forever); on the
  native `/batch` and `/events` the answer is 400 `tracking_plan_violation` listing the
  violations, and nothing of the request is stored, as with any invalid request.

Suppressed events are never checked: suppression comes first (functions/ingest/app.py), so a
suppressed subject's blocked event is answered 2xx and stored nowhere. The plan checks events
as the client sent them (stamped, before enrichment adds the server's fields to `context`).

For the metrics (functions/ingest/instrumentation.py), the request's record gets `violations`,
a list of (source, event, violation type) labels, and `blocked`, the count of events not
stored.
"""

from __future__ import annotations

from collections.abc import Set as AbstractSet
from typing import Any

from functions.ingest.instrumentation import RequestRecord
from shared import events
from shared.plans.source import reloading_plan
from shared.plans.validation import MAX_TAG_BYTES, CompiledPlan, Violation
from shared.settings import Settings


class Blocked(events.InvalidRequest):
    """A native request holding an event the plan blocks: refused whole, with its violations."""

    code = "tracking_plan_violation"


class TrackingPlan:
    """The plan one ingest process applies to each request's events (none without
    TRACKING_PLAN). Unreadable or invalid at start: ConfigError, and ingest does not start."""

    def __init__(self, settings: Settings) -> None:
        self._plan = reloading_plan(settings)
        # What tagging adds to an event at most (events.max_stored_bytes counts it).
        self.max_added_bytes = 0 if self._plan is None else MAX_TAG_BYTES

    def checked(
        self,
        prepared: list[dict[str, Any]],
        source: str | None,
        refuse_blocked: bool,
        record: RequestRecord,
    ) -> tuple[list[dict[str, Any]], AbstractSet[int]]:
        """The events of `prepared` to store, violators tagged in place, and the `id()`s of
        those to quarantine; `Blocked` if `refuse_blocked` (the native paths) and the plan
        blocks any of them."""
        if self._plan is None:
            return prepared, _NONE
        plan = self._plan.value()
        first = plan.first_violating(prepared, source)
        if first is None:  # most requests break no rule: nothing made
            return prepared, _NONE
        return _acted_on(plan, prepared, source, refuse_blocked, record, *first)


_NONE: frozenset[int] = frozenset()


def _acted_on(
    plan: CompiledPlan,
    prepared: list[dict[str, Any]],
    source: str | None,
    refuse_blocked: bool,
    record: RequestRecord,
    first: int,
    found: list[Violation],
) -> tuple[list[dict[str, Any]], AbstractSet[int]]:
    """`checked` from the first event that breaks a rule, at `first`, with its `found`: each
    violating event acted on, the passing ones between them kept as they are."""
    kept: list[dict[str, Any]] = []
    quarantined: set[int] = set()
    blocked: list[events.Problem] = []
    labels: list[tuple[str, str, str]] = []
    source_label = source or "default"
    passed_from = 0  # the passing events from here to the violating one are kept
    violating: tuple[int, list[Violation]] | None = (first, found)
    while violating is not None:
        index, found = violating
        kept.extend(prepared[passed_from:index])
        event = prepared[index]
        name = plan.event_label(event, source)
        labels.extend((source_label, name, violation.type) for violation in found)
        action = plan.action(found, source)
        if action == "block":
            blocked.extend(_problem(index, violation) for violation in found)
        else:
            if action != "store":
                _tag(event, found)
            if action == "quarantine":
                quarantined.add(id(event))
            kept.append(event)
        passed_from = index + 1
        violating = plan.first_violating(prepared, source, passed_from)
    kept.extend(prepared[passed_from:])
    record.violations = labels
    if blocked and refuse_blocked:
        raise Blocked(blocked)
    record.blocked = len(prepared) - len(kept)
    return (kept if len(kept) < len(prepared) else prepared), quarantined


def positions(stored: list[dict[str, Any]], quarantined: AbstractSet[int]) -> list[int]:
    """Where in `stored` the events to quarantine are (the entry's mark)."""
    if not quarantined:
        return []
    return [index for index, event in enumerate(stored) if id(event) in quarantined]


def _tag(event: dict[str, Any], found: list[Violation]) -> None:
    # A context of its own: the batch's context may be shared by the events that had none.
    context = event.get("context")
    tagged = dict(context) if isinstance(context, dict) else {}
    tagged["violations"] = [violation.as_dict() for violation in found]
    event["context"] = tagged


def _problem(index: int, violation: Violation) -> events.Problem:
    return events.Problem(index, violation.property, f"{violation.type}: {violation.message}")
