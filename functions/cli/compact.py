"""`event-ingest compact`: merge closed hours of the archive into deduplicated Parquet objects.

A door over `shared.archive.compaction`, which the scheduled compactor function runs too: this
parses the options, draws progress on a terminal and prints what was done.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from typing import Any

import click

from functions.cli.terminal import StatusLine, archive_error, redis_error, table

FORMATS = ("table", "json")


@click.command(context_settings={"max_content_width": 100})
@click.option(
    "--hour",
    "hours",
    multiple=True,
    metavar="YYYY-MM-DDTHH",
    help="Compact this hour (UTC; repeat for more). It must be closed. Default: every closed "
    "hour that needs it.",
)
@click.option("--from", "start", metavar="DATE[THH]", help="First hour to consider (UTC).")
@click.option("--to", "end", metavar="DATE[THH]", help="Last hour to consider, included (UTC).")
@click.option(
    "--dry-run", is_flag=True, help="List the hours that need compacting; change nothing."
)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(FORMATS),
    default=None,
    help="table (for people) or json. Default: table on a terminal, json when piped.",
)
def compact(
    hours: tuple[str, ...], start: str | None, end: str | None, dry_run: bool, fmt: str | None
) -> None:
    """Merge the objects of closed hours into Parquet, each event once, then remove them.

    \b
    An hour is closed COMPACT_GRACE_S (default 900) seconds after it ends.
    Each becomes one Parquet object (more, by size: cut by a hash of
    message_id), sorted by received_at. Copies of an event share a source and
    a message_id (two sources' events with one ID are two events); of them the
    earliest received_at stays (then the first object in key order), as
    `event-ingest query` answers; a copy already compacted in the DEDUP_WINDOW
    (default 24) hours before is dropped. Late objects in a compacted hour are
    merged by the next run.

    \b
    Safe to stop at any moment (Ctrl-C, a crash): the next run resumes, and
    queries meanwhile see each event once. An hour another run is compacting
    (locked in Redis, REDIS_URL, by a lease of COMPACT_LEASE_S, default 30 s,
    renewed while that run lives) is skipped, and said until when.

    \b
    An hour that fails (whatever the error) fails alone: the others are
    compacted, then the command exits with status 1 naming each failed hour
    and why. A run over every closed hour (no --hour, --from or --to) leaves
    its lag, failed hours and unreadable objects in Redis for
    `event-ingest status`.

    Reads REDIS_URL, STREAM_KEY, S3_BUCKET, S3_PREFIX, S3_ENDPOINT_URL and the AWS
    credentials like the functions do. Progress goes to stderr on a terminal only.
    """
    from botocore.exceptions import BotoCoreError, ClientError

    from shared.archive.compaction import Compactor
    from shared.archive.partitions import HourRange, hour_range, parse_hour
    from shared.settings import ConfigError, Settings
    from shared.stream import REDIS_ERRORS

    fmt = fmt or ("table" if sys.stdout.isatty() else "json")
    try:
        if hours and (start or end):
            raise ValueError("give --hour, or --from/--to, not both")
        named = sorted({parse_hour(text) for text in hours})
        scope = hour_range(start, end)
        settings = Settings.from_env()
        compactor = Compactor.from_settings(settings)
        if dry_run:
            states = [s for hour in named for s in compactor.survey(HourRange(hour, hour))]
            _print_states(states if named else compactor.survey(scope), fmt)
            return
        with StatusLine(_compacting) as progress:
            if named:
                summary = compactor.compact(named, progress=progress)
            else:  # a run over every closed hour leaves its report for `status`
                everything = scope.start is None and scope.end is None
                summary = compactor.run(scope, progress=progress, report=everything)
    except (ConfigError, ValueError) as exc:
        raise click.ClickException(str(exc)) from None
    except (BotoCoreError, ClientError) as exc:
        raise archive_error(settings, exc) from None
    except REDIS_ERRORS as exc:
        raise redis_error(settings, exc, ", which holds the compaction locks") from None
    _print_summary(summary, fmt)
    failures = summary.failures()
    if failures:
        # One line per failed hour: the first after click's `Error: `, the others indented.
        head = f"{len(failures)} of {len(summary.hours)} hours failed"
        if summary.count("failed"):
            head += " (the next run resumes them)"
        if len(failures) == 1:
            raise click.ClickException(f"{head}: {failures[0]}")
        raise click.ClickException("\n  ".join([f"{head}:", *failures]))
    busy = [h for h in summary.hours if h.state == "busy"]
    if busy and named:
        raise click.ClickException(
            f"{', '.join(_busy(h) for h in busy)}: being compacted by another run; try again "
            "when it is done"
        )


# --- output ---------------------------------------------------------------------------------


def _print_states(states: list[Any], fmt: str) -> None:
    rows = [
        {
            "hour": s.label,
            "raw_objects": s.raw_objects,
            "compacted_objects": s.compacted_objects,
            "bytes": s.bytes,
            "in_progress": s.in_progress,
            "rechecks": s.rechecks,
        }
        for s in states
    ]
    if fmt == "json":
        click.echo(json.dumps(rows, indent=1))
    elif not rows:
        click.echo("nothing to compact")
    else:
        table(rows)
        click.echo(f"{len(rows)} hours to compact")


def _print_summary(summary: Any, fmt: str) -> None:
    if fmt == "json":
        hours = [dataclasses.asdict(result) for result in summary.hours]
        click.echo(json.dumps({**summary.as_dict(), "hours": hours}, indent=1))
        return
    rows = [
        {
            "hour": h.hour,
            "state": h.state,
            "events_read": h.events_read,
            "events_written": h.events_written,
            "objects_written": h.objects_written,
            "objects_removed": h.objects_removed,
        }
        for h in summary.hours
        if h.state != "unchanged"
    ]
    if not rows:
        click.echo("nothing to compact")
        return
    table(rows)
    totals = summary.as_dict()
    click.echo(
        f"{totals['hours_compacted']} hours compacted, {totals['duplicates_dropped']} duplicate "
        f"copies dropped, {totals['objects_written']} objects written, "
        f"{totals['objects_removed']} removed"
    )
    busy = [_busy(h) for h in summary.hours if h.state == "busy"]
    if busy:
        click.echo(f"skipped as busy (another run holds them): {', '.join(busy)}")
    if summary.oldest_hour:
        click.echo(
            f"oldest closed hour not compacted yet: {summary.oldest_hour} "
            f"(closed {summary.lag_s:.0f} s ago)"
        )


def _busy(result: Any) -> str:
    """A busy hour, and when the other run's lease ends unless that run renews it."""
    if result.busy_until is None:  # released between our try and our look
        return result.hour
    return f"{result.hour} (until {result.busy_until.replace('+00:00', 'Z')}, unless renewed)"


def _compacting(progress: Any) -> str:
    place = min(progress.hours_done + 1, progress.hours_total)
    return f"compacting {progress.hour} ({place}/{progress.hours_total}): {progress.step}"
