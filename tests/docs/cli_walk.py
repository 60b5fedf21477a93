"""The command line as a tree: every command and subcommand of a click group, with its path."""

from __future__ import annotations

from collections.abc import Iterator

import click


def commands(
    command: click.Command, path: str = "event-ingest"
) -> Iterator[tuple[str, click.Command]]:
    yield path, command
    if isinstance(command, click.Group):
        for name, subcommand in command.commands.items():
            yield from commands(subcommand, f"{path} {name}")
