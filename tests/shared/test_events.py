"""The event envelope: validation, problems, stamping, and request-level decoding."""

from __future__ import annotations

import contextlib
import copy
import gc
import re
import uuid
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shared import events
from shared.events import (
    EVENT_TYPES,
    MAX_PROBLEMS_REPORTED,
    InvalidRequest,
    Problem,
    batch_events,
    decode_json,
    prepare,
    received_at_now,
)

RECEIVED_AT = "2024-05-06T07:08:09.123Z"
RECEIVED_AT_PATTERN = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$")

VALID_EVENTS: dict[str, dict[str, Any]] = {
    "track": {"type": "track", "event": "Signed Up", "userId": "u1"},
    "identify": {"type": "identify", "userId": "u1", "traits": {"plan": "pro"}},
    "page": {"type": "page", "anonymousId": "a1", "name": "Home"},
    "screen": {"type": "screen", "userId": "u1", "name": "Dashboard"},
    "group": {"type": "group", "groupId": "g1", "anonymousId": "a1"},
    "alias": {"type": "alias", "userId": "u2", "previousId": "a1"},
}


def problems_of(raw_events: list[Any]) -> list[Problem]:
    with pytest.raises(InvalidRequest) as excinfo:
        prepare(raw_events, RECEIVED_AT)
    return excinfo.value.problems


def pairs(problems: list[Problem]) -> set[tuple[int | None, str]]:
    return {(p.index, p.field) for p in problems}


# --- valid events -------------------------------------------------------------------------


def test_every_event_type_has_a_valid_case() -> None:
    assert set(VALID_EVENTS) == EVENT_TYPES


@pytest.mark.parametrize("event_type", sorted(EVENT_TYPES))
def test_valid_event_of_each_type_is_accepted_and_stamped(event_type: str) -> None:
    original = copy.deepcopy(VALID_EVENTS[event_type])
    [event] = prepare([copy.deepcopy(original)], RECEIVED_AT)
    assert event["receivedAt"] == RECEIVED_AT
    assert uuid.UUID(event["messageId"])
    for name, value in original.items():
        assert event[name] == value


@pytest.mark.parametrize(
    "identity",
    [{"userId": "u"}, {"anonymousId": "a"}, {"userId": "u", "anonymousId": "a"}],
)
@pytest.mark.parametrize("event_type", ["track", "identify", "page", "screen", "group"])
def test_either_user_or_anonymous_id_is_enough(event_type: str, identity: dict[str, str]) -> None:
    event = {
        k: v for k, v in VALID_EVENTS[event_type].items() if k not in ("userId", "anonymousId")
    }
    event.update(identity)
    [prepared] = prepare([event], RECEIVED_AT)
    for name, value in identity.items():
        assert prepared[name] == value


def test_explicit_null_user_id_is_fine_with_an_anonymous_id() -> None:
    [prepared] = prepare(
        [{"type": "track", "event": "e", "userId": None, "anonymousId": "a"}], RECEIVED_AT
    )
    assert prepared["userId"] is None


def test_alias_does_not_need_anonymous_id() -> None:
    [prepared] = prepare([{"type": "alias", "userId": "u", "previousId": "p"}], RECEIVED_AT)
    assert prepared["previousId"] == "p"


def test_prepare_returns_the_events_in_order() -> None:
    batch = [copy.deepcopy(VALID_EVENTS[t]) for t in sorted(EVENT_TYPES)]
    prepared = prepare(batch, RECEIVED_AT)
    assert [e["type"] for e in prepared] == sorted(EVENT_TYPES)
    assert len({e["messageId"] for e in prepared}) == len(prepared)


# --- invalid events -----------------------------------------------------------------------

INVALID_CASES = [
    # (event, expected (field) set)
    pytest.param("not an object", {""}, id="string-event"),
    pytest.param(42, {""}, id="number-event"),
    pytest.param(None, {""}, id="null-event"),
    pytest.param(["type", "track"], {""}, id="list-event"),
    pytest.param({"event": "e", "userId": "u"}, {"type"}, id="missing-type"),
    pytest.param({"type": "Track", "event": "e", "userId": "u"}, {"type"}, id="wrong-case-type"),
    pytest.param({"type": "purchase", "userId": "u"}, {"type"}, id="unknown-type"),
    pytest.param({"type": None, "userId": "u"}, {"type"}, id="null-type"),
    pytest.param({"type": 1, "userId": "u"}, {"type"}, id="number-type"),
    pytest.param({"type": "track", "userId": "u"}, {"event"}, id="track-missing-event"),
    pytest.param({"type": "track", "event": "", "userId": "u"}, {"event"}, id="track-empty-event"),
    pytest.param({"type": "track", "event": 5, "userId": "u"}, {"event"}, id="track-number-event"),
    pytest.param({"type": "track", "event": "e"}, {"userId"}, id="track-no-identity"),
    pytest.param(
        {"type": "track", "event": "e", "userId": None, "anonymousId": None},
        {"userId"},
        id="track-null-identity",
    ),
    pytest.param({"type": "identify", "userId": ""}, {"userId"}, id="identify-empty-user"),
    pytest.param({"type": "identify", "userId": 1.5}, {"userId"}, id="identify-float-user"),
    pytest.param({"type": "identify", "userId": True}, {"userId"}, id="identify-bool-user"),
    pytest.param({"type": "page", "anonymousId": ""}, {"userId"}, id="page-empty-anon"),
    pytest.param(
        {"type": "page", "userId": "u", "anonymousId": []},
        {"anonymousId"},
        id="page-list-anon",
    ),
    pytest.param(
        {"type": "screen", "userId": "", "anonymousId": ""},
        {"userId"},
        id="screen-both-empty",
    ),
    pytest.param({"type": "group", "userId": "u"}, {"groupId"}, id="group-missing-group-id"),
    pytest.param({"type": "group", "groupId": "", "userId": "u"}, {"groupId"}, id="group-empty"),
    pytest.param({"type": "group", "groupId": "g"}, {"userId"}, id="group-no-identity"),
    pytest.param({"type": "alias", "previousId": "p"}, {"userId"}, id="alias-no-user"),
    pytest.param({"type": "alias", "userId": "u"}, {"previousId"}, id="alias-no-previous"),
    pytest.param(
        {"type": "alias", "anonymousId": "a"}, {"userId", "previousId"}, id="alias-anon-only"
    ),
    pytest.param(
        {"type": "alias", "userId": "u", "previousId": 7.5}, {"previousId"}, id="alias-float-prev"
    ),
    pytest.param(
        {"type": "track", "event": "e", "userId": "u", "messageId": ""},
        {"messageId"},
        id="empty-message-id",
    ),
    pytest.param(
        {"type": "track", "event": "e", "userId": "u", "messageId": None},
        {"messageId"},
        id="null-message-id",
    ),
    pytest.param(
        {"type": "identify", "userId": "u", "messageId": 17},
        {"messageId"},
        id="number-message-id",
    ),
    pytest.param(
        {"type": "track", "messageId": 1},
        {"event", "userId", "messageId"},
        id="several-fields",
    ),
]


@pytest.mark.parametrize(("event", "fields"), INVALID_CASES)
def test_invalid_event_reports_index_and_field(event: Any, fields: set[str]) -> None:
    good = copy.deepcopy(VALID_EVENTS["track"])
    problems = problems_of([good, copy.deepcopy(event)])
    assert pairs(problems) == {(1, name) for name in fields}
    assert all(p.message for p in problems)


@pytest.mark.parametrize(("event", "fields"), INVALID_CASES)
def test_rejected_input_is_not_mutated(event: Any, fields: set[str]) -> None:
    good = copy.deepcopy(VALID_EVENTS["identify"])
    batch = [good, copy.deepcopy(event)]
    before = copy.deepcopy(batch)
    problems_of(batch)
    assert batch == before
    assert "messageId" not in batch[0]
    assert "receivedAt" not in batch[0]


@pytest.mark.parametrize("bad_type", [[], {}, ["track"]], ids=["list", "dict", "list-track"])
def test_unhashable_type_is_a_problem_not_a_crash(bad_type: Any) -> None:
    problems = problems_of([{"type": bad_type, "userId": "u"}])
    assert pairs(problems) == {(0, "type")}


def test_all_problems_of_a_batch_are_reported() -> None:
    batch = [
        {"type": "track", "userId": "u"},  # 0: event
        copy.deepcopy(VALID_EVENTS["page"]),  # 1: fine
        "nope",  # 2: not an object
        {"type": "alias"},  # 3: userId, previousId
        {"type": "group", "groupId": "g", "messageId": ""},  # 4: userId, messageId
        {"type": "bogus"},  # 5: type
    ]
    problems = problems_of(batch)
    assert pairs(problems) == {
        (0, "event"),
        (2, ""),
        (3, "userId"),
        (3, "previousId"),
        (4, "userId"),
        (4, "messageId"),
        (5, "type"),
    }
    assert [p.index for p in problems] == sorted(p.index for p in problems)
    assert "messageId" not in batch[1]
    assert "receivedAt" not in batch[1]


def test_invalid_request_message_and_dict() -> None:
    problems = problems_of([{"type": "track", "userId": "u"}])
    exc = InvalidRequest(problems)
    assert "[0] event" in str(exc)
    assert exc.summary() == "event 0: event: must be a non-empty string"
    assert exc.details() == {
        "problems": [{"index": 0, "field": "event", "message": "must be a non-empty string"}],
        "problemCount": 1,
    }


def test_problem_list_is_capped_but_count_is_not() -> None:
    batch = [{"type": "track"} for _ in range(MAX_PROBLEMS_REPORTED + 20)]
    with pytest.raises(InvalidRequest) as excinfo:
        prepare(batch, RECEIVED_AT)
    body = excinfo.value.details()
    assert excinfo.value.summary().endswith(f"(and {2 * len(batch) - 1} more problems)")
    # Each event has two problems: event and userId.
    assert body["problemCount"] == 2 * len(batch)
    assert len(body["problems"]) == MAX_PROBLEMS_REPORTED
    assert body["problems"][0]["index"] == 0


# --- stamping -----------------------------------------------------------------------------


def test_message_id_is_kept_when_given() -> None:
    event = {**VALID_EVENTS["track"], "messageId": "client-chosen-id"}
    [prepared] = prepare([event], RECEIVED_AT)
    assert prepared["messageId"] == "client-chosen-id"


def test_message_id_is_a_fresh_uuid_when_absent() -> None:
    batch = [copy.deepcopy(VALID_EVENTS["track"]) for _ in range(3)]
    prepared = prepare(batch, RECEIVED_AT)
    ids = [e["messageId"] for e in prepared]
    for message_id in ids:
        assert str(uuid.UUID(message_id)) == message_id
    assert len(set(ids)) == 3


def test_received_at_is_always_the_servers() -> None:
    event = {**VALID_EVENTS["track"], "receivedAt": "1999-01-01T00:00:00.000Z"}
    [prepared] = prepare([event], RECEIVED_AT)
    assert prepared["receivedAt"] == RECEIVED_AT


def test_unknown_fields_are_kept_verbatim() -> None:
    extra = {
        "properties": {"price": 9.99, "items": [1, "two", None, {"x": True}]},
        "context": {"ip": "203.0.113.1", "library": {"name": "analytics.js"}},
        "channel": "not even a date",
        "nothing": None,
        "ünïcødé": "✓ 日本語",
        "big": 2**63,
        "empty": {},
    }
    event = {**VALID_EVENTS["track"], **copy.deepcopy(extra)}
    [prepared] = prepare([event], RECEIVED_AT)
    for name, value in extra.items():
        assert prepared[name] == value
    server_added = {"messageId", "receivedAt", "timestamp"}
    assert set(prepared) - server_added == set(VALID_EVENTS["track"]) | set(extra)


def test_received_at_now_format() -> None:
    before = datetime.now(UTC)
    stamp = received_at_now()
    after = datetime.now(UTC)
    assert RECEIVED_AT_PATTERN.match(stamp), stamp
    parsed = datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)
    assert before - timedelta(milliseconds=1) <= parsed <= after


def test_received_at_now_is_utc_even_with_another_local_zone(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import time

    monkeypatch.setenv("TZ", "Asia/Kolkata")
    time.tzset()
    try:
        stamp = received_at_now()
    finally:
        monkeypatch.undo()
        time.tzset()
    parsed = datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)
    assert abs(parsed - datetime.now(UTC)) < timedelta(hours=1)


# --- request decoding ---------------------------------------------------------------------


def test_decode_json_parses_a_document() -> None:
    assert decode_json(b'{"batch": [{"a": 1}], "x": "\\u00e9"}') == {"batch": [{"a": 1}], "x": "é"}


@pytest.mark.parametrize(
    "body",
    [b"", b"{", b"{'a': 1}", b"[1, 2,]", b"nul", b'{"a": 1} trailing', b"NaN"],
    ids=["empty", "truncated", "single-quotes", "trailing-comma", "bad-literal", "trailing", "nan"],
)
def test_decode_json_rejects_malformed_json(body: bytes) -> None:
    with pytest.raises(InvalidRequest) as excinfo:
        decode_json(body)
    [problem] = excinfo.value.problems
    assert problem.index is None
    assert problem.field == "body"
    assert "not valid JSON" in problem.message


def test_decode_json_rejects_invalid_utf8() -> None:
    with pytest.raises(InvalidRequest) as excinfo:
        decode_json(b'{"batch": ["\xff\xfe"]}')
    [problem] = excinfo.value.problems
    assert (problem.index, problem.field) == (None, "body")
    assert "UTF-8" in problem.message


def test_decode_json_rejects_absurd_nesting() -> None:
    depth = 100_000
    with pytest.raises(InvalidRequest) as excinfo:
        decode_json(b"[" * depth + b"]" * depth)
    [problem] = excinfo.value.problems
    assert (problem.index, problem.field) == (None, "body")


@pytest.mark.parametrize("body", [b'{"batch": [[], {}]}', b"[[[", b"\xff"])
@pytest.mark.parametrize("collecting", [True, False])
def test_decode_json_leaves_the_garbage_collector_as_it_found_it(
    body: bytes, collecting: bool
) -> None:
    """Decoding pauses the cyclic collector (it would walk every new container over and
    over) and restores it, also when the body is refused; a caller's own pause is kept."""
    was = gc.isenabled()
    (gc.enable if collecting else gc.disable)()
    try:
        with contextlib.suppress(InvalidRequest):
            decode_json(body)
        assert gc.isenabled() is collecting
    finally:
        (gc.enable if was else gc.disable)()


def test_stored_size_counts_the_batch_fields_once_per_event() -> None:
    """The copies of the batch's context may add at most 3 times the body, and at most the
    body limit; one event more than that is refused, as is one event past the count."""
    context = {"pad": "x" * 1000}  # 1,008 bytes as stored
    envelope = events.Envelope(context=context)
    events.check_stored_size(4, envelope, 1_010, 1024 * 1024)  # 3 copies: 3,024 bytes
    with pytest.raises(events.TooLarge, match="adding 4032 bytes: more than 3 times"):
        events.check_stored_size(5, envelope, 1_010, 1024 * 1024)
    with pytest.raises(events.TooLarge, match="more than the body limit of 2000 bytes"):
        events.check_stored_size(3, envelope, 1_010, 2_000)
    events.check_stored_size(1000, events.Envelope(), 128_000, 128_000)
    with pytest.raises(events.TooLarge, match="1001 events, more than the 1000"):
        events.check_stored_size(1001, events.Envelope(), 128_000, 128_000)


def test_batch_events_returns_the_list() -> None:
    batch = [{"type": "track"}, "anything"]
    assert batch_events({"batch": batch, "context": {}}) is batch


@pytest.mark.parametrize(
    ("document", "field"),
    [
        ([], "body"),
        ([{"type": "track"}], "body"),
        ("batch", "body"),
        (None, "body"),
        (3, "body"),
        ({}, "batch"),
        ({"events": []}, "batch"),
        ({"batch": None}, "batch"),
        ({"batch": {"type": "track"}}, "batch"),
        ({"batch": "[]"}, "batch"),
        ({"batch": []}, "batch"),
    ],
)
def test_batch_events_errors(document: Any, field: str) -> None:
    with pytest.raises(InvalidRequest) as excinfo:
        batch_events(document)
    [problem] = excinfo.value.problems
    assert problem.index is None
    assert problem.field == field


def test_request_problem_shape() -> None:
    exc = events.request_problem("body", "too odd")
    assert exc.problems == [Problem(None, "body", "too odd")]
    assert exc.details()["problems"] == [{"index": None, "field": "body", "message": "too odd"}]
    assert exc.summary() == "the request: body: too odd"


# --- property -----------------------------------------------------------------------------

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8)
)
json_values = st.recursive(
    json_scalars,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=6), children, max_size=4)
    ),
    max_leaves=12,
)
# Objects biased toward the envelope, so many of them are valid and stamped.
id_values = st.one_of(st.text(max_size=3), st.none(), st.integers(), st.just("x"))
envelope_like = st.fixed_dictionaries(
    {},
    optional={
        "type": st.sampled_from([*sorted(EVENT_TYPES), "", "other"]) | st.none() | st.integers(),
        "event": id_values,
        "userId": id_values,
        "anonymousId": id_values,
        "groupId": id_values,
        "previousId": id_values,
        "messageId": id_values,
        "properties": json_values,
    },
)


ids = st.text(min_size=1, max_size=6)


@st.composite
def valid_events(draw: st.DrawFn) -> dict[str, Any]:
    event_type = draw(st.sampled_from(sorted(EVENT_TYPES)))
    event: dict[str, Any] = {"type": event_type}
    if event_type == "alias":
        event["userId"], event["previousId"] = draw(ids), draw(ids)
    else:
        identity = draw(st.sampled_from(["userId", "anonymousId", "both"]))
        for name in ("userId", "anonymousId"):
            if identity in (name, "both"):
                event[name] = draw(ids)
    if event_type == "track":
        event["event"] = draw(ids)
    if event_type == "group":
        event["groupId"] = draw(ids)
    if draw(st.booleans()):
        event["messageId"] = draw(ids)
    extra = draw(st.dictionaries(st.text(max_size=6), json_values, max_size=3))
    return {**extra, **event}


event_values = st.one_of(valid_events(), envelope_like, json_values)


# Fields the server sets or rewrites (stamping, clock-skew correction, secrets).
# `source` too: the key's name, or absent for an anonymous request, whatever the client sent.
SERVER_OWNED = {"receivedAt", "timestamp", "originalTimestamp", "writeKey", "source"}


def has_envelope(event: Any) -> bool:
    """The envelope rules, restated: docs/api.md's list of them."""
    if not isinstance(event, dict) or event.get("type") not in EVENT_TYPES:
        return False
    is_text = lambda v: isinstance(v, str) and v != ""  # noqa: E731
    is_int = lambda v: isinstance(v, int) and not isinstance(v, bool)  # noqa: E731
    is_id = lambda v: is_text(v) or is_int(v)  # noqa: E731
    if event["type"] == "track" and not is_text(event.get("event")):
        return False
    required = {"group": ("groupId",), "alias": ("userId", "previousId")}
    if not all(is_id(event.get(name)) for name in required.get(event["type"], ())):
        return False
    if event["type"] != "alias":
        ids = [event.get("userId"), event.get("anonymousId")]
        if not all(v is None or isinstance(v, str) or is_int(v) for v in ids):
            return False
        if not any(is_id(v) for v in ids):
            return False
    return is_text(event.get("messageId")) and event.get("receivedAt") == RECEIVED_AT


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(event_values, min_size=1, max_size=4))
def test_prepare_either_rejects_or_returns_enveloped_events(raw_events: list[Any]) -> None:
    before = copy.deepcopy(raw_events)
    try:
        prepared = prepare(raw_events, RECEIVED_AT)
    except InvalidRequest as exc:
        assert exc.problems
        assert all(0 <= p.index < len(before) for p in exc.problems)
        assert raw_events == before  # a rejected request is left untouched
        return
    assert len(prepared) == len(before)
    for event, original in zip(prepared, before, strict=True):
        assert has_envelope(event)
        assert "source" not in event  # prepared without a source: an anonymous request
        for name, value in original.items():
            if name not in SERVER_OWNED:
                assert event[name] == value


def _isoformat_milliseconds(moment: datetime) -> str:
    """How timestamps were written before they went through msgspec (issue 29)."""
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


EDGE_MOMENTS = [
    datetime(1, 1, 1, tzinfo=UTC),
    datetime(3, 2, 1, 0, 0, 0, 1, tzinfo=UTC),
    datetime(999, 12, 31, 23, 59, 59, 999_999, tzinfo=UTC),
    datetime(2024, 5, 1, 12, 0, 0, 0, tzinfo=UTC),  # no microseconds: msgspec writes none
    datetime(2024, 5, 1, 12, 0, 0, 100_000, tzinfo=UTC),  # trailing zeros
    datetime(2024, 5, 1, 12, 0, 0, 999, tzinfo=UTC),  # under a millisecond: .000
    datetime(9999, 12, 31, 23, 59, 59, 999_999, tzinfo=UTC),
    datetime(2024, 5, 1, 14, 0, 0, 500_000, tzinfo=timezone(timedelta(hours=2))),
    datetime(2024, 5, 1, 12, 0, 0, 123_456),  # naive: local time, as astimezone reads it
]


def test_timestamps_are_written_as_they_were_at_every_edge() -> None:
    expected = [_isoformat_milliseconds(moment) for moment in EDGE_MOMENTS]
    assert events.format_timestamps(EDGE_MOMENTS) == expected
    assert [events.format_timestamp(moment) for moment in EDGE_MOMENTS] == expected


@settings(max_examples=500, deadline=None)
@given(st.datetimes(timezones=st.just(UTC)))
def test_any_utc_moment_is_written_as_before(moment: datetime) -> None:
    assert events.format_timestamp(moment) == _isoformat_milliseconds(moment)
