"""The archive's column mapping (shared/archive/columns.py), column by column in Arrow, gives
exactly the table the value-by-value mapping of the release before gave (frozen in
`row_by_row`), for events of every shape, however the events are cut into staged parts."""

from __future__ import annotations

import math
from datetime import UTC, datetime
from itertools import pairwise
from typing import Any

import pyarrow.json as pj
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shared.archive import columns
from tests.shared.archive import row_by_row
from tests.shared.archive.generated_events import event_strategy


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(batch=st.lists(event_strategy(every_shape=True), max_size=12), data=st.data())
def test_columns_map_events_as_the_row_by_row_mapping(
    batch: list[dict[str, Any]], data: st.DataObject
) -> None:
    expected = row_by_row.to_rows(batch)
    assert columns.to_rows(batch).equals(expected)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(batch)), max_size=3)))
    bounds = [0, *cuts, len(batch)]
    parts = [columns.to_columns(batch[a:b]) for a, b in pairwise(bounds)]
    assert columns.to_table(parts).equals(expected)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    parts=st.lists(
        st.one_of(
            st.tuples(st.just(True), st.lists(event_strategy(plain=True), max_size=6)),
            st.tuples(st.just(False), st.lists(event_strategy(every_shape=True), max_size=3)),
        ),
        max_size=5,
    )
)
def test_plain_batches_read_by_arrow_map_as_the_row_by_row_mapping(
    parts: list[tuple[bool, list[dict[str, Any]]]],
) -> None:
    """Plain batches (strings where the columns read text) are staged for Arrow's JSON reader,
    others gathered in Python; a table of both, in any order, is the row-by-row mapping's."""
    staged = [columns.to_columns(batch) for _, batch in parts]
    for (plain, _), part in zip(parts, staged, strict=True):
        assert part.rows is None or not plain
    everything = [event for _, batch in parts for event in batch]
    assert columns.to_table(staged).equals(row_by_row.to_rows(everything))


def _unenriched(event: dict[str, Any]) -> dict[str, Any]:
    """`event` with none of the parts of `context` the derived columns read."""
    context = event.get("context")
    if not isinstance(context, dict):
        return event
    kept = {key: value for key, value in context.items() if key not in (*DERIVED, "bot")}
    return {**event, "context": kept}


DERIVED = tuple(columns.DERIVED_PARTS)


@settings(
    max_examples=60,
    deadline=None,
    # The plain events' timestamps are filtered to strings: lists of lists filter more.
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
@given(
    parts=st.lists(st.lists(event_strategy(plain=True).map(_unenriched), max_size=5), max_size=3),
    enriched_last=st.booleans(),
)
def test_plain_batches_nothing_enriched_map_as_the_row_by_row_mapping(
    parts: list[list[dict[str, Any]]], enriched_last: bool
) -> None:
    """Where no event has a part of `context` the derived columns read (server SDKs' events),
    Arrow reads the scalars without `context`: the same table, its derived columns NULL and
    `is_bot` false; one event with a part, anywhere, and `context` is read for all."""
    if enriched_last:
        parts = [*parts, [{"messageId": "m", "context": {"bot": True, "location": {"city": "c"}}}]]
    staged = [columns.to_columns(batch) for batch in parts]
    assert all(part.rows is None for part in staged)
    everything = [event for batch in parts for event in batch]
    assert columns.to_table(staged).equals(row_by_row.to_rows(everything))


@pytest.fixture
def parsings(monkeypatch: pytest.MonkeyPatch) -> list[pj.ParseOptions]:
    """The parse options of each read of Arrow's JSON reader, as `columns` calls it."""
    seen: list[pj.ParseOptions] = []
    read = pj.read_json

    def spied(source: Any, **options: Any) -> Any:
        seen.append(options["parse_options"])
        return read(source, **options)

    monkeypatch.setattr(columns.pj, "read_json", spied)
    return seen


def test_text_that_looks_like_a_context_member_is_not_one(
    parsings: list[pj.ParseOptions],
) -> None:
    """The check for a member of `context` finds a key, never a value's text (its quotes are
    escaped in the line): these events' scalars are read without `context`, their derived
    columns NULL, their text kept."""
    tricky = '"context":{"location":{"country":"FR"}}'
    events = [
        {"messageId": "a", "event": tricky, "context": {}},
        {"messageId": "b", "userId": tricky, "context": None},
        {"messageId": "c", "context": {"library": {"name": tricky}, "location": None}},
    ]
    table = columns.to_table([columns.to_columns(events)])
    assert parsings == [columns._TOP_SCALARS_PARSING]
    assert table.equals(row_by_row.to_rows(events))
    assert table["country"].null_count == 3
    assert table["event"][0].as_py() == tricky


def test_one_context_member_and_context_is_read_for_every_event(
    parsings: list[pj.ParseOptions],
) -> None:
    events = [{"messageId": "a", "context": {}}, {"messageId": "b", "context": {"bot": False}}]
    table = columns.to_table([columns.to_columns(events)])
    assert parsings == [columns._SCALARS_PARSING]
    assert table.equals(row_by_row.to_rows(events))


@pytest.mark.parametrize(
    ("event", "plain"),
    [
        ({"messageId": "m", "userId": "", "sentAt": "2024-05-01", "context": {"bot": True}}, True),
        ({"context": {"location": {"country": "DE", "latitude": 52.5}, "library": [1]}}, True),
        ({"messageId": "m", "userId": 12}, False),
        ({"context": {"location": "Berlin"}}, False),
        ({"context": {"bot": 1}}, False),
        ({"context": ["a"]}, False),
        ({"timestamp": 1714564800}, False),
        ({"context": {"parsedUserAgent": {"os": None, "device": {"type": "phone"}}}}, False),
    ],
    ids=[
        "strings",
        "other-values-unread",
        "int-id",
        "place-text",
        "bot-number",
        "context-list",
        "time-number",
        "device-object",
    ],
)
def test_a_batch_is_plain_when_its_scalars_are_strings(event: dict[str, Any], plain: bool) -> None:
    staged = columns.to_columns([event])
    assert (staged.rows is None) is plain
    assert columns.to_table([staged]).equals(row_by_row.to_rows([event]))


def test_plain_lines_longer_than_a_reader_block_are_read_whole() -> None:
    """Arrow's JSON reader reads blocks (of 4 MiB) that must hold whole lines: a scalar line
    longer than that (an ID as long as a block, a 2 MiB city), in a part among others, is read
    as it is."""
    block = columns._JSON_BLOCK_BYTES
    parts = [
        [{"messageId": "a", "type": "track"}],
        [{"messageId": "b" * block, "context": {"location": {"city": "c" * (2 << 20)}}}],
        [{"messageId": "d", "userId": "e" * 100}] * 3,
    ]
    staged = [columns.to_columns(part) for part in parts]
    assert all(part.rows is None for part in staged)
    everything = [event for part in parts for event in part]
    assert columns.to_table(staged).equals(row_by_row.to_rows(everything))


@pytest.mark.parametrize(
    "moments",
    [
        ["2024-05-01T12:00:00.000Z", "2024-05-01T12:00:00.5+05:30", None],
        ["2024-05-01T12:00:00.000Z", "2024-02-30T00:00:00Z"],  # the usual shape, not a date
        ["2024-05-01T12:00:00.000Z", "2024-05-01 12:00:00"],  # another shape: Python's
        ["9999-12-31T23:00:00-05:00"],  # past what Python holds once in UTC
        ["2024-05-01T12:00:00Z", 1714564800],
    ],
    ids=["usual", "not-a-date", "other-shape", "overflow", "a-number"],
)
def test_a_column_of_timestamps_reads_as_python_reads_each(moments: list[Any]) -> None:
    """Arrow casts a column of the usual shape at once; any other value sends the column to
    Python, value by value, and what is not a timestamp is kept in `extra`."""
    batch = [{"messageId": str(at), "sentAt": moment} for at, moment in enumerate(moments)]
    assert columns.to_rows(batch).equals(row_by_row.to_rows(batch))


def test_no_events_make_an_empty_table() -> None:
    assert columns.to_rows([]).equals(columns.SCHEMA.empty_table())
    assert columns.to_table([columns.to_columns([])] * 2).num_rows == 0


def test_values_arrow_would_convert_its_own_way_are_converted_as_text() -> None:
    """Bytes (which Arrow would take as text) and numbers where text belongs read as Python
    writes them: bytes as their JSON (base64), a number as its digits."""
    batch = [
        {"userId": b"\x00\xff", "context": {"location": {"country": b"FR"}}},
        {"userId": 12, "context": {"location": {"country": 1.5}}},
    ]
    rows = columns.to_rows(batch).select(["user_id", "country"]).to_pylist()
    assert rows == [
        {"user_id": '"AP8="', "country": '"RlI="'},
        {"user_id": "12", "country": "1.5"},
    ]
    assert rows == row_by_row.to_rows(batch).select(["user_id", "country"]).to_pylist()


WHEN = datetime(2024, 5, 1, 12, tzinfo=UTC)


@pytest.mark.parametrize(
    "event",
    [
        lambda value: {"userId": value},
        lambda value: {"sentAt": value},
        lambda value: {"context": {"location": {"city": value}}},
    ],
    ids=["text", "time", "derived"],
)
def test_a_column_arrow_cannot_convert_is_converted_value_by_value(event: Any) -> None:
    """A date (a MsgPack timestamp) and a NaN in one column make Arrow's conversion raise
    ValueError: the column is converted value by value, never the flush failed."""
    batch = [event(WHEN), event(math.nan), event("x")]
    assert columns.to_rows(batch).equals(row_by_row.to_rows(batch))


def test_a_json_field_json_has_no_form_for_reads_as_null() -> None:
    """NaN or an infinity as a whole JSON field (only MsgPack carries them) reads as NULL, as
    the NDJSON line (`"properties":null`) reads; inside a value it is written `null`."""
    batch = [
        {"messageId": "a", "properties": math.nan},
        {"messageId": "b", "properties": {"n": math.inf}},
    ]
    assert columns.to_rows(batch)["properties"].to_pylist() == [None, '{"n":null}']


def test_late_values_join_extra_without_merging_its_keys() -> None:
    """A time field that is not a timestamp is kept in `extra` after the client's own unknown
    fields, whose text is kept as it is: `1` and `"1"` stay two keys."""
    batch = [{"messageId": "a", "x": {1: "a", "1": "b"}, "sentAt": "not a time"}]
    [extra] = columns.to_rows(batch)["extra"].to_pylist()
    assert extra == '{"x":{"1":"a","1":"b"},"sentAt":"not a time"}'
    assert columns.to_rows(batch).equals(row_by_row.to_rows(batch))
