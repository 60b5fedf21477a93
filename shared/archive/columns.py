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

from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from itertools import groupby
from types import MappingProxyType
from typing import Any, NamedTuple

import msgspec
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pj

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
# The parts of `context` the derived columns but `is_bot` read: part -> {column: key}.
DERIVED_PARTS = {"location": LOCATION_FIELDS, "parsedUserAgent": USER_AGENT_FIELDS}
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

# A plain event's scalars, as `to_columns` checks and writes them for Arrow's JSON reader:
# strings or nothing where `to_rows` reads text or a timestamp, a boolean or nothing as
# `context.bot`, an object or nothing where it looks for one. Arrow reads exactly these as
# Python would; any other value (a number as an ID, a string as `context.location`) makes the
# batch gathered in Python instead.
_Text = str | None
_PART_STRUCTS = {
    part: msgspec.defstruct(
        f"_{part}", [(key, _Text, None) for key in fields.values()], omit_defaults=True
    )
    for part, fields in DERIVED_PARTS.items()
}
_Context = msgspec.defstruct(
    "_Context",
    [
        *((part, struct | None, None) for part, struct in _PART_STRUCTS.items()),
        ("bot", bool | None, None),
    ],
    omit_defaults=True,
)
_Scalars = msgspec.defstruct(
    "_Scalars",
    [*((key, _Text, None) for key in _RAW_KEYS), ("context", _Context | None, None)],
    omit_defaults=True,
)
# The same shape, as Arrow's JSON reader reads it.
_CONTEXT_TYPE = pa.struct(
    [
        *(
            pa.field(part, pa.struct([(key, pa.string()) for key in fields.values()]))
            for part, fields in DERIVED_PARTS.items()
        ),
        pa.field("bot", pa.bool_()),
    ]
)
_SCALARS_PARSING = pj.ParseOptions(
    explicit_schema=pa.schema(
        [*(pa.field(key, pa.string()) for key in _RAW_KEYS), pa.field("context", _CONTEXT_TYPE)]
    ),
    unexpected_field_behavior="ignore",
)
# ... and without `context`, for a flush whose events none has a part of it (`_plain_table`).
_TOP_SCALARS_PARSING = pj.ParseOptions(
    explicit_schema=pa.schema([pa.field(key, pa.string()) for key in _RAW_KEYS]),
    unexpected_field_behavior="ignore",
)
_ENRICHED_CONTEXT = b'"context":{"'
_JSON_BLOCK_BYTES = 4 << 20
_INT32 = (1 << 31) - 1  # the largest block Arrow's JSON reader takes


class Staged(NamedTuple):
    """Events on their way to rows: gathered by `to_columns`, made rows by `to_table`."""

    # Per event, its `_Scalars` as a line (a plain batch), then, per event, one line of JSON
    # for each of `JSON_COLUMNS`; in one bytes object (msgspec's smallest buffer is 1 KiB).
    lines: bytes
    scalar_bytes: int  # how many of `lines` are the scalars' (0 when not plain)
    rows: list[tuple[Any, ...]] | None  # not plain: per event, the raw values of `_RAW_COLUMNS`


def to_rows(events: list[dict[str, Any]]) -> pa.Table:
    """The events as a table of `SCHEMA`."""
    return to_table([to_columns(events)])


def to_columns(events: list[dict[str, Any]]) -> Staged:
    """The first half of `to_rows`: what each column takes from each event, and the text of
    the JSON columns. A writer that gathers many small batches (the consumer's Parquet
    staging, one stream entry at a time) stages each batch while its events are fresh in the
    CPU's cache and builds one table from all of them (`to_table`).

    A plain batch, one whose scalars (IDs, names, timestamps, the derived fields) are all
    strings or missing (what ingest writes for SDKs that send text IDs), is staged as JSON lines of
    those scalars alone, which msgspec checks and writes in C and Arrow's JSON reader reads
    at flush time without the GIL; any other is gathered value by value, in Python. Raises
    what msgspec's encoder raises for a value JSON cannot hold among those it encodes (every
    value of a plain batch); a gathered batch's scalars are not encoded here, so one JSON
    cannot hold (a map with a nil key as an ID) fails `to_table` unless the caller checked
    the events first (`formats.parquet.stage` does)."""
    json_lines = _json.encode_lines(_json_values(events))
    try:
        scalars = msgspec.convert(events, list[_Scalars])
    except msgspec.ValidationError:  # not plain
        return Staged(json_lines, 0, _gathered(events))
    scalar_lines = _json.encode_lines(scalars)
    return Staged(scalar_lines + json_lines, len(scalar_lines), None)


def _gathered(events: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
    """Per event, the raw values of `_RAW_COLUMNS`, as they are."""
    rows = []
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
    return rows


def _json_values(events: list[dict[str, Any]]) -> list[Any]:
    """Per event, the values of `JSON_COLUMNS`."""
    values: list[Any] = []
    for event in events:
        values.extend(map(event.get, _JSON_KEYS))
        values.append(None if _KNOWN.issuperset(event) else _unknown_fields(event))
    return values


def to_table(parts: list[Staged]) -> pa.Table:
    """The events staged in `parts`, in order, as one table of `SCHEMA`: column by column in
    Arrow. Plain parts' scalars are read by Arrow's JSON reader; the others' by Arrow's
    conversion of a column of strings at once, or, for a column holding anything else (a
    number as an ID, a timestamp of an unusual shape), value by value in Python, which keeps
    each column exactly what the rules above say. Raises nothing for events that encode as
    JSON."""
    tables = [
        _plain_table(group) if plain else _gathered_table(group)
        for plain, runs in groupby(parts, key=lambda part: part.rows is None)
        if (group := list(runs))
    ]
    if not tables:
        return _gathered_table([])
    return tables[0] if len(tables) == 1 else pa.concat_tables(tables)


def _plain_table(parts: list[Staged]) -> pa.Table:
    scalar_lines = b"".join(memoryview(part.lines)[: part.scalar_bytes] for part in parts)
    if not scalar_lines:  # batches left with no event
        return _gathered_table([])
    # Reading `context`'s struct costs Arrow a third of the scalars' time even where it is
    # empty, as it is for events nothing enriched (server SDKs'): read it only when a line has
    # one of its parts. This is exact: `"context":{"` can only be that key with a member (in a
    # string the quotes are escaped; no other struct has a `context` key).
    enriched = _ENRICHED_CONTEXT in scalar_lines
    # A block must hold the longest line whole: no line is longer than its part's. The columns
    # stay in the reader's chunks (one per block): a column past 2 GiB cannot be one array.
    # One thread: the consumer flushes on a thread of its own while its main thread decodes
    # the next entries; the reader's pool would only contend with it for the cores, at some
    # 1 us of CPU per event more than it saves in wall time.
    longest = max(part.scalar_bytes for part in parts)
    reading = pj.ReadOptions(
        use_threads=False, block_size=min(max(_JSON_BLOCK_BYTES, longest), _INT32)
    )
    scalars = pj.read_json(
        pa.BufferReader(scalar_lines),
        read_options=reading,
        parse_options=_SCALARS_PARSING if enriched else _TOP_SCALARS_PARSING,
    )
    return _assembled(
        {column: scalars[field] for column, field in TEXT_FIELDS.items()},
        {column: scalars[field] for column, field in TIME_FIELDS.items()},
        _json_lines_of(parts),
        _derived(scalars["context"]) if enriched else _not_derived(scalars.num_rows),
    )


def _derived(context: pa.ChunkedArray) -> dict[str, pa.ChunkedArray]:
    """The derived columns of the `context` struct Arrow's JSON reader read."""
    derived = {
        column: pc.struct_field(context, [part, key])
        for part, fields in DERIVED_PARTS.items()
        for column, key in fields.items()
    }
    derived[IS_BOT] = pc.fill_null(pc.struct_field(context, ["bot"]), False)
    return derived


def _not_derived(rows: int) -> dict[str, pa.Array]:
    """The derived columns of events none of which has a part they read: NULL, no bots."""
    derived = {
        column: pa.nulls(rows, pa.string()) for column in (*LOCATION_FIELDS, *USER_AGENT_FIELDS)
    }
    derived[IS_BOT] = pa.repeat(False, rows)
    return derived


def _gathered_table(parts: list[Staged]) -> pa.Table:
    rows = [row for part in parts for row in part.rows or ()]
    raw = dict(zip(_RAW_COLUMNS, zip(*rows, strict=True), strict=True)) if rows else {}
    values = {name: raw.get(name, ()) for name in _RAW_COLUMNS}
    derived = {
        column: _string_column(values[column], _scalar_text)
        for column in (*LOCATION_FIELDS, *USER_AGENT_FIELDS)
    }
    derived[IS_BOT] = pa.array(values[IS_BOT], pa.bool_())
    return _assembled(
        {column: _string_column(values[column], _text) for column in TEXT_FIELDS},
        {column: values[column] for column in TIME_FIELDS},
        _json_lines_of(parts),
        derived,
    )


def _assembled(
    texts: dict[str, pa.Array | pa.ChunkedArray],
    times: dict[str, pa.Array | pa.ChunkedArray | Sequence[Any]],
    json_lines: list[pa.Array],
    derived: dict[str, pa.Array | pa.ChunkedArray],
) -> pa.Table:
    """The table of `SCHEMA` from its text columns, the time fields' values (strings in Arrow,
    or Python values), the lines of `JSON_COLUMNS` and the derived columns."""
    arrays = {
        column: pc.if_else(pc.equal(array, ""), _NULL_TEXT, array)
        if column in ID_COLUMNS
        else array
        for column, array in texts.items()
    }
    late: dict[int, dict[str, Any]] = {}  # row -> the time fields that are not timestamps
    for column, field in TIME_FIELDS.items():
        arrays[column], failed = _time_column(times[column])
        for row, value in failed:
            late.setdefault(row, {})[field] = value
    for name, lines in zip(JSON_COLUMNS, json_lines, strict=True):
        text = lines.cast(pa.string())
        arrays[name] = pc.if_else(pc.equal(text, "null"), _NULL_TEXT, text)
    arrays[EXTRA] = _with_late_values(arrays[EXTRA], late)
    arrays.update(derived)
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


def _string_column(values: Sequence[Any], as_text: Callable[[Any], str | None]) -> pa.Array:
    """A column of text: all strings at once (Arrow's conversion), anything else value by value
    as `as_text` reads it."""
    array = _strings(values)
    if array is None:
        array = pa.array([as_text(value) for value in values], pa.string())
    return array


def _time_column(
    values: pa.Array | pa.ChunkedArray | Sequence[Any],
) -> tuple[pa.Array | pa.ChunkedArray, list[tuple[int, Any]]]:
    """The instants of `values` (strings in Arrow, or Python values), and the rows whose value
    is not one (but not missing), with that value: strings of the usual shape cast by Arrow,
    a column with any other value by Python."""
    texts = values if isinstance(values, (pa.Array, pa.ChunkedArray)) else _strings(values)
    if texts is not None and pc.all(pc.match_substring_regex(texts, _ARROW_ISO)).as_py() in (
        True,
        None,  # all NULL
    ):
        try:
            return texts.cast(TIMESTAMP), []
        except pa.ArrowInvalid:  # the usual shape, not a date (February 30th)
            pass
    if isinstance(values, (pa.Array, pa.ChunkedArray)):
        values = values.to_pylist()
    moments = [_timestamp(value) for value in values]
    failed = [
        (row, value)
        for row, (value, moment) in enumerate(zip(values, moments, strict=True))
        if moment is None and value is not None
    ]
    return pa.array(moments, TIMESTAMP), failed


def _json_lines_of(parts: list[Staged]) -> list[pa.Array]:
    """The lines of `JSON_COLUMNS` staged in `parts`, as a column each of large strings: 64-bit
    offsets, as a flush's lines may pass 2 GiB where one column does not."""
    lines = b"".join(memoryview(part.lines)[part.scalar_bytes :] for part in parts)
    split = pc.split_pattern(pa.array([lines], pa.large_binary()), b"\n").values
    split = split.slice(0, len(split) - 1).cast(pa.large_string())
    grid = pa.FixedSizeListArray.from_arrays(split, len(JSON_COLUMNS))
    return [pc.list_element(grid, at) for at in range(len(JSON_COLUMNS))]


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
    """A text column's value (an empty ID is made NULL column-wise, by `_assembled`)."""
    return None if value is None else as_text(value)


def _timestamp(value: Any) -> datetime | None:
    moment = parse_timestamp(value)
    if moment is None:
        return None
    try:
        return moment.astimezone(UTC)
    except OverflowError:  # valid ISO-8601 no UTC timestamp can hold (year 1 at +01:00)
        return None
