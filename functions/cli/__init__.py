"""`event-ingest`: the operator and analytics command line, one click group with a subcommand
per job. Each subcommand is a door like the Lambda handlers: it parses its options, calls
`shared/`, and shapes the output; errors are one line (`click.ClickException`) and a non-zero
exit status. Every subcommand reads the same environment variables as the functions.
"""

from __future__ import annotations

import click

from functions.cli.compact import compact
from functions.cli.dead_letters import dead_letters
from functions.cli.plan import plan
from functions.cli.privacy import privacy
from functions.cli.query import query
from functions.cli.replay import replay
from functions.cli.status import status


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """Query, compact and operate the event archive."""


main.add_command(query)
main.add_command(compact)
main.add_command(status)
main.add_command(dead_letters)
main.add_command(replay)
main.add_command(privacy)
main.add_command(plan)
