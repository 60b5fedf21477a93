"""The documentation site: it builds with --strict (a broken link, anchor or missing page fails),
its command-line reference is generated from the click commands and complete, and the README
stays a short entry point with the two commands at the top."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import click
import pytest

from functions.cli import main as cli
from tests.docs.cli_walk import commands

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"


def build(site_dir: Path, root: Path = ROOT) -> subprocess.CompletedProcess[str]:
    """`mkdocs build --strict` of the tree at `root`, as `make docs` serves it."""
    return subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site_dir)],
        cwd=root,
        capture_output=True,
        text=True,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},  # Material's notice, not a problem of ours
        timeout=120,
    )


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    site_dir = tmp_path_factory.mktemp("site")
    built = build(site_dir)
    assert built.returncode == 0, built.stdout + built.stderr
    return site_dir


def test_the_site_builds_strictly_with_every_page_in_the_nav(site: Path) -> None:
    pages = sorted(path.stem for path in (ROOT / "docs").glob("*.md"))
    assert "index" in pages and "cli" in pages
    for page in pages:
        built = site / ("index.html" if page == "index" else f"{page}/index.html")
        assert built.is_file(), page


def _copy_of_the_docs(tmp_path: Path) -> Path:
    copy = tmp_path / "tree"
    copy.mkdir()
    for name in ("mkdocs.yml", "CHANGELOG.md"):
        shutil.copy(ROOT / name, copy / name)
    shutil.copytree(ROOT / "docs", copy / "docs")
    # the CLI page imports the package: give the copy the real one
    for package in ("functions", "shared"):
        (copy / package).symlink_to(ROOT / package)
    return copy


def test_a_broken_link_or_anchor_or_a_page_outside_the_nav_fails_the_build(tmp_path: Path) -> None:
    """One build with three faults: strict mode names every warning before it aborts."""
    copy = _copy_of_the_docs(tmp_path)
    page = copy / "docs" / "quickstart.md"
    page.write_text(
        page.read_text()
        + "\nSee [a page that is not there](nowhere.md)"
        + " and [an anchor that is not there](api.md#no-such-heading).\n"
    )
    (copy / "docs" / "orphan.md").write_text("# An orphan\n")
    built = build(tmp_path / "site", root=copy)
    assert built.returncode != 0
    for fault in ("nowhere.md", "no-such-heading", "orphan.md"):
        assert fault in built.stderr, fault


def _text(html: str) -> str:
    return re.sub(r"<[^>]+>", " ", html)


def test_the_cli_reference_shows_every_command_and_option(site: Path) -> None:
    reference = _text((site / "cli" / "index.html").read_text())
    shown = 0
    for path, command in commands(cli):
        assert path in reference, path
        for param in command.params:
            if isinstance(param, click.Option):
                for option in param.opts:
                    assert option in reference, f"{path} {option}"
                    shown += 1
    assert shown > 20  # the walk saw the options


def test_the_readme_is_a_short_entry_point_with_the_two_commands_at_the_top() -> None:
    lines = README.read_text().splitlines()
    assert len(lines) <= 200
    top = "\n".join(lines[:40])
    assert "make run" in top and "make test" in top
    # no wall of text on one line: prose wrapped, table rows short
    assert max(len(line) for line in lines if not line.startswith("|")) <= 100
    assert max(len(line) for line in lines) <= 200


def test_every_link_in_the_readme_and_changelog_resolves() -> None:
    for document in (README, ROOT / "CHANGELOG.md"):
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", document.read_text()):
            if not re.match(r"[a-z]+://", target):
                assert (document.parent / target).exists(), f"{document.name}: {target}"
