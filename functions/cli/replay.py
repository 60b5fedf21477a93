"""`event-ingest replay`: archived events of a time range back onto a stream
(`shared.archive.replay`), with progress on a terminal."""

from __future__ import annotations

import dataclasses
import json
import sys

import click

from functions.cli.terminal import StatusLine, archive_error, redis_error


@click.command(context_settings={"max_content_width": 100})
@click.option("--from", "start", required=True, metavar="DATE[THH]", help="First hour (UTC).")
@click.option("--to", "end", required=True, metavar="DATE[THH]", help="Last hour, included (UTC).")
@click.option(
    "--into",
    metavar="STREAM_KEY",
    help="The stream to put them on. Default: STREAM_KEY, the one the consumer archives.",
)
@click.option("--restart", is_flag=True, help="Forget where an earlier run stopped.")
def replay(start: str, end: str, into: str | None, restart: bool) -> None:
    """Put the archived events of a time range back on a stream, each once.

    \b
    Hours are read by their receivedAt partition, the same range syntax as
    `event-ingest query`. Each event goes once: of the copies sharing a source
    and a messageId, the earliest. In receivedAt order, keeping its messageId
    and receivedAt, marked with `replayedAt`. Entries go through admission
    control: at STREAM_MAX_LEN the replay waits (and says why) instead of
    dropping anything.

    \b
    Safe to stop at any moment: run the same command again and it resumes
    where it stopped (the place is kept in Redis beside the target stream for
    7 days), repeating at most the entry in flight.

    Reads REDIS_URL, REDIS_CLUSTER, STREAM_KEY, STREAM_SHARDS, STREAM_MAX_LEN, S3_BUCKET, S3_PREFIX,
    S3_ENDPOINT_URL, DEDUP_WINDOW and the AWS credentials like the functions do.
    """
    from botocore.exceptions import BotoCoreError, ClientError

    from shared.archive import partitions, reading
    from shared.archive.replay import ArchiveChanging, Replayer
    from shared.settings import ConfigError, Settings
    from shared.stream import REDIS_ERRORS

    try:
        hours = partitions.hour_range(start, end)
        settings = Settings.from_env()
        replayer = Replayer.from_settings(settings, into)
        with StatusLine(_progress) as progress:
            summary = replayer.run(hours, progress=progress, restart=restart)
    except (ConfigError, ValueError, ArchiveChanging) as exc:
        raise click.ClickException(str(exc)) from None
    except reading.Unreadable as exc:
        raise click.ClickException(
            f"cannot read {exc.key}: {exc.damage.reason} (run again, the replay resumes "
            "where it stopped; `event-ingest compact` sets such objects aside)"
        ) from None
    except (BotoCoreError, ClientError) as exc:
        raise archive_error(settings, exc) from None
    except REDIS_ERRORS as exc:
        raise redis_error(settings, exc) from None
    document = dataclasses.asdict(summary)
    if sys.stdout.isatty():
        resumed = f", resumed after {summary.resumed_after}" if summary.resumed_after else ""
        click.echo(
            f"{summary.events_replayed} events replayed onto {summary.into} in "
            f"{summary.entries_added} entries from {summary.hours} hours "
            f"({summary.duplicates_dropped} duplicate copies left out{resumed})"
        )
    else:
        click.echo(json.dumps(document, indent=1))


def _progress(progress) -> str:
    text = f"replaying {progress.hour}: {progress.events_replayed} events"
    return f"{text}; waiting: {progress.waiting_for}" if progress.waiting_for else text
