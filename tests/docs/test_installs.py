"""Every `pip install` the documentation tells a reader to run installs this checkout (never a
name on PyPI: the package is not published there, and a package of that name would be someone
else's) and resolves, offline, to the locked versions this venv holds: `pip install --dry-run
--report` plans to install the project alone, every dependency already satisfied by the lock."""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
from pathlib import Path

from tests.docs.pages import code_in, documents

ROOT = Path(__file__).resolve().parents[2]
PROJECT = "event-ingest"
PIP_DRY_RUN = (sys.executable, "-m", "pip", "install", "--dry-run", "--no-index")


def documented_installs(markdown: str) -> list[list[str]]:
    """The arguments after `pip install` of each command in the page's code."""
    installs = []
    for code in code_in(markdown):
        for line in code.splitlines():
            words = shlex.split(line, comments=True) if "pip install" in line else []
            for i in range(len(words) - 1):
                if words[i].endswith("pip") and words[i + 1] == "install":
                    installs.append(words[i + 2 :])
    return installs


def planned_installs(arguments: list[str]) -> list[str]:
    """What pip would install, resolved offline against what this venv holds."""
    report = subprocess.run(
        [*PIP_DRY_RUN, "--no-build-isolation", "--quiet", "--report", "-", *arguments],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert report.returncode == 0, report.stderr
    return [item["metadata"]["name"] for item in json.loads(report.stdout)["install"]]


def test_every_documented_install_is_of_this_checkout_at_the_locked_versions() -> None:
    installs = {
        tuple(args) for page in documents() for args in documented_installs(page.read_text())
    }
    assert installs, "the docs name no install: the scan is broken"
    for arguments in map(list, sorted(installs)):
        specs = [word for word in arguments if not word.startswith("-")]
        assert specs and all(spec.startswith((".", "/")) for spec in specs), arguments
        assert planned_installs(arguments) == [PROJECT], arguments


def test_an_install_by_name_or_of_an_unlocked_package_is_caught() -> None:
    assert documented_installs("Run `pip install 'event-ingest[query]'` # from PyPI\n") == [
        ["event-ingest[query]"]
    ]
    assert documented_installs("```sh\n.venv/bin/pip install -e '.[dev]'\n```\n") == [
        ["-e", ".[dev]"]
    ]
    # A package the lock lacks cannot resolve offline: installing it would fetch, unlocked.
    unlocked = "a-package-the-lock-does-not-hold"
    extra = subprocess.run(
        [*PIP_DRY_RUN, "--quiet", unlocked],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert extra.returncode != 0
