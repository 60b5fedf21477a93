"""Issue 29's promise that making ingest faster changed nothing it does: random valid and
invalid requests go through the app as it is now (its event routes, a real Redis) and through
the path as it was, frozen under tests/functions/ingest/reference/. With the clock and the
`messageId` generator fixed, the stored events must decode equal, and a refused request must
be refused with the same status and error code (and store nothing)."""

from __future__ import annotations

import base64
import dataclasses
import ipaddress
import itertools
import uuid
from typing import Any

import msgspec
import pytest
import redis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from functions.ingest.app import create_app
from shared import codec
from shared import events as live_events
from shared.enrichment import Enricher
from shared.settings import Settings
from tests.functions.ingest.reference import events as reference_events_module
from tests.functions.ingest.reference.path import Refused, reference_events

RECEIVED_AT = "2026-12-07T08:00:00.123Z"
PEER = "198.51.100.23"
KEY = "wk-reference"
# Small limits, so that the per-event size check and the stored-size refusals are reached.
MAX_BODY_BYTES, MAX_EVENT_BYTES = 6_000, 700

TIMESTAMPS = (
    st.sampled_from(
        [
            "2024-05-01T12:00:00.000Z",
            "2024-05-01T12:00:00Z",
            "2024-05-01T14:00:00.5+02:00",
            "2024-05-01T12:00:00",  # naive: UTC
            "2024-05-01",
            "2024-05-01T12:00:00.123456789Z",  # too many digits
            "0001-01-01T00:00:00Z",  # the skew correction overflows
            "9999-12-31T23:59:59Z",
            "yesterday",
            "",
        ]
    )
    | st.integers(-5, 5)
    | st.none()
)
IDS = (
    st.text(max_size=6)
    | st.integers(-(2**70), 2**70)
    | st.booleans()
    | st.none()
    | st.floats(allow_nan=False)
)
SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**65), 2**65),
    st.floats(allow_nan=False),
    st.text(max_size=12),
)
JSON = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner),
    max_leaves=8,
)
CONTEXTS = (
    st.fixed_dictionaries(
        {},
        optional={
            "ip": st.sampled_from(["203.0.113.9", "2001:db8::7", "not an address", "10.1.2.3"]),
            "userAgent": st.sampled_from(
                [
                    "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
                    "HeadlessChrome/120.0.0.0 Safari/537.36",
                    "python-requests/2.31",
                    "",
                ]
            ),
            "library": st.sampled_from([{"name": "analytics.js"}, {"name": "analytics-node"}]),
            "locale": st.text(max_size=5),
        },
    )
    | JSON
)
FIELDS = {
    "type": st.sampled_from([*sorted(live_events.EVENT_TYPES), "bogus", ""]) | st.integers(0, 2),
    "event": st.text(max_size=8) | st.integers(0, 3) | st.none(),
    "userId": IDS,
    "anonymousId": IDS,
    "groupId": IDS,
    "previousId": IDS,
    "messageId": st.text(max_size=8) | st.integers(0, 3),
    "timestamp": TIMESTAMPS,
    "sentAt": TIMESTAMPS,
    "context": CONTEXTS,
    "integrations": st.dictionaries(st.text(max_size=4), JSON, max_size=2) | JSON,
    "properties": JSON,
    "writeKey": st.just(KEY),
    "source": st.text(max_size=4),
}
# Long enough to pass the per-event limit, or in numbers the body's.
PADDING = st.integers(0, 1_200).map(lambda length: "x" * length)
VALID_IDS = st.text(min_size=1, max_size=6) | st.integers(-(2**63), 2**63 - 1)
VALID_TIMESTAMPS = st.sampled_from(
    ["2024-05-01T12:00:00.000Z", "2024-05-01T14:00:00.5+02:00", "2024-05-01T12:00:00"]
)


@st.composite
def valid_events(draw: st.DrawFn) -> dict[str, Any]:
    """An event the envelope's rules accept (its payload is anything)."""
    event_type = draw(st.sampled_from(sorted(live_events.EVENT_TYPES)))
    event: dict[str, Any] = {"type": event_type}
    if event_type == "track":
        event["event"] = draw(st.text(min_size=1, max_size=8))
    if event_type == "group":
        event["groupId"] = draw(VALID_IDS)
    if event_type == "alias":
        event["userId"], event["previousId"] = draw(VALID_IDS), draw(VALID_IDS)
    else:
        identity = draw(st.sampled_from(["userId", "anonymousId", "both"]))
        for name in ("userId", "anonymousId"):
            if identity in (name, "both"):
                event[name] = draw(VALID_IDS)
            elif draw(st.booleans()):
                event[name] = draw(st.sampled_from([None, ""]))
    optional = {
        "messageId": st.text(min_size=1, max_size=8),
        "timestamp": VALID_TIMESTAMPS,
        "sentAt": VALID_TIMESTAMPS,
        "context": st.dictionaries(st.text(max_size=4), JSON, max_size=2)
        | CONTEXTS.filter(lambda context: isinstance(context, dict)),
        "integrations": st.dictionaries(st.text(max_size=4), JSON, max_size=2),
        "properties": JSON,
        "writeKey": st.just(KEY),
        "source": st.text(max_size=4),
        "padding": PADDING,
    }
    for name, values in optional.items():
        if draw(st.booleans()):
            event[name] = draw(values)
    return event


# Values that break (or nearly break) a field's rule, each as likely as the others.
TRICKY = [
    *(None, "", "x", 0, 1, -1, 2**63, -(2**63) - 1, 2**64, True, False, 1.5),
    *([], {}, ["a"], {"a": 1}),
    *("2024-05-01T12:00:00Z", "2024-05-01", "0001-01-01T00:00:00Z", "soon"),
    *sorted(live_events.EVENT_TYPES),
]


@st.composite
def spoiled_events(draw: st.DrawFn) -> dict[str, Any]:
    """A valid event with one field set to a tricky value, to anything, or removed."""
    event = draw(valid_events())
    name = draw(st.sampled_from(sorted(FIELDS)))
    action = draw(st.sampled_from(["tricky", "tricky", "anything", "remove"]))
    if action == "remove":
        event.pop(name, None)
    else:
        event[name] = draw(st.sampled_from(TRICKY) if action == "tricky" else FIELDS[name])
    return event


EVENTS = st.one_of(valid_events(), spoiled_events(), spoiled_events(), JSON)
BATCH_FIELDS = {
    "sentAt": TIMESTAMPS,
    "context": CONTEXTS,
    "integrations": st.dictionaries(st.text(max_size=4), JSON, max_size=2) | JSON,
    "writeKey": st.just(KEY),
}
BATCHES = (
    st.fixed_dictionaries({"batch": st.lists(EVENTS, max_size=12)}, optional=BATCH_FIELDS)
    # Past the events a body may hold, or a batch context copied into each of many events.
    | st.fixed_dictionaries(
        {
            "batch": st.integers(30, 60).map(
                lambda n: [{"type": "track", "event": "E", "userId": 1}] * n
            )
        },
        optional={"context": st.fixed_dictionaries({"padding": PADDING})},
    )
    | st.fixed_dictionaries({}, optional={"batch": JSON})
    | JSON
)
# Where a request goes: (path, single, the type the path implies).
ROUTES = [("/batch", False, None), ("/v1/batch", False, None), ("/v1/t", True, "track")]
REQUESTS = st.tuples(st.sampled_from(ROUTES), st.one_of(BATCHES, EVENTS)) | st.tuples(
    st.sampled_from(ROUTES), st.binary(max_size=30).map(lambda raw: ("raw", raw))
)


def _message_ids(monkeypatch: pytest.MonkeyPatch) -> itertools.count:
    counter = itertools.count()
    monkeypatch.setattr(uuid, "uuid4", lambda: uuid.UUID(int=next(counter)))
    return counter


@pytest.mark.parametrize("keyed", [False, True], ids=["anonymous", "keyed"])
def test_the_new_path_stores_and_refuses_as_the_frozen_one(
    settings: Settings, redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch, keyed: bool
) -> None:
    configured = dataclasses.replace(
        settings,
        max_body_bytes=MAX_BODY_BYTES,
        max_event_bytes=MAX_EVENT_BYTES,
        write_keys=(("web", KEY),) if keyed else (),
    )
    client = create_app(configured).test_client()
    enricher = Enricher(configured)
    headers = {"Authorization": "Basic " + base64.b64encode(f"{KEY}:".encode()).decode()}
    monkeypatch.setattr(live_events, "received_at_now", lambda: RECEIVED_AT)
    outcomes: set[str] = set()

    @settings_for_this_test
    @given(request=REQUESTS)
    def check(request: tuple[tuple[str, bool, str | None], Any]) -> None:
        (path, single, default_type), document = request
        body = document[1] if _is_raw(document) else msgspec.json.encode(document)
        monkeypatch.setattr(uuid, "uuid4", _fixed_ids())
        expected = reference_events(
            body,
            single,
            default_type,
            "web" if keyed else None,
            enricher,
            ipaddress.ip_address(PEER),
            MAX_BODY_BYTES,
            MAX_EVENT_BYTES,
            RECEIVED_AT,
        )
        monkeypatch.setattr(uuid, "uuid4", _fixed_ids())
        redis_client.delete(configured.stream_key)
        answer = client.post(
            path,
            data=body,
            content_type="application/json",
            headers=headers if keyed else {},
            environ_base={"REMOTE_ADDR": PEER},
        )
        entries = redis_client.xrange(configured.stream_key)
        if isinstance(expected, Refused):
            outcomes.add(f"refused {expected.status}")
            assert (answer.status_code, answer.get_json().get("code")) == (
                expected.status,
                expected.code,
            ), answer.get_json()
            assert entries == []
            return
        outcomes.add("stored")
        assert answer.status_code < 300, answer.get_json()
        if expected == b"\x90":  # every event a dropped bot: nothing written (not by default)
            assert entries == []
            return
        [(_, fields)] = entries
        # The same bytes: the same events, each with its keys in the same order.
        assert fields[b"d"] == expected, (
            codec.decode_entry(fields),
            msgspec.msgpack.decode(expected),
        )

    check()
    # The examples reached every outcome: a test of refusals only would prove little.
    assert {"stored", "refused 400", "refused 413"} <= outcomes, outcomes


def _fixed_ids() -> Any:
    counter = itertools.count()
    return lambda: uuid.UUID(int=next(counter))


def _is_raw(document: Any) -> bool:
    return isinstance(document, tuple) and document[:1] == ("raw",)


settings_for_this_test = settings(
    max_examples=1_000,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    database=None,
    # Hypothesis's explain phase traces every line on Python < 3.12: minutes for a failure.
    phases=[Phase.explicit, Phase.generate, Phase.shrink],
)


def test_the_quick_check_accepts_only_what_the_frozen_rules_accept() -> None:
    """`_plainly_valid` lets the full check be skipped: it must never pass an event the rules
    as they were refuse (a skipped check would store it)."""
    passed: list[int] = []

    @settings(max_examples=1_000, deadline=None, database=None, phases=QUICK_PHASES)
    @given(
        batch=st.lists(EVENTS, min_size=1, max_size=4),
        default_type=st.sampled_from([None, "track"]),
    )
    def check(batch: list[Any], default_type: str | None) -> None:
        if not live_events._plainly_valid(batch, default_type):
            return
        passed.append(1)
        envelope = reference_events_module.Envelope(default_type=default_type)
        for index, event in enumerate(batch):
            assert reference_events_module._event_problems(index, event, envelope, None) == []

    check()
    # About one batch in ten passes (integer IDs and spoiled events send the others to the full
    # check): a few dozen at the least, or the property proves nothing.
    assert len(passed) >= 30, f"only {len(passed)} batches passed the quick check"


QUICK_PHASES = [Phase.generate, Phase.shrink]


def test_the_quick_check_passes_most_plain_events() -> None:
    """The property above proves something only if the quick check passes many batches: plain
    ones (string IDs, valid timestamps) always."""
    plain = [{"type": "track", "event": "E", "userId": "u", "timestamp": "2024-05-01T12:00:00Z"}]
    plain.append({"type": "page", "anonymousId": "a", "userId": None, "context": {}})
    plain.append({"event": "E", "anonymousId": "a", "messageId": "m", "sentAt": "2024-05-01"})
    assert live_events._plainly_valid(plain[:2], None)
    assert live_events._plainly_valid(plain, "track")
    spoiled = [
        {"type": "track", "event": "", "userId": "u"},
        {"type": "track", "event": "E", "userId": "u", "timestamp": "soon"},
        {"type": "track", "event": "E", "userId": True},
        {"type": "identify", "userId": "", "anonymousId": None},
        {"type": "page", "userId": "u", "messageId": ""},
        {"type": "page", "userId": "u", "integrations": []},
        {"type": ["track"], "event": "E", "userId": "u"},
    ]
    for event in spoiled:
        assert not live_events._plainly_valid([event], None), event
