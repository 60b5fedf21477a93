"""The archive as a table: the columns every reader sees, whatever format an object is stored in.

Named as Segment-style warehouses name them, in snake_case. One mapping, `to_rows`, turns the
events the consumer archives into rows: the Parquet format writes them, and NDJSON objects are
read through the same mapping, so both formats answer a query alike.

- IDs (`message_id`, `user_id`, `anonymous_id`, `group_id`, `previous_id`) are text: an
  integer ID (analytics-ruby sends them) reads as its digits, an empty string as NULL.
- Timestamps are UTC, microseconds. A value that is not ISO-8601 (only `originalTimestamp` is
  not checked at ingest) reads as NULL, and its raw value is kept in `extra`.
- `properties`, `traits`, `context`, `integrations` are JSON text; a JSON null as NULL, and so
  is a value JSON has no form for (NaN or an infinity: only an entry written by something other
  than ingest can carry one), as its NDJSON line reads.
- `extra` is a JSON object of every other top-level field the client sent (`_metadata`,
  `channel`, `userProperties`, ...); NULL when there are none. Nothing the client sent is lost.
- `country`, `country_code`, `region`, `city` (from `context.location`: `country`,
  `countryCode`, `region`, `city`), `browser`, `os`, `device` (from `context.parsedUserAgent`)
  are text, derived from `context`, which stays the source of truth (ingest's enrichment fills
  these fields; a client may send its own `context.location`). A string reads as it is, whole;
  a number or a boolean as its JSON text (as an integer ID reads as its digits); an object, an
  array or a JSON null as NULL: a place or a browser that is an object is not a name. This is
  what Athena's `json_extract_scalar` gives, so its view derives the same values from NDJSON.
- `is_bot` is a boolean, never NULL: true when `context.bot` is JSON `true`, false otherwise,
  events archived before bots were flagged included (never checked, not flagged), so that
  `WHERE NOT is_bot` keeps them.
- The derived columns come last, after `extra`: a reader that matches Parquet columns by
  position sees the older objects' columns as a prefix of the newer ones'. Objects written
  before they existed (Parquet without them, old spills of a compaction) read with them
  derived from their `context` by `conform`, as NDJSON is read, so that every reader here
  gives one event the same values whatever format or release stored it: NULL where nothing
  was enriched. Athena, which cannot, reads such Parquet objects' text columns as NULL.
- `dt` and `hour` are partition columns: they come from the object's path, never from inside it.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Any, NamedTuple

import msgspec
import pyarrow as pa
import pyarrow.compute as pc

from shared.events import parse_timestamp
from shared.values import as_text

TEXT_FIELDS = {
    "message_id": "messageId",
    "type": "type",
    "event": "event",
    "name": "name",
    "user_id": "userId",
    "anonymous_id": "anonymousId",
    "group_id": "groupId",
    "previous_id": "previousId",
    "source": "source",
}
ID_COLUMNS = frozenset({"message_id", "user_id", "anonymous_id", "group_id", "previous_id"})
TIME_FIELDS = {
    "timestamp": "timestamp",
    "original_timestamp": "originalTimestamp",
    "sent_at": "sentAt",
    "received_at": "receivedAt",
}
JSON_FIELDS = {
    "properties": "properties",
    "traits": "traits",
    "context": "context",
    "integrations": "integrations",
}
EXTRA = "extra"
# Derived from `context` (ingest's enrichment): column -> key, under `context.location` ...
LOCATION_FIELDS = {
    "country": "country",
    "country_code": "countryCode",
    "region": "region",
    "city": "city",
}
# ... and under `context.parsedUserAgent`.
USER_AGENT_FIELDS = {"browser": "browser", "os": "os", "device": "device"}
IS_BOT = "is_bot"
DERIVED_COLUMNS = (*LOCATION_FIELDS, *USER_AGENT_FIELDS, IS_BOT)
TIMESTAMP = pa.timestamp("us", tz="UTC")

# The columns stored in an object, in order (the partition columns are not among them).
SCHEMA = pa.schema(
    [pa.field(name, pa.string()) for name in TEXT_FIELDS]
    + [pa.field(name, TIMESTAMP) for name in TIME_FIELDS]
    + [pa.field(name, pa.string()) for name in JSON_FIELDS]
    + [pa.field(EXTRA, pa.string())]
    + [pa.field(name, pa.string()) for name in (*LOCATION_FIELDS, *USER_AGENT_FIELDS)]
    + [pa.field(IS_BOT, pa.bool_())]
)
# What a query's `events` table adds: the partition of the object a row came from.
PARTITION_SCHEMA = pa.schema([pa.field("dt", pa.date32()), pa.field("hour", pa.int8())])
# The columns of the JSON text fields, for readers that can type them (DuckDB's JSON).
JSON_COLUMNS = (*JSON_FIELDS, EXTRA)
# What copies of one event share: its source and its `message_id` (an ID is unique only within
# the source that sent it). Compaction keeps one row per key, query and replay count one; NULL
# sources group together, as in SQL.
DEDUP_KEY = ("source", "message_id")

_KNOWN = frozenset((*TEXT_FIELDS.values(), *TIME_FIELDS.values(), *JSON_FIELDS.values()))
_json = msgspec.json.Encoder()
_json_decode = msgspec.json.Decoder()
# What `to_columns` gathers from each event: the raw values of these columns ...
_RAW_COLUMNS = (*TEXT_FIELDS, *TIME_FIELDS, *DERIVED_COLUMNS)
_RAW_KEYS = (*TEXT_FIELDS.values(), *TIME_FIELDS.values())
# ... and, per event, the JSON of these, one line each, in this order.
_JSON_KEYS = tuple(JSON_FIELDS.values())
_NO_CONTEXT = MappingProxyType({})
# The timestamps Arrow casts itself: for these, Arrow's ISO-8601 parser and Python's
# `datetime.fromisoformat` agree on the instant (a year from 1000 to 8999: from 9999, an offset
# can take the instant past what Python holds); any other string is parsed by Python.
_ARROW_ISO = (
    r"^[1-8][0-9]{3}-[0-9]{2}-[0-9]{2}T([01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9]"
    r"(\.[0-9]{1,6})?(Z|[+-]([01][0-9]|2[0-3]):[0-5][0-9])$"
)
_NULL_TEXT = pa.scalar(None, pa.string())


class Staged(NamedTuple):
    """Events on their way to rows: gathered by `to_columns`, made rows by `to_table`."""

    rows: list[tuple[Any, ...]]  # per event, the raw values of `_RAW_COLUMNS`
    json_lines: bytes  # per event, the JSON of each of `JSON_COLUMNS`, a line each


def to_rows(events: list[dict[str, Any]]) -> pa.Table:
    """The events as a table of `SCHEMA`."""
    return to_table([to_columns(events)])


def to_columns(events: list[dict[str, Any]]) -> Staged:
    """The first half of `to_rows`: what each column takes from each event, as it is (one pass
    over the events, in Python), and the text of the JSON columns. A writer that gathers many
    small batches (the consumer's Parquet staging, one stream entry at a time) stages each
    batch while its events are fresh in the CPU's cache and builds one table from all of
    them: building one costs tens of microseconds whatever its size. For events that encode
    as JSON (`formats.ndjson.stage` checks it first): it encodes only some of their values,
    so a value JSON cannot hold elsewhere (a map with a nil key as an ID) fails `to_table`."""
    rows = []
    jsons: list[Any] = []
    for event in events:
        context = event.get("context")
        if not isinstance(context, dict):
            context = _NO_CONTEXT
        location = context.get("location")
        if not isinstance(location, dict):
            location = _NO_CONTEXT
        agent = context.get("parsedUserAgent")
        if not isinstance(agent, dict):
            agent = _NO_CONTEXT
        rows.append(
            (
                *map(event.get, _RAW_KEYS),
                *map(location.get, LOCATION_FIELDS.values()),
                *map(agent.get, USER_AGENT_FIELDS.values()),
                context.get("bot") is True,
            )
        )
        jsons.extend(map(event.get, _JSON_KEYS))
        jsons.append(None if _KNOWN.issuperset(event) else _unknown_fields(event))
    return Staged(rows, _json.encode_lines(jsons))


def to_table(parts: list[Staged]) -> pa.Table:
    """The events staged in `parts`, in order, as one table of `SCHEMA`: column by column in
    Arrow (a column of strings at once; a column holding anything else, such as a number as
    an ID or a timestamp of an unusual shape, value by value in Python, which keeps each
    column exactly what the rules above say). Raises nothing for events that encode as JSON."""
    rows = [row for part in parts for row in part.rows]
    raw = dict(zip(_RAW_COLUMNS, zip(*rows, strict=True), strict=True)) if rows else {}
    values = {name: raw.get(name, ()) for name in _RAW_COLUMNS}
    arrays = {column: _text_column(values[column], column in ID_COLUMNS) for column in TEXT_FIELDS}
    late: dict[int, dict[str, Any]] = {}  # row -> the time fields that are not timestamps
    for column, field in TIME_FIELDS.items():
        arrays[column], failed = _time_column(values[column])
        for row in failed:
            late.setdefault(row, {})[field] = values[column][row]
    json_lines = b"".join(part.json_lines for part in parts)
    arrays.update(zip(JSON_COLUMNS, _json_columns(json_lines), strict=True))
    arrays[EXTRA] = _with_late_values(arrays[EXTRA], late)
    for column in (*LOCATION_FIELDS, *USER_AGENT_FIELDS):
        arrays[column] = _scalar_column(values[column])
    arrays[IS_BOT] = pa.array(values[IS_BOT], pa.bool_())
    return pa.table([arrays[name] for name in SCHEMA.names], schema=SCHEMA)


def _unknown_fields(event: dict[str, Any]) -> dict[str, Any]:
    return {name: value for name, value in event.items() if name not in _KNOWN}


def _strings(values: Sequence[Any]) -> pa.Array | None:
    """`values` as a string array when all are strings or None (Arrow's own conversion);
    None when one is anything else (a number, bytes, an object, a date). A fast path only:
    whatever Arrow makes of other values, or whatever it raises on a mix of them (a date and
    a NaN: ValueError), the caller converts the column value by value instead."""
    try:
        array = pa.array(values)
    except (ValueError, TypeError, OverflowError):  # ArrowInvalid, ArrowTypeError among them
        return None
    if pa.types.is_null(array.type):
        return array.cast(pa.string())
    return array if pa.types.is_string(array.type) else None


def _text_column(values: Sequence[Any], is_id: bool) -> pa.Array:
    array = _strings(values)
    if array is None:
        array = pa.array([_text(value) for value in values], pa.string())
    if is_id:
        return pc.if_else(pc.equal(array, ""), _NULL_TEXT, array)
    return array


def _scalar_column(values: Sequence[Any]) -> pa.Array:
    array = _strings(values)
    if array is None:
        array = pa.array([_scalar_text(value) for value in values], pa.string())
    return array


def _time_column(values: Sequence[Any]) -> tuple[pa.Array, list[int]]:
    """The instants of `values`, and the rows whose value is not one (but not missing):
    strings of the usual shape cast by Arrow, a column with any other value by Python."""
    texts = _strings(values)
    if texts is not None and pc.all(pc.match_substring_regex(texts, _ARROW_ISO)).as_py() in (
        True,
        None,  # all NULL
    ):
        try:
            return texts.cast(TIMESTAMP), []
        except pa.ArrowInvalid:  # the usual shape, not a date (February 30th)
            pass
    moments = [_timestamp(value) for value in values]
    failed = [
        row
        for row, (value, moment) in enumerate(zip(values, moments, strict=True))
        if moment is None and value is not None
    ]
    return pa.array(moments, TIMESTAMP), failed


def _json_columns(json_lines: bytes) -> list[pa.Array]:
    """The columns of `JSON_COLUMNS` from their lines; a JSON null (or a missing field,
    encoded as one) as NULL. All of them are one array of lines until they are apart: 64-bit
    offsets, as a flush's JSON may pass 2 GiB where one column does not."""
    lines = pc.split_pattern(pa.array([json_lines], pa.large_binary()), b"\n").values
    lines = lines.slice(0, len(lines) - 1).cast(pa.large_string())
    grid = pa.FixedSizeListArray.from_arrays(lines, len(JSON_COLUMNS))
    found = [pc.list_element(grid, at).cast(pa.string()) for at in range(len(JSON_COLUMNS))]
    return [pc.if_else(pc.equal(column, "null"), _NULL_TEXT, column) for column in found]


def _with_late_values(extra: pa.Array, late: dict[int, dict[str, Any]]) -> pa.Array:
    """`extra` with the raw values of the time fields that are not timestamps added, after
    the client's other unknown fields, so that nothing the client sent is lost. Written into
    the object's text, not decoded and encoded again, which would merge keys JSON cannot tell
    apart (`1` and `"1"` in a map MsgPack carried)."""
    if not late:
        return extra
    texts = extra.to_pylist()
    for row, fields in late.items():
        added = _json.encode(fields).decode()
        found = texts[row]
        texts[row] = added if found is None else f"{found[:-1]},{added[1:]}"
    return pa.array(texts, pa.string())


def conform(table: pa.Table) -> pa.Table:
    """`table` (a Parquet object's or a spill's rows, of this release or an older one) as a
    table of `SCHEMA`: its columns cast, the derived columns it lacks derived from its
    `context` column (written before they existed), as `to_rows` derives them; any other
    column it lacks NULL."""
    present = set(table.column_names)
    derived: dict[str, Any] = {}
    if "context" not in present:  # not this archive's: nothing to derive from, and no bot
        derived = {IS_BOT: pa.array([False] * table.num_rows, pa.bool_())}
    elif not present.issuperset(DERIVED_COLUMNS):
        contexts = [{"context": _decoded(text)} for text in table["context"].to_pylist()]
        # `SCHEMA`'s derived columns (all of them, but where a test stands in for the release
        # before them with a `SCHEMA` that has none).
        rows = to_rows(contexts)
        derived = {name: rows[name] for name in DERIVED_COLUMNS if name in rows.column_names}
    return pa.table(
        [
            table[f.name].cast(f.type)
            if f.name in present
            else derived[f.name]
            if f.name in derived
            else pa.nulls(table.num_rows, f.type)
            for f in SCHEMA
        ],
        schema=SCHEMA,
    )


def to_event(row: dict[str, Any]) -> dict[str, Any]:
    """An event from a row of `SCHEMA` (as `Table.to_pylist` gives it): the inverse of
    `to_rows`, but for what the columns cannot keep (IDs sent as numbers come back as
    text; timestamps as ISO-8601 UTC, the same instant in microseconds)."""
    event: dict[str, Any] = {}
    for column, field in TEXT_FIELDS.items():
        if row.get(column) is not None:
            event[field] = row[column]
    for column, field in TIME_FIELDS.items():
        if row.get(column) is not None:
            moment = row[column]
            spec = "milliseconds" if moment.microsecond % 1000 == 0 else "microseconds"
            event[field] = moment.isoformat(timespec=spec).replace("+00:00", "Z")
    for column, field in JSON_FIELDS.items():
        if row.get(column) is not None:
            event[field] = _json_decode.decode(row[column])
    if row.get(EXTRA) is not None:
        event.update(_json_decode.decode(row[EXTRA]))
    return event


def _scalar_text(value: Any) -> str | None:
    """A JSON scalar as text (as `json_extract_scalar` reads it); None for anything else."""
    if value is None or isinstance(value, (dict, list)):
        return None
    return as_text(value)


def _decoded(text: str | None) -> Any:
    """A stored `context` (JSON text) as a value; None when there is none or it is not JSON."""
    if text is None:
        return None
    try:
        return _json_decode.decode(text)
    except msgspec.DecodeError:
        return None


def _text(value: Any) -> str | None:
    """A text column's value (an empty ID is made NULL column-wise, by `_text_column`)."""
    return None if value is None else as_text(value)


def _timestamp(value: Any) -> datetime | None:
    moment = parse_timestamp(value)
    if moment is None:
        return None
    try:
        return moment.astimezone(UTC)
    except OverflowError:  # valid ISO-8601 no UTC timestamp can hold (year 1 at +01:00)
        return None
