"""`event-ingest plan`: a tracking plan tried on the archive before it is enforced (`check`),
drafted from the events stored (`draft`), or read from Segment's export (`from-segment`)."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TextIO

import click
import msgspec

from functions.cli.options import read_range_options
from functions.cli.terminal import StatusLine, needs_duckdb

_json = msgspec.json.Encoder()


@click.group(context_settings={"max_content_width": 100})
def plan() -> None:
    """Tracking plans: check one against the archive, draft one from it, read Segment's."""


@plan.command()
@read_range_options
@click.option(
    "--format",
    "fmt",
    type=click.Choice(("text", "json")),
    default="text",
    help="text (for people) or json (the same figures, with examples).",
)
@click.argument("plan_file", metavar="PLAN", type=click.Path(dir_okay=False))
def check(start: str | None, end: str | None, fmt: str, plan_file: str) -> None:
    """What PLAN (a YAML or JSON file, or an s3:// object) would have done to the events
    already archived: per source, event and violation type, how many violations, how many
    events it would tag, quarantine or block, and a few examples of each.

    Reads the exactly-once `events` table, as `event-ingest query` does. Exit status 0 whether
    or not there are violations; 1 when the plan cannot be used or the archive cannot be read.
    """
    from shared.plans import history

    compiled = _compiled(plan_file)
    report = history.check(compiled, _archived(start, end))
    if fmt == "json":
        click.echo(_json.encode(report.as_dict()).decode())
    else:
        for line in report.lines():
            click.echo(line)


@plan.command()
@read_range_options
@click.option(
    "--out",
    type=click.Path(dir_okay=False, writable=True),
    help="Write the plan to this file (refused if it exists). Default: stdout.",
)
def draft(start: str | None, end: str | None, out: str | None) -> None:
    """Write a starting plan (YAML) from the events archived: a section per source in `tag`
    mode, every track event name seen with its properties' JSON types, and as `required` the
    properties present in every event of that name; identify and group traits alike. Under
    it, `plan check` over the same hours finds no violation. Edit it before enforcing it."""
    import yaml

    from shared.plans import history

    document = history.draft(_archived(start, end))
    text = yaml.safe_dump(document, sort_keys=False, allow_unicode=True, width=100)
    _write(text, out)


@plan.command("from-segment")
@click.option("--source", default="default", show_default=True, help="The section it becomes.")
@click.option(
    "--mode",
    type=click.Choice(("tag", "quarantine", "block")),
    default="tag",
    show_default=True,
    help="What a violation does.",
)
@click.option(
    "--unplanned",
    type=click.Choice(("allow", "tag", "quarantine", "block")),
    default="allow",
    show_default=True,
    help="What an event the plan does not list does.",
)
@click.option(
    "--out",
    type=click.Path(dir_okay=False, writable=True),
    help="Write the plan to this file (refused if it exists). Default: stdout.",
)
@click.argument("export", type=click.File("r", encoding="utf-8"))
def from_segment(source: str, mode: str, unplanned: str, out: str | None, export: TextIO) -> None:
    """Turn EXPORT, a tracking plan's rules as Segment's Public API lists them (the answer of
    `GET /tracking-plans/{id}/rules`; `-` for stdin), into a plan (YAML) with one section. What
    of it does not map (page and screen rules, older versions, constraints outside properties,
    traits and context) is listed on stderr."""
    import yaml

    from shared.plans.model import PlanError
    from shared.plans.segment import load_segment_plan

    try:
        loaded, unmapped = load_segment_plan(export.read(), source, mode, unplanned)
    except PlanError as exc:
        raise click.ClickException(str(exc)) from None
    document = {"sources": {source: loaded.sources[source].as_document()}}
    for item in unmapped:
        click.echo(f"not mapped: {item}", err=True)
    _write(yaml.safe_dump(document, sort_keys=False, allow_unicode=True, width=100), out)


def _compiled(location: str) -> Any:
    from shared.plans.model import PlanError
    from shared.plans.source import PlanUnreadable, read_plan_text
    from shared.plans.validation import load_compiled
    from shared.settings import Settings

    try:
        return load_compiled(read_plan_text(location, Settings.from_env()))
    except (PlanError, PlanUnreadable) as exc:
        raise click.ClickException(f"{location}: {exc}") from None


def _archived(start: str | None, end: str | None) -> Iterator[tuple[str | None, dict]]:
    """(source, event) pairs of the exactly-once events of the range."""
    try:
        from shared.archive import query as archive_query
    except ImportError as exc:
        raise needs_duckdb("plan", exc) from None
    from shared.plans import history
    from shared.settings import ConfigError, Settings

    try:
        hours = archive_query.hour_range(start, end)
        settings = Settings.from_env()
        with StatusLine(lambda done, total: f"reading objects: {done}/{total}") as progress:
            archive = archive_query.open_from_settings(settings, hours, progress=progress)
        with archive:
            result = archive.run(history.EVENTS_SQL)
            rows = list(result.rows()) if result is not None else []
    except (archive_query.QueryError, ConfigError) as exc:
        raise click.ClickException(str(exc)) from None
    return history.archived_events(rows)


def _write(text: str, out: str | None) -> None:
    if out is None:
        sys.stdout.write(text)
        return
    try:
        with Path(out).open("x", encoding="utf-8") as file:
            file.write(text)
    except FileExistsError:
        raise click.ClickException(f"{out} exists: not overwritten") from None
    click.echo(f"wrote {out}", err=True)
