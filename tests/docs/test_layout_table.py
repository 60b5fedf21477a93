"""The layout table on the development page names every module, package and file directly under
`shared/`, `functions/` and `local/`, and names nothing that is not there."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PAGE = ROOT / "docs" / "development.md"
LAID_OUT = ("shared", "functions", "local")
NOT_CODE = {"__init__.py", "__pycache__"}


def named_paths(page: str) -> set[str]:
    """The paths in the table's first column. A name without a slash is a sibling of the path
    before it in the cell (`functions/ingest/auth.py`, `body.py`); `*` stands for any folder."""
    table = page[page.index("## Layout") :]
    named = set()
    for row in re.findall(r"^\| ([^|]+) \|", table, re.MULTILINE):
        folder = ""
        for name in re.findall(r"`([^`]+)`", row):
            if "/" in name.rstrip("/"):
                folder = name.rstrip("/").rpartition("/")[0]
                named.add(name.rstrip("/"))
            elif name.endswith("/"):
                named.add(name.rstrip("/"))
            else:
                named.add(f"{folder}/{name}" if folder else name)
    return named


def existing(pattern: str, root: Path) -> list[Path]:
    return list(root.glob(pattern)) if "*" in pattern else [root / pattern]


def unnamed_entries(page: str, root: Path = ROOT) -> list[str]:
    named = named_paths(page)
    covered = {path.relative_to(root) for name in named for path in existing(name, root)}
    covered_folders = {folder for path in covered for folder in path.parents}
    missing = []
    for top in LAID_OUT:
        for entry in sorted((root / top).iterdir()):
            relative = entry.relative_to(root)
            if entry.name not in NOT_CODE and relative not in covered | covered_folders:
                missing.append(str(relative))
    return missing


def stale_names(page: str, root: Path = ROOT) -> list[str]:
    return sorted(
        name for name in named_paths(page) if not any(p.exists() for p in existing(name, root))
    )


def test_every_entry_is_in_the_layout_table() -> None:
    assert unnamed_entries(PAGE.read_text()) == []


def test_every_path_in_the_layout_table_exists() -> None:
    named = named_paths(PAGE.read_text())
    assert {"functions/ingest/auth.py", "functions/ingest/body.py", "local/bench"} <= named
    assert stale_names(PAGE.read_text()) == []


def test_a_new_module_or_a_stale_name_is_caught(tmp_path: Path) -> None:
    for top in LAID_OUT:
        (tmp_path / top).mkdir()
    (tmp_path / "shared" / "enrichment.py").write_text("")
    (tmp_path / "shared" / "settings.py").write_text("")
    page = "## Layout\n\n| path | what |\n|---|---|\n| `shared/settings.py`, `gone.py` | x |\n"
    assert unnamed_entries(page, tmp_path) == ["shared/enrichment.py"]
    assert stale_names(page, tmp_path) == ["shared/gone.py"]
