"""`event-ingest query SQL`: SQL over the archive (`shared.archive.query`), shaped for a terminal
or a pipe."""

from __future__ import annotations

import contextlib
import csv
import os
import sys
from datetime import date, datetime, time
from decimal import Decimal
from typing import Any

import click
import msgspec

from functions.cli.options import read_range_options
from functions.cli.terminal import StatusLine, needs_duckdb, ticking

FORMATS = ("table", "csv", "json")
# What makes a spreadsheet read a cell as a formula (OWASP's CSV injection list): an archived
# field is written by whoever holds a write key, a browser's one being public.
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")

_json = msgspec.json.Encoder(decimal_format="number", enc_hook=str)


@click.command(context_settings={"max_content_width": 100})
@read_range_options
@click.option(
    "--format",
    "fmt",
    type=click.Choice(FORMATS),
    default=None,
    help="table (for people: a long result shows its first and last rows and its count), "
    "csv (RFC 4180: a header, then one line per row, CRLF line ends; formulas escaped, see "
    "below) or json (an array of objects, JSON columns embedded). Default: table on a "
    "terminal, csv when piped or redirected.",
)
@click.option(
    "--skip-unreadable",
    is_flag=True,
    help="Leave out the objects that cannot be decoded (corrupt or truncated gzip, a line that "
    "is not JSON, bad Parquet), and say on stderr how many. Default: such an object fails the "
    "query, naming it.",
)
@click.argument("sql")
def query(
    start: str | None, end: str | None, fmt: str | None, skip_unreadable: bool, sql: str
) -> None:
    """Run SQL (DuckDB's dialect) over the archive and print the last statement's result.

    \b
    Tables:
      events      each event once, as compaction keeps it: compacted hours as
                  stored; in the hours not yet compacted, of the rows sharing a
                  source and a message_id, the copy with the earliest
                  received_at (then the first object in key order), unless a
                  compacted hour within DEDUP_WINDOW before holds it. Two
                  sources' events with one ID are two events. That
                  deduplication is a window over the rows held, paid by each
                  query that reads `events`.
      raw_events  every archived row, duplicates included, plus object_key:
                  cheaper, and exact after `event-ingest compact`.

    \b
    Columns: message_id type event name user_id anonymous_id group_id
    previous_id source (text); timestamp original_timestamp sent_at
    received_at (UTC); properties traits context integrations extra (JSON;
    extra holds every other top-level field sent); dt (DATE), hour (0-23).

    \b
    --from/--to bound the partitions read: nothing outside them is listed
    beyond its prefix or downloaded. Without them the whole archive is read.
    Compacted hours are streamed (only the columns the SQL uses are
    downloaded); the hours not yet compacted are held in memory.

    \b
    An object that cannot be decoded fails the query, naming it, unless
    --skip-unreadable; `event-ingest compact` keeps what decodes and sets the
    object aside under S3_PREFIX/_unreadable/, which no query reads.

    \b
    CSV is safe to open in a spreadsheet: a text cell (a column name too)
    starting with =, +, -, @, a tab or a carriage return gets a leading
    single quote ('), so that it is not run as a formula; numbers are written
    as they are (-5 stays -5). Cast a text value to a number in the SQL to get
    it unquoted. A line break inside a cell (CR or LF) is quoted.

    \b
    Example:
      event-ingest query --from 2026-11-29 --to 2026-11-29 \\
        "SELECT source, count(*) AS n FROM events
         WHERE event = 'Signed Up' GROUP BY source ORDER BY n DESC"

    Reads S3_BUCKET, S3_PREFIX, S3_ENDPOINT_URL and the AWS credentials like the
    functions do. Progress (objects read, then compacted objects scanned) goes
    to stderr on a terminal only. Ctrl-C stops the query at once.
    """
    try:
        from shared.archive import query as archive_query
    except ImportError as exc:
        raise needs_duckdb("query", exc) from None
    from shared.settings import ConfigError, Settings

    fmt = fmt or ("table" if sys.stdout.isatty() else "csv")
    try:
        hours = archive_query.hour_range(start, end)
        columns_read = archive_query.check(sql)
        settings = Settings.from_env()
        with StatusLine(lambda done, total: f"reading objects: {done}/{total}") as progress:
            archive = archive_query.open_from_settings(
                settings,
                hours,
                progress=progress,
                skip_unreadable=skip_unreadable,
                columns_read=columns_read,
            )
        if archive.skipped:
            _say_skipped(archive.skipped)
        with archive:
            result = archive.run(sql)
            if result is not None:
                with _scanning(archive) as scanned:
                    result.ran = scanned
                    _write(result, fmt)
    except archive_query.UnreadableObject as exc:
        raise click.ClickException(f"{exc} (--skip-unreadable leaves such objects out)") from None
    except (archive_query.QueryError, ConfigError) as exc:
        raise click.ClickException(str(exc)) from None


def _scanning(archive: Any) -> Any:
    """Progress while DuckDB scans the streamed (compacted) objects, on a terminal."""
    if not archive.scanned()[1]:
        return contextlib.nullcontext(lambda: None)
    return ticking(lambda read, of: f"scanning compacted objects: {read}/{of}", archive.scanned)


def _say_skipped(skipped: list[Any]) -> None:
    """How many objects were left out, on stderr (the answer on stdout stays clean)."""
    first = skipped[0]
    more = f" and {len(skipped) - 1} more" if len(skipped) > 1 else ""
    objects = "1 object" if len(skipped) == 1 else f"{len(skipped)} objects"
    click.echo(
        f"skipped {objects} that cannot be read: {first.key} ({first.damage.reason}){more}",
        err=True,
    )


# --- output ---------------------------------------------------------------------------------


def _write(result: Any, fmt: str) -> None:
    try:
        if fmt == "table":
            click.echo(result.box())
        elif fmt == "csv":
            _write_csv(result)
        else:
            _write_json(result)
        sys.stdout.flush()
    except BrokenPipeError:
        # The reader went away (`| head`): not an error. Silence the flush at exit too.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


def _write_csv(result: Any) -> None:
    rows = result.rows()  # runs the query: an error comes before the header
    # RFC 4180's line end: csv then quotes a field holding a CR (with "\n" it quotes only LF),
    # and a bare CR, which spreadsheets read as a line break, cannot start a row of its own.
    writer = csv.writer(sys.stdout, lineterminator="\r\n")
    writer.writerow([_unformula(name) for name in result.columns])  # a PIVOT names by data
    for row in rows:
        writer.writerow([_csv_cell(value) for value in row])


def _write_json(result: Any) -> None:
    """A JSON array, one object per line, written as the rows come. JSON columns are embedded
    as JSON, timestamps are ISO-8601 strings (`Z` for UTC)."""
    names = [_json.encode(name) for name in result.columns]
    is_json = [kind == "JSON" for kind in result.types]
    rows = result.rows()  # runs the query: an error comes before the opening bracket
    out = sys.stdout
    out.write("[")
    separator = "\n"
    for index, row in enumerate(rows):
        fields = (
            name + b":" + _json_value(value, raw)
            for name, value, raw in zip(names, row, is_json, strict=True)
        )
        out.write(separator + "{" + b",".join(fields).decode() + "}")
        separator = ",\n"
        if index % 1000 == 999:
            out.flush()
    out.write("]\n" if separator == "\n" else "\n]\n")


def _json_value(value: Any, raw: bool) -> bytes:
    if raw and isinstance(value, str):
        return value.encode()
    return _json.encode(value)


def _csv_cell(value: Any) -> str:
    """A value as CSV text that no spreadsheet runs: numbers as they are (a number type's
    text is only digits, a sign, a point, an exponent or inf/nan), any other text escaped."""
    text = _csv_value(value)
    return text if isinstance(value, int | float | Decimal) else _unformula(text)


def _unformula(text: str) -> str:
    """OWASP's rule for CSV injection: a cell a spreadsheet would take for a formula gets a
    leading single quote, which spreadsheets show as text and do not display."""
    return "'" + text if text.startswith(FORMULA_STARTS) else text


def _csv_value(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str | int | float | Decimal):
        return str(value)
    if isinstance(value, datetime | date | time):
        return _json.encode(value).decode().strip('"')
    return _json.encode(value).decode()
