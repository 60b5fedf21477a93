"""The event model: the Segment Spec envelope, its validation, and what the server adds.

Events stay plain dicts from the decoder to the archive: every field the client sent is kept
verbatim, and the server only adds `messageId` (when absent) and `receivedAt` (always: it is
the partitioning clock, so it must be the server's). Validation checks only the envelope.
"""

from __future__ import annotations

import uuid
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any

import msgspec

EVENT_TYPES = frozenset({"track", "identify", "page", "screen", "group", "alias"})

# Fields that must be a non-empty string for an event of a type (beyond the identity rule).
_REQUIRED_BY_TYPE: dict[str, tuple[str, ...]] = {
    "track": ("event",),
    "group": ("groupId",),
    "alias": ("userId", "previousId"),
}

# A request with thousands of bad events gets a readable answer, not a megabyte of errors.
MAX_PROBLEMS_REPORTED = 100

_json_decoder = msgspec.json.Decoder()


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a request: which event (`index`, None for the request itself),
    which field, and why."""

    index: int | None
    field: str
    message: str


class InvalidRequest(Exception):
    """The request is rejected as a whole; nothing of it may enter the stream."""

    def __init__(self, problems: list[Problem]) -> None:
        super().__init__("; ".join(f"[{p.index}] {p.field}: {p.message}" for p in problems))
        self.problems = problems

    def as_dict(self) -> dict[str, Any]:
        shown = self.problems[:MAX_PROBLEMS_REPORTED]
        return {
            "error": "invalid_request",
            "problems": [asdict(p) for p in shown],
            "problemCount": len(self.problems),
        }


def request_problem(field: str, message: str) -> InvalidRequest:
    return InvalidRequest([Problem(None, field, message)])


def decode_json(body: bytes) -> Any:
    """Parse a request body; malformed JSON (or invalid UTF-8) is the client's error."""
    try:
        return _json_decoder.decode(body)
    except msgspec.DecodeError as exc:
        raise request_problem("body", f"not valid JSON: {exc}") from None


def batch_events(document: Any) -> list[Any]:
    """The event list of a `{"batch": [...]}` document."""
    if not isinstance(document, dict):
        raise request_problem("body", "must be a JSON object with a 'batch' list")
    events = document.get("batch")
    if not isinstance(events, list):
        raise request_problem("batch", "must be a list of events")
    if not events:
        raise request_problem("batch", "must hold at least one event")
    return events


def received_at_now() -> str:
    """The server's clock as ISO-8601 UTC with milliseconds and a `Z`, as Segment writes it."""
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def prepare(events: list[Any], received_at: str) -> list[dict[str, Any]]:
    """Validate every event and stamp it; raise `InvalidRequest` listing every problem found.

    Stamping happens only once the whole request is known to be valid, so a rejected request
    leaves its input untouched.
    """
    problems: list[Problem] = []
    for index, event in enumerate(events):
        problems.extend(_envelope_problems(index, event))
    if problems:
        raise InvalidRequest(problems)
    for event in events:
        if "messageId" not in event:
            event["messageId"] = str(uuid.uuid4())
        event["receivedAt"] = received_at
    return events


def _envelope_problems(index: int, event: Any) -> list[Problem]:
    if not isinstance(event, dict):
        return [Problem(index, "", "event must be a JSON object")]
    event_type = event.get("type")
    if event_type not in EVENT_TYPES:
        allowed = ", ".join(sorted(EVENT_TYPES))
        return [Problem(index, "type", f"must be one of {allowed}")]
    problems = [
        Problem(index, name, "must be a non-empty string")
        for name in _REQUIRED_BY_TYPE.get(event_type, ())
        if not _is_id(event.get(name))
    ]
    if event_type != "alias":
        problems.extend(_identity_problems(index, event))
    if "messageId" in event and not _is_id(event["messageId"]):
        problems.append(Problem(index, "messageId", "must be a non-empty string when given"))
    return problems


def _identity_problems(index: int, event: dict[str, Any]) -> list[Problem]:
    user_id, anonymous_id = event.get("userId"), event.get("anonymousId")
    if user_id is None and anonymous_id is None:
        return [Problem(index, "userId", "userId or anonymousId is required")]
    return [
        Problem(index, name, "must be a non-empty string when given")
        for name, value in (("userId", user_id), ("anonymousId", anonymous_id))
        if value is not None and not _is_id(value)
    ]


def _is_id(value: Any) -> bool:
    return isinstance(value, str) and value != ""
