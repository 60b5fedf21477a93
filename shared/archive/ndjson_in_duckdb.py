"""Gzip NDJSON objects decoded by DuckDB into rows of `columns.SCHEMA`, as `columns.to_rows`
maps the same events, without a Python loop per event: `event-ingest query` holds the NDJSON
objects of the hours not yet compacted, and decoding them in Python cost about 30 µs an event.

`rows(con, url)` reads the object `url` (through the ObjectFiles registered with `con`, whose
TimeZone must be UTC) and maps each line in SQL:

- text columns: a JSON string as it is, an integer as its digits, a JSON null or a missing key
  as NULL, anything else as its JSON text; an empty ID as NULL (as `columns.to_rows`);
- timestamps: ISO-8601 strings of the usual shape (a year from 1000 to 8999, `T`, seconds, up
  to 6 decimals, `Z` or an offset or none) are cast by DuckDB; any other string is parsed
  afterwards by `columns._timestamp` (Python's `datetime.fromisoformat`), those rows alone
  (they are rare: the server writes `receivedAt` and `timestamp` itself), so that exactly what
  Python accepts is a timestamp; a value that is not one reads as NULL and is kept in `extra`;
- JSON columns and `extra`: the same JSON values, written by DuckDB: equal as JSON, but the
  text may differ from msgspec's in number formatting (`1.5e16` as `15000000000000000.0`) and
  the case of escapes (`\\u001F`);
- the columns derived from `context` as `columns.to_rows` reads them.

None when the object is not what this mapping expects (a line that is not a JSON object, JSON
DuckDB cannot read, bad gzip), or holds what it would map otherwise than Python (an object as a
timestamp, a number with a fraction as an ID, a name or a place, an object or an array as an
ID or a name): the caller decodes it in Python (`reading`), which keeps what decodes and says
what is wrong.
"""

from __future__ import annotations

from typing import Any

import duckdb
import msgspec
import pyarrow as pa
import pyarrow.compute as pc

from shared.archive import columns

# What DuckDB casts itself: every such string means the same instant to it and to Python (a
# year from 1000 to 8999: from 9999, an offset can take the instant past what Python holds).
_ISO = (
    r"[1-8][0-9]{3}-[0-9]{2}-[0-9]{2}T([01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9]"
    r"(\.[0-9]{1,6})?(Z|[+-]([01][0-9]|2[0-3]):[0-5][0-9])?"
)
_decode = msgspec.json.Decoder().decode
_encode = msgspec.json.Encoder().encode


def rows(con: Any, url: str, needed: frozenset[str] | None = None) -> pa.Table | None:
    """The rows of the gzip NDJSON object `url`; None when DuckDB cannot map it (see above).
    With `needed`, only those columns are mapped (DuckDB leaves out the work of the others,
    which are NULL): for a query that reads only them."""
    select = _select(url)
    if needed is not None and columns.EXTRA in needed:
        # `extra` holds a time field's value until Python, which reads the time columns, parses
        # it as a timestamp and takes it out.
        needed = needed | frozenset(columns.TIME_FIELDS)
    if needed is not None:
        kept = [name for name in columns.SCHEMA.names if name in needed]
        kept += [f"_{name}_text" for name in columns.TIME_FIELDS if name in needed]
        select = f"SELECT _object, {', '.join(kept)} FROM ({select})"
    try:
        table = con.sql(select).to_arrow_table()
    except duckdb.Error:
        return None
    if table.num_rows and not pc.all(table["_object"]).as_py():
        return None
    table = _with_python_timestamps(table)
    mapped = {
        field.name: table[field.name]
        if field.name in table.column_names
        else pa.nulls(len(table), field.type)
        for field in columns.SCHEMA
    }
    return pa.table(mapped).cast(columns.SCHEMA)


def _with_python_timestamps(table: pa.Table) -> pa.Table:
    """`table` with the timestamps DuckDB left to Python (`_<column>_text`) parsed, and each
    that parses taken out of `extra`, where the SQL put every value it did not cast. Only those
    rows pass through Python."""
    for column, field in columns.TIME_FIELDS.items():
        if f"_{column}_text" not in table.column_names:  # not needed
            continue
        texts = table[f"_{column}_text"].combine_chunks()
        if texts.null_count == len(texts):
            continue
        rare = pc.is_valid(texts)
        moments = [columns._timestamp(text) for text in texts.filter(rare).to_pylist()]
        if all(moment is None for moment in moments):
            continue
        table = _replaced(table, column, rare, pa.array(moments, columns.TIMESTAMP))
        if columns.EXTRA not in table.column_names:  # not needed
            continue
        extras = table[columns.EXTRA].filter(rare).to_pylist()
        kept = [
            _without(extra, field) if moment is not None else extra
            for extra, moment in zip(extras, moments, strict=True)
        ]
        table = _replaced(table, columns.EXTRA, rare, pa.array(kept, pa.string()))
    return table


def _replaced(table: pa.Table, column: str, where: Any, values: pa.Array) -> pa.Table:
    """`table` with `column`'s values at the rows `where` is true replaced by `values`."""
    index = table.schema.get_field_index(column)
    replaced = pc.replace_with_mask(table[column].combine_chunks(), where, values)
    return table.set_column(index, column, replaced)


def _without(extra: str | None, field: str) -> str | None:
    """An `extra` object's JSON text without `field` (NULL when nothing is left)."""
    found = _decode(extra) if extra is not None else {}
    found.pop(field, None)
    return _encode(found).decode() if found else None


def _select(url: str) -> str:
    """Each line parsed three times, by functions DuckDB runs in C++: once for the text of the
    values the text columns need (`json_extract_string` of a list of paths: a string as it is,
    anything else as its JSON, which is `columns`' rule), once for the JSON of the others, and
    once for `extra` (the line without the known fields: an RFC 7386 merge patch setting them to
    null). The values are then named once (`text_0`, `json_0`, ...), so each is used as is."""
    texts = [f"$.{field}" for field in columns.TEXT_FIELDS.values()] + _DERIVED_PATHS
    jsons = [f"$.{field}" for field in _JSON_FIELDS] + _DERIVED_PATHS + ["$.context.bot"]
    known = "{" + ",".join(f'"{field}":null' for field in sorted(columns._KNOWN)) + "}"
    lines = (
        f"SELECT json AS j FROM read_ndjson_objects({sql_literal(url)}, compression = 'gzip',"
        " format = 'newline_delimited')"
    )
    parsed = (
        f"SELECT json_type(j) = 'OBJECT' AS is_object, json_extract_string(j, {_list(texts)}) AS t,"
        f" json_extract(j, {_list(jsons)}) AS v, json_merge_patch(j, {sql_literal(known)}) AS rest"
        f" FROM ({lines})"
    )
    named = ", ".join(
        [
            *(f"t[{i + 1}] AS text_{i}" for i in range(len(texts))),
            *(f"v[{i + 1}] AS json_{i}" for i in range(len(jsons))),
            *(f"json_type(v[{i + 1}]) AS type_{i}" for i in range(len(jsons))),
        ]
    )
    timed = ", ".join(
        _cast(f"json_{_json_at(field)}", f"type_{_json_at(field)}") + f" AS cast_{column}"
        for column, field in columns.TIME_FIELDS.items()
    )
    values = f"SELECT is_object, rest, {named} FROM ({parsed})"
    cast = f"SELECT *, {timed} FROM ({values})"
    derived_at = len(columns.TEXT_FIELDS)
    derived_json_at = len(_JSON_FIELDS)
    late = [
        (field, f"type_{_json_at(field)} != 'NULL' AND cast_{column} IS NULL")
        for column, field in columns.TIME_FIELDS.items()
    ]
    patch = ", ".join(
        f"{sql_literal(field)}, CASE WHEN {bad} THEN json_{_json_at(field)} END"
        for field, bad in late
    )
    # Most lines have no late value: their `extra` is `rest` as it is, patched only otherwise.
    extra = (
        f"CASE WHEN {' OR '.join(f'({bad})' for _, bad in late)}"
        f" THEN json_merge_patch(rest, json_object({patch})) ELSE rest END"
    )
    with_extra = f"SELECT *, {extra} AS extra_json FROM ({cast})"
    derived_columns = [c for fields in columns.DERIVED_PARTS.values() for c in fields]
    selected = [
        *(
            f"NULLIF(text_{i}, '') AS {column}"
            if column in columns.ID_COLUMNS
            else f"text_{i} AS {column}"
            for i, column in enumerate(columns.TEXT_FIELDS)
        ),
        *(f"cast_{column} AS {column}" for column in columns.TIME_FIELDS),
        *(
            f"CASE WHEN cast_{column} IS NULL AND type_{_json_at(field)} = 'VARCHAR'"
            f" THEN json_{_json_at(field)}->>'$' END AS _{column}_text"
            for column, field in columns.TIME_FIELDS.items()
        ),
        *(
            f"CASE WHEN type_{_json_at(field)} = 'NULL' THEN NULL"
            f" ELSE CAST(json_{_json_at(field)} AS VARCHAR) END AS {column}"
            for column, field in columns.JSON_FIELDS.items()
        ),
        f"NULLIF(CAST(extra_json AS VARCHAR), '{{}}') AS {columns.EXTRA}",
        *(
            f"CASE WHEN type_{derived_json_at + i} IN ('OBJECT', 'ARRAY', 'NULL') THEN NULL"
            f" ELSE text_{derived_at + i} END AS {column}"
            for i, column in enumerate(derived_columns)
        ),
        f"COALESCE(json_{len(jsons) - 1} = 'true'::JSON, false) AS {columns.IS_BOT}",
    ]
    # Left to Python: a time field holding an object (a merge patch would drop the nulls
    # inside it), a number with a fraction where text belongs, or an object or an array in a
    # text field (DuckDB writes numbers and escapes its own way).
    text_types = [_json_at(field) for field in columns.TEXT_FIELDS.values()]
    text_types += [derived_json_at + i for i in range(len(derived_columns))]
    fallback = " AND ".join(
        [
            *(
                f"COALESCE(type_{_json_at(field)} != 'OBJECT', true)"
                for field in columns.TIME_FIELDS.values()
            ),
            *(f"COALESCE(type_{i} != 'DOUBLE', true)" for i in text_types),
            *(
                f"COALESCE(type_{_json_at(field)} NOT IN ('OBJECT', 'ARRAY'), true)"
                for field in columns.TEXT_FIELDS.values()
            ),
        ]
    )
    return f"SELECT is_object AND {fallback} AS _object, {', '.join(selected)} FROM ({with_extra})"


# The fields whose JSON the columns read: the text fields (only for their type), the time
# fields and the JSON fields, in this order of `json_0`, `json_1`, ...
_JSON_FIELDS = [
    *columns.TEXT_FIELDS.values(),
    *columns.TIME_FIELDS.values(),
    *columns.JSON_FIELDS.values(),
]
# The JSON paths of the derived columns but `is_bot` (the last JSON path).
_DERIVED_PATHS = [
    f"$.context.{part}.{key}"
    for part, fields in columns.DERIVED_PARTS.items()
    for key in fields.values()
]


def _cast(value: str, kind: str) -> str:
    """The instant DuckDB casts from a string of the usual shape; NULL for any other value."""
    return (
        f"CASE WHEN {kind} = 'VARCHAR' AND regexp_full_match({value}->>'$', {sql_literal(_ISO)})"
        f" THEN TRY_CAST({value}->>'$' AS TIMESTAMPTZ) END"
    )


def _json_at(field: str) -> int:
    return _JSON_FIELDS.index(field)


def _list(paths: list[str]) -> str:
    return f"[{', '.join(sql_literal(path) for path in paths)}]"


def sql_literal(text: str) -> str:
    """`text` as a SQL string literal (query.py quotes object names with it too)."""
    return "'" + text.replace("'", "''") + "'"
