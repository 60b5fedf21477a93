"""The reference the archive's column mapping is checked against: events mapped to the rows of
`columns.SCHEMA` one event and one value at a time, in Python, as the release before the
column-wise `columns.to_rows` did it (frozen here, not to be changed with it). The rules for
one value (`_text`, `_scalar_text`, `_timestamp`) are the module's own: the column-wise mapping
falls back to them, and what is checked is that it gives what they give, value by value."""

from __future__ import annotations

from typing import Any

import msgspec
import pyarrow as pa

from shared.archive.columns import (
    EXTRA,
    ID_COLUMNS,
    IS_BOT,
    JSON_FIELDS,
    LOCATION_FIELDS,
    SCHEMA,
    TEXT_FIELDS,
    TIME_FIELDS,
    USER_AGENT_FIELDS,
    _scalar_text,
    _text,
    _timestamp,
)

_KNOWN = frozenset((*TEXT_FIELDS.values(), *TIME_FIELDS.values(), *JSON_FIELDS.values()))
_json = msgspec.json.Encoder()


def to_rows(events: list[dict[str, Any]]) -> pa.Table:
    columns: dict[str, list[Any]] = {name: [] for name in SCHEMA.names}
    for event in events:
        for column, field in TEXT_FIELDS.items():
            value = event.get(field)
            empty_id = column in ID_COLUMNS and value == ""
            columns[column].append(None if empty_id else _text(value))
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
    return pa.Table.from_pydict(columns, schema=SCHEMA)


def _derive(context: Any, columns: dict[str, list[Any]]) -> None:
    context = context if isinstance(context, dict) else {}
    for source, fields in (("location", LOCATION_FIELDS), ("parsedUserAgent", USER_AGENT_FIELDS)):
        found = context.get(source)
        found = found if isinstance(found, dict) else {}
        for column, key in fields.items():
            columns[column].append(_scalar_text(found.get(key)))
    columns[IS_BOT].append(context.get("bot") is True)
