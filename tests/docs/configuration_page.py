"""Reading docs/configuration.md's tables: the first lists the `Settings` variables, those under
later headings the ones the server, the loop runner and the tools read."""

from __future__ import annotations

import re
from pathlib import Path

PAGE = Path(__file__).resolve().parents[2] / "docs" / "configuration.md"
ROW = re.compile(r"^\| `([A-Z0-9_]+)` \| ([^|]*) \|", re.MULTILINE)


def rows(text: str) -> dict[str, str]:
    """Variable name to its documented default, for every table row in `text`."""
    return {name: default.strip() for name, default in ROW.findall(text)}


def settings_rows(page: Path = PAGE) -> dict[str, str]:
    """The rows before the page's first `##` heading: the settings table."""
    return rows(page.read_text().split("\n## ", 1)[0])


def all_rows(page: Path = PAGE) -> dict[str, str]:
    return rows(page.read_text())
