"""Gzip NDJSON objects decoded by DuckDB into rows of `columns.SCHEMA`, as `columns.to_rows`
maps the same events, without a Python loop per event: `event-ingest query` holds the NDJSON
objects of the hours not yet compacted, and decoding them in Python cost about 30 µs an event.

`rows(con, url)` reads the object `url` (through the ObjectFiles registered with `con`, whose
TimeZone must be UTC) and maps each line in SQL:

- text columns: a JSON string as it is, an integer as its digits, a JSON null or a missing key
  as NULL, anything else as its JSON text; an empty ID as NULL (`columns._text`);
- timestamps: ISO-8601 strings of the usual shape (a 4-digit year from 1000, `T`, seconds, up
  to 6 decimals, `Z` or an offset or none) are cast by DuckDB; any other string is parsed
  afterwards by `columns._timestamp` (Python's `datetime.fromisoformat`), one by one (they are
  rare: the server writes `receivedAt` and `timestamp` itself), so that exactly what Python
  accepts is a timestamp; a value that is not one reads as NULL and is kept in `extra`;
- JSON columns and `extra`: the same JSON values, written by DuckDB: equal as JSON, but the
  text may differ from msgspec's in number formatting (`1.5e16` as `15000000000000000.0`) and
  the case of escapes (`\\u001F`);
- the columns derived from `context` as `columns._derive` reads them.

None when the object is not what this mapping expects (a line that is not a JSON object, JSON
DuckDB cannot read, bad gzip), or holds what it would map otherwise than Python (an object as a
timestamp, a number with a fraction as an ID, a name or a place): the caller decodes it in
Python (`reading`), which keeps what decodes and says what is wrong.
"""

from __future__ import annotations

from typing import Any

import duckdb
import msgspec
import pyarrow as pa
import pyarrow.compute as pc

from shared.archive import columns

# What DuckDB casts itself: every such string means the same instant to it and to Python.
_ISO = (
    r"[1-9][0-9]{3}-[0-9]{2}-[0-9]{2}T([01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9]"
    r"(\.[0-9]{1,6})?(Z|[+-]([01][0-9]|2[0-3]):[0-5][0-9])?"
)
_decode = msgspec.json.Decoder().decode
_encode = msgspec.json.Encoder().encode


def rows(con: Any, url: str) -> pa.Table | None:
    """The rows of the gzip NDJSON object `url`; None when DuckDB cannot map it (see above)."""
    try:
        table = con.sql(_select(url)).to_arrow_table()
    except duckdb.Error:
        return None
    if table.num_rows and not pc.all(table["_object"]).as_py():
        return None
    return _with_python_timestamps(table).select(columns.SCHEMA.names).cast(columns.SCHEMA)


def _with_python_timestamps(table: pa.Table) -> pa.Table:
    """`table` with the timestamps DuckDB left to Python (`_<column>_text`) parsed, and each
    that parses taken out of `extra`, where the SQL put every value it did not cast."""
    extra = None
    for column, field in columns.TIME_FIELDS.items():
        texts = table[f"_{column}_text"]
        if texts.null_count == len(texts):
            continue
        moments = table[column].to_pylist()
        extra = extra if extra is not None else table[columns.EXTRA].to_pylist()
        for index, text in enumerate(texts.to_pylist()):
            moment = None if text is None else columns._timestamp(text)
            if moment is not None:
                moments[index] = moment
                extra[index] = _without(extra[index], field)
        table = table.set_column(
            table.schema.get_field_index(column), column, pa.array(moments, columns.TIMESTAMP)
        )
    if extra is not None:
        index = table.schema.get_field_index(columns.EXTRA)
        table = table.set_column(index, columns.EXTRA, pa.array(extra, pa.string()))
    return table


def _without(extra: str | None, field: str) -> str | None:
    """An `extra` object's JSON text without `field` (NULL when nothing is left)."""
    found = _decode(extra) if extra is not None else {}
    found.pop(field, None)
    return _encode(found).decode() if found else None


def _select(url: str) -> str:
    """Each line parsed twice, by two functions DuckDB runs in C++: once for every value the
    columns need (one `json_extract` of a list of paths), once for `extra` (the line without the
    known fields, by an RFC 7386 merge patch that sets them to null)."""
    paths = [
        *(f"$.{field}" for field in _FIELDS),
        *(f"$.context.{part}.{key}" for part, fields in _DERIVED for key in fields.values()),
        "$.context.bot",
    ]
    values = f"[{', '.join(_literal(path) for path in paths)}]"
    known = "{" + ",".join(f'"{field}":null' for field in sorted(columns._KNOWN)) + "}"
    time_fields = list(columns.TIME_FIELDS.items())
    late = ", ".join(
        f"{_literal(field)}, CASE WHEN {_bad_time(field)} THEN {_field(field)} END"
        for _, field in time_fields
    )
    extra = f"json_merge_patch(rest, json_object({late}))"
    derived = [
        f"{_scalar(_at(len(_FIELDS) + index))} AS {column}"
        for index, column in enumerate(column for _, fields in _DERIVED for column in fields)
    ]
    selected = [
        *(
            f"{_text(_field(field), column in columns.ID_COLUMNS)} AS {column}"
            for column, field in columns.TEXT_FIELDS.items()
        ),
        *(f"{_time(field)} AS {column}" for column, field in time_fields),
        *(f"{_for_python(field)} AS _{column}_text" for column, field in time_fields),
        *(f"{_json(_field(field))} AS {column}" for column, field in columns.JSON_FIELDS.items()),
        f"CASE WHEN {extra} = '{{}}'::JSON THEN NULL ELSE {extra}::VARCHAR END AS {columns.EXTRA}",
        *derived,
        f"COALESCE({_at(len(paths) - 1)} = 'true'::JSON, false) AS {columns.IS_BOT}",
    ]
    # Left to Python: a time field holding an object (a merge patch would drop the nulls
    # inside it), a number with a fraction where text belongs (DuckDB writes it its own way).
    texts = [_field(field) for field in columns.TEXT_FIELDS.values()]
    texts += [_at(len(_FIELDS) + index) for index in range(len(derived))]
    objects = " AND ".join(
        [
            *(f"COALESCE(json_type({_field(f)}) != 'OBJECT', true)" for _, f in time_fields),
            *(f"COALESCE(json_type({value}) != 'DOUBLE', true)" for value in texts),
        ]
    )
    lines = (
        f"SELECT json AS j FROM read_ndjson_objects({_literal(url)}, compression = 'gzip',"
        " format = 'newline_delimited')"
    )
    parts = (
        f"SELECT json_type(j) = 'OBJECT' AS _object, json_extract(j, {values}) AS v,"
        f" json_merge_patch(j, {_literal(known)}) AS rest FROM ({lines})"
    )
    return f"SELECT _object AND {objects} AS _object, {', '.join(selected)} FROM ({parts})"


# The top-level fields the columns read, in the order of the paths extracted.
_FIELDS = [
    *columns.TEXT_FIELDS.values(),
    *columns.TIME_FIELDS.values(),
    *columns.JSON_FIELDS.values(),
]
# (part of `context`, {column: key}) of the derived columns but `is_bot` (the last path).
_DERIVED = [("location", columns.LOCATION_FIELDS), ("parsedUserAgent", columns.USER_AGENT_FIELDS)]


def _at(index: int) -> str:
    return f"v[{index + 1}]"


def _field(name: str) -> str:
    """A top-level field's JSON value; NULL when missing."""
    return _at(_FIELDS.index(name))


def _text(value: str, is_id: bool) -> str:
    text = (
        f"CASE json_type({value}) WHEN 'VARCHAR' THEN {value}->>'$' WHEN 'NULL' THEN NULL"
        f" ELSE CAST({value} AS VARCHAR) END"
    )
    return f"NULLIF({text}, '')" if is_id else text


def _scalar(value: str) -> str:
    return (
        f"CASE json_type({value}) WHEN 'VARCHAR' THEN {value}->>'$'"
        f" WHEN 'OBJECT' THEN NULL WHEN 'ARRAY' THEN NULL WHEN 'NULL' THEN NULL"
        f" ELSE CAST({value} AS VARCHAR) END"
    )


def _json(value: str) -> str:
    return f"CASE WHEN json_type({value}) = 'NULL' THEN NULL ELSE CAST({value} AS VARCHAR) END"


def _string(field: str) -> str:
    value = _field(field)
    return f"(CASE json_type({value}) WHEN 'VARCHAR' THEN {value}->>'$' END)"


def _time(field: str) -> str:
    """The instant DuckDB casts (NULL for a string it leaves to Python)."""
    text = _string(field)
    return (
        f"CASE WHEN regexp_full_match({text}, {_literal(_ISO)})"
        f" THEN TRY_CAST({text} AS TIMESTAMPTZ) END"
    )


def _for_python(field: str) -> str:
    """A string DuckDB did not cast: Python tells whether it is a timestamp."""
    return f"CASE WHEN {_time(field)} IS NULL THEN {_string(field)} END"


def _bad_time(field: str) -> str:
    """A value (not JSON null) DuckDB did not cast: in `extra` unless Python parses it."""
    value = _field(field)
    return f"(json_type({value}) != 'NULL' AND {_time(field)} IS NULL)"


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"
