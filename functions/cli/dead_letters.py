"""`event-ingest dead-letters list|show|redrive`: the entries the consumer set aside.

Dead letters live in the stream `{STREAM_KEY}:dead` (one entry each: `original_id`, `reason`
and the original entry's fields as `field:<name>`), and as JSON under `errors/` in the bucket.
A sharded stream (STREAM_SHARDS) has one dead-letter stream per shard, `{shard key}:dead`, and
its letters' objects carry the shard's tag (shared/archive/naming.py `error_object_key`). Only
Redis is read here: what a letter holds there has not changed, so letters of any release are
listed, shown and re-driven alike.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import click

from functions.cli.terminal import redis_error, table


@click.group("dead-letters", context_settings={"max_content_width": 100})
def dead_letters() -> None:
    """Inspect and re-drive the entries the consumer could not archive.

    Reads REDIS_URL, REDIS_CLUSTER, STREAM_KEY and STREAM_SHARDS like the functions do.
    """


@dead_letters.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def list_(as_json: bool) -> None:
    """Each dead letter: its ID, the original entry's ID, its events and why it was set aside
    (and, for a sharded stream, the shard whose dead letter it is)."""
    with _stream() as (client, keys, _):
        rows = [
            _summary(dead_id, record, key if len(keys) > 1 else None)
            for key in keys
            for dead_id, record in client.xrange(_dead_key(key))
        ]
    if as_json:
        click.echo(json.dumps(rows, indent=1))
    elif rows:
        table(rows)
        click.echo(f"{len(rows)} dead letters")
    else:
        click.echo("no dead letters")


SHARD_OPTION = click.option(
    "--shard",
    metavar="KEY",
    help="The stream key (shard) the dead letter belongs to, when an ID is in several.",
)


@dead_letters.command()
@click.argument("dead_id")
@SHARD_OPTION
def show(dead_id: str, shard: str | None) -> None:
    """One dead letter in full, as JSON: its events decoded if they can be, else its raw
    fields in base64."""
    from shared import codec
    from shared.stream import original_fields

    with _stream() as (client, keys, _):
        key, record = _find(client, keys, dead_id.encode(), shard)
    fields = original_fields(record)
    document: dict[str, Any] = _summary(dead_id.encode(), record, key if len(keys) > 1 else None)
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
@SHARD_OPTION
def redrive(dead_ids: tuple[str, ...], everything: bool, shard: str | None) -> None:
    """Put dead letters' entries back on the stream, once their cause is fixed.

    Each goes back as a new entry, through admission control, and its dead letter is removed.
    Give their IDs, or --all.
    """
    from shared.stream import BacklogFull, ReplicationShortfall
    from shared.stream import redrive as redrive_one

    if bool(dead_ids) == everything:
        raise click.UsageError("give dead-letter IDs, or --all")
    with _stream() as (client, keys, producer):
        if everything:
            wanted = [(k, i) for k in keys for i, _ in client.xrange(_dead_key(k))]
        else:
            wanted = [(_find(client, keys, i.encode(), shard)[0], i.encode()) for i in dead_ids]
        for key, dead_id in wanted:
            try:
                new_id = redrive_one(producer, _dead_key(key), dead_id)
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
def _stream() -> Iterator[tuple[Any, list[str], Any]]:
    """The Redis client, every key of the logical stream (its shards) and a producer;
    configuration and Redis errors become one line."""
    from shared import shards
    from shared.settings import ConfigError, Settings
    from shared.stream import REDIS_ERRORS, producer

    try:
        settings = Settings.from_env()
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None
    try:
        writer = producer(settings)
        keys = shards.keys_to_drain(writer.client, settings.stream_key, settings.stream_shards)
        yield writer.client, keys, writer
    except REDIS_ERRORS as exc:
        raise redis_error(settings, exc) from None


def _find(client: Any, keys: list[str], dead_id: bytes, shard: str | None) -> tuple[str, dict]:
    """The key whose dead-letter stream holds `dead_id`, and the record."""
    searched = [shard] if shard else keys
    found = [
        (key, records[0][1])
        for key in searched
        if (records := client.xrange(_dead_key(key), min=dead_id, max=dead_id))
    ]
    where = " or ".join(_dead_key(key) for key in searched)
    if not found:
        raise click.ClickException(f"no dead letter {dead_id.decode()} in {where}")
    if len(found) > 1:
        raise click.ClickException(
            f"dead letter {dead_id.decode()} is in several shards "
            f"({', '.join(key for key, _ in found)}): choose one with --shard"
        )
    return found[0]


def _dead_key(key: str) -> str:
    from shared.stream import dead_letter_key

    return dead_letter_key(key)


def _summary(dead_id: bytes, record: dict[bytes, bytes], shard: str | None) -> dict[str, Any]:
    from shared.stream import original_fields

    fields = original_fields(record)
    return {
        **({"shard": shard} if shard else {}),
        "id": _text(dead_id),
        "original_id": _text(record.get(b"original_id", b"")),
        "event_count": int(fields[b"n"]) if fields.get(b"n", b"").isdigit() else None,
        "bytes": sum(len(value) for value in fields.values()),
        "reason": _text(record.get(b"reason", b"")),
    }


def _text(raw: bytes) -> str:
    return raw.decode(errors="replace")
