"""The documentation as the docs tests read it: its pages, and the code in them (fenced blocks
and inline spans, where commands live), apart from prose such as "make sure"."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
FENCE = re.compile(r"^```[^\n]*\n(.*?)^```", re.MULTILINE | re.DOTALL)
INLINE_CODE = re.compile(r"`([^`]+)`")


def documents() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def code_in(markdown: str) -> list[str]:
    """The fenced blocks and inline code spans: prose such as "make sure" is not a command."""
    blocks = FENCE.findall(markdown)
    return blocks + INLINE_CODE.findall(FENCE.sub("", markdown))
