"""What every failing `event-ingest` command must look like to a user."""

from __future__ import annotations

from click.testing import Result


def assert_one_error_line(result: Result, *fragments: str) -> None:
    """Exit status 1, one `Error: ...` line on stderr naming `fragments`, and no traceback."""
    assert result.exit_code == 1, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("Error: ")
    for fragment in fragments:
        assert fragment in lines[0]
    assert "Traceback" not in result.output
