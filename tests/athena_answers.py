"""Athena's answers for moto's Athena, which runs no SQL and answers the results a test queues
(on its backend in process, or through its server's `/moto-api/static/athena/query-results`):
shaped as GetQueryResults gives a SELECT's, the column names as the first row and NULL as a
cell without a value."""

from __future__ import annotations

from typing import Any

from moto.athena.models import QueryResults

Row = tuple[str | None, ...]


def answer(names: list[str], rows: list[Row]) -> dict[str, Any]:
    """One query's results, as moto's API takes them (`rows`, `column_info`)."""

    def row(values: Row) -> dict[str, Any]:
        return {"Data": [{} if v is None else {"VarCharValue": v} for v in values]}

    return {
        "rows": [row(tuple(names)), *map(row, rows)],
        "column_info": [{"Name": n, "Label": n, "Type": "varchar"} for n in names],
    }


def queue(backend: Any, *answers: tuple[list[str], list[Row]]) -> None:
    """The answers to the next queries, in order, on moto's in-process backend."""
    for names, rows in answers:
        backend.query_results_queue.append(QueryResults(**answer(names, rows)))
