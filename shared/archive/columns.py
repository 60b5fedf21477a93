"""The archive as a table: the columns every reader sees, whatever format an object is stored in.

Named as Segment-style warehouses name them, in snake_case. One mapping, `to_rows`, turns the
events the consumer archives into rows: the Parquet format writes them, and NDJSON objects are
read through the same mapping, so both formats answer a query alike.

- IDs (`message_id`, `user_id`, `anonymous_id`, `group_id`, `previous_id`) are text: an
  integer ID (analytics-ruby sends them) reads as its digits, an empty string as NULL.
- Timestamps are UTC, microseconds. A value that is not ISO-8601 (only `originalTimestamp` is
  not checked at ingest) reads as NULL, and its raw value is kept in `extra`.
- `properties`, `traits`, `context`, `integrations` are JSON text.
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

from datetime import UTC, datetime
from typing import Any

import msgspec
import pyarrow as pa

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


def to_rows(events: list[dict[str, Any]]) -> pa.Table:
    """The events as a table of `SCHEMA`."""
    return pa.Table.from_pydict(to_columns(events), schema=SCHEMA)


def to_columns(events: list[dict[str, Any]]) -> dict[str, list[Any]]:
    """The same mapping as `to_rows`, as `SCHEMA`'s columns of Python values, before Arrow:
    building a table costs tens of microseconds whatever its size, so a writer that gathers
    many small batches (the consumer's Parquet staging, one stream entry at a time) maps each
    batch at once and builds one table from all of them."""
    columns: dict[str, list[Any]] = {name: [] for name in SCHEMA.names}
    for event in events:
        for column, field in TEXT_FIELDS.items():
            columns[column].append(_text(event.get(field), column in ID_COLUMNS))
        extra = {name: value for name, value in event.items() if name not in _KNOWN}
        for column, field in TIME_FIELDS.items():
            value = event.get(field)
            moment = _timestamp(value)
            if moment is None and value is not None:
                extra[field] = value
            columns[column].append(moment)
        for column, field in JSON_FIELDS.items():
            value = event.get(field)
            columns[column].append(None if value is None else _json.encode(value).decode())
        columns[EXTRA].append(_json.encode(extra).decode() if extra else None)
        _derive(event.get("context"), columns)
    return columns


def conform(table: pa.Table) -> pa.Table:
    """`table` (a Parquet object's or a spill's rows, of this release or an older one) as a
    table of `SCHEMA`: its columns cast, the derived columns it lacks derived from its
    `context` column (written before they existed), any other column it lacks NULL."""
    present = set(table.column_names)
    derived: dict[str, list[Any]] = {}
    if "context" not in present:  # not this archive's: nothing to derive from, and no bot
        derived = {IS_BOT: [False] * table.num_rows}
    elif not present.issuperset(DERIVED_COLUMNS):
        derived = {name: [] for name in DERIVED_COLUMNS}
        for text in table["context"].to_pylist():
            _derive(_decoded(text), derived)
    return pa.table(
        [
            table[f.name].cast(f.type)
            if f.name in present
            else pa.array(derived[f.name], f.type)
            if f.name in derived
            else pa.nulls(table.num_rows, f.type)
            for f in SCHEMA
        ],
        schema=SCHEMA,
    )


_json_decode = msgspec.json.Decoder()


def to_event(row: dict[str, Any]) -> dict[str, Any]:
    """An event from a row of `SCHEMA` (as `Table.to_pylist` gives it): the inverse of
    `to_columns`, but for what the columns cannot keep (IDs sent as numbers come back as
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


def _derive(context: Any, columns: dict[str, list[Any]]) -> None:
    """Append the derived columns' values of one event, from its `context`."""
    context = context if isinstance(context, dict) else {}
    for source, fields in (("location", LOCATION_FIELDS), ("parsedUserAgent", USER_AGENT_FIELDS)):
        found = context.get(source)
        found = found if isinstance(found, dict) else {}
        for column, key in fields.items():
            columns[column].append(_scalar_text(found.get(key)))
    columns[IS_BOT].append(context.get("bot") is True)


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


def _text(value: Any, is_id: bool) -> str | None:
    if value is None or (is_id and value == ""):
        return None
    return as_text(value)


def _timestamp(value: Any) -> datetime | None:
    moment = parse_timestamp(value)
    if moment is None:
        return None
    try:
        return moment.astimezone(UTC)
    except OverflowError:  # valid ISO-8601 no UTC timestamp can hold (year 1 at +01:00)
        return None
