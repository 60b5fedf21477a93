"""`event-ingest privacy`: regulations to forget a person (GDPR article 17, CCPA) or to stop
collecting their events: accept one (`delete`, `suppress`, `unsuppress`), `list` them, `show`
one.

A door over `shared.archive.privacy`, which the admin API (functions/admin/) calls too: this
reads the IDs, accepts the regulation (kept in the bucket, put in force in Redis) and prints
it. Nothing here prints a subject's ID: a regulation is shown with the number of its subjects
and their keyed hashes.
"""

from __future__ import annotations

import contextlib
import json
import sys
from collections.abc import Callable, Iterator
from typing import IO, Any

import click

from functions.cli.terminal import (
    StatusLine,
    archive_error,
    first_line,
    needs_duckdb,
    redis_error,
    table,
)
from shared import regulations

FORMATS = ("table", "json")


def _settings() -> Any:
    from shared.settings import ConfigError, Settings

    try:
        return Settings.from_env()
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None


@contextlib.contextmanager
def _one_line_errors(
    settings: Any, redis_role: str = ", which holds the suppressions in force"
) -> Iterator[None]:
    """Every failure as one line: a bad request, the bucket or Redis unreachable."""
    from botocore.exceptions import BotoCoreError, ClientError

    from shared.stream import REDIS_ERRORS

    try:
        yield
    except regulations.BadRegulation as exc:
        raise click.ClickException(str(exc)) from None
    except (BotoCoreError, ClientError) as exc:
        raise archive_error(settings, exc) from None
    except REDIS_ERRORS as exc:
        raise redis_error(settings, exc, redis_role) from None


def _store(settings: Any) -> Any:
    from shared.archive.privacy.store import RegulationStore
    from shared.archive.storage import ObjectStore

    return RegulationStore(ObjectStore.from_settings(settings, attempts=4), settings.s3_prefix)


# --- accepting a regulation -----------------------------------------------------------------


def _subject_options(command: Callable) -> Callable:
    """The options every regulation takes: whose IDs, where from, how to print the answer."""
    options = [
        click.argument("ids", nargs=-1, metavar="ID..."),
        click.option(
            "--anonymous-id",
            is_flag=True,
            help="The IDs are anonymousIds (default: userIds).",
        ),
        click.option(
            "--from-file",
            type=click.File("r"),
            metavar="PATH",
            help="Also the IDs of this file, one per line (blank lines ignored; - for stdin).",
        ),
        click.option(
            "--format",
            "fmt",
            type=click.Choice(("id", "json")),
            default="id",
            show_default=True,
            help="Print the regulation's ID, or the regulation as JSON (without the IDs).",
        ),
    ]
    for option in reversed(options):
        command = option(command)
    return command


NO_LINKED = click.option(
    "--no-linked",
    is_flag=True,
    help="Delete the events of the IDs given only, not of the anonymousIds the archive links "
    "to them.",
)


@click.group(context_settings={"max_content_width": 100})
def privacy() -> None:
    """Forget a person, or stop collecting their events (GDPR, CCPA).

    \b
    Each request is a regulation, kept in the bucket under S3_PREFIX's
    _privacy/ and put in force in Redis at once:
      delete      every event of the IDs received up to now (pending until
                  carried out; meanwhile nothing of theirs is archived)
      suppress    drop the IDs' new events from now on (answered 2xx, never
                  stored); --delete also deletes their events so far
      unsuppress  end a suppression
    Up to 5,000 IDs each: userIds, or anonymousIds with --anonymous-id.
    `run` carries out the pending deletions now (on AWS a scheduled function
    does).
    Deleting a userId also deletes the events of the anonymousIds the archive
    links to it (an identify carrying both, an alias), unless --no-linked.

    Reads REDIS_URL, STREAM_KEY, S3_BUCKET, S3_PREFIX, S3_ENDPOINT_URL and the AWS
    credentials like the functions do.
    """


@privacy.command(context_settings={"max_content_width": 100})
@_subject_options
@NO_LINKED
def delete(**request: Any) -> None:
    """Delete every event of the IDs received up to now."""
    _accept(regulations.DELETE_ONLY, **request)


@privacy.command(context_settings={"max_content_width": 100})
@_subject_options
@click.option("--delete", "and_delete", is_flag=True, help="Also delete their events so far.")
@NO_LINKED
def suppress(and_delete: bool, **request: Any) -> None:
    """Drop the IDs' new events (--delete: and their past ones)."""
    if request["no_linked"] and not and_delete:
        raise click.ClickException("--no-linked applies to deletions: add --delete")
    kind = regulations.SUPPRESS_WITH_DELETE if and_delete else regulations.SUPPRESS_ONLY
    _accept(kind, **request)


@privacy.command(context_settings={"max_content_width": 100})
@_subject_options
def unsuppress(**request: Any) -> None:
    """End a suppression: the IDs' new events are archived again."""
    _accept(regulations.UNSUPPRESS, **request)


def _accept(
    kind: str,
    ids: tuple[str, ...],
    anonymous_id: bool,
    from_file: IO[str] | None,
    fmt: str,
    no_linked: bool = False,
) -> None:
    from shared.stream import connect

    subject_ids = [*ids, *_read_ids(from_file)]
    if not subject_ids:
        raise click.ClickException("give one or more IDs (or --from-file PATH)")
    settings = _settings()
    with _one_line_errors(settings):
        regulation = _store(settings).accept(
            connect(settings),
            settings.stream_key,
            regulation_type=kind,
            subject_type="ANONYMOUS_ID" if anonymous_id else "USER_ID",
            subject_ids=subject_ids,
            linked=not no_linked,
        )
    if fmt == "json":
        click.echo(json.dumps(_without_ids(regulation), indent=1))
    else:
        click.echo(regulation.id)


def _read_ids(source: IO[str] | None) -> list[str]:
    """One ID per line, spaces around it removed; blank lines skipped."""
    if source is None:
        return []
    return [line.strip() for line in source if line.strip()]


# --- reading regulations --------------------------------------------------------------------

FORMAT = click.option(
    "--format",
    "fmt",
    type=click.Choice(FORMATS),
    default=None,
    help="table (for people) or json. Default: table on a terminal, json when piped.",
)


@privacy.command("list", context_settings={"max_content_width": 100})
@FORMAT
def list_regulations(fmt: str | None) -> None:
    """List the regulations, oldest first: state and progress."""
    settings = _settings()
    with _one_line_errors(settings):
        found = _store(settings).all()
    if _format(fmt) == "json":
        click.echo(json.dumps([_without_ids(r) for r in found], indent=1))
    elif not found:
        click.echo("no regulations")
    else:
        table([_row(regulation) for regulation in found])


@privacy.command(context_settings={"max_content_width": 100})
@click.argument("regulation_id")
@FORMAT
def show(regulation_id: str, fmt: str | None) -> None:
    """Show one regulation, its subjects as keyed hashes."""
    settings = _settings()
    with _one_line_errors(settings):
        regulation = _store(settings).get(regulation_id)
    document = _without_ids(regulation)
    if _format(fmt) == "json":
        click.echo(json.dumps(document, indent=1))
        return
    hashes = document.pop("subject_hashes")
    for name, value in document.items():
        if isinstance(value, dict):
            value = ", ".join(f"{k} {v}" for k, v in value.items()) or "-"
        elif isinstance(value, list):
            value = ", ".join(value) or "-"
        click.echo(f"{name}: {'-' if value is None else value}")
    click.echo("subject_hashes:")
    for hashed in hashes:
        click.echo(f"  {hashed}")


def _format(fmt: str | None) -> str:
    return fmt or ("table" if sys.stdout.isatty() else "json")


def _without_ids(regulation: regulations.Regulation) -> dict[str, Any]:
    """The regulation as stored, its subjects counted instead of named."""
    document = regulation.as_dict()
    del document["subject_ids"]
    hashes = document.pop("subject_hashes")
    return {**document, "subject_count": len(hashes), "subject_hashes": hashes}


def _row(regulation: regulations.Regulation) -> dict[str, Any]:
    return {
        "id": regulation.id,
        "type": regulation.type,
        "subject type": regulation.subject_type,
        "subjects": len(regulation.subject_hashes),
        "state": regulation.state,
        "accepted_at": regulation.accepted_at,
        "events deleted": regulation.progress.get("events_deleted", "-")
        if regulation.deletes
        else "-",
    }


# --- carrying out the deletions -------------------------------------------------------------

RESUMED = "; the next run resumes the deletions"


@privacy.command("run", context_settings={"max_content_width": 100})
@FORMAT
def run_deletions(fmt: str | None) -> None:
    """Carry out the pending deletions now, all of them in one pass.

    \b
    Finds the objects that hold the subjects' events (the archive read into
    DuckDB, as `event-ingest query` reads it: the query extra), rewrites them
    without those events by the writer that made them, removes the older
    versions that hold any, and takes the subjects out of the dead letters
    and the objects set aside as unreadable. A deletion is carried out once
    it is 2 x SUPPRESSION_RELOAD_S old, and finished by a pass that leaves
    nothing behind; one that has to wait (entries from before it still in the
    stream, an hour being compacted) stays running, and the next run resumes
    it. Safe to stop at any moment: the next run resumes.

    \b
    Prints what the pass did: the deletions finished, what the others wait
    for, and its counts. Exit status 0 unless the pass failed: waiting is not
    a failure. A failure is one line and exit status 1 (the deletions then
    show as failed), and the next run resumes them.

    Reads REDIS_URL, STREAM_KEY, S3_BUCKET, S3_PREFIX, S3_ENDPOINT_URL and the AWS
    credentials like the functions do. Progress goes to stderr on a terminal only.
    """
    try:
        from shared.archive.privacy.finder import LocalFinder
        from shared.archive.query import UnreadableObject
    except ImportError as exc:
        raise needs_duckdb("privacy run", exc) from None
    from shared.archive.privacy.deletion import Deletion
    from shared.archive.storage import ObjectStore
    from shared.stream import connect

    settings = _settings()
    fmt = _format(fmt)
    try:
        with _one_line_errors(settings, ", which holds the dead letters and the hour locks"):
            store = ObjectStore.from_settings(settings, attempts=4, read_timeout_s=60)

            def finder() -> LocalFinder:
                return LocalFinder(store, settings.s3_prefix)

            deletion = Deletion(settings, store, connect(settings), finder)
            with StatusLine(str) as progress:
                result = deletion.run(progress=progress)
    except click.ClickException as exc:
        raise click.ClickException(exc.message + RESUMED) from None
    except UnreadableObject as exc:  # the finder reads every object
        raise click.ClickException(
            f"{exc}: `event-ingest compact` sets such an object aside{RESUMED}"
        ) from None
    except Exception as exc:  # whatever it is: one line, and the next run resumes
        raise click.ClickException(
            f"the deletion pass failed: {first_line(exc)}{RESUMED}"
        ) from None
    _print_pass(result, fmt)


def _print_pass(result: Any, fmt: str) -> None:
    if fmt == "json":
        click.echo(json.dumps(result.as_dict(), indent=1))
        return
    if not result.regulations and not result.not_yet:
        click.echo("no pending deletions")
        return
    waits = "; ".join(result.waiting) or "-"
    rows = [
        {
            "regulation": regulation_id,
            "state": "finished" if regulation_id in result.finished else "running",
            "waits for": "-" if regulation_id in result.finished else waits,
        }
        for regulation_id in result.regulations
    ]
    rows += [
        {"regulation": regulation_id, "state": "pending", "waits for": why}
        for regulation_id, why in result.not_yet.items()
    ]
    table(rows)
    if result.regulations:
        click.echo(_counts(result.tally))
    if result.tally.undecodable:
        undecodable = ", ".join(sorted(set(result.tally.undecodable)))
        click.echo(
            f"may hold a subject but cannot be decoded (for a person to decide): {undecodable}"
        )
    left = len(rows) - len(result.finished)
    if left:
        click.echo(
            f"{left} of {len(rows)} deletions not finished yet: not a failure; the next "
            "`event-ingest privacy run` resumes them"
        )


def _counts(tally: Any) -> str:
    return (
        f"objects scanned {tally.objects_scanned}, rewritten {tally.objects_rewritten}, "
        f"removed {tally.objects_removed}; events deleted {tally.events_deleted} (kept on a "
        f"shared device: {tally.shared_devices_kept}); dead letters rewritten "
        f"{tally.dead_letters_rewritten}; older versions deleted {tally.versions_deleted}"
    )
