"""The stream entry format: round trip, version field, and refusal of what it cannot read."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shared.codec import (
    FORMAT_VERSION,
    UndecodableEntry,
    UnencodableEvents,
    decode_entry,
    encode_entry,
    packed,
)

SAMPLE = [
    {"type": "track", "event": "Bought", "userId": "u1", "properties": {"price": 12.5}},
    {"type": "identify", "anonymousId": "a1", "traits": {"name": "Zoë 🚀", "tags": ["x", "y"]}},
]


def test_round_trip() -> None:
    assert decode_entry(encode_entry(SAMPLE)) == SAMPLE


@pytest.mark.parametrize(
    "value",
    [
        "ünïcødé ✓ 日本語 🎉",
        "",
        "\u0000 nul and \n newline",
        {"deeply": {"nested": {"list": [[1, [2, [3, {"k": None}]]]]}}},
        2**64 - 1,
        -(2**63),
        2**53 + 1,
        0,
        -1,
        1.5,
        -0.0,
        1e308,
        5e-324,
        0.1 + 0.2,
        True,
        False,
        None,
        [],
        {},
    ],
    ids=lambda v: type(v).__name__ + ":" + repr(v)[:20],
)
def test_round_trip_of_json_values(value: Any) -> None:
    events = [{"type": "track", "value": value}]
    decoded = decode_entry(encode_entry(events))
    assert decoded == events
    assert type(decoded[0]["value"]) is type(value)


def test_a_packed_value_is_stored_as_the_value_itself() -> None:
    location = {"country": "Sweden", "latitude": 58.4, "city": "Linköping"}
    shared = packed(location)
    events = [{"type": "track", "context": {"location": shared}} for _ in range(3)]
    assert encode_entry(events) == encode_entry(
        [{"type": "track", "context": {"location": dict(location)}} for _ in range(3)]
    )
    assert decode_entry(encode_entry(events))[2]["context"]["location"] == location


def test_floats_round_trip_exactly() -> None:
    values = [0.1, 1 / 3, 2.0**-1074, 1.7976931348623157e308, -123456.789]
    [decoded] = decode_entry(encode_entry([{"f": values}]))
    assert [v.hex() for v in decoded["f"]] == [v.hex() for v in values]


def test_entry_fields() -> None:
    fields = encode_entry(SAMPLE)
    assert set(fields) == {b"v", b"n", b"d"}
    assert fields[b"v"] == FORMAT_VERSION == b"1"
    assert fields[b"n"] == b"2"
    assert all(isinstance(v, bytes) for v in fields.values())
    assert msgspec.msgpack.decode(fields[b"d"]) == SAMPLE


def test_count_field_for_an_empty_and_a_large_list() -> None:
    assert encode_entry([])[b"n"] == b"0"
    assert decode_entry(encode_entry([])) == []
    many = [{"i": i} for i in range(1234)]
    fields = encode_entry(many)
    assert fields[b"n"] == b"1234"
    assert decode_entry(fields) == many


def test_encoding_is_deterministic() -> None:
    assert encode_entry(SAMPLE) == encode_entry([dict(e) for e in SAMPLE])


def test_decode_ignores_extra_fields() -> None:
    fields = {**encode_entry(SAMPLE), b"extra": b"whatever"}
    assert decode_entry(fields) == SAMPLE


@pytest.mark.parametrize(
    "version", [None, b"", b"0", b"2", b"1.0", b" 1", b"v1"], ids=lambda v: repr(v)
)
def test_unknown_or_missing_version_is_refused(version: bytes | None) -> None:
    fields = encode_entry(SAMPLE)
    if version is None:
        del fields[b"v"]
    else:
        fields[b"v"] = version
    with pytest.raises(UndecodableEntry, match="version"):
        decode_entry(fields)


def test_missing_data_field_is_refused() -> None:
    fields = encode_entry(SAMPLE)
    del fields[b"d"]
    with pytest.raises(UndecodableEntry, match="'d'"):
        decode_entry(fields)


def test_empty_fields_are_refused() -> None:
    with pytest.raises(UndecodableEntry):
        decode_entry({})


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\xc1",  # a never-used MsgPack byte
        b"\xff\xfe\xfd garbage",
        b'[{"type": "track"}]',  # JSON, not MsgPack
        msgspec.msgpack.encode(SAMPLE)[:-3],  # truncated
        msgspec.msgpack.encode({"type": "track"}),  # a map, not a list
        msgspec.msgpack.encode([1, 2, 3]),  # a list of non-maps
        msgspec.msgpack.encode(["track"]),
        msgspec.msgpack.encode([{1: "int key"}]),  # map keys must be strings
        msgspec.msgpack.encode("just a string"),
        b"\x91\x81\xa1p" + b"\x91" * 5000 + b"\x90",  # nested deeper than the decoder goes
    ],
    ids=[
        "empty",
        "reserved-byte",
        "garbage",
        "json",
        "truncated",
        "map",
        "ints",
        "strings",
        "int-keys",
        "string",
        "too-deep",
    ],
)
def test_undecodable_data_is_refused(data: bytes) -> None:
    with pytest.raises(UndecodableEntry):
        decode_entry({b"v": FORMAT_VERSION, b"n": b"1", b"d": data})


def test_undecodable_entry_is_a_value_error() -> None:
    assert issubclass(UndecodableEntry, ValueError)


@pytest.mark.parametrize("value", [2**64, -(2**63) - 1, 10**40])
def test_ints_beyond_msgpack_range_are_refused_naming_the_events(value: int) -> None:
    # MsgPack holds -2**63 .. 2**64-1; the error says which events hold something else.
    events = [{"ok": 1}, {"n": value}, {"ok": 2}, {"deep": [{"n": value}]}]
    with pytest.raises(UnencodableEvents) as excinfo:
        encode_entry(events)
    assert excinfo.value.indexes == [1, 3]
    assert isinstance(excinfo.value, ValueError)


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=False)
    | st.text(max_size=12),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=6), children, max_size=4)
    ),
    max_leaves=10,
)
event_lists = st.lists(st.dictionaries(st.text(max_size=6), json_values, max_size=4), max_size=4)


@settings(max_examples=150, deadline=None)
@given(event_lists)
def test_round_trip_property(events: list[dict[str, Any]]) -> None:
    fields = encode_entry(events)
    assert fields[b"n"] == str(len(events)).encode()
    assert decode_entry(fields) == events
