"""`event-ingest dead-letters list|show|redrive`: the entries the consumer set aside.

Dead letters live in the stream `{STREAM_KEY}:dead` (one entry each: `original_id`, `reason`
and the original entry's fields as `field:<name>`), and as JSON under `errors/` in the bucket.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import click

from functions.cli.terminal import redis_error, table

FIELD_PREFIX = b"field:"


@click.group("dead-letters", context_settings={"max_content_width": 100})
def dead_letters() -> None:
    """Inspect and re-drive the entries the consumer could not archive.

    Reads REDIS_URL and STREAM_KEY like the functions do.
    """


@dead_letters.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def list_(as_json: bool) -> None:
    """Each dead letter: its ID, the original entry's ID, its events and why it was set aside."""
    with _stream() as (client, key, _):
        letters = client.xrange(_dead_key(key))
    rows = [_summary(dead_id, record) for dead_id, record in letters]
    if as_json:
        click.echo(json.dumps(rows, indent=1))
    elif rows:
        table(rows)
        click.echo(f"{len(rows)} dead letters")
    else:
        click.echo("no dead letters")


@dead_letters.command()
@click.argument("dead_id")
def show(dead_id: str) -> None:
    """One dead letter in full, as JSON: its events decoded if they can be, else its raw
    fields in base64."""
    from shared import codec

    with _stream() as (client, key, _):
        found = client.xrange(_dead_key(key), min=dead_id, max=dead_id)
    if not found:
        raise click.ClickException(f"no dead letter {dead_id} in {_dead_key(key)}")
    [(found_id, record)] = found
    fields = _original_fields(record)
    document: dict[str, Any] = _summary(found_id, record)
    try:
        document["events"] = codec.decode_entry(fields)
    except codec.UndecodableEntry as exc:
        document["undecodable"] = str(exc)
        document["fields"] = {
            name.decode(errors="replace"): base64.b64encode(value).decode()
            for name, value in fields.items()
        }
    click.echo(json.dumps(document, indent=1, default=str))


@dead_letters.command()
@click.argument("dead_ids", nargs=-1)
@click.option("--all", "everything", is_flag=True, help="Re-drive every dead letter.")
def redrive(dead_ids: tuple[str, ...], everything: bool) -> None:
    """Put dead letters' entries back on the stream, once their cause is fixed.

    Each goes back as a new entry, through admission control, and its dead letter is removed.
    Give their IDs, or --all.
    """
    from shared.stream import BacklogFull, ReplicationShortfall
    from shared.stream import redrive as redrive_one

    if bool(dead_ids) == everything:
        raise click.UsageError("give dead-letter IDs, or --all")
    with _stream() as (client, key, producer):
        wanted = [i.encode() for i in dead_ids] or [i for i, _ in client.xrange(_dead_key(key))]
        for dead_id in wanted:
            try:
                new_id = redrive_one(producer, dead_id)
            except KeyError:
                raise click.ClickException(
                    f"no dead letter {dead_id.decode()} in {_dead_key(key)}"
                ) from None
            except BacklogFull:
                raise click.ClickException(
                    f"the stream is at STREAM_MAX_LEN: {dead_id.decode()} and the rest stay "
                    "dead letters; try again once the consumers caught up"
                ) from None
            except ReplicationShortfall:
                raise click.ClickException(
                    f"{dead_id.decode()} is on the stream again but no replica confirmed it; "
                    "its dead letter is kept (re-driving it again may archive it twice)"
                ) from None
            click.echo(f"{dead_id.decode()} -> {new_id.decode()}")


@contextmanager
def _stream() -> Iterator[tuple[Any, str, Any]]:
    """The Redis client, the stream key and a producer; configuration and Redis errors become
    one line."""
    import redis

    from shared.settings import ConfigError, Settings
    from shared.stream import EventStream

    try:
        settings = Settings.from_env()
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None
    producer = EventStream.from_settings(settings)
    try:
        yield producer.client, settings.stream_key, producer
    except redis.RedisError as exc:
        raise redis_error(settings, exc) from None


def _dead_key(key: str) -> str:
    from shared.stream import dead_letter_key

    return dead_letter_key(key)


def _original_fields(record: dict[bytes, bytes]) -> dict[bytes, bytes]:
    return {
        name[len(FIELD_PREFIX) :]: value
        for name, value in record.items()
        if name.startswith(FIELD_PREFIX)
    }


def _summary(dead_id: bytes, record: dict[bytes, bytes]) -> dict[str, Any]:
    fields = _original_fields(record)
    return {
        "id": _text(dead_id),
        "original_id": _text(record.get(b"original_id", b"")),
        "event_count": int(fields[b"n"]) if fields.get(b"n", b"").isdigit() else None,
        "bytes": sum(len(value) for value in fields.values()),
        "reason": _text(record.get(b"reason", b"")),
    }


def _text(raw: bytes) -> str:
    return raw.decode(errors="replace")
