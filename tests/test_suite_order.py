"""The suite's own scheduling (tests/conftest.py): the files run first exist, so that a renamed
one cannot silently fall back to the end of the run."""

from __future__ import annotations

from pathlib import Path

from tests.conftest import LONGEST_FIRST

ROOT = Path(__file__).resolve().parents[1]


def test_the_files_run_first_exist_and_are_named_once() -> None:
    assert len(set(LONGEST_FIRST)) == len(LONGEST_FIRST)
    for path in LONGEST_FIRST:
        assert (ROOT / path).is_file(), path
