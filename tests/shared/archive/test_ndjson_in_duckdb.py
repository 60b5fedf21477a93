"""NDJSON decoded by DuckDB (shared/archive/ndjson_in_duckdb.py) gives the table that
`columns.to_rows`, the mapping the Parquet writer and compaction use, gives for the same events:
IDs as integers and empty strings, timestamps of every shape and none, fields beyond the known
ones, the columns derived from `context`. JSON columns are compared as JSON values (DuckDB
writes numbers its own way); everything else exactly."""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Any

import duckdb
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shared.archive import columns, ndjson_in_duckdb
from shared.archive.formats import ndjson
from tests.shared.archive.generated_events import event_strategy

JSON_COLUMNS = set(columns.JSON_COLUMNS)


@pytest.fixture(scope="module")
def con() -> Any:
    connection = duckdb.connect(":memory:")
    connection.execute("SET TimeZone = 'UTC'")
    yield connection
    connection.close()


def decoded(con: Any, path: Path, batch: list[dict[str, Any]]) -> Any:
    path.write_bytes(ndjson.encode([ndjson.encode_lines(batch)]))
    return ndjson_in_duckdb.rows(con, str(path))


def as_compared(name: str, values: list[Any]) -> list[Any]:
    return [json.loads(v) if name in JSON_COLUMNS and v is not None else v for v in values]


def left_to_python(event: dict[str, Any]) -> bool:
    """What the DuckDB mapping leaves to Python: a fraction as text, an object as a time, an
    object or an array in a text field."""
    context = event.get("context")
    context = context if isinstance(context, dict) else {}
    texts = [event.get(field) for field in columns.TEXT_FIELDS.values()]
    for part, fields in (
        ("location", columns.LOCATION_FIELDS),
        ("parsedUserAgent", columns.USER_AGENT_FIELDS),
    ):
        found = context.get(part)
        texts += [found.get(key) for key in fields.values()] if isinstance(found, dict) else []
    times = [event.get(field) for field in columns.TIME_FIELDS.values()]
    own = [event.get(field) for field in columns.TEXT_FIELDS.values()]
    return (
        any(isinstance(v, float) for v in texts)
        or any(isinstance(v, dict) for v in times)
        or any(isinstance(v, (dict, list)) for v in own)
    )


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(batch=st.lists(event_strategy(), min_size=1, max_size=12))
def test_duckdb_maps_ndjson_as_the_python_mapping_does(
    con: Any, tmp_path_factory: pytest.TempPathFactory, batch: list[dict[str, Any]]
) -> None:
    path = tmp_path_factory.mktemp("ndjson") / "object.ndjson.gz"
    native = decoded(con, path, batch)
    expected = columns.to_rows(batch)
    if any(map(left_to_python, batch)):
        assert native is None
        return
    assert native is not None
    assert native.schema == expected.schema
    for name in columns.SCHEMA.names:
        assert as_compared(name, native[name].to_pylist()) == as_compared(
            name, expected[name].to_pylist()
        ), name


def test_a_line_that_is_not_an_object_is_left_to_python(con: Any, tmp_path: Path) -> None:
    path = tmp_path / "object.ndjson.gz"
    path.write_bytes(gzip.compress(b'{"messageId": "m"}\n[1, 2]\n'))
    assert ndjson_in_duckdb.rows(con, str(path)) is None


@pytest.mark.parametrize(
    "body",
    [b"not gzip", gzip.compress(b'{"messageId": "m"}\n{"messageId": \n', mtime=0)[:-9]],
    ids=["not-gzip", "truncated"],
)
def test_what_duckdb_cannot_read_is_left_to_python(con: Any, tmp_path: Path, body: bytes) -> None:
    path = tmp_path / "object.ndjson.gz"
    path.write_bytes(body)
    assert ndjson_in_duckdb.rows(con, str(path)) is None


def test_an_object_held_in_a_time_field_is_left_to_python(con: Any, tmp_path: Path) -> None:
    """A merge patch, which builds `extra`, would drop the nulls inside such an object."""
    path = tmp_path / "object.ndjson.gz"
    assert decoded(con, path, [{"messageId": "m", "sentAt": {"at": None}}]) is None


def test_a_fraction_where_text_belongs_is_left_to_python(con: Any, tmp_path: Path) -> None:
    """DuckDB writes 1e16 as 10000000000000000.0, Python as 1e16."""
    path = tmp_path / "object.ndjson.gz"
    assert decoded(con, path, [{"context": {"location": {"country": 1e16}}}]) is None
    assert decoded(con, path, [{"userId": 1.5}]) is None
    assert decoded(con, path, [{"userId": 15, "properties": {"x": 1e16}}]) is not None


@pytest.mark.parametrize(
    "value", [{"id": 1.5e16}, {"id": "\x1f"}, ["a", 1]], ids=["fraction", "escape", "array"]
)
def test_an_object_or_an_array_where_text_belongs_is_left_to_python(
    con: Any, tmp_path: Path, value: Any
) -> None:
    """Python reads it as msgspec writes its JSON (`1.5e16`, `\\u001f`); DuckDB would write
    `15000000000000000.0` and `\\u001F`. As a place (derived columns) it reads as NULL in
    both, and stays with DuckDB."""
    path = tmp_path / "object.ndjson.gz"
    assert decoded(con, path, [{"messageId": "m", "userId": value}]) is None
    context = {"location": {"city": value}}
    native = decoded(con, path, [{"messageId": "m", "context": context}])
    assert native is not None and native["city"].to_pylist() == [None]
