"""Options that several commands share, spelled and explained once."""

from __future__ import annotations

from collections.abc import Callable

import click


def read_range_options(command: Callable) -> Callable:
    """`--from` and `--to`: the hours a command reads (`event-ingest query`, `plan check` and
    `plan draft`), by default every archived hour."""
    command = click.option(
        "--to",
        "end",
        metavar="DATE[THH]",
        help="Last hour to read, included (UTC); a date means up to its 23:00 hour. "
        "Default: the last archived.",
    )(command)
    return click.option(
        "--from",
        "start",
        metavar="DATE[THH]",
        help="First hour to read (UTC): YYYY-MM-DD or YYYY-MM-DDTHH. Default: the first archived.",
    )(command)
