"""The event model: the Segment Spec envelope, its validation, and what the server adds.

Events stay plain dicts from the decoder to the archive: every field the client sent is kept
verbatim, except `writeKey` (a secret, never stored) and, once ingest enriches the events
(shared/enrichment/), `context.ip` as IP_HANDLING has it. The server adds:
- `messageId` (a UUID4) when absent;
- `receivedAt`, always: it is the partitioning clock, so it must be the server's;
- `timestamp` corrected for the client's clock skew when the request carries `sentAt`
  (`receivedAt - (sentAt - originalTimestamp)`, as Segment does, keeping `originalTimestamp`),
  else the client's `timestamp`, else `receivedAt`;
- `source`, the name of the write key that authenticated the request (a client's own
  `source` is dropped: the field is the server's);
- the request's batch-level `context` and `integrations`, merged under the event's own keys.
Validation checks only the envelope, never the payload. What a request stores is bounded
before anything is stamped (`check_stored_size`, `max_stored_bytes`): a few bytes sent must
not become megabytes in the stream.
"""

from __future__ import annotations

import uuid
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec

from shared import garbage_collection

EVENT_TYPES = frozenset({"track", "identify", "page", "screen", "group", "alias"})

# IDs an event of a type must have (beyond the identity rule every other type follows).
_REQUIRED_IDS_BY_TYPE: dict[str, tuple[str, ...]] = {
    "group": ("groupId",),
    "alias": ("userId", "previousId"),
}

# A request with thousands of bad events gets a readable answer, not a megabyte of errors.
MAX_PROBLEMS_REPORTED = 100

# A request may hold at most one event per this many bytes of MAX_BODY_BYTES (8,192 at 1 MiB).
# The work and the stamp are per event: 1 MiB of 27-byte events would be 38,000 events to
# validate, stamp and store (~150 bytes each). SDKs' events are 250 bytes and more.
MIN_BYTES_PER_EVENT = 128
# The batch's context and integrations are stored again in each event: these extra copies may
# add at most this many times the body (and at most MAX_BODY_BYTES). SDKs put a ~50-byte
# `library` context there, beside events of 250 bytes and more: copies of a fifth of the body.
MAX_COPIES_PER_BODY = 3
# The most one event grows when stamped (MsgPack bytes), beside its copies of the batch's
# fields and its source's name: type 14, context and integrations keys 27, messageId 47,
# receivedAt 36, source key 10, originalTimestamp and a new timestamp 43, map header 4.
STAMP_BYTES = 192
# MsgPack holds a JSON float of 3 characters ("1e1", and a comma) in 9 bytes; nothing else
# it holds is larger than in JSON. So events' MsgPack is at most 9/4 of their JSON.
_FLOAT_GROWTH = 9 / 4

_json_decoder = msgspec.json.Decoder()
_timestamps_decoder = msgspec.json.Decoder(list[str])
_json_encoder = msgspec.json.Encoder()
_msgpack_encoder = msgspec.msgpack.Encoder()


@dataclass(frozen=True)
class Envelope:
    """What a request says about all of its events: Segment's batch-level fields, the write
    key's source, and the event type the path implies (`/v1/track`)."""

    source: str | None = None
    sent_at: Any = None
    context: Any = None
    integrations: Any = None
    default_type: str | None = None


NO_ENVELOPE = Envelope()


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a request: which event (`index`, None for the request itself),
    which field, and why."""

    index: int | None
    field: str
    message: str


class InvalidRequest(Exception):
    """The request is rejected as a whole; nothing of it may enter the stream."""

    # The answer's error code (a subclass may be more precise).
    code = "invalid_request"

    def __init__(self, problems: list[Problem]) -> None:
        # Only the reported problems: a batch of 8,192 bad events has 57,000 of them.
        shown = "; ".join(
            f"[{p.index}] {p.field}: {p.message}" for p in problems[:MAX_PROBLEMS_REPORTED]
        )
        more = len(problems) - MAX_PROBLEMS_REPORTED
        super().__init__(f"{shown} (and {more} more)" if more > 0 else shown)
        self.problems = problems

    def summary(self) -> str:
        first = self.problems[0]
        where = "the request" if first.index is None else f"event {first.index}"
        more = len(self.problems) - 1
        tail = f" (and {more} more problem{'s' if more > 1 else ''})" if more else ""
        field = f"{first.field}: " if first.field else ""
        return f"{where}: {field}{first.message}{tail}"

    def details(self) -> dict[str, Any]:
        shown = self.problems[:MAX_PROBLEMS_REPORTED]
        return {"problems": [asdict(p) for p in shown], "problemCount": len(self.problems)}


class TooLarge(Exception):
    """The request would store more than its size allows; nothing of it may enter the stream."""


def request_problem(field: str, message: str) -> InvalidRequest:
    return InvalidRequest([Problem(None, field, message)])


def decode_json(body: bytes) -> Any:
    """Parse a request body; malformed JSON (or invalid UTF-8) is the client's error."""
    try:
        with garbage_collection.paused():
            return _json_decoder.decode(body)
    except msgspec.DecodeError as exc:
        raise request_problem("body", f"not valid JSON: {exc}") from None
    except UnicodeDecodeError:
        raise request_problem("body", "not valid UTF-8") from None
    except RecursionError:
        raise request_problem("body", "JSON is nested too deeply") from None


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
    return format_timestamp(datetime.now(UTC))


def format_timestamp(moment: datetime) -> str:
    """`moment` as ISO-8601 UTC with milliseconds (truncated) and a `Z`."""
    return format_timestamps([moment])[0]


def format_timestamps(moments: list[datetime]) -> list[str]:
    """`format_timestamp` of each of `moments`, in one pass through msgspec's C encoder
    (datetime.isoformat costs a microsecond each, several times this)."""
    utc = [moment if moment.tzinfo is UTC else moment.astimezone(UTC) for moment in moments]
    # msgspec writes UTC as `Z`, and the microseconds only when not zero, all six digits.
    return [
        text[:23] + "Z" if len(text) > 20 else text[:19] + ".000Z"
        for text in _timestamps_decoder.decode(_json_encoder.encode(utc))
    ]


def parse_timestamp(value: Any) -> datetime | None:
    """An ISO-8601 string as an aware datetime (naive means UTC); None if it is not one."""
    if not isinstance(value, str):
        return None
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def prepare(
    events: list[Any],
    received_at: str,
    envelope: Envelope = NO_ENVELOPE,
    max_event_bytes: int | None = None,
) -> list[dict[str, Any]]:
    """Validate every event and stamp it; raise `InvalidRequest` listing every problem found.

    Stamping happens only once the whole request is known to be valid, so a rejected request
    leaves its input untouched. `max_event_bytes`, when given, bounds each event's JSON size.
    """
    problems = _request_problems(envelope)
    # Merged into every event, the batch-level objects count toward each event's size.
    room = None if max_event_bytes is None else max_event_bytes - _shared_size(envelope)
    # Most requests are plainly valid: one quick pass says so; the full check, which lists
    # every problem, runs only for the others (and to measure events against `room`).
    if problems or room is not None or not _plainly_valid(events, envelope.default_type):
        for index, event in enumerate(events):
            problems.extend(_event_problems(index, event, envelope, room))
        if problems:
            raise InvalidRequest(problems)
    _stamp(events, envelope, received_at)
    return events


def _shared_size(envelope: Envelope) -> int:
    return sum(
        len(_json_encoder.encode(value))
        for value in (envelope.context, envelope.integrations)
        if value
    )


def max_events(max_body_bytes: int) -> int:
    """The most events one request may hold."""
    return max(1, max_body_bytes // MIN_BYTES_PER_EVENT)


def check_stored_size(count: int, envelope: Envelope, body_bytes: int, max_body_bytes: int) -> None:
    """Raise `TooLarge` for a request that would store far more than it sent, before anything
    is validated, stamped or encoded: more than `max_events` events, or a batch context that,
    stored again in every event, adds more than `MAX_COPIES_PER_BODY` times the body or more
    than MAX_BODY_BYTES. What passes stores at most `max_stored_bytes`."""
    if count > max_events(max_body_bytes):
        raise TooLarge(
            f"the request holds {count} events, more than the {max_events(max_body_bytes)} "
            f"one request may hold (one per {MIN_BYTES_PER_EVENT} bytes of the body limit); "
            "send fewer events per request"
        )
    shared = _shared_stored_size(envelope)
    copies = (count - 1) * shared
    limit = min(max_body_bytes, MAX_COPIES_PER_BODY * body_bytes)
    if copies > limit:
        which = (
            f"the body limit of {max_body_bytes} bytes"
            if limit == max_body_bytes
            else f"{MAX_COPIES_PER_BODY} times the body's {body_bytes}"
        )
        raise TooLarge(
            f"the batch's context and integrations ({shared} bytes) are stored again in each "
            f"of its {count} events, adding {copies} bytes: more than {which}; send fewer "
            "events per request, or the context in the events"
        )


def max_stored_bytes(
    body_bytes: int, count: int, source: str | None, enrichment_bytes: int = 0
) -> int:
    """The most MsgPack bytes the events of a request that passed `check_stored_size` make:
    K * body + S * events, K = 9/4 (the events and one copy of the batch's fields, as sent)
    + MAX_COPIES_PER_BODY, S = STAMP_BYTES + the length of the source's name + what enrichment
    adds to an event at most (`Enricher.max_added_bytes`, for ingest)."""
    growth = _FLOAT_GROWTH + MAX_COPIES_PER_BODY
    stamp = STAMP_BYTES + len((source or "").encode()) + enrichment_bytes
    return int(growth * body_bytes) + stamp * count


def _shared_stored_size(envelope: Envelope) -> int:
    """What one copy of the batch's context and integrations stores (they are copied only
    when they are objects; anything else is refused by `prepare`)."""
    return sum(
        _stored_size(value)
        for value in (envelope.context, envelope.integrations)
        if isinstance(value, dict) and value
    )


def _stored_size(value: dict[str, Any]) -> int:
    try:
        return len(_msgpack_encoder.encode(value))
    except OverflowError:  # an integer MsgPack cannot hold: refused once encoded, still counted
        return len(_json_encoder.encode(value))


def _stamp(events: list[dict[str, Any]], envelope: Envelope, received_at: str) -> None:
    """Stamp valid `events` in place (see the module's docstring); InvalidRequest if a clock-skew
    correction falls outside the dates Python holds."""
    source, default_type = envelope.source, envelope.default_type
    # The batch's own dicts when the event adds nothing: events are only encoded once stamped,
    # and a copy per event would be megabytes of dicts for a small body.
    shared = [
        (name, value) for name in ("context", "integrations") if (value := getattr(envelope, name))
    ]
    clock = _SkewCorrection.of(envelope, received_at)
    corrected: list[tuple[dict[str, Any], datetime]] = []
    problems = []
    for index, event in enumerate(events):
        event.pop("writeKey", None)
        if "type" not in event:
            event["type"] = default_type
        for name, value in shared:
            own = event.get(name)
            event[name] = {**value, **own} if own else value
        if "messageId" not in event:
            event["messageId"] = str(uuid.uuid4())
        event["receivedAt"] = received_at
        # `source` is the server's: the key's name, or absent for anonymous requests.
        if source is None:
            event.pop("source", None)
        else:
            event["source"] = source
        try:
            clock.correct(event, received_at, corrected)
        except OverflowError:
            problems.append(Problem(index, "timestamp", "clock-skew correction is out of range"))
    if problems:
        raise InvalidRequest(problems)
    moments = format_timestamps([moment for _, moment in corrected])
    for (event, _), moment in zip(corrected, moments, strict=True):
        event["timestamp"] = moment


class _SkewCorrection:
    """Segment's clock-skew rule. With `sentAt` (the request's, or the event's own):
    timestamp = receivedAt - (sentAt - originalTimestamp), keeping originalTimestamp.
    Without: the client's timestamp stays, and a missing one becomes receivedAt."""

    def __init__(self, received: datetime, batch_sent_at: datetime | None) -> None:
        self.received = received
        self.batch_sent_at = batch_sent_at

    @classmethod
    def of(cls, envelope: Envelope, received_at: str) -> _SkewCorrection:
        return cls(parse_timestamp(received_at), parse_timestamp(envelope.sent_at))

    def correct(
        self,
        event: dict[str, Any],
        received_at: str,
        corrected: list[tuple[dict[str, Any], datetime]],
    ) -> None:
        """Set the event's timestamp, or add it and its corrected moment to `corrected`, for
        the caller to format all at once."""
        own_sent_at = event.get("sentAt")
        if own_sent_at is None and self.batch_sent_at is None:  # nothing to correct by
            event.setdefault("timestamp", received_at)
            return
        sent_at = parse_timestamp(own_sent_at) or self.batch_sent_at
        original = event.get("timestamp")
        if sent_at is None or original is None:
            event.setdefault("timestamp", received_at)
            return
        event["originalTimestamp"] = original
        skew: timedelta = sent_at - parse_timestamp(original)
        corrected.append((event, self.received - skew))


# Types whose only rule is the identity (`userId` or `anonymousId`), and the fields checked
# only when present.
_IDENTITY_ONLY_TYPES = frozenset({"identify", "page", "screen"})
_ABSENT = object()


def _plainly_valid(events: list[Any], default_type: str | None) -> bool:
    """True only if `_event_problems` would find nothing wrong with any of `events` (without a
    size limit); False as soon as one is not plainly so (a group or alias, an integer ID, an
    odd value): the full check then decides. One loop, no call per event: it runs for every
    event ingest receives."""
    fromisoformat = datetime.fromisoformat
    for event in events:
        if type(event) is not dict:
            return False
        get = event.get
        event_type = get("type", default_type)
        if event_type == "track":
            name = get("event")
            if type(name) is not str or not name:
                return False
        elif type(event_type) is not str or event_type not in _IDENTITY_ONLY_TYPES:
            return False
        user_id, anonymous_id = get("userId"), get("anonymousId")
        if not ((type(user_id) is str and user_id) or (type(anonymous_id) is str and anonymous_id)):
            return False
        if not (user_id is None or type(user_id) is str):
            return False
        if not (anonymous_id is None or type(anonymous_id) is str):
            return False
        message_id = get("messageId", _ABSENT)
        if message_id is not _ABSENT and (type(message_id) is not str or not message_id):
            return False
        for name in ("timestamp", "sentAt"):
            moment = get(name, _ABSENT)
            if moment is not _ABSENT:
                if type(moment) is not str:
                    return False
                try:
                    fromisoformat(moment)
                except ValueError:
                    return False
        for name in ("context", "integrations"):
            value = get(name, _ABSENT)
            if value is not _ABSENT and type(value) is not dict:
                return False
    return True


def _request_problems(envelope: Envelope) -> list[Problem]:
    problems = [
        Problem(None, name, "must be a JSON object when given")
        for name in ("context", "integrations")
        if getattr(envelope, name) is not None and not isinstance(getattr(envelope, name), dict)
    ]
    if envelope.sent_at is not None and parse_timestamp(envelope.sent_at) is None:
        problems.append(Problem(None, "sentAt", "must be an ISO-8601 timestamp when given"))
    return problems


def _event_problems(index: int, event: Any, envelope: Envelope, room: int | None) -> list[Problem]:
    if not isinstance(event, dict):
        return [Problem(index, "", "event must be a JSON object")]
    problems = _envelope_problems(index, event, envelope.default_type)
    for name in ("sentAt", "timestamp"):
        if name in event and parse_timestamp(event[name]) is None:
            problems.append(Problem(index, name, "must be an ISO-8601 timestamp when given"))
    for name in ("context", "integrations"):
        if name in event and not isinstance(event[name], dict):
            problems.append(Problem(index, name, "must be a JSON object when given"))
    if room is not None and len(_json_encoder.encode(event)) > room:
        message = "event is larger than the per-event limit (with the batch's context)"
        problems.append(Problem(index, "", message))
    return problems


def _envelope_problems(
    index: int, event: dict[str, Any], default_type: str | None
) -> list[Problem]:
    event_type = event.get("type", default_type)
    if not isinstance(event_type, str) or event_type not in EVENT_TYPES:
        allowed = ", ".join(sorted(EVENT_TYPES))
        return [Problem(index, "type", f"must be one of {allowed}")]
    problems = []
    if event_type == "track" and not _is_text(event.get("event")):
        problems.append(Problem(index, "event", "must be a non-empty string"))
    problems += [
        Problem(index, name, "must be a non-empty string or an integer")
        for name in _REQUIRED_IDS_BY_TYPE.get(event_type, ())
        if not _is_id(event.get(name))
    ]
    if event_type != "alias":
        problems.extend(_identity_problems(index, event))
    if "messageId" in event and not _is_text(event["messageId"]):
        problems.append(Problem(index, "messageId", "must be a non-empty string when given"))
    return problems


def _identity_problems(index: int, event: dict[str, Any]) -> list[Problem]:
    """Who the event is about. Browser SDKs send `"userId": null` (analytics.js) or `""`
    (RudderStack) beside an `anonymousId` on anonymous page views, so an empty or null ID
    counts as absent; but one of the two must be there."""
    ids = {name: event.get(name) for name in ("userId", "anonymousId")}
    problems = [
        Problem(index, name, "must be a string or an integer (or null) when given")
        for name, value in ids.items()
        if value is not None and not isinstance(value, str) and not _is_integer(value)
    ]
    if not problems and not any(_is_id(value) for value in ids.values()):
        problems.append(Problem(index, "userId", "userId or anonymousId is required"))
    return problems


def _is_text(value: Any) -> bool:
    return isinstance(value, str) and value != ""


def _is_integer(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_id(value: Any) -> bool:
    """An ID as SDKs send them: a non-empty string, or an integer (analytics-ruby passes
    numeric IDs through; the archive keeps them as sent)."""
    return _is_text(value) or _is_integer(value)
