"""Athena, as far as DuckDB can stand in for it: the Glue tables as template.yaml declares them
(columns, partitions and Athena's `$path`), the view `events` over them, and Presto's JSON
functions the view uses, so that the view's SQL runs in the tests as the template writes it."""

from __future__ import annotations

from typing import Any

import duckdb

from tests.deploy.conftest import load_template

DUCKDB_TYPES = {
    "string": "VARCHAR",
    "int": "INTEGER",
    "timestamp": "TIMESTAMPTZ",
    "boolean": "BOOLEAN",
}
# Presto's JSON functions the view uses that DuckDB lacks, as Presto defines them:
# json_extract_scalar gives a scalar's text and NULL for an object, an array or null;
# json_format gives a JSON value's text (`true`, `"true"`).
PRESTO_MACROS = (
    "CREATE MACRO from_iso8601_timestamp(text) AS CAST(text AS TIMESTAMPTZ)",
    "CREATE MACRO json_extract_scalar(text, path) AS CASE WHEN json_type(text::JSON, path) "
    "IN ('OBJECT', 'ARRAY', 'NULL') THEN NULL ELSE json_extract_string(text, path) END",
    "CREATE MACRO json_format(value) AS CAST(value AS VARCHAR)",
)
ATHENA_TABLES = ("NdjsonTable", "ParquetTable", "CompactedTable")


def athena_in_duckdb() -> Any:
    """A DuckDB with the Glue tables as the template declares them (columns, partitions and
    Athena's `$path`), and the Presto functions the view uses that DuckDB lacks."""
    template = load_template()
    con = duckdb.connect(":memory:")
    con.execute("SET TimeZone = 'UTC'")
    for macro in PRESTO_MACROS:
        con.execute(macro)
    for name in ATHENA_TABLES:
        table = template["Resources"][name]["Properties"]["TableInput"]
        declared = table["StorageDescriptor"]["Columns"] + table["PartitionKeys"]
        columns = [f'"{c["Name"]}" {DUCKDB_TYPES[c["Type"]]}' for c in declared]
        con.execute(f'CREATE TABLE {table["Name"]} ({", ".join(columns)}, "$path" VARCHAR)')
    con.execute(template["Resources"]["EventsView"]["Properties"]["QueryString"])
    return con


def insert(con: Any, table: str, path: str, received_at: Any, **values: Any) -> None:
    row = {"dt": "2024-03-05", "hour": 13, "$path": path, "received_at": received_at, **values}
    names = ", ".join(f'"{name}"' for name in row)
    marks = ", ".join("?" * len(row))
    con.execute(f"INSERT INTO {table} ({names}) VALUES ({marks})", list(row.values()))
